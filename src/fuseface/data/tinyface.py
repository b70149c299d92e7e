"""TinyFace identification protocol files (AdaFace ``validation_lq/tinyface_helper.py``; PROTOCOLS.md §5.4).

Layout under ``root``::

    tinyface/Testing_Set/probe_img_ID_pairs.mat          key 'probe_set'   (image name, ID) rows
    tinyface/Testing_Set/gallery_match_img_ID_pairs.mat  key 'gallery_set' (image name, ID) rows
    tinyface/Testing_Set/Probe/ Gallery_Match/ Gallery_Distractor/   the images

or the same three folders in an aligned copy (AdaFace uses ``aligned_pad_0.1_pad_high/``; pass it
as ``image_dir``). The label of an image is the integer before the first ``_`` of its file name
(as AdaFace); distractors get -100. Probes and gallery matches are listed in the ``.mat`` order,
distractors in sorted file-name order. **Feature rows** for ``--features`` follow
:attr:`TinyFaceProtocol.image_paths`: probes, then gallery matches, then distractors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseface.errors import ProtocolFileError

DISTRACTOR_LABEL = -100
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class TinyFaceProtocol:
    probe_paths: list[Path]
    probe_labels: np.ndarray
    match_paths: list[Path]
    match_labels: np.ndarray
    distractor_paths: list[Path]

    @property
    def image_paths(self) -> list[Path]:
        return [*self.probe_paths, *self.match_paths, *self.distractor_paths]

    @property
    def gallery_labels(self) -> np.ndarray:
        return np.r_[self.match_labels, np.full(len(self.distractor_paths), DISTRACTOR_LABEL)].astype(np.int64)

    def split(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probe features, gallery features) from rows in :attr:`image_paths` order."""
        n_p = len(self.probe_paths)
        if features.shape[0] != len(self.image_paths):
            raise ValueError(f"{features.shape[0]} feature rows, TinyFace has {len(self.image_paths)} images")
        return features[:n_p], features[n_p:]


def label_of(name: str, source: str = "") -> int:
    try:
        return int(Path(name).name.split("_")[0])
    except ValueError:
        raise ProtocolFileError(f"{source}: image name {name!r} does not start with '<identity>_'") from None


def _loadmat_isolated(path: Path) -> dict:
    """``scipy.io.loadmat`` in a child process: scipy's MAT-v5 reader can crash the interpreter
    (segmentation fault) on a corrupt file, which must become an error naming the file instead."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from scipy.io import loadmat

    try:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: no re-import
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
            return pool.submit(loadmat, str(path)).result()
    except BrokenProcessPool:
        raise ProtocolFileError(f"{path}: corrupt .mat file (the MAT reader crashed on it)") from None
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ProtocolFileError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from None


def _mat_names(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise ProtocolFileError(f"{path}: protocol file not found")
    mat = _loadmat_isolated(path)
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ProtocolFileError(f"{path}: no variable {key!r} (found {found})")
    names = []
    for i, row in enumerate(mat[key]):
        item = row[0] if np.ndim(row) else row
        while isinstance(item, np.ndarray):  # cells nest as object arrays of arrays
            if item.size == 0:
                raise ProtocolFileError(f"{path}: {key} row {i + 1} is empty")
            item = item.ravel()[0]
        names.append(str(item))
    return names


def load_tinyface(root: str | Path, image_dir: str | Path | None = None) -> TinyFaceProtocol:
    """Read the TinyFace test protocol; ``image_dir`` (default ``root/tinyface/Testing_Set``)
    holds ``Probe/``, ``Gallery_Match/`` and ``Gallery_Distractor/``."""
    root = Path(root)
    test = root / "tinyface" / "Testing_Set"
    images = Path(image_dir) if image_dir else test
    probe_mat = test / "probe_img_ID_pairs.mat"
    gallery_mat = test / "gallery_match_img_ID_pairs.mat"
    probes = _mat_names(probe_mat, "probe_set")
    matches = _mat_names(gallery_mat, "gallery_set")
    dis_dir = images / "Gallery_Distractor"
    if not dis_dir.is_dir():
        raise ProtocolFileError(f"{dis_dir}: distractor folder not found")
    distractors = sorted(p for p in dis_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return TinyFaceProtocol(
        [images / "Probe" / n for n in probes],
        np.array([label_of(n, str(probe_mat)) for n in probes], dtype=np.int64),
        [images / "Gallery_Match" / n for n in matches],
        np.array([label_of(n, str(gallery_mat)) for n in matches], dtype=np.int64),
        distractors,
    )
