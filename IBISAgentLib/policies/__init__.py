"""Policies turn a conversation turn into model text: a local Qwen2.5-VL, an OpenAI-compatible
endpoint, or replayed outputs. Each module imports its heavy dependencies only when instantiated."""

from .errors import PolicyError
from .replay import ReplayPolicy

__all__ = ["PolicyError", "ReplayPolicy"]
