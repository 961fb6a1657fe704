"""`ledger daemon --metrics-port P`: Prometheus metrics over HTTP.

Two sources:
- counters and a histogram, bumped as the daemon works (`PrometheusObserver`,
  the daemon's `Observer`): events projected, Stripe calls by endpoint and
  outcome with their latency, attempts, permanent failures;
- gauges read from the database at each scrape (`LedgerCollector`, the same
  `measure()` as `ledger health`): projection lag in events and seconds, due
  work by kind and its oldest age, parked items, claims held, daemons seen.
  Read at scrape time, they say what the whole ledger looks like, whichever
  daemon is scraped.

No label holds an id or a secret: labels are kinds, endpoints and outcomes.
Everything lives in a registry of its own, not prometheus-client's global one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.errors import first_line
from ledger.health import measure
from ledger.processing.observer import Observer
from ledger.storage import Database

log = logging.getLogger("ledger.metrics")

# Stripe answers in tens of milliseconds; a timeout is 15 s by default.
STRIPE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class PrometheusObserver(Observer):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.projected = Counter(
            "ledger_events_projected",
            "Events this daemon projected into seller_transfers.",
            registry=registry,
        )
        self.stripe_calls = Counter(
            "ledger_stripe_calls",
            "Stripe API calls by endpoint and outcome (ok or how it failed).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.stripe_latency = Histogram(
            "ledger_stripe_call_seconds",
            "Stripe API call latency, stripe-python's own retries included.",
            ["endpoint"],
            buckets=STRIPE_LATENCY_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "ledger_attempts",
            "Stripe calls started for payouts and reversals (attempts).",
            ["kind"],
            registry=registry,
        )
        self.waits = Counter(
            "ledger_waits",
            "Work set to wait, spending no attempt, by what it waits for: rate_limit (429s),"
            " platform_balance, seller_capability.",
            ["kind", "condition"],
            registry=registry,
        )
        self.permanent_failures = Counter(
            "ledger_permanent_failures",
            "Transfers given up on (permanently_failed) by the process managers.",
            ["kind"],
            registry=registry,
        )

    def events_projected(self, count: int) -> None:
        if count:
            self.projected.inc(count)

    def attempt_started(self, kind: str) -> None:
        self.attempts.labels(kind=kind).inc()

    def permanent_failure(self, kind: str) -> None:
        self.permanent_failures.labels(kind=kind).inc()

    def stripe_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.stripe_calls.labels(endpoint=endpoint, outcome=outcome).inc()
        self.stripe_latency.labels(endpoint=endpoint).observe(seconds)

    def waiting(self, kind: str, condition: str) -> None:
        self.waits.labels(kind=kind, condition=condition).inc()


class LedgerCollector(Collector):
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(
        self,
        db: Database,
        decode: Callable[[Any], Any],
        clock: Callable[[], datetime],
        daemon_seen_seconds: float,
    ) -> None:
        self.db = db
        self.decode = decode
        self.clock = clock
        self.daemon_seen_seconds = daemon_seen_seconds
        # Two scrapes at once (two Prometheus servers) share one reading.
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            try:
                m = measure(self.db, self.decode, self.clock())
            except Exception as error:
                # A scrape must not take the daemon down; `ledger_up 0` shows
                # the database did not answer. One line: a scrape every 15 s
                # while the database is down must not fill the log with tracebacks.
                log.error(  # noqa: TRY400 - the failure is in the line
                    "metrics: reading the ledger's state failed: %s: %s",
                    type(error).__name__,
                    first_line(str(error)),
                )
                yield GaugeMetricFamily("ledger_up", "1 when the database answered.", value=0)
                return
        yield GaugeMetricFamily("ledger_up", "1 when the database answered.", value=1)
        yield GaugeMetricFamily(
            "ledger_projection_lag_events",
            "Events appended but not yet projected into seller_transfers.",
            value=m.lag_events,
        )
        yield GaugeMetricFamily(
            "ledger_projection_lag_seconds",
            "Age of the oldest event not yet projected (0 when up to date).",
            value=m.lag_seconds,
        )
        due = GaugeMetricFamily(
            "ledger_due_work", "Transfers due for Stripe work now, by kind.", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "ledger_due_work_oldest_seconds",
            "How long the oldest due work of each kind has waited.",
            labels=["kind"],
        )
        for kind, work in m.due.items():
            due.add_metric([kind], work.count)
            oldest.add_metric([kind], work.oldest_seconds)
        yield due
        yield oldest
        yield GaugeMetricFamily(
            "ledger_quarantined_transfers",
            "Transfers the projection set aside: their events cannot be applied.",
            value=m.quarantined,
        )
        yield GaugeMetricFamily(
            "ledger_parked_items",
            "Work parked for an operator (`ledger parked list`).",
            value=m.parked,
        )
        yield GaugeMetricFamily(
            "ledger_claims_held",
            "Unexpired claims on Stripe work, all daemons.",
            value=m.claims_held,
        )
        yield GaugeMetricFamily(
            "ledger_daemons_running",
            "Daemons seen within LEDGER_HEALTH_DAEMON_SECONDS (as `ledger health` counts them).",
            value=sum(
                1
                for d in m.daemons
                if not d.stopped and d.seen_seconds_ago <= self.daemon_seen_seconds
            ),
        )


class MetricsServer:
    """The /metrics endpoint, served on a thread of its own."""

    def __init__(
        self,
        port: int,
        host: str,
        db: Database,
        decode: Callable[[Any], Any],
        clock: Callable[[], datetime],
        *,
        daemon_seen_seconds: float,
    ) -> None:
        registry = CollectorRegistry()
        self.observer = PrometheusObserver(registry)
        registry.register(LedgerCollector(db, decode, clock, daemon_seen_seconds))
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
