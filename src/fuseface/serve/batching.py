"""A short queue that groups concurrent embedding requests into one model call.

Request threads :meth:`BatchQueue.submit` their decoded images and wait on a future; one worker
thread takes whatever is queued — up to ``max_batch`` images, waiting at most ``max_wait_ms`` after
the first one for more to arrive — and runs the embedding function once over all of them, then
hands every request its own rows. The model therefore sees batches whose size follows the load,
and is only ever called from one thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``fn(images) -> (features (n, D), styles (n, C, 2) or None, detector scores, {row: reason})``
EmbedFn = Callable[[Sequence[Any]], tuple[np.ndarray, np.ndarray | None, list[float | None], dict[int, str]]]


@dataclass
class Embedded:
    """One request's share of a batch."""

    features: np.ndarray
    styles: np.ndarray | None
    scores: list[float | None]
    errors: dict[int, str]


class BatchQueue:
    """Group images of concurrent requests into batches for ``fn`` (see the module docstring)."""

    def __init__(self, fn: EmbedFn, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[tuple[list[Any], Future[Embedded]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fuseface-batcher", daemon=True)
        self.batches = 0
        self.images = 0
        self._thread.start()

    def submit(self, images: Sequence[Any]) -> Future[Embedded]:
        future: Future[Embedded] = Future()
        self._queue.put((list(images), future))
        return future

    def embed(self, images: Sequence[Any], timeout: float | None = 120.0) -> Embedded:
        return self.submit(images).result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            count = len(first[0])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                jobs.append(job)
                count += len(job[0])
            self._process(jobs)

    def _process(self, jobs: list[tuple[list[Any], Future[Embedded]]]) -> None:
        images = [im for imgs, _ in jobs for im in imgs]
        try:
            feats, styles, scores, errors = self.fn(images)
        except BaseException as exc:  # handed to the waiting requests; the worker keeps running
            for _, future in jobs:
                future.set_exception(exc)
            return
        self.batches += 1
        self.images += len(images)
        start = 0
        for imgs, future in jobs:
            stop = start + len(imgs)
            future.set_result(
                Embedded(
                    feats[start:stop],
                    None if styles is None else styles[start:stop],
                    scores[start:stop],
                    {i - start: msg for i, msg in errors.items() if start <= i < stop},
                )
            )
            start = stop
