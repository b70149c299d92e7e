"""Pipelined embedding of photo files: worker processes prepare faces, the main process embeds them.

Preparing a photo (read + decode, MTCNN detection, 5-point alignment onto the model's template)
costs more CPU than embedding its crop, and the two do not depend on each other across photos,
so :func:`embed_files` overlaps them:

* **Work units.** The photos are cut into *batches* of ``batch_size`` consecutive photos (the
  embedding batches, and the journal's unit), each cut into *units* of ``unit_size`` consecutive
  photos (the detection batches: the fast MTCNN engine runs R-/O-Net once per unit,
  :meth:`fuseface.align.mtcnn.MTCNN.detect_batch`). Both cuts depend only on the photos' indices,
  never on the number of workers or their timing, so the output does not either: it is the same
  bit for bit for any worker count at the same embedding thread count (another thread count
  changes the float rounding of the network, never which photos or crops are embedded).
* **Workers.** ``workers`` processes (``concurrent.futures.ProcessPoolExecutor``, start method
  ``forkserver`` by default on Linux: the workers never inherit the main process's OpenMP
  threads, which forking after torch has run a parallel op would break) each build the detector
  once and run :func:`prepare_photos` on the units they are given, with one torch / OpenCV /
  ONNX Runtime thread each. ``workers=0`` runs the same steps in the calling process (the
  serial baseline).
* **Bounded memory.** At most ``max_in_flight`` units are submitted and not yet collected; the
  main process collects them in index order (the head of a queue of futures), so results are
  reassembled by position whatever order the workers finish in. Only aligned crops cross the
  process boundary, never decoded photos.
* **Embedding.** When every unit of a batch is in, the main process embeds its crops in one call
  of :meth:`FaceModel.embed_aligned` (the model's own preprocessing, :mod:`fuseface.ops`) with its
  own torch threads (``threads``).
* **Journal and resume.** With ``journal=DIR`` each finished batch is written to
  ``DIR/batch-NNNNNN.npz`` through a temporary file, ``fsync`` and an atomic rename: a batch file
  is complete or absent. ``DIR/run.json`` fingerprints the run (photo list, model weights and
  metadata, options); a run started again with the same arguments reads the batches already
  there (a file that does not load is redone) and computes only the rest, which gives exactly the
  output of an uninterrupted run, because every batch is computed from the same photos in the
  same way. A journal written by a run with other arguments is refused, never silently reused.

Failures (unreadable file, no face, not a crop where ``detect=False``) are per photo: the row is
NaN and the reason is kept (:attr:`EmbedResult.errors`, also stored in the journal so a resumed
run reports them as well).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuseface.errors import ConfigError, DataError
from fuseface.parallel import default_start_method, init_worker_with, ordered_map, process_context, worker_resource

if TYPE_CHECKING:
    from fuseface.align.detector import FaceDetector
    from fuseface.align.pipeline import AlignedFace
    from fuseface.infer.embedder import EmbedResult, FaceModel

#: Photos per detection call (R-/O-Net are batched across the photos of one unit).
UNIT_SIZE = 8
JOURNAL_FORMAT = 1
RUN_FILE = "run.json"


@dataclass
class PreparedPhoto:
    """What preparing one input gave: its aligned crop and the face it came from, or an error."""

    crop: np.ndarray | None
    face: AlignedFace | None = None
    error: str = ""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Worker processes for :func:`embed_files`: three quarters of the usable cores, rounded (at
    least 1). Preparing a photo costs about three times the CPU of embedding its crop with the
    dlib ResNet (``benchmarks/embed_pipeline.py``), so this share keeps both sides busy; on 2
    cores it gives 2 workers and the embedding shares the cores with them."""
    return max(1, int(usable_cores() * 3 / 4 + 0.5))


def default_embed_threads(workers: int) -> int:
    """Torch threads of the embedding process next to ``workers`` workers: the cores they leave
    (at least 1)."""
    return max(1, usable_cores() - workers)


def _as_image(item: Any) -> tuple[str, np.ndarray]:
    """``(name, uint8 H x W x 3 RGB)`` of a path (read with :func:`fuseface.align.pipeline.read_photo`)
    or an array; raises :class:`DataError` naming the input."""
    from fuseface.align.pipeline import read_photo

    name = str(item) if isinstance(item, (str, Path)) else "<array>"
    image = read_photo(item) if isinstance(item, (str, Path)) else np.asarray(item)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise DataError(f"{name}: expected a uint8 H x W x 3 RGB image, got {image.dtype} {image.shape}")
    return name, image[:, :, :3]


def prepare_photos(
    items: Sequence[Any],
    detector: FaceDetector | Callable[[], FaceDetector],
    size: int,
    template: str,
    detect: bool | None = None,
    policy: str = "largest",
) -> list[PreparedPhoto]:
    """Inputs (paths or uint8 RGB arrays) -> one :class:`PreparedPhoto` each, in order.

    An input that is already a ``size`` square crop is taken as is unless ``detect=True``
    (``detect=False``: every input must be one). The others are detected together, one
    ``detector.detect_batch`` call when the detector has it, and the face chosen by ``policy``
    (:func:`fuseface.align.detector.select_faces`) is aligned onto ``template``
    (:func:`fuseface.align.pipeline.align_detections`). ``detector`` may be a zero-argument
    factory, called only when some input needs detection. Errors never raise: they are recorded.
    """
    from fuseface.align.detector import as_detector, detect_all
    from fuseface.align.pipeline import align_detections

    out: list[PreparedPhoto] = [PreparedPhoto(None) for _ in items]
    to_detect: list[tuple[int, str, np.ndarray]] = []
    for i, item in enumerate(items):
        try:
            name, image = _as_image(item)
        except DataError as exc:
            out[i].error = str(exc)
            continue
        is_crop = image.shape[0] == size and image.shape[1] == size
        if detect is False or (detect is None and is_crop):
            if is_crop:
                out[i].crop = np.ascontiguousarray(image)
            else:
                out[i].error = f"{name}: not a {size}x{size} aligned crop (shape {image.shape}); use detect=True"
            continue
        to_detect.append((i, name, image))
    if not to_detect:
        return out
    dets = detect_all(as_detector(detector), [image for _, _, image in to_detect])
    for (i, name, image), det in zip(to_detect, dets, strict=True):
        faces = align_detections(image, det, policy=policy, size=size, template=template)
        if faces:
            out[i].crop, out[i].face = faces[0].crop, faces[0]
        else:
            out[i].error = f"{name}: no face detected"
    return out


# -- worker processes ----------------------------------------------------------------------------
def _prepare_unit(paths: list[str], size: int, template: str, detect: bool | None, policy: str) -> list[PreparedPhoto]:
    """A worker's unit: :func:`prepare_photos` with its detector (:func:`fuseface.parallel.worker_resource`)."""
    return prepare_photos(paths, worker_resource, size, template, detect=detect, policy=policy)


# -- journal --------------------------------------------------------------------------------------
def _run_fingerprint(model: FaceModel, paths: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a journal to be resumed: the photo list, the model
    (:func:`fuseface.infer.model_file.model_fingerprint`), the options."""
    from fuseface.infer.model_file import model_fingerprint

    photos = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return {
        "format": JOURNAL_FORMAT,
        "photos": len(paths),
        "photo_list": photos,
        "model": model_fingerprint(model.net, model.meta),
        "options": options,
    }


def _open_journal(journal: Path, fingerprint: dict[str, Any]) -> None:
    journal.mkdir(parents=True, exist_ok=True)
    run_file = journal / RUN_FILE
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            previous = None  # torn by a crash before any batch could be written under it
        if previous is not None and previous != fingerprint:
            raise ConfigError(
                f"{journal}: partial results of a run with other arguments (photos, model or options); "
                "run again with the same arguments, or delete it to start over"
            )
    for stale in journal.glob(".tmp-*"):
        stale.unlink()
    _atomic_write(run_file, json.dumps(fingerprint, indent=1, sort_keys=True).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _batch_file(journal: Path, k: int) -> Path:
    return journal / f"batch-{k:06d}.npz"


@dataclass
class _Batch:
    """The results of one batch of photos (rows of failed photos are NaN / empty strings)."""

    embeddings: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    errors: np.ndarray

    def save(self, path: Path) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, embeddings=self.embeddings, boxes=self.boxes, scores=self.scores, errors=self.errors)
        _atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, count: int) -> _Batch | None:
        """The batch stored at ``path``, or None when it is absent or does not hold ``count`` rows."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                batch = cls(z["embeddings"], z["boxes"], z["scores"], z["errors"])
        except Exception:  # a file that does not load as a batch is recomputed
            return None
        if not all(len(a) == count for a in (batch.embeddings, batch.boxes, batch.scores, batch.errors)):
            return None
        return batch


# -- the pipeline ---------------------------------------------------------------------------------
def _units(start: int, stop: int, unit_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + unit_size, stop)) for a in range(start, stop, unit_size)]


def _iter_prepared(
    paths: Sequence[str],
    todo: list[tuple[int, int]],
    prepare: Callable[[list[str]], list[PreparedPhoto]],
    executor: ProcessPoolExecutor | None,
    unit_size: int,
    max_in_flight: int,
) -> Iterator[tuple[int, list[PreparedPhoto]]]:
    """Yield ``(position in todo, prepared photos of that batch)`` in order, each as soon as its
    last unit is in; at most ``max_in_flight`` units are submitted and not yet collected
    (:func:`fuseface.parallel.ordered_map`; ``executor=None``: prepared here, unit by unit)."""
    units = [list(paths[a:z]) for start, stop in todo for a, z in _units(start, stop, unit_size)]
    broken = "a detection worker process died; the batches written so far are kept: run again to resume"
    prepared = chain.from_iterable(ordered_map(prepare, units, executor, max_in_flight, broken))
    for b, (start, stop) in enumerate(todo):
        yield b, list(islice(prepared, stop - start))


def embed_files(
    model: FaceModel,
    paths: Sequence[str | Path],
    *,
    workers: int | None = None,
    batch_size: int = 64,
    flip: bool = False,
    detect: bool | None = None,
    policy: str = "largest",
    journal: str | Path | None = None,
    progress: bool = False,
    threads: int | None = None,
    detector: Callable[[], FaceDetector] | None = None,
    unit_size: int = UNIT_SIZE,
    max_in_flight: int | None = None,
    start_method: str | None = None,
    limit_batches: int | None = None,
) -> EmbedResult | None:
    """Embed photo files with detection in worker processes (see the module docstring).

    Args:
        workers: detection processes (default :func:`default_workers`); 0 runs everything here.
        batch_size: photos per embedding batch and per journal file.
        journal: folder for the incremental results (resume); None keeps everything in memory.
        threads: torch threads of the embedding (this) process during the run (default: unchanged
            with ``workers=0``, else :func:`default_embed_threads`).
        detector: zero-argument factory of the face detector, picklable (default: the registry's
            ``mtcnn`` with its default settings, :class:`fuseface.align.mtcnn.MTCNN`).
        max_in_flight: units submitted to the workers and not yet collected (default: one batch's
            worth plus two per worker); bounds the memory.
        limit_batches: compute at most this many new batches, then stop and return None (as an
            interruption would; the journal keeps them).

    Returns:
        An :class:`EmbedResult` with one row per path in order, or None when ``limit_batches``
        stopped the run early.
    """
    import torch

    from fuseface.infer.embedder import EmbedResult

    if batch_size < 1 or unit_size < 1:
        raise ConfigError(f"batch_size and unit_size must be >= 1, got {batch_size} and {unit_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    names = [str(p) for p in paths]
    n = len(names)
    detector = detector or partial(_create_default_detector)
    size, template = model.input_size, model.template
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    done: dict[int, _Batch] = {}
    jdir = Path(journal) if journal is not None else None
    if jdir is not None:
        options = {
            "batch_size": batch_size,
            "unit_size": unit_size,
            "flip": flip,
            "detect": detect,
            "policy": policy,
            "detector": _describe(detector),
        }
        _open_journal(jdir, _run_fingerprint(model, names, options))
        for k, (a, z) in enumerate(bounds):
            stored = _Batch.load(_batch_file(jdir, k), z - a)
            if stored is not None:
                done[k] = stored
    todo_ids = [k for k in range(len(bounds)) if k not in done]
    if limit_batches is not None:
        todo_ids = todo_ids[: max(0, limit_batches)]
    todo = [bounds[k] for k in todo_ids]

    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=sum(len(b.errors) for b in done.values()), desc="embedding", unit="photo")
    old_threads = torch.get_num_threads()
    if threads is None and workers > 0 and todo:
        threads = default_embed_threads(workers)
    if threads is not None:
        torch.set_num_threads(int(threads))
    executor: ProcessPoolExecutor | None = None
    dim: int | None = next((b.embeddings.shape[1] for b in done.values()), None)
    try:
        if workers > 0 and todo:
            ctx = _context(start_method or default_start_method())
            executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker_with, initargs=(detector,))
            prepare: Callable[[list[str]], list[PreparedPhoto]] = partial(
                _prepare_unit, size=size, template=template, detect=detect, policy=policy
            )
        else:
            prepare = partial(
                prepare_photos, detector=_lazy(detector), size=size, template=template, detect=detect, policy=policy
            )
        in_flight = max_in_flight or (-(-batch_size // unit_size) + 2 * max(workers, 1))
        for b, prepared in _iter_prepared(names, todo, prepare, executor, unit_size, in_flight):
            k = todo_ids[b]
            batch, dim = _embed_batch(model, prepared, flip, batch_size, dim)
            if jdir is not None:
                batch.save(_batch_file(jdir, k))
            done[k] = batch
            if bar is not None:
                bar.update(len(prepared))
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        torch.set_num_threads(old_threads)
    if len(done) < len(bounds):
        return None
    batches = [done[k] for k in range(len(bounds))]
    if dim is None:
        dim = _embedding_dim(model)
    emb = np.concatenate([b.embeddings for b in batches]) if batches else np.zeros((0, dim), np.float32)
    errors = np.concatenate([b.errors for b in batches]) if batches else np.zeros((0,), str)
    boxes = np.concatenate([b.boxes for b in batches]) if batches else np.zeros((0, 4), np.float32)
    scores = np.concatenate([b.scores for b in batches]) if batches else np.zeros((0,), np.float32)
    result = EmbedResult(emb, np.linalg.norm(emb, axis=1))
    result.errors = {i: str(e) for i, e in enumerate(errors) if e}
    result.boxes = [None if np.isnan(bx).any() else bx for bx in boxes]
    result.scores = [None if np.isnan(s) else float(s) for s in scores]
    return result


def output_path(out: str | Path) -> Path:
    """The file ``np.savez(out, ...)`` writes: ``out`` itself when it ends in ``.npz``, else ``out.npz``."""
    out = Path(out)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def journal_for(out: str | Path) -> Path:
    """The journal folder of an output file: ``OUT.parts`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def save_embeddings(out: str | Path, result: EmbedResult, paths: Sequence[str | Path]) -> Path:
    """Write the ``embed`` output, atomically: ``embeddings`` (N, D) float32 un-normalised (NaN rows
    for failed photos), ``norms`` (N,), ``paths`` (N,) str and ``ok`` (N,) bool."""
    import io

    out = output_path(out)
    buf = io.BytesIO()
    np.savez(
        buf,
        embeddings=result.embeddings,
        norms=result.norms,
        paths=np.asarray([str(p) for p in paths]),
        ok=result.ok,
    )
    _atomic_write(out, buf.getvalue())
    return out


def remove_journal(journal: str | Path) -> None:
    """Delete a journal folder written by :func:`embed_files` (after its output was saved)."""
    journal = Path(journal)
    if (journal / RUN_FILE).is_file():
        shutil.rmtree(journal)


def _describe(factory: Callable[..., Any]) -> str:
    """A stable name of a detector factory (module, qualified name and bound arguments)."""
    if isinstance(factory, partial):
        return f"{_describe(factory.func)}{factory.args!r}{sorted(factory.keywords.items())!r}"
    return f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', type(factory).__name__)}"


#: Imported once by the fork server, so that each worker forked from it starts without importing
#: them again (importing starts no threads; the nets are built in each worker).
_PRELOAD = ("fuseface.infer.pipeline", "fuseface.align.mtcnn", "fuseface.align.mtcnn_fast", "onnxruntime", "cv2")


def _context(method: str) -> Any:
    return process_context(method, _PRELOAD)


def _create_default_detector() -> FaceDetector:
    from fuseface.align.detector import create_detector

    return create_detector("mtcnn")


def _lazy(factory: Callable[[], FaceDetector]) -> Callable[[], FaceDetector]:
    """The factory, calling the real one once and keeping its detector (for the in-process mode)."""
    cache: list[FaceDetector] = []

    def get() -> FaceDetector:
        if not cache:
            cache.append(factory())
        return cache[0]

    return get


def _embedding_dim(model: FaceModel) -> int:
    size = model.input_size
    feats, _ = model.embed_aligned(np.zeros((1, size, size, 3), np.uint8))
    return int(feats.shape[1])


def _embed_batch(
    model: FaceModel, prepared: list[PreparedPhoto], flip: bool, batch_size: int, dim: int | None
) -> tuple[_Batch, int]:
    good = [i for i, p in enumerate(prepared) if p.crop is not None]
    if good:
        feats, _ = model.embed_aligned(np.stack([prepared[i].crop for i in good]), batch_size=batch_size, flip=flip)
        dim = int(feats.shape[1])
    elif dim is None:
        dim = _embedding_dim(model)
    n = len(prepared)
    emb = np.full((n, dim), np.nan, dtype=np.float32)
    if good:
        emb[good] = feats
    boxes = np.full((n, 4), np.nan, dtype=np.float32)
    scores = np.full((n,), np.nan, dtype=np.float32)
    for i, p in enumerate(prepared):
        if p.face is not None:
            boxes[i] = p.face.box[:4]
            scores[i] = p.face.score
    errors = np.asarray([p.error for p in prepared], dtype=str)
    return _Batch(emb, boxes, scores, errors), dim
