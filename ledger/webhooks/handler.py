"""Stripe webhook deliveries, as one plain function any web framework can call.

    response = handle_delivery(ledger, request_body, request.headers.get("Stripe-Signature"),
                               secret)
    return (response.body, response.status, {"Content-Type": response.content_type})

A delivery is checked with stripe-python's own signature verification (a bad,
stale or missing signature: 400, nothing saved anywhere), deduplicated by its
Stripe event id (a redelivery appends nothing), and then:

- `transfer.reversed`, and `transfer.updated` when it shows a reversal: each
  reversal made outside the ledger (one without the ledger's `ledger_cause`
  metadata, not yet recorded) is recorded through the matrix by
  `Transfer.record_external_reversal`, actor `system:stripe-webhook`, caused
  by the Stripe event id, on the ledger transfer the Stripe transfer names,
  and only if the ledger records that very Stripe transfer as its payout;
- a Stripe transfer naming no ledger transfer (one of the platform's others),
  and anything else: ignored.

Whatever became of it is saved in `stripe_webhook_events` (in the same
transaction as the events it appended, if any), logged on one line, and
counted in `ledger_webhook_deliveries_total{type,outcome}`. Deliveries refused
(by the matrix, or because the ledger transfer was paid out as another Stripe
transfer or none), and those naming a ledger transfer the ledger does not
have, are answered 200 too (Stripe would otherwise redeliver them for days)
and are listed by `ledger reconcile`. The signing secret is used for the
check and nowhere else: it is in no log line, response or error.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from uuid import UUID

import stripe
from prometheus_client import Counter

from ledger.backend import Backend
from ledger.errors import InvalidInput, TransferNotFound, TransitionRefused
from ledger.projections.queries import find_by_stripe_transfer_ids
from ledger.service import NothingNew, NotThisMoney, PayoutNotRecordedYet, ReversalAtStripe
from ledger.storage import connection_lost
from ledger.stripe.listing import ledger_id_named
from ledger.webhooks import deliveries
from ledger.webhooks.deliveries import Delivery, Outcome


class OpensABackend(Protocol):
    """What `open_ledger` returns (ledger.api.TransferLedger): the handler
    takes it or a Backend. (Named structurally: the API is above this module.)"""

    @property
    def backend(self) -> Backend: ...


log = logging.getLogger("ledger.webhooks")

WEBHOOK_ACTOR: Final = "system:stripe-webhook"
# Stripe's own default: a delivery signed longer ago than this is refused, so
# that a captured delivery cannot be replayed later.
DEFAULT_TOLERANCE_SECONDS: Final = 300
# What a tolerance may be set to: a few seconds of clock skew at the least, a
# day at the most (Stripe signs every retry of a delivery anew, so a longer
# window would only let a captured delivery be replayed longer).
MIN_TOLERANCE_SECONDS: Final = 1
MAX_TOLERANCE_SECONDS: Final = 86_400
REVERSAL_EVENT_TYPES: Final = frozenset({"transfer.reversed", "transfer.updated"})
# What a `transfer.updated` changed, when it shows a reversal.
_REVERSAL_ATTRIBUTES: Final = frozenset({"amount_reversed", "reversals", "reversed"})
# Outcomes of deliveries that never reach the table, for logs and metrics only.
DUPLICATE: Final = "duplicate"
BAD_SIGNATURE: Final = "bad_signature"
MALFORMED: Final = "malformed"
ERROR: Final = "error"
# A reversal of a payout the daemon has not recorded yet: Stripe is asked
# (with a 500) to deliver it again later; nothing is saved meanwhile.
NOT_YET: Final = "not_yet"
# Metric labels hold an event type only when it looks like one (Stripe's types
# are a fixed, documented set); never an id or anything else from the body.
_EVENT_TYPE_LABEL: Final = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+){1,3}")

# On the default registry: a marketplace that mounts the handler in its own
# app gets the figures on its existing /metrics endpoint.
DELIVERIES: Final = Counter(
    "ledger_webhook_deliveries",
    "Stripe webhook deliveries received, by event type and what became of them",
    ["type", "outcome"],
)


@dataclass(frozen=True)
class WebhookResponse:
    """What to answer Stripe: 200 once the delivery is dealt with (whatever
    became of it), 400 when it is refused (signature, payload: Stripe's
    redeliveries cannot fix those), 500 when the ledger could not deal with it
    now (the database, say): Stripe then delivers it again later."""

    status: int
    # A small JSON object: {"id", "outcome"} or {"error"}.
    body: bytes
    # recorded, already_known, ignored, refused, unknown_transfer, duplicate,
    # bad_signature, malformed or error: as logged and counted.
    outcome: str
    content_type: str = "application/json"


class _BadSignature(Exception):
    """The delivery is not signed by Stripe as this endpoint expects: the
    message says why, in a few words."""


class _Unreadable(Exception):
    """The (signed) payload is not the event it says it is."""


def signing_secrets(secret: str | Sequence[str]) -> tuple[str, ...]:
    """The endpoint's signing secrets: one, or several while a secret is
    rolled (Stripe then signs every delivery with each of them), given as a
    sequence or comma-separated, as STRIPE_WEBHOOK_SECRET may hold them."""
    given = secret.split(",") if isinstance(secret, str) else list(secret)
    return tuple(s.strip() for s in given if s.strip())


def check_tolerance(tolerance_seconds: int) -> int:
    if (
        isinstance(tolerance_seconds, bool)
        or not isinstance(tolerance_seconds, int)
        or not MIN_TOLERANCE_SECONDS <= tolerance_seconds <= MAX_TOLERANCE_SECONDS
    ):
        raise InvalidInput(
            f"invalid webhook tolerance {tolerance_seconds!r}: expected whole seconds from"
            f" {MIN_TOLERANCE_SECONDS} to {MAX_TOLERANCE_SECONDS}"
        )
    return tolerance_seconds


def handle_delivery(
    ledger: Backend | OpensABackend,
    payload: bytes,
    signature_header: str | None,
    secret: str | Sequence[str],
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> WebhookResponse:
    """Deal with one Stripe webhook delivery: `payload` is the raw request body
    (bytes exactly as received: the signature covers them), `signature_header`
    the `Stripe-Signature` header (None when absent), `secret` the endpoint's
    signing secret (`whsec_...`), or several during a roll (a sequence, or
    comma-separated): a delivery signed with any of them is accepted.
    `tolerance_seconds` (1 to 86,400): a delivery signed longer ago than this,
    or dated further ahead, is refused. `ledger` is the Python API's
    `TransferLedger` (from `ledger.api.open_ledger`) or a
    `ledger.backend.Backend`. Safe to call from several threads at once with
    one ledger; never raises for what Stripe sent."""
    # Outside the catch-all below: a wrong object or setting is the caller's
    # bug, to be raised now, not answered 500 to Stripe for ever.
    core = ledger if isinstance(ledger, Backend) else ledger.backend
    check_tolerance(tolerance_seconds)
    secrets = signing_secrets(secret)
    received_at = datetime.now(UTC)
    try:
        event = _verified_event(payload, signature_header, secrets, tolerance_seconds)
    except _BadSignature as error:
        return _refused(BAD_SIGNATURE, str(error), secrets)
    except Exception:  # Not UTF-8, or signed but not an event: nothing to read.
        return _refused(MALFORMED, "the body is not a Stripe event", secrets)
    event_id, event_type = event.get("id"), event.get("type")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        return _refused(MALFORMED, "the event has no id or type", secrets)
    try:
        try:
            return _deal_with(core, event_id, event_type, event, received_at)
        except Exception as error:
            if not connection_lost(error):
                raise
            # The pool has been checked (a server restart): once more, on a
            # live connection. Dealing with a delivery twice is safe: it is
            # deduplicated by its event id, and recorded in one transaction.
            return _deal_with(core, event_id, event_type, event, received_at)
    except PayoutNotRecordedYet as early:
        log.info(
            "delivery %s %s: not yet: %s",
            event_id,
            event_type,
            early,
            extra={"stripe_event_id": event_id, "event": event_type, "outcome": NOT_YET},
        )
        DELIVERIES.labels(_type_label(event_type), NOT_YET).inc()
        return WebhookResponse(500, _json({"error": f"not yet: {early}"}), NOT_YET)
    except Exception as error:
        # Not Stripe's doing (the database is down, a bug): nothing was saved,
        # so Stripe's redelivery will find it new.
        log.error(  # noqa: TRY400 - one line; no traceback in logs
            "delivery %s %s: not dealt with: %s",
            event_id,
            event_type,
            _scrub(f"{type(error).__name__}: {error}", secrets),
            extra={"stripe_event_id": event_id, "event": event_type, "outcome": ERROR},
        )
        DELIVERIES.labels(_type_label(event_type), ERROR).inc()
        return WebhookResponse(500, _json({"error": "not dealt with; deliver again"}), ERROR)


def _deal_with(
    core: Backend,
    event_id: str,
    event_type: str,
    event: Mapping[str, Any],
    received_at: datetime,
) -> WebhookResponse:
    previous = deliveries.previous(core.db, event_id)
    if previous is not None and previous.outcome not in deliveries.RECONSIDERED:
        return _answered(previous, DUPLICATE)
    if event_type in REVERSAL_EVENT_TYPES:
        delivery = _record_reversals(core, event_id, event_type, event, received_at)
    else:
        delivery = Delivery(event_id, event_type, Outcome.IGNORED, received_at)
    if delivery.outcome != Outcome.RECORDED and not deliveries.save_alone(core.db, delivery):
        # Another delivery of this event got there first.
        return _answered(delivery, DUPLICATE)
    return _answered(delivery, delivery.outcome)


# ----- reversals made outside the ledger ----------------------------------------


def _record_reversals(
    backend: Backend,
    event_id: str,
    event_type: str,
    event: Mapping[str, Any],
    received_at: datetime,
) -> Delivery:
    data = event.get("data")
    if not isinstance(data, Mapping):
        data = {}
    obj = data.get("object")
    if not (isinstance(obj, Mapping) and obj.get("object") == "transfer"):
        return Delivery(
            event_id, event_type, Outcome.IGNORED, received_at, detail="not about a transfer"
        )
    try:
        stripe_transfer_id = _text(obj.get("id"), "id")
        reversals = _reversals(obj)
        at_stripe = _whole(obj.get("amount_reversed"), "amount_reversed")
    except _Unreadable as unreadable:
        return Delivery(event_id, event_type, Outcome.IGNORED, received_at, detail=str(unreadable))

    def delivered(
        result: Outcome, detail: str | None = None, transfer_id: UUID | None = None
    ) -> Delivery:
        return Delivery(
            event_id,
            event_type,
            result,
            received_at,
            stripe_transfer_id=stripe_transfer_id,
            transfer_id=transfer_id,
            detail=detail,
        )

    if event_type == "transfer.updated" and not _shows_reversal(data):
        return delivered(Outcome.IGNORED, "the update is not a reversal")
    found = _find_transfer(backend, obj, stripe_transfer_id)
    if isinstance(found, _NotFound):
        return delivered(found.outcome, found.detail)
    transfer_id = found
    delivery = delivered(Outcome.RECORDED, None, transfer_id)
    try:
        backend.service.record_reversals_made_at_stripe(
            transfer_id,
            stripe_transfer_id=stripe_transfer_id,
            reversals=reversals,
            amount_reversed_at_stripe=at_stripe,
            actor=WEBHOOK_ACTOR,
            caused_by=event_id,
            also_execute=[deliveries.save_statement(backend.db, delivery)],
        )
    except TransferNotFound:
        return delivered(
            Outcome.UNKNOWN_TRANSFER,
            f"Stripe transfer {stripe_transfer_id} names ledger transfer {transfer_id},"
            " which the ledger does not have",
        )
    except NothingNew as known:
        return delivered(Outcome.ALREADY_KNOWN, str(known), transfer_id)
    except (NotThisMoney, TransitionRefused, InvalidInput) as refusal:
        # InvalidInput: Stripe's figures contradict the ledger's (more reversed
        # than it has left): a person must look, as for the matrix's refusals.
        # (ConcurrentUpdate goes up: a 500, and Stripe delivers it again later.)
        return delivered(Outcome.REFUSED, str(refusal), transfer_id)
    # The read table is current: the append wrote the rows with the events.
    return delivery


@dataclass(frozen=True)
class _NotFound:
    """Why a delivery's Stripe transfer is no ledger transfer's."""

    outcome: Outcome
    detail: str


def _find_transfer(
    backend: Backend, obj: Mapping[str, Any], stripe_transfer_id: str
) -> UUID | _NotFound:
    """The id of the ledger transfer this Stripe transfer belongs to, found as
    `ledger reconcile` finds it: the ledger id it names (`_named_ledger_id`);
    when it names none, the read table's stripe_transfer_id (transfers
    imported from the old table were grouped by whatever made them). Whether
    it is the money the ledger recorded is checked later, on the transfer as
    it is when the change is made."""
    named = _named_ledger_id(obj)
    if named is not None:
        # Whether the ledger has it is found when the change loads it.
        return named
    # Transfers imported from the old table carry whatever transfer_group the
    # old system gave them: the read table knows them by their Stripe id.
    recording = find_by_stripe_transfer_ids(backend.db, [stripe_transfer_id])
    paid_as = [row.id for row in recording.get(stripe_transfer_id, [])]
    if not paid_as:
        # One of the platform's other Stripe transfers: not the ledger's
        # business, and nothing for `ledger reconcile` to list.
        return _NotFound(Outcome.IGNORED, "names no ledger transfer")
    if len(paid_as) > 1:
        return _NotFound(
            Outcome.UNKNOWN_TRANSFER,
            f"several ledger transfers record Stripe transfer {stripe_transfer_id}"
            f" ({', '.join(str(i) for i in paid_as)}): only a person can tell which",
        )
    return paid_as[0]


def _named_ledger_id(obj: Mapping[str, Any]) -> UUID | None:
    metadata = obj.get("metadata")
    return ledger_id_named(
        metadata.get("ledger_transfer_id") if isinstance(metadata, Mapping) else None,
        obj.get("transfer_group"),
    )


def _reversals(obj: Mapping[str, Any]) -> list[ReversalAtStripe]:
    """The reversals embedded in a Transfer object, oldest first (Stripe lists
    them newest first, the ten newest; older ones came in their own events)."""
    listing = obj.get("reversals")
    items = listing.get("data") if isinstance(listing, Mapping) else None
    if not isinstance(items, list):
        raise _Unreadable("the transfer has no reversals list")
    found = []
    for item in reversed(items):
        if not isinstance(item, Mapping):
            raise _Unreadable("a reversal is not an object")
        metadata = item.get("metadata")
        created = item.get("created")
        found.append(
            ReversalAtStripe(
                id=_text(item.get("id"), "reversal id"),
                amount=_whole(item.get("amount"), "reversal amount"),
                created=(
                    datetime.fromtimestamp(created, UTC)
                    if isinstance(created, int) and not isinstance(created, bool)
                    else None
                ),
                # The reversal manager's reversals name the event that asked for
                # them; the daemon records those itself.
                made_by_ledger=isinstance(metadata, Mapping) and bool(metadata.get("ledger_cause")),
            )
        )
    return found


def _shows_reversal(data: Mapping[str, Any]) -> bool:
    """Whether a transfer.updated is about a reversal: what it changed says so
    (and when it does not say what changed, it may be)."""
    changed = data.get("previous_attributes")
    if not isinstance(changed, Mapping):
        return True
    return bool(_REVERSAL_ATTRIBUTES.intersection(changed))


def _text(value: object, name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise _Unreadable(f"the {name} is missing")


def _whole(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Unreadable(f"the {name} is not a whole number")


# ----- answers ----------------------------------------------------------------------


def _answered(delivery: Delivery, outcome: str) -> WebhookResponse:
    """A delivery dealt with: one log line, one count, 200."""
    transfer = str(delivery.transfer_id) if delivery.transfer_id else "-"
    log.log(
        logging.WARNING if outcome in (Outcome.REFUSED, Outcome.UNKNOWN_TRANSFER) else logging.INFO,
        "delivery %s %s: transfer %s: %s%s",
        delivery.stripe_event_id,
        delivery.event_type,
        transfer,
        outcome,
        f": {delivery.detail}" if delivery.detail else "",
        extra={
            "stripe_event_id": delivery.stripe_event_id,
            # `event` and `transfer_id` are the fields JSON log lines carry.
            "event": delivery.event_type,
            "transfer_id": None if delivery.transfer_id is None else transfer,
            "stripe_transfer_id": delivery.stripe_transfer_id,
            "outcome": outcome,
        },
    )
    DELIVERIES.labels(_type_label(delivery.event_type), outcome).inc()
    return WebhookResponse(
        200, _json({"id": delivery.stripe_event_id, "outcome": outcome}), outcome
    )


def _verified_event(
    payload: bytes, header: str | None, secrets: Sequence[str], tolerance_seconds: int
) -> dict[str, Any]:
    """The event, once its signature holds for one of the secrets and its
    timestamp is within the tolerance on either side of now. stripe-python
    checks only the past side: a delivery dated ahead would stay replayable
    until that future time passed."""
    if not secrets:
        raise _BadSignature("no signing secret is configured")
    signed_at = _signed_at(header)
    if signed_at is not None and signed_at - time.time() > tolerance_seconds:
        raise _BadSignature("the signature is dated in the future (beyond the tolerance)")
    for number, secret in enumerate(secrets, start=1):
        try:
            event = stripe.Webhook.construct_event(
                payload, header, secret, tolerance=tolerance_seconds
            )
        except stripe.SignatureVerificationError as error:
            if number == len(secrets) or "No signatures found matching" not in str(error):
                raise _BadSignature(_signature_problem(error)) from None
            continue
        return dict(event.to_dict())
    raise AssertionError("unreachable: the last secret returns or raises")


def _signed_at(header: str | None) -> int | None:
    """The `t=` of a Stripe-Signature header, when it has a readable one."""
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            return int(value)
    return None


def _refused(outcome: str, problem: str, secrets: Sequence[str]) -> WebhookResponse:
    """A delivery refused before anything was read from it: 400."""
    problem = _scrub(problem, secrets)
    log.warning("delivery refused: %s", problem, extra={"outcome": outcome})
    DELIVERIES.labels("unverified", outcome).inc()
    return WebhookResponse(400, _json({"error": problem}), outcome)


def _signature_problem(error: stripe.SignatureVerificationError) -> str:
    """stripe-python's reason, in a few words of our own."""
    message = str(error.user_message or error)
    if "No Stripe-Signature header" in message:
        return "no Stripe-Signature header"
    if "tolerance" in message:
        return "the signature is too old (its timestamp is outside the tolerance)"
    if "No webhook secret" in message:
        return "no signing secret is configured"
    if "Unable to extract" in message or "expected scheme" in message:
        return "the Stripe-Signature header has no timestamp or no v1 signature"
    return "the signature does not match"


def _type_label(event_type: str) -> str:
    return event_type if _EVENT_TYPE_LABEL.fullmatch(event_type) else "other"


def _scrub(text: str, secrets: Sequence[str]) -> str:
    # Belt and braces: none of our messages is built from a secret.
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def _json(data: Mapping[str, str]) -> bytes:
    return json.dumps(data).encode()
