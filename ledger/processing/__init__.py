"""The process side: process managers that turn events into Stripe effects, and the daemon.

`ports` is what they need from Stripe (implemented by `ledger.stripe.gateway`),
`work` their bookkeeping table (claims, attempts, parking), `effects` the one
mechanism shared by payouts and reversals, `daemon` the loop that drives it.
"""
