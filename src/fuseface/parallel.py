"""Worker processes that prepare work for the main process: the ordered, bounded map they share.

:func:`fuseface.infer.pipeline.embed_files` (detection and alignment) and
:func:`fuseface.infer.extract_features.extract_features` (decoding and augmentation) both cut
their inputs into small work units that depend only on the inputs' positions, compute the units
in a ``concurrent.futures.ProcessPoolExecutor`` and consume the results in input order in the
main process, which does the batched network work. :func:`ordered_map` is that loop:

* at most ``max_in_flight`` units are submitted and not yet collected, which bounds the memory of
  the results waiting for the main process (workers that run ahead stop at the bound);
* results are collected from the head of a queue of futures, so they come out in input order
  whatever order the workers finish in, and the output is the same as mapping in-process;
* a worker that dies (killed, out of memory) breaks the pool: the ``BrokenProcessPool`` becomes
  one :class:`fuseface.errors.FusefaceError` line, since what the caller already wrote is kept
  and running again resumes from it.

The pools use the ``forkserver`` start method where the platform has it (:func:`process_context`):
workers never inherit the main process's OpenMP threads, which forking after torch has run a
parallel op would break, and the modules named in ``preload`` are imported once by the fork server
instead of in every worker. :func:`init_worker_process` gives each worker one torch and one OpenCV
thread, so that ``N`` workers use ``N`` cores.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, TypeVar

from fuseface.errors import FusefaceError

__all__ = [
    "default_start_method",
    "init_worker_process",
    "init_worker_with",
    "ordered_map",
    "process_context",
    "worker_resource",
]

T = TypeVar("T")
R = TypeVar("R")


def default_start_method() -> str:
    """``forkserver`` where the platform has it (Linux), else ``spawn``."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def process_context(method: str, preload: Sequence[str] = ()) -> Any:
    """The multiprocessing context of ``method``; for ``forkserver`` the fork server imports the
    installed ones of the ``preload`` modules (importing starts no threads). The fork server is
    started once per process, so the preload list of its first use is the one that counts."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        import importlib.util

        ctx.set_forkserver_preload([m for m in preload if importlib.util.find_spec(m.split(".")[0]) is not None])
    return ctx


def init_worker_process() -> None:
    """Start of a worker: one thread for torch and OpenCV (ONNX Runtime follows torch's count, see
    :mod:`fuseface.align.mtcnn_fast`); Ctrl-C is left to the main process, which shuts the
    workers down."""
    import signal

    import cv2
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


_RESOURCE: dict[str, Any] = {}


def init_worker_with(factory: Callable[[], Any]) -> None:
    """Worker initialiser (``ProcessPoolExecutor(initializer=init_worker_with, initargs=(factory,))``):
    :func:`init_worker_process`, then keep ``factory`` (picklable, zero arguments: e.g. a face
    detector class) for :func:`worker_resource`, which builds its object on first need."""
    init_worker_process()
    _RESOURCE["factory"] = factory
    _RESOURCE["built"] = None


def worker_resource() -> Any:
    """The object of this worker's factory (:func:`init_worker_with`), built once per process."""
    if _RESOURCE.get("built") is None:
        _RESOURCE["built"] = _RESOURCE["factory"]()
    return _RESOURCE["built"]


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    executor: Executor | None = None,
    max_in_flight: int = 1,
    broken: str = "a worker process died; run again to resume",
) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in order.

    Without an ``executor`` each result is computed here when it is asked for (the serial path,
    the same results). With one, ``max_in_flight`` items are submitted up front and one more each
    time a result is collected (from the head of the queue, so in order); ``fn`` and the items
    must then be picklable. An exception raised by ``fn`` is raised here, at its item's turn; a
    broken process pool raises :class:`FusefaceError` with the one-line message ``broken``. When
    the consumer stops early (closes the generator), the futures not started yet are cancelled.
    """
    if executor is None:
        yield from map(fn, items)
        return
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    source = iter(items)
    pending: deque[Future[R]] = deque(executor.submit(fn, item) for item in islice(source, max_in_flight))
    try:
        while pending:
            try:
                result = pending.popleft().result()
            except BrokenProcessPool as exc:
                raise FusefaceError(f"{broken} ({exc})") from exc
            pending.extend(executor.submit(fn, item) for item in islice(source, 1))
            yield result
    finally:
        for future in pending:
            future.cancel()
