"""One agent session on an MRML scene, for every front end: the desktop module (a Qt timer polls it) and the
web app (its event loop does). It checks a start request and refuses it with a message that says what to do,
opens the session on the voxel plane the view shows, continues the open session or starts a new one, keeps the
agent's view on the session's slice, and turns the driver's state into the view model both front ends render.
They keep only their widgets, their loop and what is theirs alone (the web's consent and demo models, the
desktop's dependency installs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from IBISAgentLib.workflow import BackendChoice, Event, Opened, SegmentPort, WorkflowDriver

from .record import MRMLRecord
from .volumes import align_view, show_slice, volume_case

SegmentRef = tuple[Any, str]  # (segmentation node, segment id)


@dataclass(frozen=True)
class StartRequest:
    """What the clinician chose when pressing Run, Step or Find. ``segment`` None: a new segment named after
    the instruction, where the front end can make one."""

    volume: Any
    slice_node: Any
    view_name: str
    segment: SegmentRef | None
    instruction: str
    max_turns: Any
    then: str = "run"
    find: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        """The session this request asks for: Step continues the open session only when it is this one."""
        segment = (self.segment[0].GetID(), self.segment[1]) if self.segment else None
        return (self.volume.GetID() if self.volume is not None else None, segment, self.view_name)


@dataclass(frozen=True)
class SessionView:
    """What a front end shows of the session: its status line, run controls, log, markers, propagation."""

    status: str = "Ready"
    busy: bool = False
    has_session: bool = False
    log: tuple[str, ...] = ()
    markers: tuple[dict[str, str], ...] = ()  # {label, source, ras}: as the views label them
    progress: tuple[int, int] | None = None  # propagation: slices done, total
    mask_area: int = 0  # the session's mask on the agent's slice, in pixels
    slice_where: str = ""  # "axial slice 57": the agent's slice, numbered as the views number it
    slice_count: int = 0  # slices along the agent's axis (the propagation range is 0 .. count - 1)
    slices: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # the last propagation: index, area, flags


class SessionController:
    def __init__(
        self,
        scene: Any,
        driver: WorkflowDriver,
        target_port: Callable[[Any, str, Any], SegmentPort],
        make_segment: Callable[[str], SegmentRef] | None = None,
    ) -> None:
        """``target_port`` makes the driver's port on (segmentation node, segment id, volume node): each front
        end writes through its own editor. ``make_segment`` adds a segment named after the instruction when
        none is chosen (without it, a segment must be chosen)."""
        self.scene, self.driver = scene, driver
        self.target_port, self.make_segment = target_port, make_segment
        self.record: MRMLRecord | None = None
        self.opened: tuple[Any, ...] | None = None  # the open session's request key
        self.agent_slice_node: Any = None
        self.agent_view_name: str | None = None

    # -- commands ----------------------------------------------------------------------------------

    def start(self, request: StartRequest, choice: BackendChoice) -> None:
        """Open a session as ``request`` says and run it (or its first step, or Find). Refused with a
        ValueError that says what to do; a refusal leaves the open session, segment, markers and log as they
        were (the driver is asked only once everything is checked)."""
        if request.volume is None:
            raise ValueError("Open or select a volume first.")
        instruction = request.instruction.strip()
        if not instruction:
            raise ValueError("Type what to segment in Instruction, for example 'segment the liver tumor'.")
        turns = whole_number(request.max_turns, "max turns")
        if request.slice_node is None:
            raise ValueError(f"The {request.view_name} view is not shown: choose a view that is in the layout.")
        if request.segment is None and self.make_segment is None:
            raise ValueError("Select the segment that receives the result.")
        self.driver.check_start(turns)
        align_view(request.slice_node, request.volume)  # a tilted volume: the view turns onto the voxel plane
        case, _ = volume_case(request.volume, request.slice_node)
        segment = request.segment or self.make_segment(instruction)
        target = self.target_port(segment[0], segment[1], request.volume)
        if self.record is None or self.record.scene is not self.scene:
            self.record = MRMLRecord(self.scene)
        self.driver.start(
            case, instruction, target, self.record, choice, then=request.then, max_turns=turns, find=request.find
        )
        self.opened = replace(request, segment=segment).key
        self.agent_slice_node, self.agent_view_name = request.slice_node, request.view_name

    def run_or_cancel(self, start: Callable[[], None]) -> None:
        """Run is Cancel while the agent works; otherwise ``start()``, the front end's way to a new session
        (its own checks first, then ``start(request, choice)``)."""
        if self.driver.state.busy:
            self.driver.cancel()
        else:
            start()

    def step_or_start(self, request: StartRequest, start: Callable[[], None]) -> None:
        """One more turn of the open session when ``request`` asks for it (same volume, segment and view);
        else ``start()`` opens a new one for its first turn."""
        if self.driver.has_session and request.key == self.opened:
            self.driver.step()
        else:
            start()

    def close(self) -> None:
        """The scene (or the volume) is going: end the session; nothing more is written."""
        self.driver.close(timeout=5.0)
        self.record = None
        self.opened = self.agent_slice_node = self.agent_view_name = None

    def poll(self, wait: float = 0.0) -> list[Event]:
        """Apply the driver's results; the agent's view follows the session to its slice (Find moves it)."""
        events = self.driver.poll(wait)
        if any(isinstance(e, Opened) for e in events):
            self.show_agent_slice()
        return events

    def show_agent_slice(self, index: int | None = None) -> str:
        """The agent's view shows the session's slice, or slice ``index`` of its axis; says which."""
        case = self.driver.case
        if case is None:
            raise ValueError("There is no agent session yet.")
        geometry = case.geometry if index is None else case.geometry.at(whole_number(index, "slice"))
        if self.agent_slice_node is not None and self.agent_slice_node.GetScene() is not None:
            show_slice(self.agent_slice_node, geometry)
        return f"{geometry.axis} slice {geometry.index}"

    # -- the view model ----------------------------------------------------------------------------

    def view(self, downloading: str = "") -> SessionView:
        """The session as the front ends show it; ``downloading`` (a model download's progress) is the
        status while the models load."""
        driver, state = self.driver, self.driver.state
        case, session = driver.case, driver.session
        return SessionView(
            status=downloading if state.busy and downloading else state.status,
            busy=state.busy,
            has_session=driver.has_session,
            log=tuple(state.log),
            markers=tuple(
                {"label": m.label, "source": m.source, "ras": ", ".join(f"{v:.1f}" for v in m.ras)}
                for m in state.markers
            ),
            progress=state.progress,
            mask_area=int(session.mask.sum()) if session is not None else 0,
            slice_where=f"{case.geometry.axis} slice {case.geometry.index}" if case is not None else "",
            slice_count=case.geometry.count if case is not None else 0,
            slices=tuple(state.slices),
        )


def whole_number(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"'{value}' is not a whole number ({what}).") from None
