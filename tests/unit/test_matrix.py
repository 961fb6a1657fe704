"""The transition matrix, pinned down pair by pair.

The expected outcomes below are written out by hand from the design's table, not
derived from `ledger.matrix`: a change to the matrix has to be made twice, once on
purpose in the code and once here, or the tests fail.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

import pytest

from ledger.matrix import (
    ALLOWED_TRANSITIONS,
    STATUSES,
    TERMINAL_STATUSES,
    Status,
    can_transition,
    render_mermaid,
    render_table,
)
from tests.design_matrix import EDGES

ALLOWED: Final = True
REFUSED: Final = False

KNOWN_STATUSES: Final = (
    "pending",
    "completed",
    "failed",
    "reversal_pending",
    "reversed",
    "permanently_failed",
)

# (from, to, expected): all 36 pairs of the 6 x 6 matrix, one row each.
TRANSITIONS: Final[tuple[tuple[str, str, bool], ...]] = (
    ("pending", "pending", ALLOWED),
    ("pending", "completed", ALLOWED),
    ("pending", "failed", ALLOWED),
    ("pending", "reversal_pending", REFUSED),
    ("pending", "reversed", REFUSED),
    ("pending", "permanently_failed", REFUSED),
    ("completed", "pending", REFUSED),
    ("completed", "completed", ALLOWED),
    ("completed", "failed", REFUSED),
    ("completed", "reversal_pending", ALLOWED),
    ("completed", "reversed", REFUSED),
    ("completed", "permanently_failed", REFUSED),
    ("failed", "pending", REFUSED),
    ("failed", "completed", ALLOWED),
    ("failed", "failed", ALLOWED),
    ("failed", "reversal_pending", REFUSED),
    ("failed", "reversed", REFUSED),
    ("failed", "permanently_failed", ALLOWED),
    ("reversal_pending", "pending", REFUSED),
    ("reversal_pending", "completed", REFUSED),
    ("reversal_pending", "failed", REFUSED),
    ("reversal_pending", "reversal_pending", ALLOWED),
    ("reversal_pending", "reversed", ALLOWED),
    ("reversal_pending", "permanently_failed", ALLOWED),
    ("reversed", "pending", REFUSED),
    ("reversed", "completed", REFUSED),
    ("reversed", "failed", REFUSED),
    ("reversed", "reversal_pending", REFUSED),
    ("reversed", "reversed", ALLOWED),
    ("reversed", "permanently_failed", REFUSED),
    ("permanently_failed", "pending", REFUSED),
    ("permanently_failed", "completed", REFUSED),
    ("permanently_failed", "failed", REFUSED),
    ("permanently_failed", "reversal_pending", REFUSED),
    ("permanently_failed", "reversed", REFUSED),
    ("permanently_failed", "permanently_failed", ALLOWED),
)


# Typos a call site could plausibly make; none of them is a status.
TYPOS: Final = ("Completed", "reversal-pending", "", " pending", "pending ", "PENDING", "bogus")


@pytest.mark.parametrize(
    ("from_status", "to_status", "expected"),
    [pytest.param(*row, id=f"{row[0]}->{row[1]}") for row in TRANSITIONS],
)
def test_each_pair_of_statuses_is_allowed_or_refused_as_the_design_says(
    from_status: str, to_status: str, expected: bool
) -> None:
    assert can_transition(from_status, to_status) is expected


def test_the_table_above_covers_every_pair_exactly_once() -> None:
    pairs = [(from_status, to_status) for from_status, to_status, _ in TRANSITIONS]

    assert len(pairs) == 36
    assert set(pairs) == {(f, t) for f in KNOWN_STATUSES for t in KNOWN_STATUSES}


def test_thirteen_pairs_are_allowed_and_twenty_three_refused() -> None:
    """6 same-state bumps plus the design table's 7 edges (pending: 2, completed: 1,
    failed: 2, reversal_pending: 2) make 13 allowed pairs and 23 refused ones.

    DESIGN.md section 2 says "14 allowed (6 same-state + 8 above), 22 refused", but its
    own table (and the seed's map) lists 7 edges, not 8: the prose count is off by one.
    This test follows the table.
    """
    outcomes = Counter(can_transition(f, t) for f in KNOWN_STATUSES for t in KNOWN_STATUSES)
    written_down = Counter(expected for _, _, expected in TRANSITIONS)

    assert outcomes == {ALLOWED: 13, REFUSED: 23}
    assert written_down == outcomes


@pytest.mark.parametrize("terminal", ["reversed", "permanently_failed"])
def test_a_terminal_status_has_no_way_out_written_in_the_map_itself(terminal: str) -> None:
    assert ALLOWED_TRANSITIONS[terminal] == frozenset()
    assert terminal in TERMINAL_STATUSES
    assert [to for to in KNOWN_STATUSES if can_transition(terminal, to)] == [terminal]


def test_only_reversed_and_permanently_failed_are_terminal() -> None:
    assert {"reversed", "permanently_failed"} == TERMINAL_STATUSES


def test_the_canonical_status_list_is_the_designs_six_statuses_in_lifecycle_order() -> None:
    assert STATUSES == KNOWN_STATUSES
    assert tuple(status.value for status in Status) == KNOWN_STATUSES


def test_the_status_list_and_the_maps_keys_name_the_same_statuses() -> None:
    keys = {str(status) for status in ALLOWED_TRANSITIONS}

    assert keys - set(STATUSES) == set(), "the map has statuses the canonical list lacks"
    assert set(STATUSES) - keys == set(), "the canonical list has statuses the map lacks"
    assert len(ALLOWED_TRANSITIONS) == len(STATUSES) == len(set(STATUSES))


def test_every_target_in_the_map_is_a_known_status() -> None:
    targets = {str(to) for targets in ALLOWED_TRANSITIONS.values() for to in targets}

    assert targets <= set(STATUSES)


def test_the_maps_edges_are_exactly_the_designs_edges() -> None:
    edges = {(str(f), str(t)) for f, targets in ALLOWED_TRANSITIONS.items() for t in targets}

    assert edges == EDGES


@pytest.mark.parametrize("typo", TYPOS)
@pytest.mark.parametrize("to_status", KNOWN_STATUSES)
def test_an_unknown_from_status_is_refused_whatever_the_target(typo: str, to_status: str) -> None:
    """Unknown `from` is always refused, conservatively: a typo at a call site
    ("Completed", "reversal-pending", "", " pending") must surface as a refusal the
    caller sees, never pass silently as a legal change."""
    assert can_transition(typo, to_status) is REFUSED


@pytest.mark.parametrize("typo", TYPOS)
def test_an_unknown_status_cannot_even_stay_as_it_is(typo: str) -> None:
    """The same-state rule is for known statuses only: "bogus" -> "bogus" is not an
    idempotent bump, it is a typo, and typos must be visible."""
    assert can_transition(typo, typo) is REFUSED


@pytest.mark.parametrize("typo", TYPOS)
@pytest.mark.parametrize("from_status", KNOWN_STATUSES)
def test_an_unknown_target_status_is_refused_from_every_status(from_status: str, typo: str) -> None:
    """Unknown `to` is refused too: set-status "Completed" must not slip through."""
    assert can_transition(from_status, typo) is REFUSED


_EDGE_LINE: Final = re.compile(r"^\s*(\S+) --> (\S+)\s*$")


def _status_edges_in(diagram: str) -> Counter[tuple[str, str]]:
    """Edge lines between two statuses (the [*] start and end markers left aside)."""
    edges: Counter[tuple[str, str]] = Counter()
    for line in diagram.splitlines():
        match = _EDGE_LINE.match(line)
        if match and "[*]" not in match.groups():
            edges[(match[1], match[2])] += 1
    return edges


def test_the_mermaid_diagram_draws_each_allowed_change_exactly_once() -> None:
    edges = _status_edges_in(render_mermaid())

    assert edges == Counter(dict.fromkeys(EDGES, 1))


def test_the_mermaid_diagram_draws_nothing_for_refused_changes_or_same_state_bumps() -> None:
    edges = set(_status_edges_in(render_mermaid()))
    refused = {(f, t) for f, t, expected in TRANSITIONS if expected is REFUSED}
    same_state = {(s, s) for s in KNOWN_STATUSES}

    assert edges & refused == set()
    assert edges & same_state == set()


def test_the_mermaid_diagram_starts_at_pending_and_ends_at_the_terminal_statuses() -> None:
    lines = [line.strip() for line in render_mermaid().splitlines()]

    assert lines[0] == "stateDiagram-v2"
    assert "[*] --> pending" in lines
    assert {line for line in lines if line.endswith("--> [*]")} == {
        "reversed --> [*]",
        "permanently_failed --> [*]",
    }


def test_the_plain_table_has_one_row_per_status() -> None:
    rows = render_table().splitlines()
    first_words = [row.split()[0] for row in rows if row.strip()]

    for status in KNOWN_STATUSES:
        assert first_words.count(status) == 1, f"{status} should have exactly one row"


def test_the_plain_table_marks_the_terminal_statuses() -> None:
    rows = {row.split()[0]: row for row in render_table().splitlines() if row.strip()}

    assert "(terminal)" in rows["reversed"]
    assert "(terminal)" in rows["permanently_failed"]
    assert "(terminal)" not in rows["pending"]
