"""Replays recorded model outputs in order: for audits, demos and tests."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..agent.interfaces import PolicyRequest
from .errors import PolicyError


class ReplayPolicy:
    def __init__(self, outputs: list[str], source: str = "inline") -> None:
        if not all(isinstance(o, str) for o in outputs):
            raise ValueError("replay outputs must be a list of strings")
        self.outputs = list(outputs)
        self.description = f"replay ({source}, {len(outputs)} outputs)"
        self.requests: list[PolicyRequest] = []

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayPolicy:
        """Read a JSON list of model outputs, or a trace JSON whose steps carry ``raw`` outputs."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON, an integer past 4300 digits
            raise ValueError(f"replay file {path}: cannot read JSON ({exc})") from exc
        except RecursionError:
            raise ValueError(f"replay file {path}: the JSON is nested too deeply") from None
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            steps = data["steps"]
            if not all(isinstance(s, dict) for s in steps):
                raise ValueError(f"replay file {path}: a trace's steps must be JSON objects")
            data = [s["raw"] for s in steps if s.get("source") == "agent" and s.get("raw") is not None]
        if not isinstance(data, list) or not all(isinstance(o, str) for o in data):
            raise ValueError(f"replay file {path}: expected a JSON list of strings or a trace with steps")
        return cls(data, source=path.name)

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        if len(self.requests) >= len(self.outputs):
            raise PolicyError(f"the replay has no output left for turn {len(self.requests) + 1}")
        self.requests.append(request)
        return self.outputs[len(self.requests) - 1]
