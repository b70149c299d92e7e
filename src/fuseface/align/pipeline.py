"""Photos to aligned crops: read, detect, choose faces, align, write; resumable.

``align_folder(src, dst)`` walks a folder (or reads a list file of paths), and for every photo
writes the aligned 112x112 crop(s) to ``dst`` under the same relative path, mirroring the tree.
Beside the crops:

* ``faces.jsonl`` — one JSON line per source photo, appended as the run goes (``source``,
  ``status`` ``ok``/``failed``, ``reason``, and per face ``output``, ``box``, ``score``,
  ``landmarks``); it is also the resume journal: photos already recorded are skipped;
* ``faces.csv`` — the same faces as a table (rewritten at the end of each run);
* ``failures.txt`` — ``source<TAB>reason`` for unreadable photos and photos with no face.

Several faces: ``policy="largest"`` (default), ``"central"`` (nearest the image centre) or
``"all"`` (crops named ``stem_0``, ``stem_1`` ...). A crash loses at most the photo in progress:
its crop is rewritten on the next run because its journal line was not yet written.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.align.detector import FaceDetector, LandmarkFile, as_detector, detect_all, is_detector, select_faces
from fuseface.align.mtcnn import Detections
from fuseface.align.similarity import align_face
from fuseface.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, read_image, swap_red_blue
from fuseface.errors import ConfigError, DataError


def read_photo(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read any photo as uint8 H x W x 3 **RGB**: :func:`fuseface.data.images.read_image` (grey and
    RGBA converted, GIF via Pillow; a :class:`DataError` naming the file when it is missing,
    undecodable or larger than ``max_pixels``)."""
    return read_image(path, "rgb", max_pixels=max_pixels)


@dataclass
class AlignedFace:
    """One aligned crop and where it came from."""

    crop: np.ndarray
    box: np.ndarray
    score: float
    landmarks: np.ndarray


def align_detections(
    image: np.ndarray, det: Detections, policy: str = "largest", size: int = 112, template: str = "arcface"
) -> list[AlignedFace]:
    """Align the faces chosen by ``policy`` from a detection result onto a named template."""
    return [
        AlignedFace(
            align_face(image, det.landmarks[i], size, template), det.boxes[i], float(det.scores[i]), det.landmarks[i]
        )
        for i in select_faces(det, image.shape, policy)
    ]


def list_photos(src: str | Path) -> tuple[Path, list[Path]]:
    """``(root, relative paths)`` of the photos under a folder (recursive, sorted), or of the paths
    listed one per line in a text file (absolute, or relative to the list file's folder; ``root`` is
    then their deepest common folder). Files without an extension are included (Yale's GIFs have
    none); unreadable ones end in the failures file."""
    src = Path(src)
    if src.is_dir():
        rels = [
            p.relative_to(src)
            for p in sorted(src.rglob("*"))
            if p.is_file()
            and (p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix == "")
            and not p.name.startswith(".")
            and p.name not in ("README", "LICENSE")
        ]
        return src, rels
    if src.is_file():
        entries = []
        for line in src.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                entries.append((p if p.is_absolute() else src.parent / p).resolve())
        if not entries:
            return src.parent, []
        # root = the deepest folder holding every listed photo, so outputs mirror the tree below it
        root = Path(os.path.commonpath([str(e.parent) for e in entries]))
        return root, [e.relative_to(root) for e in entries]
    raise DataError(f"{src}: neither a folder nor a list file")


@dataclass
class AlignReport:
    """What one ``align_folder`` run did."""

    processed: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _output_names(rel: Path, count: int, ext: str) -> list[Path]:
    stem = rel.with_suffix("") if rel.suffix.lower() in IMAGE_EXTENSIONS else rel
    if count == 1:
        return [stem.with_name(stem.name + ext)]
    return [stem.with_name(f"{stem.name}_{k}{ext}") for k in range(count)]


def _safe_output(dst: Path, out_rel: Path, source: Path) -> Path:
    """``dst / out_rel``, refusing anything outside ``dst`` or equal to the source photo (a crop
    must never overwrite an input)."""
    out = (dst / out_rel).resolve()
    if out.is_absolute() and not out.is_relative_to(dst.resolve()):
        raise DataError(f"{out_rel}: output would fall outside {dst}")
    if out == source.resolve():
        raise DataError(f"{source}: output would overwrite the input photo")
    return out


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that photo is simply redone
            records[rec["source"]] = rec
    return records


def read_face_journal(path: str | Path) -> dict[str, np.ndarray]:
    """The 5 landmarks of the first face of every photo in a ``faces.jsonl`` written by
    :func:`align_folder` (keys: the photos' paths relative to the aligned folder's source root)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: landmark journal not found")
    return {
        src: np.asarray(rec["faces"][0]["landmarks"], dtype=np.float64)
        for src, rec in _read_journal(path).items()
        if rec.get("status") == "ok" and rec.get("faces")
    }


def _write_tables(dst: Path, records: dict[str, dict[str, Any]]) -> None:
    with open(dst / "faces.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["source", "output", "score", "x1", "y1", "x2", "y2"]
        header += [f"{a}{i}" for i in range(1, 6) for a in ("lx", "ly")]
        writer.writerow(header)
        for rec in sorted(records.values(), key=lambda r: r["source"]):
            for face in rec.get("faces", []):
                lmk = [round(v, 3) for pt in face["landmarks"] for v in pt]
                writer.writerow([rec["source"], face["output"], face["score"], *face["box"], *lmk])
    with open(dst / "failures.txt", "w") as fh:
        for rec in sorted(records.values(), key=lambda r: r["source"]):
            if rec["status"] != "ok":
                fh.write(f"{rec['source']}\t{rec['reason']}\n")


def iter_detections(
    root: Path, rels: list[Path], detector: FaceDetector | None, landmarks: LandmarkFile | None
) -> Iterator[tuple[Path, np.ndarray | None, Detections | None, str]]:
    """Yield ``(rel, image, detections, error)`` per photo; errors never stop the iteration."""
    for rel in rels:
        try:
            image = read_photo(root / rel)
            det = landmarks.lookup(str(rel)) if landmarks is not None else detector.detect(image)  # type: ignore[union-attr]
        except DataError as exc:
            yield rel, None, None, str(exc)
            continue
        yield rel, image, det, ""


#: Photos per detection call of :func:`align_folder` (the fast MTCNN batches R-/O-Net across them).
ALIGN_UNIT = 8


def detect_and_align(
    paths: list[str], detector: FaceDetector, policy: str, size: int
) -> list[tuple[list[AlignedFace], str]]:
    """``(aligned faces, error)`` per photo of one unit: read them, detect them together
    (``detector.detect_batch`` where it exists) and align the faces ``policy`` chooses."""
    images: list[np.ndarray] = []
    out: list[tuple[list[AlignedFace], str]] = []
    for path in paths:
        try:
            images.append(read_photo(path))
            out.append(([], ""))
        except DataError as exc:
            out.append(([], str(exc)))
    dets = iter(detect_all(detector, images))
    pictures = iter(images)
    for k, (_, error) in enumerate(out):
        if not error:
            out[k] = (align_detections(next(pictures), next(dets), policy, size), "")
    return out


def _detect_and_align_in_worker(paths: list[str], policy: str, size: int) -> list[tuple[list[AlignedFace], str]]:
    from fuseface.parallel import worker_resource

    return detect_and_align(paths, worker_resource(), policy, size)


def _aligned_photos(
    root: Path,
    todo: list[Path],
    detector: FaceDetector | Callable[[], FaceDetector] | None,
    landmarks: LandmarkFile | None,
    policy: str,
    size: int,
    workers: int,
) -> Iterator[tuple[Path, list[AlignedFace], str]]:
    """``(rel, aligned faces, error)`` per photo, in order: landmark lookups, or detection in
    units of :data:`ALIGN_UNIT` photos, here or in ``workers`` processes
    (:func:`fuseface.parallel.ordered_map`)."""
    if landmarks is not None:
        for rel, image, det, error in iter_detections(root, todo, None, landmarks):
            faces = align_detections(image, det, policy, size) if image is not None and det is not None else []
            yield rel, faces, error
        return
    units = [todo[a : a + ALIGN_UNIT] for a in range(0, len(todo), ALIGN_UNIT)]
    if not units:
        return
    from fuseface.align.mtcnn import MTCNN

    source = detector or MTCNN
    paths = ([str(root / r) for r in unit] for unit in units)
    if workers == 0:
        found = as_detector(source)
        done = (detect_and_align(p, found, policy, size) for p in paths)
        for unit, results in zip(units, done, strict=True):
            yield from ((rel, faces, error) for rel, (faces, error) in zip(unit, results, strict=True))
        return
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from fuseface.parallel import default_start_method, init_worker_with, ordered_map, process_context

    if is_detector(source):
        raise ConfigError("align_folder: workers > 0 needs a detector factory (a class or a function), not a detector")
    ctx = process_context(default_start_method(), _PRELOAD)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker_with, initargs=(source,)) as pool:
        fn = partial(_detect_and_align_in_worker, policy=policy, size=size)
        broken = "a detection worker process died; the photos already in faces.jsonl are kept: run again to resume"
        done = ordered_map(fn, paths, pool, max_in_flight=4 * workers, broken=broken)
        for unit, results in zip(units, done, strict=True):
            yield from ((rel, faces, error) for rel, (faces, error) in zip(unit, results, strict=True))


#: Imported once by the fork server of the detection workers (see :mod:`fuseface.parallel`).
_PRELOAD = ("fuseface.align.pipeline", "fuseface.align.mtcnn", "fuseface.align.mtcnn_fast", "onnxruntime", "cv2")


def align_folder(
    src: str | Path,
    dst: str | Path,
    detector: FaceDetector | Callable[[], FaceDetector] | None = None,
    policy: str = "largest",
    size: int = 112,
    ext: str = ".jpg",
    landmarks: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    workers: int = 0,
) -> AlignReport:
    """Align every photo under ``src`` into ``dst`` (see the module docstring); resumable.

    Args:
        detector: a detector, or a zero-argument factory of one (a class such as
            ``functools.partial(MTCNN, min_face_size=40)``); default :class:`fuseface.align.mtcnn.MTCNN`
            (unless ``landmarks`` is given).
        landmarks: a landmark file (:class:`LandmarkFile`) used instead of a detector.
        limit: process at most this many new photos (then stop, as an interruption would).
        workers: detection processes (one thread each; ``detector`` must then be a picklable
            factory or None); 0 detects here. Photos are detected in units of :data:`ALIGN_UNIT`
            either way, and the crops and the journal are written here, in photo order, so the
            output and resuming do not depend on ``workers``.
    """
    import cv2

    root, rels = list_photos(src)
    dst = Path(dst)
    dst_abs = dst.resolve()
    rels = [r for r in rels if not (root / r).resolve().is_relative_to(dst_abs)]  # DST inside SRC
    dst.mkdir(parents=True, exist_ok=True)
    journal_path = dst / "faces.jsonl"
    (dst / SOURCE_FILE).write_text(str(root.resolve()) + "\n")
    records = _read_journal(journal_path)
    todo = [r for r in rels if str(r) not in records]
    report = AlignReport(skipped=len(rels) - len(todo))
    if limit is not None:
        todo = todo[:limit]
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    lmk_file = LandmarkFile(landmarks) if landmarks is not None else None
    items: Any = _aligned_photos(root, todo, detector, lmk_file, policy, size, workers if todo else 0)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(todo), desc="aligning", unit="photo")
    with open(journal_path, "a") as journal:
        for rel, faces, error in items:
            rec: dict[str, Any] = {"source": str(rel), "status": "ok", "reason": "", "faces": []}
            if error or not faces:
                rec.update(status="failed", reason=error or "no face detected")
                report.failed += 1
                report.failures.append((str(rel), rec["reason"]))
            for out_rel, face in zip(_output_names(rel, len(faces), ext), faces, strict=True):
                out = _safe_output(dst, out_rel, root / rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(out), swap_red_blue(face.crop)):
                    raise DataError(f"{out}: cannot write aligned crop")
                rec["faces"].append(
                    {
                        "output": str(out_rel),
                        "box": [round(float(v), 2) for v in face.box],
                        "score": round(face.score, 5),
                        "landmarks": [[round(float(v), 3) for v in pt] for pt in face.landmarks],
                    }
                )
                report.faces += 1
            journal.write(json.dumps(rec) + "\n")
            journal.flush()
            records[rec["source"]] = rec
            report.processed += 1
    _write_tables(dst, records)
    return report


SOURCE_FILE = "source.txt"


def _lfw_pairs(pairs_path: Path) -> list[tuple[str, str, bool]]:
    """``(relative path a, relative path b, issame)`` without extension, in file order, parsed by
    :func:`fuseface.data.lfw.read_pairs` (View 2: ``name/name_%04d``)."""
    from fuseface.data.lfw import read_pairs

    def stem(rel: str) -> str:
        return str(Path(rel).with_suffix(""))

    return [(stem(p.path1), stem(p.path2), bool(p.same)) for p in read_pairs(pairs_path)]


def build_lfw_bin(aligned: str | Path, pairs: str | Path, out: str | Path, ext: str = ".jpg") -> dict[str, Any]:
    """Aligned LFW crops + ``pairs.txt`` -> a ``.bin`` (``fuseface.data.binfile.save_bin``).

    A crop missing because detection failed is replaced by the photo aligned with the **mean
    landmarks** of the detected LFW faces (read from ``faces.jsonl``; the source folder from
    ``source.txt`` that ``align_folder`` writes), and counted in ``fallback``.
    """
    import cv2

    from fuseface.align.similarity import align_face

    aligned, pairs, out = Path(aligned), Path(pairs), Path(out)
    if not pairs.is_file():
        from fuseface.errors import ProtocolFileError

        raise ProtocolFileError(f"{pairs}: pairs file not found")
    records = _read_journal(aligned / "faces.jsonl")
    ok_lmk = [f["landmarks"] for r in records.values() if r["status"] == "ok" for f in r["faces"][:1]]
    mean_lmk = np.mean(np.asarray(ok_lmk, dtype=np.float64), axis=0) if ok_lmk else None
    src_file = aligned / SOURCE_FILE
    src_root = Path(src_file.read_text().strip()) if src_file.is_file() else None
    by_stem = {str(Path(r["source"]).with_suffix("")): r for r in records.values()}
    fallback = 0

    def load(rel: str) -> np.ndarray:
        nonlocal fallback
        path = aligned / (rel + ext)
        if path.is_file():
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                return swap_red_blue(bgr)
        rec = by_stem.get(rel)
        if rec is not None and src_root is not None and mean_lmk is not None:
            fallback += 1
            return align_face(read_photo(src_root / rec["source"]), mean_lmk)
        raise DataError(f"{path}: aligned crop missing and no fallback (run `fuseface align` on LFW first)")

    pair_list = _lfw_pairs(pairs)
    images = np.stack([load(p) for a, b, _ in pair_list for p in (a, b)])
    issame = np.asarray([s for _, _, s in pair_list], dtype=bool)
    from fuseface.data.binfile import save_bin

    out.parent.mkdir(parents=True, exist_ok=True)
    save_bin(out, images, issame)
    return {"pairs": len(pair_list), "fallback": fallback, "path": str(out)}
