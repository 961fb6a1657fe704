"""Synchronise on a condition with a deadline, never on a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy, and return that;
    fail after `timeout` seconds naming `what` was awaited."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)
        # Quick at first; then gentler, because many conditions open a database
        # connection, and polling hard takes the CPU from what is awaited.
        pause = min(pause * 1.5, 0.05)
