"""Progress on stderr for long operator commands (rebuild, reconcile).

A bar with rate and ETA when the stream is a terminal; otherwise a plain line
every 10 %, which reads well in a log file or a CI transcript.
"""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    def __init__(self, out: TextIO, total: int, *, label: str, unit: str) -> None:
        self.out = out
        self.total = max(total, 1)
        self.label = label
        self.unit = unit
        self.started = time.monotonic()
        self.tty = out.isatty()
        self.next_tenth = 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def show(self, done: int) -> None:
        elapsed = max(self.elapsed(), 1e-6)
        rate = done / elapsed
        fraction = min(done / self.total, 1.0)
        if self.tty:
            eta = (self.total - done) / rate if rate else 0
            bar = "#" * int(fraction * 30)
            self.out.write(
                f"\r{self.label} [{bar:<30}] {done:,}/{self.total:,} {self.unit}"
                f" {rate:,.0f}/s ETA {eta:,.0f} s"
            )
            self.out.flush()
        elif fraction * 10 >= self.next_tenth:
            self.next_tenth = int(fraction * 10) + 1
            self.out.write(
                f"{self.label}: {done:,} of {self.total:,} {self.unit} ({rate:,.0f}/s)\n"
            )
            self.out.flush()

    def finish(self, line: str) -> None:
        """Ends the bar's line (on a terminal) and writes `line`."""
        if self.tty:
            self.out.write("\n")
        self.out.write(f"{self.label}: {line}\n")
        self.out.flush()
