"""Stripe at the edge: the adapter the process managers call,
and a local Stripe-compatible simulator."""
