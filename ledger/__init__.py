"""Event-sourced ledger of Stripe Connect seller transfers."""
