"""Running schedules: one, a sweep of seeds, and shrinking a failing one.

`run_schedule(seed)` gives an `Outcome`: the trace, the draws it made and
the violation if any. The same seed (and variant) always gives the same
trace. A failing schedule is shrunk by editing its draws (shrink.py) and
replayed with `scripts/simulate --seed S [--variant V]`, or with
`--draws` for a shrunk one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.simulation.scheduler import Choices
from tests.simulation.world import SimWorld, Variant, Violation


@dataclass
class Outcome:
    seed: int
    trace: list[str]
    draws: list[int]
    violation: Violation | None = None
    variant: str | None = None
    steps: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violation is None

    def replay_command(self, *, draws: bool = False) -> str:
        command = f"scripts/simulate --seed {self.seed}"
        if self.variant:
            command += f" --variant {self.variant}"
        if draws:
            command += " --draws " + ",".join(str(d) for d in self.draws)
        return command

    def report(self, *, draws: bool = False, last: int = 60) -> str:
        lines = [f"VIOLATION {self.violation}" if self.violation else "ok"]
        lines.append(f"replay: {self.replay_command(draws=draws)}")
        shown = self.trace[-last:]
        if len(self.trace) > len(shown):
            lines.append(f"... ({len(self.trace) - len(shown)} earlier steps)")
        lines.extend(shown)
        return "\n".join(lines)


def run_schedule(
    seed: int, *, variant: Variant | None = None, draws: Sequence[int] | None = None
) -> Outcome:
    choices = Choices(seed, replay=draws)
    world = SimWorld(seed, choices, variant)
    quiet = logging.getLogger("ledger")
    level = quiet.level
    # The daemons log every failure they deal with; the trace says it better.
    quiet.setLevel(logging.CRITICAL)
    violation: Violation | None = None
    try:
        world.run()
    except Violation as found:
        violation = found
        world.note(f"VIOLATION {found}")
    finally:
        quiet.setLevel(level)
        world.close()
    return Outcome(
        seed=seed,
        trace=world.trace,
        draws=list(choices.drawn),
        violation=violation,
        variant=variant.name if variant else None,
        steps=world.step_number,
    )
