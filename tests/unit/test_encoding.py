"""The ledger's JSON (ledger.storage.encoding) writes what the library's
would: an event's stored bytes are what its chain link hashes and what every
later read decodes, so a faster encoder may not change one byte of them."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Transcoder,
    Transcoding,
    UUIDAsHex,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.domain import Transfer
from ledger.storage.encoding import EventTranscoder, dumps_document
from tests.unit.builders import a_new_transfer, an_imported_transfer


class Colour(Enum):
    RED = "red"


class Text(str):
    pass


class Level(IntEnum):
    HIGH = 3


class Moment(datetime):
    pass


class Petaseconds(Transcoding):
    """A datetime transcoding other than the library's DatetimeAsISO: a small
    float (the time in units of 10**15 seconds), which the library writes as
    1.7e-06 and orjson as 1.7e-6."""

    type = datetime
    name = "datetime_petaseconds"

    def encode(self, obj: datetime) -> float:
        return obj.timestamp() / 1e15

    def decode(self, data: float) -> datetime:
        return datetime.fromtimestamp(data * 1e15, UTC)


def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    # As the library's Application.register_transcodings does.
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    return transcoder


LIBRARY = registered(JSONTranscoder())
OURS = registered(EventTranscoder())

# Every character, lone surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
times = (
    st.datetimes(
        timezones=st.sampled_from(
            [
                UTC,
                timezone(timedelta(hours=5, minutes=30)),
                timezone(timedelta(hours=-8)),
                timezone(timedelta(hours=1, seconds=7, microseconds=9)),
            ]
        )
    )
    | st.datetimes()
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    any_text,
    times,
    st.floats(),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.just(Colour.RED),
    st.just(Level.HIGH),
    any_text.map(Text),
    times.map(lambda t: Moment.fromisoformat(t.isoformat())),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
states = st.dictionaries(
    any_text | any_text.map(Text) | st.integers() | st.booleans() | st.none(), values, max_size=12
)


def encoded(transcoder: Transcoder, obj: Any) -> tuple[str, Any]:
    try:
        return "bytes", transcoder.encode(obj)
    except Exception as error:
        return "error", type(error)


@settings(max_examples=600)
@given(states)
@example({"timestamp": datetime(2026, 12, 7, 12, 0, 0, 1, tzinfo=UTC), "amount": 2**63})
@example({"amount": 2**64})
@example({"text": '\x00\x1f\x7f\u2028\u2029/\\"é𝄞'})
@example({"text": "\ud800"})
@example({"id": UUID(int=1), "status": Colour.RED, "ref": Text("x")})
@example({"level": Level.HIGH, "when": Moment(2026, 1, 1, tzinfo=UTC), Text("k"): 1, True: 2})
def test_an_event_state_is_encoded_to_the_library_s_very_bytes(state: dict[Any, Any]) -> None:
    assert encoded(OURS, state) == encoded(LIBRARY, state)


@settings(max_examples=300)
@given(values)
def test_a_value_that_is_not_an_event_state_is_the_library_s_too(value: Any) -> None:
    assert encoded(OURS, value) == encoded(LIBRARY, value)


@given(values)
def test_decoding_is_the_library_s(value: Any) -> None:
    kind, data = encoded(LIBRARY, value)
    if kind == "bytes":
        assert repr(OURS.decode(data)) == repr(LIBRARY.decode(data))


def transfer_events() -> list[Any]:
    """Events of every kind the domain has, and imported ones of every status."""
    payout, waited, admin, refused = (a_new_transfer(f"order-{n}") for n in range(4))
    payout.record_payout_failed(
        error="card_declined",
        next_retry_at=datetime(2026, 12, 8, tzinfo=UTC),
        actor="system:payout-manager",
        caused_by=None,
    )
    payout.record_payout_succeeded(stripe_transfer_id="tr_1", actor="system:x", caused_by="p:1")
    payout.request_reversal(request_ref="re_1", amount=700, actor="support", reason="refund é")
    payout.record_reversal_attempt_failed(
        error="timeout", next_retry_at=datetime(2026, 12, 9, tzinfo=UTC), actor="s", caused_by=None
    )
    payout.record_reversed(
        stripe_reversal_id="trr_1", amount_reversed=700, actor="system:y", caused_by="r:3"
    )
    waited.record_payout_waiting(error="balance_insufficient", actor="s", caused_by=None)
    waited.record_payout_failed(error="declined", next_retry_at=None, actor="s", caused_by=None)
    waited.record_payout_permanently_failed(error="account closed", actor="s", caused_by=None)
    admin.set_status_by_admin("completed", actor="alice@example.com", reason="paid by hand")
    refused.record_payout_succeeded(stripe_transfer_id="tr_2", actor="s", caused_by=None)
    refused.request_reversal(request_ref="re_2", amount=None, actor="support", reason=None)
    refused.record_reversal_permanently_failed(error="no balance", actor="s", caused_by=None)
    events = [e for t in (payout, waited, admin, refused) for e in t.pending_events]
    for status in ("pending", "completed", "failed", "reversal_pending", "reversed"):
        events.extend(an_imported_transfer(status=status).pending_events)
    return events


# Every kind of event the domain defines (its bases aside).
EVENT_KINDS = {
    kind
    for kind in vars(Transfer).values()
    if isinstance(kind, type)
    and issubclass(kind, Transfer.Event)
    and kind not in (Transfer.Event, Transfer.StatusChanged)
}


def test_every_kind_of_the_ledger_s_events_is_stored_as_the_library_stores_it() -> None:
    ours, library = Mapper[UUID](OURS), Mapper[UUID](LIBRARY)
    events = transfer_events()
    assert {type(e) for e in events} == EVENT_KINDS and len(EVENT_KINDS) == 11
    for event in events:
        stored = ours.to_stored_event(event)
        assert stored == library.to_stored_event(event)
        assert ours.to_domain_event(stored) == event


documents = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | any_text,
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@settings(max_examples=300)
@given(documents)
@example({"events": [["ab", 1, "t", "7b7d"]], "text": "\x00\ud800", "n": 2**70})
def test_an_append_document_holds_the_values_json_dumps_would(document: dict[str, Any]) -> None:
    def read_back(dumps: Callable[[dict[str, Any]], str]) -> tuple[str, Any]:
        try:
            return "values", json.loads(dumps(document))
        except Exception as error:
            return "error", type(error)

    assert read_back(dumps_document) == read_back(lambda d: json.dumps(d, separators=(",", ":")))


def test_an_event_with_a_decimal_is_left_to_the_library() -> None:
    # A value orjson would write natively or differently goes the library's way.
    state = {"amount": Decimal("1.10"), "when": datetime(2026, 1, 1, tzinfo=UTC)}
    assert OURS.encode(state) == LIBRARY.encode(state)
    assert b"decimal_str" in OURS.encode(state)


def test_an_encoded_state_holds_no_more_memory_than_its_bytes() -> None:
    # An import holds thousands of encoded states at once; orjson's own
    # result keeps the whole buffer it wrote into (4 KB for this state).
    state = {"text": "x" * 500, "when": datetime(2026, 1, 1, tzinfo=UTC)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [OURS.encode(state) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1000 * (len(kept[0]) + 200), held


def test_the_ledger_s_events_take_orjson_s_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the faster encoder is for: every kind of the ledger's events is
    written without the library's encoder (which would be right, but slow)."""
    events = transfer_events()
    library = [Mapper[UUID](OURS).to_stored_event(e) for e in events]

    def refused(self: JSONTranscoder, obj: Any) -> bytes:
        raise AssertionError(f"the library's encoder was asked for {obj!r}")

    monkeypatch.setattr(JSONTranscoder, "encode", refused)
    assert [Mapper[UUID](OURS).to_stored_event(e) for e in events] == library


def test_another_datetime_transcoding_is_left_to_the_library() -> None:
    """orjson would write another transcoding's data (a float here) its own
    way: with one registered for datetimes, datetimes go the library's way."""
    assert orjson.dumps(1.7e-6) != json.dumps(1.7e-6).encode()
    library, ours = JSONTranscoder(), EventTranscoder()
    for transcoder in (library, ours):
        transcoder.register(Petaseconds())
    state = {"when": datetime(2026, 1, 1, 0, 0, 0, 100_001, tzinfo=UTC), "n": 1}
    assert ours.encode(state) == library.encode(state)
    assert encoded(ours, {"n": 1}) == encoded(library, {"n": 1})


@pytest.mark.parametrize(
    "value",
    [datetime(2026, 1, 1, tzinfo=UTC), Moment(2026, 1, 1), Text("x"), Petaseconds()],
    ids=["datetime", "datetime subclass", "str subclass", "other object"],
)
def test_a_document_value_json_dumps_refuses_is_refused(value: Any) -> None:
    document = {"events": [["ab", 1, "t", value]]}
    try:
        expected: tuple[str, Any] = ("values", json.loads(json.dumps(document)))
    except TypeError as error:
        expected = ("error", type(error))
    try:
        ours: tuple[str, Any] = ("values", json.loads(dumps_document(document)))
    except TypeError as error:
        ours = ("error", type(error))
    assert ours == expected
