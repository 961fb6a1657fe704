"""The daemon's and the webhook server's logs: plain text for a person at a
terminal, one JSON object per line for a log pipeline (`--log-format json`).

Each line carries the time, level, component (the logger's name) and message,
and, where known, the transfer id, the event (the kind of work, or the webhook
event type) and the Stripe request id. Those come from `log_context(...)`,
which the daemon's workers set around each transfer's handling, and from
`note(...)`, which the Stripe adapter calls after each request.

Secrets (the Stripe API key, the webhook secret) are scrubbed from every line
as a last line of defence: no code path is meant to log them in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, Literal, TextIO

from ledger.errors import first_line

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: Final = ("auto", "json", "text")
CONTEXT_FIELDS: Final = ("transfer_id", "event", "stripe_request_id")
REDACTED: Final = "[redacted]"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Per thread (each thread starts with an empty context): a worker's fields
# never leak into another worker's lines.
_context: ContextVar[dict[str, str]] = ContextVar("ledger_log_context", default={})  # noqa: B039 - never mutated, only replaced


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Fields added to every line logged inside the block (on this thread)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def note(**fields: str | None) -> None:
    """Set fields in the current block's context (e.g. the last Stripe request
    id). None clears a field: a call that got no request id must not leave the
    previous call's id on the lines that follow."""
    context = dict(_context.get())
    for name, value in fields.items():
        if value:
            context[name] = value
        else:
            context.pop(name, None)
    _context.set(context)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class _Redacting(logging.Formatter):
    """Wraps a formatter and scrubs secrets from what it produces."""

    def __init__(self, inner: logging.Formatter, secrets: Sequence[str]) -> None:
        super().__init__()
        self.inner = inner
        # Longest first, so a secret containing another is scrubbed whole.
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "component": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={getattr(record, name)}"
            for name in ("stripe_request_id",)
            if getattr(record, name, None) and str(getattr(record, name)) not in line
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


def configure(
    log_format: LogFormat = "auto",
    *,
    secrets: Sequence[str] = (),
    stream: TextIO | None = None,
    level: int = logging.INFO,
) -> None:
    """Route the root logger to `stream` (stderr) in the chosen format. `auto`:
    text on a terminal, JSON otherwise (a service manager, a container)."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    inner: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Redacting(inner, secrets))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # stripe-python logs each request at INFO; our own lines say what matters
    # (transfer, outcome, Stripe request id), so keep its chatter out.
    logging.getLogger("stripe").setLevel(logging.WARNING)


# While a problem persists, it is logged again this often (as "still ...").
PROBLEM_REMINDER_SECONDS: Final = 300.0


class Problems:
    """One log line per problem, not one per loop turn: a step of a loop that
    fails (the database down, an event that cannot be projected, a setting
    that is wrong) is logged as an error when it starts failing or fails
    differently, reminded of every PROBLEM_REMINDER_SECONDS while it goes on,
    and logged once more when it recovers. The traceback goes to the debug
    level, where an operator can ask for it."""

    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        # step -> (what failed, when it was last logged, since when it fails)
        self._failing: dict[str, tuple[str, float, float]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step of a loop; its exception is reported, not raised."""
        try:
            yield
        except Exception as error:
            self.report(name, error)
        else:
            self.clear(name)

    def failing(self, name: str) -> bool:
        with self._lock:
            return name in self._failing

    def report(self, name: str, error: BaseException) -> None:
        what = f"{type(error).__name__}: {first_line(str(error))}"
        now = self._clock()
        with self._lock:
            known = self._failing.get(name)
            if known is not None and known[0] == what:
                if now - known[1] < PROBLEM_REMINDER_SECONDS:
                    self._log.debug("%s failed again: %s", name, what, exc_info=error)
                    return
                self._failing[name] = (what, now, known[2])
                self._log.error("%s still failing (for %.0f s): %s", name, now - known[2], what)
                return
            self._failing[name] = (what, now, now if known is None else known[2])
        self._log.error("%s failed: %s", name, what)
        self._log.debug("%s failed", name, exc_info=error)

    def clear(self, name: str) -> None:
        with self._lock:
            known = self._failing.pop(name, None)
        if known is not None:
            self._log.info("%s works again (failed for %.0f s)", name, self._clock() - known[2])
