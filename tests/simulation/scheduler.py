"""Seeded choices and a deterministic scheduler of simulated threads.

Every decision of a schedule (which daemon steps next, which fault a Stripe
request meets, when a daemon dies, what a client asks) is drawn from one
`Choices`. The draws are recorded, so a schedule can be replayed from its
seed, or from its draws alone, and shrunk by editing them (see shrink.py).

The product's code runs unchanged in real threads, but one at a time: a
thread runs until it reaches a yield point (a failpoint of the money path, a
Stripe request leaving or its answer arriving, a retry's sleep), then hands
control back to the scheduler, which picks what runs next. Yield points are
never inside a database transaction, so a paused thread holds no lock. A
crash raises `Crash` in the thread at the point where it is paused: it
unwinds as a killed process's work does (its open transaction rolled back,
its claims left in the table), and nothing of it runs again.
"""

from __future__ import annotations

import random
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


class Crash(BaseException):
    """A simulated process death. A BaseException, so that no `except
    Exception` in the product mistakes it for a failure to handle."""


class Choices:
    """The schedule's decisions: from a seeded generator, or replayed from a
    list of earlier draws (past its end every draw is 0, the simplest choice:
    no fault, no crash, the first thing that can run)."""

    def __init__(self, seed: int = 0, replay: Sequence[int] | None = None) -> None:
        self._rng = random.Random(seed)
        self._replay = list(replay) if replay is not None else None
        self.drawn: list[int] = []

    def below(self, n: int) -> int:
        """A number in [0, n)."""
        if n <= 1:
            return 0
        if self._replay is None:
            value = self._rng.randrange(n)
        else:
            at = len(self.drawn)
            value = self._replay[at] % n if at < len(self._replay) else 0
        self.drawn.append(value)
        return value

    def percent(self, chance: int) -> bool:
        """True `chance` times in a hundred (0 is False: the simple choice)."""
        return self.below(100) >= 100 - chance

    def pick(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]


@dataclass(eq=False)
class Actor:
    """One simulated thread: a worker of a daemon handling one claim."""

    name: str
    group: str
    run: Callable[[], None]
    thread: threading.Thread | None = None
    resume: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    # Where it is paused ("" before it first runs).
    at: str = ""
    done: bool = False
    crash_requested: bool = False
    crashed: bool = False
    error: str | None = None


class Scheduler:
    def __init__(self) -> None:
        self.actors: list[Actor] = []
        self._back = threading.Semaphore(0)
        self._local = threading.local()

    # ----- the scheduler's side ---------------------------------------------------

    def spawn(self, name: str, group: str, run: Callable[[], None]) -> Actor:
        actor = Actor(name=name, group=group, run=run)
        actor.thread = threading.Thread(target=self._body, args=(actor,), name=name, daemon=True)
        actor.thread.start()
        self.actors.append(actor)
        return actor

    def runnable(self) -> list[Actor]:
        return [a for a in self.actors if not a.done]

    def step(self, actor: Actor) -> None:
        """Run `actor` until its next yield point, or to its end."""
        actor.resume.release()
        self._back.acquire()
        if actor.done:
            self.actors.remove(actor)

    def crash(self, group: str) -> list[Actor]:
        """Every live actor of `group` dies where it is paused."""
        dying = [a for a in self.actors if a.group == group and not a.done]
        for actor in dying:
            actor.crash_requested = True
            self.step(actor)
        return dying

    # ----- the actor's side ---------------------------------------------------------

    def current(self) -> Actor | None:
        actor: Actor | None = getattr(self._local, "actor", None)
        return actor

    def yield_point(self, at: str) -> None:
        """Called in an actor's thread: pause here until scheduled again (or
        crash here). In any other thread (the scheduler's own, running a
        client's command whole) it does nothing."""
        actor = self.current()
        if actor is None:
            return
        if actor.crash_requested:
            raise Crash(at)
        actor.at = at
        self._back.release()
        actor.resume.acquire()
        if actor.crash_requested:
            raise Crash(at)

    def _body(self, actor: Actor) -> None:
        self._local.actor = actor
        actor.resume.acquire()
        try:
            if actor.crash_requested:
                raise Crash("before it started")
            actor.run()
        except Crash:
            actor.crashed = True
        except BaseException:  # an actor's failure is the simulation's finding
            actor.error = traceback.format_exc()
        finally:
            actor.done = True
            self._back.release()
