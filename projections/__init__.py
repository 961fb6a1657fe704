"""The read model: the `seller_transfers` table the workers, the CLI and the
marketplace read, kept from the ledger's events.

- `rows.py`: what events make of a row (the events' own `apply`), one history
  or many at once;
- `inline.py`: the rows and tracking position every append writes in its own
  transaction;
- `projection.py`: the catch-up projection, the safety net for events written
  otherwise, which sets aside a transfer it cannot apply;
- `queries.py`: the reads, the workers' due queries among them;
- `rebuild.py`: `ledger rebuild`, a new table from the events, switched in.

Installed as `ledger.projections` (ledger/projections links here): the
distribution puts no top-level package of this generic name in site-packages.
"""
