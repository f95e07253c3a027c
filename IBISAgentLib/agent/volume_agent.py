"""The agent on a volume: find the slice that shows the target, and check every propagated slice, correcting
the ones that look wrong. Both run the product's own session on single slices (one agent loop everywhere).

Search: the policy is asked its first-turn question on slices along one axis, coarse to fine: every
``stride``-th slice first, then ever closer around the best slice found. A click means the target is there (the
first click's mask measures how well), a Terminate means it is not (the released model answers an absent target
so), anything else is unreadable. The key slice is the one with the largest first-click mask.

Check: after propagation every slice gets flags for what looks wrong (see ``flag_slices``); flagged slices,
within a budget, get a session of their own that starts from the propagated mask, which the agent accepts,
corrects or clears. Corrected and cleared slices become extra key slices and the propagation runs again from
all of them, until nothing new is flagged or the budget is spent. A session that ends without the agent's
Terminate (turns ran out, a repeated click) is unresolved: its slice keeps the propagated mask, since the agent
never said its own mask was right.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ..imaging.volume_case import VolumeCase
from ..tools.propagation import PropagationResult

Verdict = Literal["present", "absent", "unreadable"]
Outcome = Literal["accepted", "corrected", "cleared", "unresolved", "failed"]

MIN_STRIDE = 4  # the coarse pass looks at one slice in 4 at least: under half of any volume of 20 slices or more
COARSE_SLICES = 12  # and at about this many slices on long volumes
DEFAULT_CHECK_BUDGET = 8
AREA_STEP = 0.25  # a change of more than this share of the larger area between neighbouring slices
MIN_AREA_STEP = 16  # ... and of more than this many pixels, is a jump
MIN_AGREEMENT = 0.8  # Dice of the forward and backward passes below this is disagreement


@dataclass
class SearchRecord:
    index: int
    verdict: Verdict
    text: str
    area: int = 0  # the first click's mask, where the target is present

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    axis: str
    records: list[SearchRecord] = field(default_factory=list)
    key: int | None = None

    def to_dict(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]

    def absent_answer(self) -> str:
        """The run's answer when no inspected slice shows the target: where it looked."""
        return f"The target was not found: {self.summary().removeprefix('the target was not found ')}."

    def summary(self) -> str:
        present = [r.index for r in self.records if r.verdict == "present"]
        looked = f"{len(self.records)} {self.axis} slices ({', '.join(str(r.index) for r in self.records)})"
        if self.key is None:
            return f"the target was not found on any of {looked}"
        return f"key slice {self.axis} {self.key}: the target was found on {len(present)} of {looked}"


@dataclass
class CheckRecord:
    index: int
    why: list[str]
    steps: list[dict[str, Any]]
    outcome: Outcome
    area_before: int
    area_after: int
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # the slice's mask after the check

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "mask"}


@dataclass
class CheckedPropagation:
    """A propagation as the front ends and the trace see it: the 3D mask (slices ``first``..``last`` count), a
    record per propagated slice (index, area, score, agreement, flags) and the checks (None: none was asked)."""

    mask: np.ndarray
    first: int
    last: int
    slices: list[dict[str, Any]]
    checks: list[dict[str, Any]] | None

    def propagation_record(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "slices": self.slices}


def checked_propagation(
    result: PropagationResult, first: int, last: int, checks: list[CheckRecord] | None, flags: dict[int, list[str]]
) -> CheckedPropagation:
    slices = [asdict(r) | {"flags": flags.get(r.index, [])} for r in result.slices.values()]
    records = None if checks is None else [c.to_dict() for c in checks]
    return CheckedPropagation(result.mask, first, last, slices, records)


def search_key_slice(
    open_slice: Callable[[VolumeCase], Any],
    case: VolumeCase,
    *,
    on_record: Callable[[SearchRecord], None] | None = None,
    cancel: threading.Event | None = None,
    workers: int = 1,
) -> SearchResult:
    """Inspect slices of ``case``'s axis, coarse to fine, with ``open_slice(slice_case)`` giving a session on a
    slice (the backend's ``open_session`` with the instruction); the key slice, or None where no inspected slice
    shows the target. Fewer than half of the slices of any volume of 20 slices or more are inspected. With
    ``workers`` > 1 the slices of each round are inspected that many at once (``open_slice`` must then give
    sessions that may run on several threads: a policy behind an endpoint, a shared tool)."""
    count = case.geometry.count
    stride = max(MIN_STRIDE, count // COARSE_SLICES)
    result = SearchResult(case.geometry.axis)
    seen: dict[int, SearchRecord] = {}
    cancel = cancel or threading.Event()

    def inspect(indices: list[int]) -> None:
        todo = sorted({i for i in indices if i not in seen and 0 <= i < count})
        for record in _each(lambda i: _inspect(open_slice, case.at(i), cancel), todo, workers):
            if record is None:
                continue
            seen[record.index] = record
            result.records.append(record)
            if on_record is not None:
                on_record(record)

    inspect(list(range(min(stride // 2, count - 1), count, stride)))
    step = stride // 2
    while step >= 1 and not cancel.is_set():
        best = _best(seen)
        if best is None:
            break
        inspect([best - step, best + step])
        step //= 2
    result.key = _best(seen)
    return result


def _each(job: Callable[[Any], Any], items: list, workers: int) -> list:
    """``job`` on every item, ``workers`` at once, results in the items' order."""
    if workers <= 1 or len(items) <= 1:
        return [job(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="ibisagent-volume") as pool:
        return list(pool.map(job, items))


def _inspect(open_slice: Callable[[VolumeCase], Any], slice_case: VolumeCase, cancel: threading.Event) -> Any:
    if cancel.is_set():
        return None
    session = open_slice(slice_case)
    try:
        step = session.step()
    finally:
        session.close()
    index = slice_case.geometry.index
    text = (step.raw or step.error or "") if step is not None else ""
    if step is None or step.action is None:
        return SearchRecord(index, "unreadable", text)
    if step.action.kind == "terminate":
        return SearchRecord(index, "absent", text)
    return SearchRecord(index, "present", text, step.mask_area)


def _best(records: dict[int, SearchRecord]) -> int | None:
    present = [r for r in records.values() if r.verdict == "present"]
    return max(present, key=lambda r: (r.area, -r.index)).index if present else None


def flag_slices(
    result: PropagationResult, case: VolumeCase, keys: set[int], negatives: list[tuple[int, int]]
) -> dict[int, list[str]]:
    """What looks wrong on each propagated slice (key slices are given, never flagged):
    ``area_jump``, the area changes by more than ``AREA_STEP`` of the larger one (and ``MIN_AREA_STEP`` pixels)
    from the neighbour nearer a key slice; ``low_score``, the segmenter doubts the object is there while it
    drew a mask (SAM 2's object score logit <= 0); ``disagreement``, the forward and backward passes differ
    (Dice below ``MIN_AGREEMENT``); ``reappears``, a mask after an empty slice on the way out from the keys;
    ``negative_point``, the mask covers a point marked negative (row, column) on the key slice."""
    records = result.slices
    flags: dict[int, list[str]] = {}
    for index, record in records.items():
        if index in keys:
            continue
        found = []
        nearer = _nearer_neighbour(index, keys)
        if nearer in records:
            before, now = records[nearer].area, record.area
            change = abs(now - before)
            if change > MIN_AREA_STEP and change > AREA_STEP * max(now, before):
                found.append("area_jump")
        if record.area and record.score is not None and record.score <= 0:
            found.append("low_score")
        if record.agreement is not None and record.agreement < MIN_AGREEMENT:
            found.append("disagreement")
        if record.area and _after_an_empty_slice(index, keys, records):
            found.append("reappears")
        if record.area and negatives:
            plane = case.at(index).geometry.extract(result.mask)
            if any(plane[row, column] for row, column in negatives):
                found.append("negative_point")
        if found:
            flags[index] = found
    return flags


def _nearer_neighbour(index: int, keys: set[int]) -> int:
    """The neighbouring slice on the side of the nearest key slice (where the propagation came from)."""
    nearest = min(keys, key=lambda k: abs(k - index))
    return index - 1 if nearest < index else index + 1


def _after_an_empty_slice(index: int, keys: set[int], records: dict) -> bool:
    nearest = min(keys, key=lambda k: abs(k - index))
    direction = 1 if nearest < index else -1
    between = range(nearest + direction, index, direction)
    return any(i in records and records[i].area == 0 for i in between)


def check_propagation(
    propagate: Callable[[dict[int, np.ndarray]], PropagationResult],
    open_slice: Callable[[VolumeCase, np.ndarray], Any],
    case: VolumeCase,
    result: PropagationResult,
    negatives: list[tuple[int, int]],
    budget: int = DEFAULT_CHECK_BUDGET,
    *,
    on_check: Callable[[CheckRecord], None] | None = None,
    cancel: threading.Event | None = None,
    workers: int = 1,
) -> tuple[PropagationResult, list[CheckRecord], dict[int, list[str]]]:
    """Re-check flagged slices of ``result`` (at most ``budget``) with a session each from the propagated mask
    (``open_slice(slice_case, initial_mask)``, ``workers`` at once), re-propagate from the corrected ones
    (``propagate(extra_keys)``), and repeat while new slices are flagged and the budget lasts. The final result,
    the checks, and the flags of the final result."""
    cancel = cancel or threading.Event()
    key_index = case.geometry.index
    extra: dict[int, np.ndarray] = {}
    checks: list[CheckRecord] = []
    checked: set[int] = set()
    while True:
        flags = flag_slices(result, case, {key_index, *extra}, negatives)
        todo = sorted((i for i in flags if i not in checked), key=lambda i: (-len(flags[i]), abs(i - key_index), i))
        todo = todo[: budget - len(checks)]
        if not todo or cancel.is_set():
            return result, checks, flags
        changed = False
        checked.update(todo)
        rechecks = _each(
            lambda i, now=result, why=flags: _recheck(open_slice, case.at(i), now, why[i], cancel), todo, workers
        )
        for record in rechecks:
            if record is None:
                continue
            checks.append(record)
            if on_check is not None:
                on_check(record)
            if record.outcome in ("corrected", "cleared"):
                extra[record.index] = record.mask
                changed = True
        if not changed or cancel.is_set():
            return result, checks, flags
        result = propagate(extra)


def _recheck(
    open_slice: Callable[[VolumeCase, np.ndarray], Any], slice_case: VolumeCase, result: PropagationResult,
    why: list[str], cancel: threading.Event,
) -> CheckRecord | None:  # fmt: skip
    if cancel.is_set():
        return None
    before = np.ascontiguousarray(slice_case.geometry.extract(result.mask))
    session = open_slice(slice_case, before)
    try:
        session.run()
        after, steps, stop = session.mask.copy(), [s.to_dict() for s in session.steps], session.stop_reason
    finally:
        session.close()
    clicked = any(s["action"] and s["action"]["kind"] != "terminate" for s in steps)
    if stop == "error":
        outcome: Outcome = "failed"
    elif stop != "terminate":
        outcome = "unresolved"
    elif not clicked or np.array_equal(after, before):
        outcome = "accepted"
    else:
        outcome = "cleared" if not after.any() else "corrected"
    return CheckRecord(slice_case.geometry.index, why, steps, outcome, int(before.sum()), int(after.sum()), after)
