"""Micro-batching: requests that arrive within a few milliseconds share one backbone forward pass.

One worker thread owns the model (it is not shared between threads). A job waits at most `window`
seconds for others to join it (or until `max_rows` rows are queued), but only while requests are seen to
arrive together (the last batch held several jobs, or more are already queued): a lone client pays no
window. The worker then runs all queued
score jobs as one `model.score` call and all feedback jobs as one `model.head_margins` call, and hands
each job its slice. Each result carries the seconds the batch spent in the model (`backbone_seconds`) and
the seconds the job waited for it (`queue_seconds`: the window and the batches before it).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Job:
    kind: str  # "score" (prompts, responses, contexts, users) or "margins" (prompts, chosen, rejected)
    rows: tuple[list, ...]
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.rows[0])


@dataclass
class Result:
    values: np.ndarray  # score: [n] rewards; margins: [n, K] per-head margins
    backbone_seconds: float
    batch_rows: int
    queue_seconds: float = 0.0  # from submit to the start of its batch's model call (window + earlier batches)


class Batcher:
    """Runs score / margin jobs on `model` in one worker thread, batching jobs that arrive together."""

    def __init__(self, model: Any, *, window: float = 0.005, max_rows: int = 256):
        self.model, self.window, self.max_rows = model, float(window), int(max_rows)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._together = False  # did the last batch hold several jobs?
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, *rows: list) -> Future:
        job = Job(kind, rows)
        if job.size == 0:
            job.future.set_result(Result(np.zeros((0,)), 0.0, 0))
        else:
            self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            wait = self.window if (self._together or not self._queue.empty()) else 0.0
            jobs, rows, deadline = [first], first.size, time.monotonic() + wait
            while rows < self.max_rows:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if wait else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                jobs.append(job)
                rows += job.size
            self._together = len(jobs) > 1
            for kind in ("score", "margins"):
                group = [j for j in jobs if j.kind == kind]
                if group:
                    self._run_group(kind, group)

    def _run_group(self, kind: str, jobs: list[Job]) -> None:
        columns = [sum((list(j.rows[c]) for j in jobs), []) for c in range(len(jobs[0].rows))]
        start = time.perf_counter()
        try:
            if kind == "score":
                prompts, responses, contexts, users = columns
                values = self.model.score(prompts, responses, contexts if any(c is not None for c in contexts) else None,
                                          users=users if any(u is not None for u in users) else None)
            else:
                values = self.model.head_margins(*columns)
        except Exception as exc:  # noqa: BLE001 (each job's caller gets the error)
            if len(jobs) > 1:  # one bad request must not fail the others batched with it
                for j in jobs:
                    self._run_group(kind, [j])
            else:
                jobs[0].future.set_exception(exc)
            return
        seconds, offset = time.perf_counter() - start, 0
        for j in jobs:
            j.future.set_result(Result(np.asarray(values[offset : offset + j.size]), seconds, len(values), start - j.submitted))
            offset += j.size
