"""Identity-disjoint photo sets from a folder of photos with one sub-folder per person (LFW).

* :func:`identity_split` draws a seeded, **identity-disjoint** split of the people with at least
  ``min_photos`` photos into training and test identities, stratified by photo count (people are
  ranked by their number of photos and each block of consecutive ranks is shuffled and dealt to
  the two sides), so both sides get people with many photos. At most ``max_photos`` photos per
  person are kept (a seeded choice); the split file lists the photos of every person, so a feature
  store extracted from it holds exactly those photos.
* :func:`write_split` / :func:`read_split`: the split file (JSON, ``format =
  fuseface-identity-split``); reading checks that no identity and no photo is on both sides.
* :class:`AlignedPhotoSource`: the photos of a split aligned to a named 5-point template
  (:func:`fuseface.align.similarity.align_face`) from the landmarks of a ``fuseface align`` journal
  (``faces.jsonl``: first face of each photo). A photo missing from the journal (not detected, or
  not processed yet) is aligned with the **mean landmarks** of the detected photos, which suits
  roughly centred photo sets such as LFW; ``landmark_source`` says which photos that was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.data.images import IMAGE_EXTENSIONS
from fuseface.errors import DataError, ProtocolFileError

__all__ = [
    "AlignedPhotoSource",
    "identity_photos",
    "identity_split",
    "read_face_journal",
    "read_split",
    "split_labels",
    "write_split",
]

SPLIT_FORMAT = "fuseface-identity-split"


def identity_photos(root: str | Path) -> dict[str, list[str]]:
    """``person -> sorted relative photo paths`` of a one-sub-folder-per-person tree."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: photo folder not found")
    people: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(f"{d.name}/{f.name}" for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if photos:
            people[d.name] = photos
    if not people:
        raise DataError(f"{root}: no photos in person sub-folders")
    return people


def identity_split(
    people: Mapping[str, Sequence[str]],
    *,
    min_photos: int = 4,
    test_fraction: float = 0.5,
    max_photos: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Seeded identity-disjoint split (see the module docstring) -> the split-file dict."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    eligible = sorted((p for p in people if len(people[p]) >= min_photos), key=lambda p: (-len(people[p]), p))
    if len(eligible) < 2:
        raise DataError(f"identity split: {len(eligible)} people have >= {min_photos} photos; need 2 or more")
    block = max(2, round(1.0 / min(test_fraction, 1.0 - test_fraction)))
    sides: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for start in range(0, len(eligible), block):
        group = list(rng.permutation(eligible[start : start + block]))
        n_test = round(len(group) * test_fraction) if len(group) == block else int(rng.random() < test_fraction)
        for i, person in enumerate(group):
            photos = list(people[person])
            if max_photos is not None and len(photos) > max_photos:
                photos = sorted(rng.choice(photos, size=max_photos, replace=False).tolist())
            sides["test" if i < n_test else "train"][str(person)] = photos
    if not sides["train"] or not sides["test"]:
        raise DataError("identity split: one side is empty; lower min_photos or change test_fraction")
    return {
        "format": SPLIT_FORMAT,
        "version": 1,
        "seed": seed,
        "min_photos": min_photos,
        "test_fraction": test_fraction,
        "max_photos": max_photos,
        "train": {k: sides["train"][k] for k in sorted(sides["train"])},
        "test": {k: sides["test"][k] for k in sorted(sides["test"])},
    }


def _check_split(split: Mapping[str, Any], where: str) -> None:
    if split.get("format") != SPLIT_FORMAT or not isinstance(split.get("train"), dict):
        raise ProtocolFileError(f"{where}: not a fuseface identity split file")
    both = set(split["train"]) & set(split["test"])
    if both:
        raise ProtocolFileError(f"{where}: {len(both)} identities on both sides (e.g. {sorted(both)[0]})")
    train_photos = {p for v in split["train"].values() for p in v}
    shared = train_photos & {p for v in split["test"].values() for p in v}
    if shared:
        raise ProtocolFileError(f"{where}: {len(shared)} photos on both sides (e.g. {sorted(shared)[0]})")


def write_split(path: str | Path, split: Mapping[str, Any]) -> Path:
    """Write a split file (atomically), after checking it is identity- and photo-disjoint."""
    path = Path(path)
    _check_split(split, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(split, indent=1))
    tmp.replace(path)
    return path


def read_split(path: str | Path) -> dict[str, Any]:
    """Read and check a split file (:class:`ProtocolFileError` naming the file when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolFileError(f"{path}: split file not found")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProtocolFileError(f"{path}: not JSON ({exc})") from None
    _check_split(split, str(path))
    return split


def split_labels(split: Mapping[str, Any]) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """All photos of a split in a fixed order: ``(photos, identities, labels, sides)``.

    ``identities`` are the sorted names of both sides; ``labels[i]`` indexes them; ``sides[i]`` is
    ``"train"`` or ``"test"`` per identity.
    """
    identities = sorted(set(split["train"]) | set(split["test"]))
    sides = ["train" if name in split["train"] else "test" for name in identities]
    photos: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(identities):
        for rel in split["train"].get(name) or split["test"][name]:
            photos.append(rel)
            labels.append(label)
    return photos, identities, np.asarray(labels, dtype=np.int64), sides


def read_face_journal(path: str | Path) -> dict[str, tuple[np.ndarray, float]]:
    """``relative photo path -> (5x2 landmarks, detector score)`` of the first face per photo of a
    ``fuseface align`` journal (``faces.jsonl``); lines cut by a crash are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: landmark journal not found (run `fuseface align` first)")
    out: dict[str, tuple[np.ndarray, float]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        faces = rec.get("faces") or []
        if rec.get("status") == "ok" and faces:
            out[str(rec["source"])] = (np.asarray(faces[0]["landmarks"], np.float64), float(faces[0]["score"]))
    return out


class AlignedPhotoSource:
    """``source[i] -> (aligned uint8 RGB crop, label)`` for photos under ``root`` (an
    :class:`fuseface.data.image_sources.ImageSource`).

    ``landmarks`` maps a relative photo path to its 5 landmarks (and detector score); photos
    without an entry use the mean of the given landmarks (``landmark_source[i] == "mean"``) and
    get a detector score of NaN.
    """

    def __init__(
        self,
        root: str | Path,
        photos: Sequence[str],
        labels: Sequence[int],
        landmarks: Mapping[str, tuple[np.ndarray, float]],
        template: str = "arcface",
        size: int = 112,
    ) -> None:
        from fuseface.align.similarity import template_points

        template_points(template)  # validates the name
        if len(photos) != len(labels):
            raise ValueError(f"{len(photos)} photos but {len(labels)} labels")
        if not landmarks:
            raise DataError(f"{root}: no landmarks given (the journal has no detected face)")
        self.root = Path(root)
        self.photos = list(photos)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.template, self.size = template, size
        mean = np.mean(np.stack([v[0] for v in landmarks.values()]), axis=0)
        self.landmarks = [landmarks[p][0] if p in landmarks else mean for p in self.photos]
        self.detector_scores = np.asarray([landmarks[p][1] if p in landmarks else np.nan for p in self.photos])
        self.landmark_source = ["mtcnn" if p in landmarks else "mean" for p in self.photos]

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from fuseface.align.pipeline import read_photo
        from fuseface.align.similarity import align_face

        image = read_photo(self.root / self.photos[index])
        return align_face(image, self.landmarks[index], self.size, self.template), int(self.labels[index])


def split_source(
    split: Mapping[str, Any],
    root: str | Path,
    journal: str | Path,
    template: str = "arcface",
    size: int = 112,
) -> tuple[AlignedPhotoSource, dict[str, Any]]:
    """Every photo of ``split`` (both sides, :func:`split_labels` order) aligned from ``journal``
    landmarks, and the store metadata naming identities, sides, photos and landmark sources."""
    photos, identities, labels, sides = split_labels(split)
    source = AlignedPhotoSource(root, photos, labels, read_face_journal(journal), template, size)
    meta = {
        "identities": identities,
        "identity_sides": sides,
        "photos": photos,
        "landmark_source": source.landmark_source,
        "detector_scores": [None if not np.isfinite(v) else round(float(v), 6) for v in source.detector_scores],
        "template": template,
        "split_seed": split.get("seed"),
    }
    return source, meta
