"""What the daemon tells about its work as it goes, for metrics.

The process managers and the Stripe adapter call these methods; `ledger.metrics`
implements them with Prometheus counters when `--metrics-port` is given. This
base does nothing, so nothing here needs prometheus-client, and every caller
can count unconditionally.

Arguments are kinds and outcomes, never ids: a metric label holding a transfer
id would make one time series per transfer.
"""

from __future__ import annotations


class Observer:
    def events_projected(self, count: int) -> None:
        """The daemon's projection wrote `count` events into seller_transfers."""

    def attempt_started(self, kind: str) -> None:
        """A Stripe call for `kind` work ('payout' or 'reversal') is about to start."""

    def permanent_failure(self, kind: str) -> None:
        """A transfer was given up on (`permanently_failed`) by the process manager."""

    def stripe_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One gateway call finished: `outcome` is 'ok' or a FailureKind value."""

    def waiting(self, kind: str, condition: str) -> None:
        """`kind` work waits for a condition outside the transfer (ports.Condition):
        no attempt spent."""


NO_OBSERVER = Observer()
