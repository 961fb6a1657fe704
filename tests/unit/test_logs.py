"""The log line formats: JSON fields from the context, secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from ledger import logs
from ledger.logs import Problems

SECRET = "sk_test_51QzSecretKeyForLogs"
WEBHOOK_SECRET = "whsec_secretForLogs"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() replaces the root logger's handlers: put pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def configured(log_format: logs.LogFormat) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(log_format, secrets=[SECRET, WEBHOOK_SECRET, ""], stream=stream)
    return stream


def test_json_lines_carry_the_context_of_the_work_being_done() -> None:
    stream = configured("json")
    log = logging.getLogger("ledger.daemon")
    with logs.log_context(transfer_id="a-transfer", event="payout"):
        logs.note(stripe_request_id="req_123", ignored=None)
        log.info("payout of transfer %s: succeeded", "a-transfer")
    log.warning("outside any work")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["component"] == "ledger.daemon" and first["level"] == "info"
    assert first["message"] == "payout of transfer a-transfer: succeeded"
    assert (first["transfer_id"], first["event"], first["stripe_request_id"]) == (
        "a-transfer",
        "payout",
        "req_123",
    )
    assert first["time"].endswith("Z")
    assert "transfer_id" not in second and second["level"] == "warning"


def test_a_call_without_a_request_id_clears_the_previous_one() -> None:
    stream = configured("json")
    with logs.log_context(transfer_id="t"):
        logs.note(stripe_request_id="req_1")
        logs.note(stripe_request_id=None)  # e.g. a dropped connection: no request id
        logging.getLogger("ledger.daemon").info("look-up failed")
    assert "stripe_request_id" not in json.loads(stream.getvalue())


def test_one_thread_s_context_never_reaches_another_s_lines() -> None:
    stream = configured("json")
    inside = threading.Event()
    done = threading.Event()

    def worker() -> None:
        with logs.log_context(transfer_id="worker-transfer"):
            inside.set()
            done.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    logging.getLogger("ledger.daemon").info("from the main thread")
    done.set()
    thread.join()
    assert "transfer_id" not in json.loads(stream.getvalue())


def test_secrets_are_scrubbed_from_every_format_and_from_tracebacks() -> None:
    formats: tuple[logs.LogFormat, ...] = ("json", "text")
    for log_format in formats:
        stream = configured(log_format)
        log = logging.getLogger("ledger.test")
        log.error("key %s and secret %s", SECRET, WEBHOOK_SECRET)
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            log.exception("boom")
        output = stream.getvalue()
        assert SECRET not in output and WEBHOOK_SECRET not in output, output
        assert output.count(logs.REDACTED) >= 3


def test_text_lines_name_the_stripe_request_when_the_message_does_not() -> None:
    stream = configured("text")
    with logs.log_context(transfer_id="t"):
        logs.note(stripe_request_id="req_9")
        logging.getLogger("ledger.daemon").info("payout of transfer t: succeeded")
    assert (
        stream.getvalue()
        .rstrip()
        .endswith("payout of transfer t: succeeded [stripe_request_id=req_9]")
    )


def test_a_problem_is_logged_when_it_starts_changes_recovers_and_every_five_minutes_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    problems = Problems(logging.getLogger("ledger.test"), clock=lambda: now[0])
    down = ConnectionError("connection refused")
    with caplog.at_level(logging.INFO, "ledger.test"):
        for second in range(0, 600, 1):
            now[0] = float(second)
            problems.report("projection", down)
        problems.report("projection", ValueError("something else"))
        problems.clear("projection")
        problems.clear("projection")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "projection failed: ConnectionError: connection refused"),
        ("ERROR", "projection still failing (for 300 s): ConnectionError: connection refused"),
        ("ERROR", "projection failed: ValueError: something else"),
        ("INFO", "projection works again (failed for 599 s)"),
    ]
