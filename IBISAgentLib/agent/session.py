"""The agent session: the one loop that the CLI, the server, Slicer and RL rollouts all run.

The model looks at the image with the current mask drawn on it and answers with one action; clicks
(the agent's and the user's alike) go into one history that drives the segmentation tool. The session
stops on Terminate, after ``max_turns`` agent turns of a run, when the agent repeats the same action
three times in a row, after two unreadable answers in a row (the second try carries a format reminder),
on cancel, or on an error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..imaging.rendering import OverlayRenderer
from ..policies.errors import PolicyError
from .actions import Action, normalized_to_pixel, parse_response, pixel_to_normalized
from .interfaces import Click, Policy, PolicyRequest, SegmentationTool
from .prompts import IBIS_V1, PromptProfile
from .trace import ImageInfo, Step, StopReason, Trace

if TYPE_CHECKING:  # the session reads a case's geometry and window; it needs no volume code
    from ..imaging.volume_case import VolumeCase

log = logging.getLogger(__name__)

DEFAULT_MAX_TURNS = 20
REPEAT_LIMIT = 3


@dataclass
class _State:
    """What a step leaves behind, so undo can restore it exactly."""

    mask: np.ndarray
    logits: np.ndarray | None
    click: Click | None
    repeat_keys: tuple[tuple[str, str, str], ...] = ()
    unparseable_streak: int = 0
    sent_image: np.ndarray | None = None


class AgentSession:
    """Segments one 2D RGB image from a text instruction. Not thread-safe, except ``cancel()``."""

    def __init__(
        self,
        image: np.ndarray,
        instruction: str,
        policy: Policy,
        tool: SegmentationTool,
        *,
        profile: PromptProfile = IBIS_V1,
        initial_mask: np.ndarray | None = None,
        max_turns: int = DEFAULT_MAX_TURNS,
        on_step: Callable[[Step], None] | None = None,
        image_source: str | None = None,
        case: VolumeCase | None = None,
        models: dict[str, str] | None = None,
    ) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            raise ValueError(f"the image must be a non-empty (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        if not instruction or not instruction.strip():
            raise ValueError("the instruction is empty: say what to segment")
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        geometry = case.geometry if case is not None else None
        if geometry is not None and (geometry.height, geometry.width) != image.shape[:2]:
            raise ValueError(f"the image is {image.shape[:2]}, its slice geometry {(geometry.height, geometry.width)}")
        if initial_mask is not None and initial_mask.shape != image.shape[:2]:
            raise ValueError(f"the initial mask is {initial_mask.shape}, the image is {image.shape[:2]}")
        self.image = image
        self.instruction = instruction.strip()
        self.policy = policy
        self.tool = tool
        self.profile = profile
        self.max_turns = max_turns
        self.on_step = on_step
        self.image_source = image_source
        self.case = case  # the volume this slice is cut from, if any (propagation grows the mask through it)
        self.geometry = geometry
        self.window = case.window.describe() if case is not None else None
        self.models = {
            "policy": policy.description,
            "tool": tool.description,
            "profile": profile.name,
            **tool.identity(),
            **(models or {}),
        }
        self.steps: list[Step] = []
        self.undone: list[Step] = []
        self.stop_reason: StopReason | None = None
        self.answer: str | None = None
        self._cancel = threading.Event()
        self._initial_mask = None if initial_mask is None else initial_mask.astype(bool)
        self._states: list[_State] = [self._initial_state()]
        self._renderer = OverlayRenderer(image, profile.overlay_color, profile.overlay_alpha)
        # Names this image for the tool's embedding cache without hashing it every turn.
        self._image_key = uuid.uuid4().hex

    # -- state -------------------------------------------------------------------------------------

    @property
    def mask(self) -> np.ndarray:
        """The current mask (H, W) bool; do not modify it."""
        return self._states[-1].mask

    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self._states if s.click is not None]

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def trace(self) -> Trace:
        height, width = self.image.shape[:2]
        return Trace(
            instruction=self.instruction,
            image=ImageInfo(width=width, height=height, source=self.image_source),
            models=dict(self.models),
            steps=list(self.steps),
            answer=self.answer,
            stop_reason=self.stop_reason,
            undone=list(self.undone),
            initial_mask_area=None if self._initial_mask is None else int(np.count_nonzero(self._initial_mask)),
            slice=None
            if self.geometry is None
            else {"axis": self.geometry.axis, "index": self.geometry.index, "window": self.window or ""},
        )

    # -- agent -------------------------------------------------------------------------------------

    def run(self) -> Trace:
        """Run agent turns until a stop rule fires; at most ``max_turns`` turns in this call."""
        self._reopen()
        for _ in range(self.max_turns):
            self._turn()
            if self.done:
                break
        else:
            self.stop_reason = "max_turns"
        return self.trace()

    def step(self) -> Step | None:
        """Run one agent turn. Returns the recorded step, or None when cancelled before it finished."""
        self._reopen()
        return self._turn()

    def _turn(self) -> Step | None:
        if self._cancel.is_set():
            self.stop_reason = "cancelled"
            return None
        started = time.perf_counter()
        state = self._states[-1]
        request = self._request(state)
        policy_started = time.perf_counter()
        try:
            raw = self.policy.generate(request, self._cancel)
        except Exception as exc:
            # An expected failure (endpoint down, replay exhausted) is one line; anything else is a bug: traceback.
            log.error("policy failed: %s", exc, exc_info=not isinstance(exc, PolicyError))
            return self._fail(started, f"policy failed: {exc}", time.perf_counter() - policy_started, 0.0)
        policy_s = time.perf_counter() - policy_started
        if self._cancel.is_set():
            self.stop_reason = "cancelled"
            return None

        parsed = parse_response(raw)
        step = Step(
            turn=len(self.steps) + 1,
            source="agent",
            action=parsed.action,
            pixel=None,
            score=None,
            mask_area=int(np.count_nonzero(state.mask)),
            think=parsed.think,
            answer=parsed.answer,
            raw=raw,
            error=parsed.error,
        )
        tool_s = 0.0
        new_state = _State(state.mask, state.logits, None, state.repeat_keys)
        if self.profile.send_history:
            new_state.sent_image = request.image
        action = parsed.action
        if action is None:
            new_state.unparseable_streak = state.unparseable_streak + 1
            if new_state.unparseable_streak >= 2:
                self.stop_reason = "unparseable"
        elif action.kind == "terminate":
            self.stop_reason = "terminate"
            self.answer = parsed.answer
        else:
            keys = (*state.repeat_keys, action.key())[-REPEAT_LIMIT:]
            new_state.repeat_keys = keys
            height, width = self.image.shape[:2]
            step.pixel = (normalized_to_pixel(action.x, width), normalized_to_pixel(action.y, height))
            if len(keys) == REPEAT_LIMIT and len(set(keys)) == 1:
                step.error = f"repeats the previous {REPEAT_LIMIT - 1} actions; not applied"
                self.stop_reason = "repeated_action"
            else:
                click = Click(step.pixel[0], step.pixel[1], action.kind == "positive")
                try:
                    tool_s = self._apply_click(click, state, new_state, step)
                except Exception as exc:
                    log.exception("segmentation tool failed")
                    return self._fail(started, f"segmentation tool failed: {exc}", policy_s, 0.0)
        return self._commit(step, new_state, started, policy_s, tool_s)

    def next_request(self) -> PolicyRequest:
        """What the policy will be shown on the next agent turn (for rollouts and audits)."""
        return self._request(self._states[-1])

    def cancel(self) -> None:
        """Ask a running ``run()``/``step()`` to stop; safe to call from any thread."""
        self._cancel.set()

    def close(self) -> None:
        """End the session: the tool forgets this image's embedding (memory goes back at once, not when
        newer images push it out). Call it when no run is in progress; the trace stays readable."""
        self.tool.release(self._image_key)

    # -- user --------------------------------------------------------------------------------------

    def add_click(self, x: int, y: int, positive: bool) -> Step:
        """A user correction at pixel (x, y); enters the same click history and updates the mask now."""
        height, width = self.image.shape[:2]
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"click ({x}, {y}) is outside the {width}x{height} image")
        started = time.perf_counter()
        state = self._states[-1]
        action = Action(
            "positive" if positive else "negative", pixel_to_normalized(x, width), pixel_to_normalized(y, height)
        )
        step = Step(turn=len(self.steps) + 1, source="user", action=action, pixel=(x, y), score=None, mask_area=0)
        new_state = _State(state.mask, state.logits, None)
        tool_s = self._apply_click(Click(x, y, positive), state, new_state, step)
        return self._commit(step, new_state, started, 0.0, tool_s)

    def undo(self) -> Step | None:
        """Take back the last step, agent or user; returns it, or None when there is nothing to undo."""
        if not self.steps:
            return None
        step = self.steps.pop()
        self._states.pop()
        self.undone.append(step)
        self.stop_reason = None
        self.answer = None
        return step

    # -- internals ---------------------------------------------------------------------------------

    def _initial_state(self) -> _State:
        if self._initial_mask is None:
            return _State(np.zeros(self.image.shape[:2], dtype=bool), None, None)
        logits = self.tool.mask_to_logits(self._initial_mask) if self._initial_mask.any() else None
        return _State(self._initial_mask, logits, None)

    def _reopen(self) -> None:
        self._cancel.clear()
        self.stop_reason = None
        self.answer = None

    def _request(self, state: _State) -> PolicyRequest:
        refinement = self._initial_mask is not None or any(s.click is not None for s in self._states)
        text = self.profile.user_text(self.instruction, refinement)
        if state.unparseable_streak:
            text = f"{text}\n{self.profile.format_reminder}"
        # states[0] is the starting point; states[i + 1] is what steps[i] left behind.
        history = [
            (self.profile.user_text(self.instruction, i > 0), st.sent_image, step.raw or "")
            for i, (step, st) in enumerate(zip(self.steps, self._states[1:], strict=True))
            if st.sent_image is not None
        ]
        return PolicyRequest(
            system_prompt=self.profile.system_prompt,
            user_text=text,
            image=self._renderer.render(state.mask),
            max_new_tokens=self.profile.max_new_tokens,
            max_pixels=self.profile.max_pixels,
            min_pixels=self.profile.min_pixels,
            history=history,
            mask=state.mask,
            clicks=tuple(self.clicks),
            case=self.case,
        )

    def _apply_click(self, click: Click, state: _State, new_state: _State, step: Step) -> float:
        """Run the tool on all clicks so far plus this one; fills ``new_state`` and ``step``."""
        tool_started = time.perf_counter()
        self.tool.set_image(self.image, key=self._image_key)
        result = self.tool.predict([*self.clicks, click], state.logits)
        new_state.mask, new_state.logits, new_state.click = result.mask, result.logits, click
        step.score = result.score
        step.mask_area = int(np.count_nonzero(result.mask))
        return time.perf_counter() - tool_started

    def _commit(self, step: Step, state: _State, started: float, policy_s: float, tool_s: float) -> Step:
        step.mask = state.mask
        if self.geometry is not None and step.pixel is not None:
            ijk = self.geometry.pixel_to_ijk(*step.pixel)
            step.ijk = tuple(int(v) for v in ijk)
            step.ras = tuple(float(v) for v in self.geometry.ijk_to_ras(ijk))
        total = time.perf_counter() - started
        step.timings_ms = {"policy": policy_s * 1e3, "tool": tool_s * 1e3, "loop": (total - policy_s - tool_s) * 1e3}
        self.steps.append(step)
        self._states.append(state)
        if self.on_step is not None:
            self.on_step(step)
        return step

    def _fail(self, started: float, message: str, policy_s: float, tool_s: float) -> Step:
        state = self._states[-1]
        step = Step(
            turn=len(self.steps) + 1,
            source="agent",
            action=None,
            pixel=None,
            score=None,
            mask_area=int(np.count_nonzero(state.mask)),
            error=message,
        )
        self.stop_reason = "error"
        return self._commit(step, _State(state.mask, state.logits, None, state.repeat_keys), started, policy_s, tool_s)
