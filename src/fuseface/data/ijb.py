"""Readers of the IJB-B / IJB-C protocol files in the insightface ``IJB_release`` layout.

Layout (PROTOCOLS.md §5.3 and B §2.2-2.3; insightface ``recognition/_evaluation_/ijb``)::

    <root>/<IJBB|IJBC>/loose_crop/<name>.jpg
    <root>/<IJBB|IJBC>/meta/<ijbb|ijbc>_name_5pts_score.txt      name x1 y1 ... x5 y5 faceness
    <root>/<IJBB|IJBC>/meta/<ijbb|ijbc>_face_tid_mid.txt         name template_id media_id
    <root>/<IJBB|IJBC>/meta/<ijbb|ijbc>_template_pair_label.txt  t1 t2 label
    <root>/<IJBB|IJBC>/meta/ijbb_1N_gallery_S1.csv, ..._S2.csv    (IJB-B)  header, TEMPLATE_ID,SUBJECT_ID,...
    <root>/<IJBB|IJBC>/meta/ijbc_1N_gallery_G1.csv, ..._G2.csv    (IJB-C)
    <root>/<IJBB|IJBC>/meta/<ijbb|ijbc>_1N_probe_mixed.csv

Feature rows always follow the order of the ``*_name_5pts_score.txt`` file (the order of
``*_face_tid_mid.txt``, which must agree; checked). No pandas: the small text files are parsed
line by line; the 15.66 M-line pair file is parsed with ``np.fromstring`` and, only when that finds
a problem, scanned again line by line to report the first bad line. Every error names the file
and the line number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fuseface.errors import ProtocolFileError

if TYPE_CHECKING:
    from fuseface.data.pair_file_job import PairFileJob

TARGETS = ("IJBB", "IJBC")
GALLERY_NAMES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}


@dataclass
class IJBProtocol:
    """Everything the 1:1 and 1:N protocols need, in the landmark file's image order.

    The pair arrays may still be in the making (``load_ijb(..., pairs="background")``): the first
    access to ``pair_t1`` / ``pair_t2`` / ``pair_labels`` / :meth:`pair_rows` waits for them and checks
    that every pair template has images.
    """

    target: str
    root: Path
    image_names: list[str]
    landmark_file: Path  # parsed on first use of .landmarks (only embedding needs them)
    faceness: np.ndarray  # (N,) float32
    templates: np.ndarray  # (N,) int64, template id of each image
    medias: np.ndarray  # (N,) int64, media id of each image
    _pair_t1: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _pair_t2: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _pair_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (tids, sids)
    probes: tuple[np.ndarray, np.ndarray] | None = None  # (tids, sids) rows of the probe csv
    _landmarks: np.ndarray | None = None
    _pending_pairs: PairFileJob | None = None
    _pair_rows: tuple[np.ndarray, np.ndarray] | None = None
    _template_ids: np.ndarray | None = None

    @property
    def landmarks(self) -> np.ndarray:
        """(N, 5, 2) float32 landmarks (left eye, right eye, nose, mouth left, mouth right)."""
        if self._landmarks is None:
            self._landmarks = read_landmark_file(self.landmark_file)[1]
        return self._landmarks

    @property
    def image_dir(self) -> Path:
        return self.root / self.target / "loose_crop"

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    @property
    def template_ids(self) -> np.ndarray:
        """Every template id with at least one image, ascending (int64)."""
        if self._template_ids is None:
            self._template_ids = np.unique(self.templates)
        return self._template_ids

    @property
    def pair_t1(self) -> np.ndarray:
        """(P,) int64 first template of each 1:1 pair."""
        self._resolve_pairs()
        return self._pair_t1

    @property
    def pair_t2(self) -> np.ndarray:
        """(P,) int64 second template of each 1:1 pair."""
        self._resolve_pairs()
        return self._pair_t2

    @property
    def pair_labels(self) -> np.ndarray:
        """(P,) int8 label of each pair, 1 = genuine."""
        self._resolve_pairs()
        return self._pair_labels

    def pair_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Row of each pair's first and second template in :attr:`template_ids` (intp)."""
        self._resolve_pairs()
        if self._pair_rows is None:
            self._pair_rows = (
                index_in_sorted(self.template_ids, self._pair_t1),
                index_in_sorted(self.template_ids, self._pair_t2),
            )
        return self._pair_rows

    def set_pairs(self, t1: np.ndarray, t2: np.ndarray, labels: np.ndarray, source: Path | None = None) -> None:
        """Install the 1:1 pairs after checking that every pair template has images; an unknown
        template raises :class:`ProtocolFileError` naming ``source`` and the line."""
        rows = []
        for col, arr in (("t1", t1), ("t2", t2)):
            r = index_in_sorted(self.template_ids, arr)
            if r.size and r.min() < 0:
                k = int(np.flatnonzero(r < 0)[0])
                where = f"{source}:{k + 1}" if source is not None else f"pair {k + 1}"
                tid_mid = meta_paths(self.root, self.target)["tid_mid"].name
                raise ProtocolFileError(f"{where}: template {arr[k]} ({col}) has no image in {tid_mid}")
            rows.append(r)
        self._pair_t1, self._pair_t2, self._pair_labels = t1, t2, labels
        self._pair_rows = (rows[0], rows[1])

    def _resolve_pairs(self) -> None:
        if self._pending_pairs is not None:
            job, self._pending_pairs = self._pending_pairs, None
            self.set_pairs(*job.result(), source=job.path)


def index_in_sorted(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in the sorted unique ``ids`` (intp), -1 where it is absent.

    Non-negative ids below 50 M use a dense lookup table (one gather per value, the common IJB
    case); others a binary search."""
    values = np.asarray(values)
    if ids.size == 0:
        return np.full(values.shape, -1, dtype=np.intp)
    if ids[0] >= 0 and ids[-1] < 50_000_000:
        lut = np.full(int(ids[-1]) + 1, -1, dtype=np.intp)
        lut[ids] = np.arange(ids.size)
        if values.size and (values.min() < 0 or values.max() >= lut.size):
            inside = (values >= 0) & (values < lut.size)
            return np.where(inside, lut[np.clip(values, 0, lut.size - 1)], -1)
        return lut[values]
    idx = np.minimum(np.searchsorted(ids, values), ids.size - 1)
    return np.where(ids[idx] == values, idx, -1)


def meta_paths(root: str | Path, target: str) -> dict[str, Path]:
    """Paths of the protocol files of ``target`` under ``root``."""
    target = normalize_target(target)
    meta = Path(root) / target / "meta"
    p = target.lower()
    g1, g2 = GALLERY_NAMES[target]
    return {
        "landmarks": meta / f"{p}_name_5pts_score.txt",
        "tid_mid": meta / f"{p}_face_tid_mid.txt",
        "pairs": meta / f"{p}_template_pair_label.txt",
        "gallery1": meta / f"{p}_1N_gallery_{g1}.csv",
        "gallery2": meta / f"{p}_1N_gallery_{g2}.csv",
        "probe": meta / f"{p}_1N_probe_mixed.csv",
    }


def normalize_target(target: str) -> str:
    t = target.upper().replace("-", "")
    if t not in TARGETS:
        raise ProtocolFileError(f"unknown IJB target {target!r}: expected one of {', '.join(TARGETS)}")
    return t


def _require(path: Path) -> None:
    if not path.is_file():
        raise ProtocolFileError(f"{path}: protocol file not found")


def _lines(path: Path) -> list[str]:
    _require(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ProtocolFileError(f"{path}: not a UTF-8 text file ({exc})") from exc


def _records(path: Path, form: str, count: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(line number, fields)`` of every non-blank line, each checked to have ``count`` fields."""
    _require(path)
    for i, line in enumerate(path.read_bytes().split(b"\n"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != count:
            raise ProtocolFileError(f"{path}:{i}: expected '{form}' ({count} fields), got {len(parts)}")
        yield i, parts


LANDMARK_LINE = "name x1 y1 ... x5 y5 faceness"


def _fast_table(path: Path, ncols: int, dtype: type) -> tuple[list[str], np.ndarray] | None:
    """``name v1 ... v_ncols`` lines parsed in bulk (regex + ``np.fromstring``); ``None`` when the
    bulk parse does not account for every line (the caller then reports the first bad line)."""
    import warnings

    _require(path)
    data = path.read_bytes()
    names = re.findall(rb"^[ \t]*(\S+)", data, flags=re.M)
    rest = re.sub(rb"^[ \t]*\S+", b"", data, flags=re.M)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = np.fromstring(rest, dtype=dtype, sep=" ")
        except ValueError:
            return None
    if values.size != len(names) * ncols:
        return None
    try:
        decoded = [n.decode("utf-8") for n in names]
    except UnicodeDecodeError:
        return None
    return decoded, values.reshape(len(names), ncols)


def read_landmark_file(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``name x1 y1 ... x5 y5 faceness`` -> (names, landmarks (N,5,2) float32, faceness (N,) float32)."""
    path = Path(path)
    fast = _fast_table(path, 11, np.float64)
    if fast is not None:
        names, arr64 = fast
        arr = arr64.astype(np.float32)
        return names, arr[:, :10].reshape(-1, 5, 2), arr[:, 10].copy()
    _lines(path)  # the bulk parse failed: first refuse a file that is not UTF-8 text, by name
    for i, parts in _records(path, LANDMARK_LINE, 12):
        try:
            [float(v) for v in parts[1:]]
        except ValueError as exc:
            raise ProtocolFileError(f"{path}:{i}: non-numeric landmark or score ({exc})") from None
    raise ProtocolFileError(f"{path}: cannot parse the file")


def read_names_and_faceness(path: str | Path) -> tuple[list[str], np.ndarray]:
    """First and last column of the landmark file (names, faceness float32), without parsing the
    ten landmark coordinates; every line must have 12 fields."""
    path = Path(path)
    names: list[str] = []
    scores: list[bytes] = []
    for _, parts in _records(path, LANDMARK_LINE, 12):
        names.append(parts[0].decode("utf-8", errors="replace"))
        scores.append(parts[11])
    try:
        faceness = np.array(scores).astype(np.float64).astype(np.float32)
    except ValueError:
        for i, sc in enumerate(scores):
            try:
                float(sc)
            except ValueError:
                msg = f"{path}: record {i + 1} ({names[i]}): faceness {sc!r} is not a number"
                raise ProtocolFileError(msg) from None
        raise
    return names, faceness


def read_tid_mid_file(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``name template_id media_id`` -> (names, templates int64, medias int64)."""
    path = Path(path)
    names: list[str] = []
    tids: list[int] = []
    mids: list[int] = []
    for i, parts in _records(path, "name template_id media_id", 3):
        try:
            tids.append(int(parts[1]))
            mids.append(int(parts[2]))
        except ValueError as exc:
            raise ProtocolFileError(f"{path}:{i}: template and media ids must be integers ({exc})") from None
        names.append(parts[0].decode("utf-8", errors="replace"))
    return names, np.asarray(tids, dtype=np.int64), np.asarray(mids, dtype=np.int64)


_INT_LINE = re.compile(rb"^\s*-?\d+\s+-?\d+\s+-?\d+\s*$")


def _cache_file(path: Path, cache: bool = True) -> Path | None:
    """Where the parsed arrays of a protocol file are cached (keyed by path, size, mtime); ``None``
    when ``cache`` is off or the file is smaller than ``CACHE_MIN_BYTES`` (not worth caching)."""
    import hashlib

    try:
        st = path.stat()
    except OSError:
        return None
    if not cache or st.st_size < CACHE_MIN_BYTES:
        return None
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    from fuseface.align.weights import cache_root

    return cache_root() / "protocols" / f"{path.name}.{key}.npz"


CACHE_MIN_BYTES = 20_000_000


def read_pair_file(path: str | Path, cache: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``t1 t2 label`` per line -> (t1 int64, t2 int64, labels int8); fast for 15 M lines.

    Files over 20 MB are parsed once and cached as ``.npz`` under ``$FUSEFACE_CACHE`` (default
    ``~/.cache/fuseface``)/protocols, keyed by path, size and modification time (as the reference
    scripts keep a ``*_backup.npz``); ``cache=False`` always parses.
    """
    path = Path(path)
    _require(path)
    cfile = _cache_file(path, cache)
    if cfile is not None and cfile.is_file():
        try:
            with np.load(cfile) as z:
                return z["t1"], z["t2"], z["labels"]
        except (OSError, ValueError, KeyError):
            pass
    t1, t2, labels = _parse_pair_file(path)
    if cfile is not None:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_name(cfile.name + ".tmp.npz")
            np.savez(tmp, t1=t1, t2=t2, labels=labels)
            tmp.replace(cfile)
        except OSError:
            pass
    return t1, t2, labels


def _parse_pair_table(path: Path) -> np.ndarray:
    """The pair file as a (P, 3) int64 table (labels checked to be 0 or 1)."""
    data = path.read_bytes()
    nlines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = np.fromstring(data, dtype=np.int64, sep=" ")  # whitespace, newlines included
        except ValueError:
            values = np.zeros(0, dtype=np.int64)
    if values.size != 3 * nlines:
        _report_bad_line(path, data)
        raise ProtocolFileError(f"{path}: expected 3 integers per line ({nlines} lines), found {values.size} values")
    values = values.reshape(-1, 3)
    labels = values[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise ProtocolFileError(f"{path}:{bad[0] + 1}: label must be 0 or 1, got {labels[bad[0]]}")
    return values


def _parse_pair_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = _parse_pair_table(path)
    return values[:, 0].copy(), values[:, 1].copy(), values[:, 2].astype(np.int8)


def _report_bad_line(path: Path, data: bytes) -> None:
    for i, line in enumerate(data.split(b"\n"), 1):
        if line.strip() and not _INT_LINE.match(line):
            raise ProtocolFileError(
                f"{path}:{i}: expected 't1 t2 label' (three integers), got {line[:80].decode(errors='replace')!r}"
            )


def read_template_subject_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """1:N gallery / probe csv: a header line, then ``TEMPLATE_ID,SUBJECT_ID,...`` per image.

    Returns the two columns per row (as the reference's ``np.loadtxt(skiprows=1, delimiter=',')``).
    """
    path = Path(path)
    lines = _lines(path)
    tids: list[int] = []
    sids: list[int] = []
    for i, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) < 2:
            raise ProtocolFileError(f"{path}:{i}: expected 'TEMPLATE_ID,SUBJECT_ID,...', got {line[:80]!r}")
        try:
            tids.append(int(parts[0]))
            sids.append(int(parts[1]))
        except ValueError as exc:
            raise ProtocolFileError(f"{path}:{i}: template and subject ids must be integers ({exc})") from exc
    return np.asarray(tids, dtype=np.int64), np.asarray(sids, dtype=np.int64)


def load_ijb(root: str | Path, target: str, *, one_to_n: bool | None = None, pairs: bool | str = True) -> IJBProtocol:
    """Read the protocol of ``target`` (``IJBB`` / ``IJBC``) under ``root``.

    ``one_to_n``: ``True`` requires the 1:N csv files, ``False`` skips them, ``None`` reads them
    when present. ``pairs=False`` skips the 1:1 pair file (1:N only needs the csv files);
    ``pairs="background"`` has a helper process parse it (:mod:`fuseface.data.pair_file_job`)
    while this one reads the rest and the caller pools features: the first use of the pairs waits
    for it, and errors in the file are raised then.
    """
    target = normalize_target(target)
    root = Path(root)
    paths = meta_paths(root, target)
    job = None
    if pairs == "background":
        from fuseface.data.pair_file_job import PairFileJob

        job = PairFileJob(paths["pairs"])  # parsed by a helper process while we read the rest
    elif pairs not in (True, False):
        raise ValueError(f"pairs must be True, False or 'background', got {pairs!r}")
    names, faceness = read_names_and_faceness(paths["landmarks"])
    names2, templates, medias = read_tid_mid_file(paths["tid_mid"])
    if len(names2) != len(names):
        raise ProtocolFileError(
            f"{paths['tid_mid']}: {len(names2)} images but {paths['landmarks'].name} lists {len(names)}"
        )
    if names != names2:
        i, a, b = next((i, a, b) for i, (a, b) in enumerate(zip(names, names2, strict=True)) if a != b)
        raise ProtocolFileError(f"{paths['tid_mid']}:{i + 1}: image {b!r} but the landmark file has {a!r} there")
    proto = IJBProtocol(target, root, names, paths["landmarks"], faceness, templates, medias)
    if job is not None:
        proto._pending_pairs = job
    elif pairs:
        proto.set_pairs(*read_pair_file(paths["pairs"]), source=paths["pairs"])
    known = proto.template_ids
    want = one_to_n if one_to_n is not None else all(paths[k].is_file() for k in ("gallery1", "gallery2", "probe"))
    if want:
        g1, g2 = GALLERY_NAMES[target]
        proto.galleries = {
            g1: read_template_subject_csv(paths["gallery1"]),
            g2: read_template_subject_csv(paths["gallery2"]),
        }
        proto.probes = read_template_subject_csv(paths["probe"])
        for name, (tids, _) in [*proto.galleries.items(), ("probe", proto.probes)]:
            missing = index_in_sorted(known, tids) < 0
            if missing.any():
                raise ProtocolFileError(f"{target} 1:N {name}: template {tids[missing][0]} has no image")
    return proto
