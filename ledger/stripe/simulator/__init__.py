"""stripe-sim: a local Stripe-compatible server for transfers, transfer reversals and events.

Developers try the ledger's daemon without a Stripe account, and tests and benchmarks drive
it over real HTTP with the real stripe-python client::

    stripe.StripeClient(key, base_addresses={"api": "http://127.0.0.1:12111"})

A deterministic simulation drives the same engine in-process, without HTTP::

    sim = StripeSimulator(config, clock=virtual_clock, rng=random.Random(seed))
    response = sim.handle(ApiRequest("POST", "/v1/transfers", body=b"amount=5&..."))

The package, by concern: `api` (requests, answers, Stripe's error texts), `params` (form
decoding and validation), `objects` (transfers, reversals, accounts, balances), `events`
(``/v1/events``), `idempotency`, `ratelimit`, `faults`, `auth`, `routes`, `engine`
(`StripeSimulator`: ``begin``/``finish``/``handle`` and the control calls), `control` (the
``/_sim`` API), `webhooks` (signing and delivering), `http` (`SimulatorServer`), `cli`.

Endpoints (Stripe API v1 shapes, form-encoded bodies, JSON answers, a ``Request-Id`` header on
every answer): ``POST``/``GET /v1/transfers``, ``GET /v1/transfers/{id}``,
``POST``/``GET /v1/transfers/{id}/reversals``, ``GET /v1/transfers/{id}/reversals/{rid}``,
``GET /v1/events`` and ``GET /v1/events/{id}``. Lists are newest first with ``limit``
(default 10, at most 100), ``starting_after`` and ``ending_before``; ``GET /v1/transfers``
filters on ``destination``, ``transfer_group`` and ``created`` (a Unix time, or
``created[gt|gte|lt|lte]``); ``GET /v1/events`` on ``type`` (``*`` a wildcard), ``types``
and ``created``, over the last 30 days. Any other ``/v1`` address answers 404.

Conventions, in the spirit of Stripe's magic test values:

- API keys come as ``Authorization: Bearer KEY`` (HTTP Basic with the key as the user name
  works too). No key: 401. Without ``--api-key`` any key is accepted; with it, any other key
  is 401 with the key masked to its last four characters, as Stripe does; the full key is never
  printed, logged or returned. Keys starting with ``rk_`` (restricted keys) answer 403
  ``permission_error``, as a restricted key lacking the permission does. Each API key is an
  account of its own: idempotency keys and rate limits are counted per API key.
- Every ``acct_...`` id is a connected account, except ids containing ``unknown``: a transfer
  to one answers 400 ``resource_missing`` on ``destination``. Ids containing ``nocap`` lack
  the ``transfers`` capability: 400 ``insufficient_capabilities_for_transfer``, no ``param``.
  Accounts whose id contains ``nobalance`` have no funds to take a reversal from: 400
  ``balance_insufficient``. ``POST /_sim/accounts`` overrides all three for any account.
- The platform balance is unlimited unless ``--platform-balance`` is given; transfers take
  from it, reversals and top-ups (``POST /_sim/topups``) give back. A transfer larger than
  what is left answers 400 ``balance_insufficient``, unless it names a ``source_transaction``
  (a ``ch_...`` charge id): such a transfer is paid from that charge's funds, as on Stripe,
  and never fails for balance.
- A reversal of a transfer that is already fully reversed answers 400
  ``invalid_request_error`` with no code and the message
  "The transfer tr_x is already fully reversed.", as Stripe does.
- Errors that depend on the request alone (missing or malformed parameters) are answered
  before executing and are not saved under the idempotency key; errors that depend on state
  (unknown destination or transfer, a missing capability, ``balance_insufficient``, a
  reversal larger than what is left, already fully reversed) come from executing and are
  saved, as on Stripe.

Rate limits (on by default with Stripe's test-mode numbers: 25 requests/s per endpoint and
25/s in total; ``--rate-limit live``: 100/s in total; ``off``; or numbers of one's own) run
before anything else: a limited request answers 429 ``rate_limit`` with Stripe's message and
no ``Stripe-Should-Retry``, and is neither executed nor saved under its key. ``/_sim`` is
never limited.

Idempotency follows Stripe's v1 rules: the first request that begins executing saves its
status and body, which later requests with the key get back (``Idempotent-Replayed: true``),
500s included; the same key with other parameters answers 400 ``idempotency_error``; a key
whose request is still executing answers 409 ``idempotency_key_in_use``. Saved keys expire
after a day by the engine's clock (``POST /_sim/expire-idempotency-keys`` expires them all at
once). Every 5xx answer carries ``Stripe-Should-Retry: false``, as Stripe's do.

Events: ``transfer.created``; on each reversal (outside ones from ``/_sim/reverse`` included)
``transfer.reversed`` and ``transfer.updated`` (``previous_attributes``: ``amount_reversed``,
and ``reversed`` when it flips). ``data.object`` is the transfer as it was then. With
``--webhook-url`` and ``--webhook-secret`` each event is POSTed there, signed as Stripe signs
(``Stripe-Signature: t=...,v1=...``), from a background thread, retried with backoff; in-process
the engine queues signed-to-be deliveries for ``take_deliveries()``.

Latency and faults. ``--latency-ms`` delays every ``/v1`` request; a money-moving POST spends
it between beginning and executing, with its idempotency key held. Faults hit money-moving
POSTs (create a transfer, create a reversal):

- ``500_before``: 500 ``api_error``; nothing executed, nothing saved.
- ``429``: 429 rate limit; nothing executed, nothing saved, no ``Stripe-Should-Retry``.
- ``lock_timeout``: 429 ``lock_timeout`` with ``Stripe-Should-Retry: true``; nothing executed.
- ``500_after``: executes and commits, saves a 500 ``api_error`` under the key, answers 500.
- ``drop_after``: executes, commits, saves the success, closes the connection unanswered.
- ``slow``: executes, commits, saves the success, then waits ``--slow-ms`` before answering.

Each money-moving POST draws once from the engine's ``random.Random`` (seeded by ``--seed``,
which also makes the object ids) with the ``--faults`` probabilities, so the same seed and
the same requests give the same faults and ids. Scripted faults (``POST /_sim/faults``) form
a FIFO queue consumed before any random draw, and may target any method and path. The three
"after" faults only hit a request that freshly succeeds: a replay, a conflict or an error
answer is left alone, and a scripted entry waits for the next match.

Control, for tests, under ``/_sim`` with no key: see `ledger.stripe.simulator.control`.
`StripeSimulator` offers the same in-process.
"""

from __future__ import annotations

from ledger.stripe.simulator.api import ApiRequest, ApiResponse, StripeErrorResponse
from ledger.stripe.simulator.auth import mask_api_key
from ledger.stripe.simulator.config import (
    DEFAULT_IDEMPOTENCY_TTL_SECONDS,
    DEFAULT_PORT,
    DEFAULT_SLOW_MS,
    SimulatorConfig,
)
from ledger.stripe.simulator.engine import Call, Clock, StripeSimulator
from ledger.stripe.simulator.faults import FAULT_NAMES, format_faults, parse_faults
from ledger.stripe.simulator.http import SimulatorServer
from ledger.stripe.simulator.ratelimit import LIVE_MODE, OFF, TEST_MODE, RateLimit
from ledger.stripe.simulator.webhooks import Delivery, DeliveryAttempt, signature_header

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL_SECONDS",
    "DEFAULT_PORT",
    "DEFAULT_SLOW_MS",
    "FAULT_NAMES",
    "LIVE_MODE",
    "OFF",
    "TEST_MODE",
    "ApiRequest",
    "ApiResponse",
    "Call",
    "Clock",
    "Delivery",
    "DeliveryAttempt",
    "RateLimit",
    "SimulatorConfig",
    "SimulatorServer",
    "StripeErrorResponse",
    "StripeSimulator",
    "format_faults",
    "mask_api_key",
    "parse_faults",
    "signature_header",
]
