"""The clinician's workflow, free of any UI toolkit: one driver that the desktop module, its Segment Editor
effect and the web app all render, over ports that each front end implements for its own scene."""

from .choice import BackendChoice
from .driver import DriverBusy, DriverState, WorkflowDriver
from .events import Event, Failed, Finished, Idle, Opened, Progressed, Propagated, Reverted, SliceChanged, TraceReady
from .markers import COLORS, Marker, markers_of
from .ports import RecordPort, SegmentPort

__all__ = [
    "COLORS",
    "BackendChoice",
    "DriverBusy",
    "DriverState",
    "Event",
    "Failed",
    "Finished",
    "Idle",
    "Marker",
    "Opened",
    "Progressed",
    "Propagated",
    "RecordPort",
    "Reverted",
    "SegmentPort",
    "SliceChanged",
    "TraceReady",
    "WorkflowDriver",
    "markers_of",
]
