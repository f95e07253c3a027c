"""The one JSON trace schema: audit trail, CLI output, server stream and test fixtures.

``trace_schema.json`` beside this file is the same schema in JSON Schema form, for other languages and
for validation in the tests. Bump ``TRACE_VERSION`` whenever a field changes meaning or is removed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import jsontext
from .actions import Action

TRACE_SCHEMA = "ibisagent-trace"
# 2 added the volume agent's records: search, propagation and checks (absent from version 1 traces, which load).
TRACE_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCHEMA_PATH = Path(__file__).with_name("trace_schema.json")

StopReason = Literal["terminate", "max_turns", "repeated_action", "unparseable", "cancelled", "error"]


@dataclass
class Step:
    """One agent turn or one user click. ``mask`` is the mask after the step (kept out of the JSON)."""

    turn: int
    source: Literal["agent", "user"]
    action: Action | None
    pixel: tuple[int, int] | None
    score: float | None
    mask_area: int
    think: str | None = None
    answer: str | None = None
    raw: str | None = None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    ijk: tuple[int, int, int] | None = None
    ras: tuple[float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        action = None
        if self.action is not None:
            action = {"kind": self.action.kind, "x": self.action.x, "y": self.action.y}
        return {
            "turn": self.turn,
            "source": self.source,
            "think": self.think,
            "action": action,
            "pixel": list(self.pixel) if self.pixel is not None else None,
            "ijk": list(self.ijk) if self.ijk is not None else None,
            "ras": [round(v, 6) for v in self.ras] if self.ras is not None else None,
            "score": self.score,
            "mask_area": self.mask_area,
            "answer": self.answer,
            "raw": self.raw,
            "error": self.error,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        action = data.get("action")
        return cls(
            turn=data["turn"],
            source=data["source"],
            action=Action(action["kind"], action.get("x"), action.get("y")) if action else None,
            pixel=tuple(data["pixel"]) if data.get("pixel") is not None else None,
            ijk=tuple(data["ijk"]) if data.get("ijk") is not None else None,
            ras=tuple(data["ras"]) if data.get("ras") is not None else None,
            score=data.get("score"),
            mask_area=data["mask_area"],
            think=data.get("think"),
            answer=data.get("answer"),
            raw=data.get("raw"),
            error=data.get("error"),
            timings_ms=dict(data.get("timings_ms", {})),
        )


@dataclass
class ImageInfo:
    width: int
    height: int
    source: str | None = None


@dataclass
class Trace:
    instruction: str
    image: ImageInfo
    models: dict[str, str]
    steps: list[Step]
    answer: str | None
    stop_reason: StopReason | None
    undone: list[Step] = field(default_factory=list)
    initial_mask_area: int | None = None
    slice: dict[str, Any] | None = None  # {"axis", "index", "window"} when the image is a volume slice
    error: str | None = None  # why the run failed, when no step records it (a server gone, a run never started)
    # The volume agent (None when it did not run): each slice the search inspected {"index", "verdict", "text",
    # "area"}; the propagation {"first", "last", "slices": [{"index", "area", "score", "flags"}]}; each slice the
    # check re-ran {"index", "why", "steps", "outcome", "area_before", "area_after"}.
    search: list[dict[str, Any]] | None = None
    propagation: dict[str, Any] | None = None
    checks: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TRACE_SCHEMA,
            "version": TRACE_VERSION,
            "instruction": self.instruction,
            "image": asdict(self.image),
            "slice": self.slice,
            "models": dict(self.models),
            "initial_mask_area": self.initial_mask_area,
            "steps": [s.to_dict() for s in self.steps],
            "undone": [s.to_dict() for s in self.undone],
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "search": self.search,
            "propagation": self.propagation,
            "checks": self.checks,
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        if data.get("schema") != TRACE_SCHEMA or data.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"not an {TRACE_SCHEMA} trace of version {' or '.join(map(str, READABLE_VERSIONS))} "
                f"(schema={data.get('schema')!r}, version={data.get('version')!r})"
            )
        return cls(
            instruction=data["instruction"],
            image=ImageInfo(**data["image"]),
            slice=data.get("slice"),
            models=dict(data["models"]),
            steps=[Step.from_dict(s) for s in data["steps"]],
            answer=data.get("answer"),
            stop_reason=data.get("stop_reason"),
            undone=[Step.from_dict(s) for s in data.get("undone", [])],
            initial_mask_area=data.get("initial_mask_area"),
            error=data.get("error"),
            search=data.get("search"),
            propagation=data.get("propagation"),
            checks=data.get("checks"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
