"""The auditor's tools: a transfer's history, its state at any point, and (to
come) export, verification and the tamper-evidence chain."""
