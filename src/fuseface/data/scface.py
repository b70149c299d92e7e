"""SCface (Surveillance Cameras Face database) identification protocol, as implemented here.

No anchor ships SCFace code and LGAF's exact split is unknown (PROTOCOLS.md §5.5), so this is
**our** documented protocol on the official folder layout of the SCface release::

    <root>/mugshot_frontal_cropped_all/001_frontal.JPG              gallery (one per subject)
    <root>/surveillance_cameras_distance_1/cam1/001_cam1_1.jpg       probes, d1 = 4.20 m
    <root>/surveillance_cameras_distance_2/cam1/001_cam1_2.jpg       probes, d2 = 2.60 m
    <root>/surveillance_cameras_distance_3/cam1/001_cam1_3.jpg       probes, d3 = 1.00 m

* subjects: the 3-digit prefix of each file name (130 in the release);
* ``split="all"`` (default): every subject; gallery = its frontal mugshot; probes = the visible-light
  cameras ``cam1``-``cam5`` at each distance; rank-1 (and rank-5) identification per distance;
* ``split="test80"``: the common low-resolution practice of fine-tuning on subjects 1-50 and testing
  on the remaining 80 (subjects 51-130 when the ids are 1-130: the last 80 in sorted order).

Feature rows for ``--features`` follow :attr:`SCFaceProtocol.image_paths`: gallery first, then the
probes of d1, d2, d3 (each sorted by path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuseface.errors import ProtocolFileError

DISTANCES = {"d1": 1, "d2": 2, "d3": 3}  # d1 = 4.20 m, d2 = 2.60 m, d3 = 1.00 m
VISIBLE_CAMERAS = ("cam1", "cam2", "cam3", "cam4", "cam5")
_SUBJECT = re.compile(r"^(\d{3})_")


@dataclass
class SCFaceProtocol:
    gallery_paths: list[Path]
    gallery_labels: np.ndarray
    probes: dict[str, tuple[list[Path], np.ndarray]] = field(default_factory=dict)  # distance -> (paths, labels)

    @property
    def image_paths(self) -> list[Path]:
        out = list(self.gallery_paths)
        for d in DISTANCES:
            out += self.probes[d][0]
        return out

    def split_features(self, features: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if features.shape[0] != len(self.image_paths):
            raise ValueError(f"{features.shape[0]} feature rows, this SCface split has {len(self.image_paths)} images")
        g = len(self.gallery_paths)
        out = {}
        for d in DISTANCES:
            n = len(self.probes[d][0])
            out[d] = features[g : g + n]
            g += n
        return features[: len(self.gallery_paths)], out


def _subject(path: Path) -> int:
    m = _SUBJECT.match(path.name)
    if not m:
        raise ProtocolFileError(f"{path}: file name does not start with a 3-digit subject id")
    return int(m.group(1))


def load_scface(root: str | Path, split: str = "all", cameras: tuple[str, ...] = VISIBLE_CAMERAS) -> SCFaceProtocol:
    """Read the SCface layout (see module docstring) for ``split`` = ``all`` or ``test80``."""
    root = Path(root)
    mug = root / "mugshot_frontal_cropped_all"
    if not mug.is_dir():
        raise ProtocolFileError(f"{mug}: mugshot folder not found (is {root} an SCface root?)")
    gallery = sorted(p for p in mug.iterdir() if p.is_file() and "frontal" in p.name.lower())
    subjects = sorted({_subject(p) for p in gallery})
    if split == "test80":
        if len(subjects) < 80:
            raise ProtocolFileError(f"{mug}: {len(subjects)} subjects, the test80 split needs at least 80")
        keep = set(subjects[-80:])
    elif split == "all":
        keep = set(subjects)
    else:
        raise ValueError(f"split must be 'all' or 'test80', got {split!r}")
    gallery = [p for p in gallery if _subject(p) in keep]
    proto = SCFaceProtocol(gallery, np.array([_subject(p) for p in gallery], dtype=np.int64))
    for d, k in DISTANCES.items():
        folder = root / f"surveillance_cameras_distance_{k}"
        if not folder.is_dir():
            raise ProtocolFileError(f"{folder}: surveillance folder for {d} not found")
        paths = sorted(
            p
            for cam in cameras
            if (folder / cam).is_dir()
            for p in (folder / cam).iterdir()
            if p.is_file() and _subject(p) in keep
        )
        proto.probes[d] = (paths, np.array([_subject(p) for p in paths], dtype=np.int64))
    return proto
