"""The operator's tools over the event log: a transfer's history and its state
at any point (`history`), export, the tamper-evidence chain (`chain`), the
whole-ledger check (`verify`), and the read table's rebuild (`rebuild`)."""
