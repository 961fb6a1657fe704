"""Stopping long-running commands (the daemon, the simulator) on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, log: logging.Logger | None = None) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` (the command finishes what it is doing, then
    exits 0); a second one raises KeyboardInterrupt, to give up waiting. The
    previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may install handlers; an embedding caller stops us itself.
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt
        if log is not None:
            name = signal.Signals(signum).name
            log.info("%s received: finishing in-flight work, then stopping", name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            # None: a handler installed outside Python; the default is the closest we can do.
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
