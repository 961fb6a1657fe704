"""JSON for the hot paths: an event's stored state, and PostgreSQL's append
document, written by orjson where it writes exactly what the standard
library would, and by the standard library everywhere else.

Why: the library's JSONTranscoder and `json.dumps` cost about 10 and 5
microseconds an event on this machine, a quarter of an import's Python;
orjson writes the same bytes in a fifth of that. What is stored must not
change with the encoder: a stored event's bytes are what its chain link
hashes and what every later read decodes. So orjson gets only what it is
known to write identically (tests/unit/test_encoding.py compares the two
byte for byte over generated values): a dict of str keys whose values are
exactly str, int, bool, None or datetime (the library's `datetime_iso`
transcoding, when that is the one registered for datetimes). A UUID, a
Decimal, a float, an enum, a list, a subclass of any of these, or an int
past 64 bits goes to the library's encoder, as does anything orjson refuses
(a lone surrogate, a key that is not a str): the library's own answer, or
its own error, for those."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

import orjson
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Transcoding

# The value types orjson writes as the library's encoder does. Checked by
# exact type: orjson writes a subclass (an enum, a str subclass) natively,
# where the library would call its `default`.
_PLAIN: Final[frozenset[type]] = frozenset({str, int, bool, type(None), datetime})
_PLAIN_BUT_DATETIMES: Final[frozenset[type]] = _PLAIN - {datetime}
# Datetimes to `default` (the registered transcoding), not orjson's own
# RFC 3339; any subclass to `default` too, which refuses it: the library then.
_EVENT_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
# The document: anything but str, int, bool, None, lists and dicts to
# `_refuse`, and so to json.dumps, which refuses it as it always did.
_DOCUMENT_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class EventTranscoder(JSONTranscoder):
    """The library's JSON transcoder, encoding an event's state with orjson
    where the bytes are the same (see the module's doc). Decoding is the
    library's, unchanged. Named by TRANSCODER_TOPIC in the library's
    settings (ledger.config)."""

    def __init__(self) -> None:
        super().__init__()
        self._fast: frozenset[type] = _PLAIN

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        # orjson writes what the datetime transcoding returns: the library's
        # bytes only for DatetimeAsISO's plain str. Any other goes the
        # library's way. (None registered: `default` refuses, and so does
        # the library.)
        registered = self.types.get(datetime)
        exact = registered is None or type(registered) is DatetimeAsISO
        self._fast = _PLAIN if exact else _PLAIN_BUT_DATETIMES

    def encode(self, obj: Any) -> bytes:
        fast = self._fast
        if type(obj) is dict and all(type(value) in fast for value in obj.values()):
            try:
                encoded = orjson.dumps(obj, default=self._encode_obj, option=_EVENT_OPTIONS)
            except orjson.JSONEncodeError:
                pass  # the library's encoder gives its own answer or error
            else:
                # A copy of its own size: orjson's bytes keep the buffer it
                # wrote into (4 KB for a 500-byte state), and an import holds
                # thousands of states at once.
                return memoryview(encoded).tobytes()
        return super().encode(obj)


def dumps_document(document: dict[str, Any]) -> str:
    """A PostgreSQL append's document (str, int, bool and None, in lists and
    dicts: the hooks make their values JSON-ready) as JSON text: orjson, or
    `json.dumps` for what orjson refuses. The server parses it into jsonb, so
    equal values are all that matter, not equal text: orjson leaves
    non-ASCII characters as they are, `json.dumps` escapes them. A datetime,
    a dataclass or a subclass is refused here too, as `json.dumps` refuses
    it. (orjson would write a UUID, an enum or a float's NaN, which
    `json.dumps` refuses or PostgreSQL does: no hook sends one.)"""
    try:
        return orjson.dumps(document, default=_refuse, option=_DOCUMENT_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(document, separators=(",", ":"))


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON-ready")
