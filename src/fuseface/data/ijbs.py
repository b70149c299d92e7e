"""IJB-S protocol files (surveillance video to single image / booking / surveillance).

Reference: PFE ``evaluation/ijbs.py`` as used by AdaFace ``validation_lq/validate_IJB_S.py``
(PROTOCOLS.md §5.6, B §2.4). Files under ``protocol_dir``::

    cs6_metadata.csv                                   header; SUBJECT_ID,FILENAME,...
    cs6_surveillance_to_single-booking_probe.csv       header; one video name per line (videos/4012.mp4)
    cs6_surveillance_to_surveillance_probe.csv         header; one video name per line
    galleries/cs6_surveillance_to_single_g{1,2}.csv    header; x,SUBJECT_ID,img/123.jpg: one template per row
    galleries/cs6_surveillance_to_booking_g{1,2}.csv   header; x,SUBJECT_ID,img/...: one template per subject
    galleries/cs6_surveillance_to_surveillance_g{1,2}.csv  header; x,SUBJECT_ID,videos/...: video templates

Images (the feature rows) come from an image list, one path per line, ``.../<subject>/<file>``:
a video frame ``videos_<id>_<frame>.jpg`` belongs to the template ``<subject>_videos_<id>`` and a
still ``img_<id>.jpg`` to ``<subject>_img_<id>`` (PFE ``initialize_indices``). A video template
is every (subject, video) pair of the metadata (several people can appear in one video).

Templates without any image in the list keep an empty index list; the evaluation gives them a
zero feature and reports how many there were (PFE put a random vector there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuseface.errors import ProtocolFileError

PROTOCOLS = {
    "surveillance_to_single": ("cs6_surveillance_to_single-booking_probe.csv", "cs6_surveillance_to_single_g{}.csv"),
    "surveillance_to_booking": ("cs6_surveillance_to_single-booking_probe.csv", "cs6_surveillance_to_booking_g{}.csv"),
    "surveillance_to_surveillance": (
        "cs6_surveillance_to_surveillance_probe.csv",
        "cs6_surveillance_to_surveillance_g{}.csv",
    ),
}


@dataclass
class IJBSTemplates:
    """Templates of one IJB-S protocol: subject ids and the feature rows of each template."""

    probe_subjects: np.ndarray
    probe_rows: list[np.ndarray]
    galleries: list[tuple[np.ndarray, list[np.ndarray]]] = field(default_factory=list)


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise ProtocolFileError(f"{path}: protocol file not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [(i, ln.strip().split(",")) for i, ln in enumerate(lines[1:], 2) if ln.strip()]


def _int(path: Path, lineno: int, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ProtocolFileError(f"{path}:{lineno}: expected an integer subject id, got {value!r}") from None


def _key(subject: int, media: str) -> str:
    folder, name = media.split("/", 1) if "/" in media else ("", media)
    return f"{subject}_{folder}_{os.path.splitext(name)[0]}"


def image_keys(image_list: list[str], source: str = "image list") -> dict[str, list[int]]:
    """PFE ``initialize_indices``: template key -> rows of the image list.

    A video frame is named ``videos_<video>_<frame>``; a row that starts with ``videos`` but lacks
    the video part (a cut or foreign list) is a :class:`ProtocolFileError` naming ``source`` and the
    row, not a silent wrong key."""
    out: dict[str, list[int]] = {}
    for i, path in enumerate(image_list):
        subject = os.path.basename(os.path.dirname(path))
        name = os.path.basename(path)
        if name.startswith("videos"):
            parts = name.split("_")
            if len(parts) < 2 or not parts[1]:
                raise ProtocolFileError(
                    f"{source}:{i + 1}: {path!r} is not a video frame name (videos_<video>_<frame>)"
                )
            key = f"{subject}_{parts[0]}_{parts[1]}"
        elif name.startswith("img"):
            key = f"{subject}_{os.path.splitext(name)[0]}"
        else:
            continue
        out.setdefault(key, []).append(i)
    return out


def read_image_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ProtocolFileError(f"{path}: image list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolFileError(f"{path}: not a UTF-8 text image list (byte {exc.start})") from None
    return [ln.strip().split(",")[0] for ln in text.splitlines() if ln.strip()]


def load_ijbs(protocol_dir: str | Path, image_list: list[str], protocol: str) -> IJBSTemplates:
    """Templates of ``protocol`` (a key of :data:`PROTOCOLS`) with rows into ``image_list``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown IJB-S protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    pdir = Path(protocol_dir)
    rows_of = image_keys(image_list, "the IJB-S image list")
    meta = pdir / "cs6_metadata.csv"
    videos: list[tuple[int, str]] = []
    seen = set()
    for lineno, parts in _csv_rows(meta):
        if len(parts) < 2:
            raise ProtocolFileError(f"{meta}:{lineno}: expected 'SUBJECT_ID,FILENAME,...'")
        if parts[1].startswith("videos"):
            item = (_int(meta, lineno, parts[0]), parts[1])
            if item not in seen:
                seen.add(item)
                videos.append(item)
    probe_file, gallery_pattern = PROTOCOLS[protocol]
    probe_path = pdir / probe_file
    wanted = {parts[0] for _, parts in _csv_rows(probe_path)}
    probes = [(s, v) for s, v in videos if v in wanted]

    def rows(subject: int, media: list[str]) -> np.ndarray:
        idx: list[int] = []
        for m in media:
            idx += rows_of.get(_key(subject, m), [])
        return np.asarray(idx, dtype=np.int64)

    out = IJBSTemplates(np.array([s for s, _ in probes], dtype=np.int64), [rows(s, [v]) for s, v in probes])
    for g in (1, 2):
        gpath = pdir / "galleries" / gallery_pattern.format(g)
        entries = []
        for lineno, parts in _csv_rows(gpath):
            if len(parts) < 3:
                raise ProtocolFileError(f"{gpath}:{lineno}: expected 'x,SUBJECT_ID,FILENAME'")
            entries.append((_int(gpath, lineno, parts[1]), parts[2]))
        if protocol == "surveillance_to_booking":  # one template per subject: all its images
            subjects = sorted({s for s, _ in entries})
            media = {s: [m for t, m in entries if t == s] for s in subjects}
            out.galleries.append((np.array(subjects, dtype=np.int64), [rows(s, media[s]) for s in subjects]))
        else:
            uniq = list(dict.fromkeys(entries)) if protocol == "surveillance_to_surveillance" else entries
            out.galleries.append((np.array([s for s, _ in uniq], dtype=np.int64), [rows(s, [m]) for s, m in uniq]))
    return out
