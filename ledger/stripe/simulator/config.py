"""The simulator's configuration, shared by the engine, the HTTP server and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from ledger.errors import InvalidInput
from ledger.stripe.simulator.faults import check_fault_probabilities
from ledger.stripe.simulator.ratelimit import TEST_MODE, RateLimit

DEFAULT_PORT: Final = 12111
DEFAULT_SLOW_MS: Final = 30_000
DEFAULT_IDEMPOTENCY_TTL_SECONDS: Final = 86_400.0


@dataclass(frozen=True)
class SimulatorConfig:
    port: int = DEFAULT_PORT
    latency_ms: int = 0
    slow_ms: int = DEFAULT_SLOW_MS
    faults: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    # repr=False: a config printed in a log or a test failure must not show the key.
    api_key: str | None = field(default=None, repr=False)
    # None: unlimited.
    platform_balance: int | None = None
    idempotency_ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_SECONDS
    # Stripe's test-mode numbers unless told otherwise, as Stripe itself would limit.
    rate_limit: RateLimit = TEST_MODE
    # Each event is POSTed here, signed with webhook_secret (the HTTP server only).
    webhook_url: str | None = None
    # Signs deliveries; in-process without a URL the engine queues them for take_deliveries.
    webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"invalid port {self.port}: expected 0 to 65535")
        if self.latency_ms < 0:
            raise InvalidInput("latency must not be negative")
        if self.slow_ms < 0:
            raise InvalidInput("slow-fault delay must not be negative")
        check_fault_probabilities(self.faults)
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInput("the API key must not be empty")
        if self.platform_balance is not None and self.platform_balance < 0:
            raise InvalidInput("platform balance must not be negative")
        # `not <= 0` also refuses NaN.
        if not self.idempotency_ttl_seconds > 0:
            raise InvalidInput("idempotency key lifetime must be positive")
        if not isinstance(self.rate_limit, RateLimit):
            raise InvalidInput("rate_limit must be a RateLimit")
        if self.webhook_secret is not None and not self.webhook_secret.strip():
            raise InvalidInput("the webhook secret must not be empty")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidInput("the webhook URL must be an http:// or https:// URL")
            if self.webhook_secret is None:
                # Stripe signs every delivery; an unsigned one would teach the wrong habit.
                raise InvalidInput("a webhook URL needs a webhook secret (--webhook-secret)")
