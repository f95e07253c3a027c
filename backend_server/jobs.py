"""Model work runs one job at a time on one worker thread, fed by a bounded queue."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class QueueFull(Exception):
    pass


class ModelWorker:
    def __init__(self, max_queue: int) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="ibisagent-model-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue ``job``; raises QueueFull when the queue is at its limit."""
        future: Future = Future()
        try:
            self._jobs.put_nowait((job, future))
        except queue.Full:
            raise QueueFull() from None
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while (item := self._jobs.get()) is not None:
            _run(*item)
            # Else the last job (a closed session's close, and with it the session and its volume) stays
            # referenced from this frame while the worker waits for the next one.
            del item


def _run(job: Callable[[], Any], future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(job())
    except BaseException as exc:  # the submitter reads it from the future and answers for it
        future.set_exception(exc)
