"""Clicks as the front ends show them: numbered, labelled by polarity, coloured by who placed them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..agent.trace import Step

# Markup colours (RGB 0-1): the agent's clicks in green/red, the clinician's in cyan/orange.
COLORS = {
    ("agent", True): (0.13, 0.80, 0.13),
    ("agent", False): (0.90, 0.15, 0.15),
    ("user", True): (0.10, 0.75, 0.95),
    ("user", False): (1.00, 0.55, 0.00),
}


@dataclass(frozen=True)
class Marker:
    """A click to show: where (world RAS, millimetres), its number and polarity as a label, its colour, and the
    turn of the step that placed it (so a log line can name its marker)."""

    number: int
    positive: bool
    source: str
    ras: tuple[float, float, float]
    turn: int = 0

    @property
    def label(self) -> str:
        return f"{self.number}{'+' if self.positive else '−'}"

    @property
    def color(self) -> tuple[float, float, float]:
        return COLORS[(self.source, self.positive)]


def markers_of(steps: Iterable[Step]) -> list[Marker]:
    """The clicks among ``steps`` (on a volume slice: each has its world position), numbered in order."""
    clicks = [s for s in steps if s.ras is not None and s.action is not None and s.action.is_click]
    return [
        Marker(n, s.action.kind == "positive", s.source, tuple(float(v) for v in s.ras), s.turn)  # type: ignore[arg-type]
        for n, s in enumerate(clicks, start=1)
    ]
