"""``Gallery``: enrol people once, add photos later, search them open-set.

A gallery directory holds ``gallery.sqlite`` (the source of truth, :mod:`fuseface.gallery.store`),
the vector index of the identity templates (``index.npz`` for the local faiss backend, or a Milvus
collection, :mod:`fuseface.gallery.milvus`) and, for CAFace, a copy of the fusion weights.

**Adding photos** (:meth:`Gallery.add`): each photo is detected, aligned and embedded by the
gallery's model (:class:`fuseface.infer.embedder.FaceModel`); its embedding (and CAFace styles) is
stored, and the identity's fusion state is updated by the photo's contribution
(:mod:`fuseface.gallery.templates`), which gives the new template. A photo whose content hash is
already enrolled for that identity is skipped.

**Model identity**: the gallery records the fingerprint of the model that created it
(:func:`fuseface.infer.model_file.model_fingerprint`: architecture + weights) and refuses to open
with, or accept embeddings from, any other model — embeddings of two models are not comparable.

**Crash safety**: a change is one SQLite transaction that also increases the gallery ``version``;
only after the commit is the index updated and written atomically with that version. A process
killed in between leaves SQLite ahead of the index; :meth:`Gallery.open` sees the version (local) or
the per-identity template versions (Milvus) disagree and rebuilds the index from SQLite. So a photo
is either in SQLite and the index, or in neither.

**Open-set search** (:meth:`Gallery.search`): the cosine similarity of a query to each template;
the best identity is the answer only when its score reaches the threshold, else ``unknown``. The
threshold is the model file's ``extra["threshold"]`` when present (calibrate it with
``fuseface eval``), else :data:`fuseface.infer.embedder.DEFAULT_THRESHOLD` (0.3, a typical ArcFace
operating point), fixed at creation and overridable per search.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import ConfigError, DataError
from fuseface.gallery.store import GalleryStore
from fuseface.gallery.templates import FUSIONS, TemplateFusion, create_template_fusion, state_from_bytes, state_to_bytes

FUSION_FILE = "fusion.safetensors"
BACKENDS = ("local", "milvus")


@dataclass
class AddReport:
    """What :meth:`Gallery.add` did: photos added, skipped as duplicates, failed (with the reason)."""

    name: str
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    n_images: int = 0
    template_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """One query's answer: ``match`` is the identity or ``None`` (unknown); ``candidates`` best first."""

    query: str
    match: str | None
    score: float
    threshold: float
    candidates: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "match": self.match if self.match is not None else "unknown",
            "known": self.match is not None,
            "score": None if not np.isfinite(self.score) else self.score,
            "threshold": self.threshold,
            "candidates": [{"name": n, "score": s} for n, s in self.candidates],
            "error": self.error,
        }


def content_hash(item: Any) -> str:
    """SHA-256 of a photo's file bytes, or of an array's shape and pixels."""
    if isinstance(item, (str, Path)):
        return hashlib.sha256(Path(item).read_bytes()).hexdigest()
    arr = np.ascontiguousarray(item)
    return hashlib.sha256(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes()).hexdigest()


def _load_model(model: Any) -> Any:
    if model is None or not isinstance(model, (str, Path)):
        return model
    import fuseface

    return fuseface.load(str(model))


class Gallery:
    """A persistent face gallery (see the module docstring). Use :meth:`create` or :meth:`open`."""

    def __init__(self, store: GalleryStore, model: Any, backend_options: dict[str, Any] | None = None) -> None:
        self.store = store
        self.directory = store.directory
        self.meta = store.meta()
        if "model_id" not in self.meta:
            raise DataError(
                f"{self.store.path}: incomplete gallery (its creation was interrupted); delete it and create again"
            )
        self.model = model
        self.model_id = self.meta["model_id"]
        self.dim = int(self.meta["dim"])
        self.threshold = float(self.meta["threshold"])
        self.fusion_name = self.meta["fusion"]
        weights = self.directory / FUSION_FILE if self.fusion_name == "caface" else None
        self.fusion: TemplateFusion = create_template_fusion(self.fusion_name, weights)
        self._lock = threading.RLock()
        if model is not None:
            self._check_model(model)
        self.backend = self._open_backend(backend_options or {})
        self.rebuilt = self.backend.sync(self.store)

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path,
        model: Any,
        fusion: str = "average",
        fusion_weights: str | Path | None = None,
        backend: str = "local",
        index_kind: str = "auto",
        milvus_uri: str | None = None,
        collection: str | None = None,
        threshold: float | None = None,
    ) -> Gallery:
        """Create a gallery for ``model`` (a FaceModel or model file). ``fusion``: average |
        norm_weighted | caface (needs ``fusion_weights``); ``backend``: local (faiss) | milvus."""
        from fuseface.infer.embedder import DEFAULT_THRESHOLD
        from fuseface.infer.model_file import model_fingerprint

        if fusion not in FUSIONS:
            raise ConfigError(f"--fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        model_path = ""
        if isinstance(model, (str, Path)):
            model_path = str(Path(model).resolve()) if Path(model).exists() else str(model)  # a file or a model name
        fm = _load_model(model)
        if fm is None:
            raise ConfigError("a gallery needs a model (-m MODEL)")
        dim = int(fm.embed_aligned(np.zeros((1, fm.input_size, fm.input_size, 3), np.uint8))[0].shape[1])
        style_channels = 0
        if fusion == "caface":
            module = create_template_fusion("caface", fusion_weights).model  # type: ignore[attr-defined]
            if module.feature_dim != dim:
                raise ConfigError(
                    f"{fusion_weights}: CAFace fuses {module.feature_dim}-d features, the model gives {dim}-d"
                )
            style_channels = int(module.style_channels)
        store = GalleryStore(directory, create=True)
        if fusion == "caface":
            shutil.copyfile(str(fusion_weights), store.directory / FUSION_FILE)
        meta = {
            "schema": "1",
            "model_id": model_fingerprint(fm.net, fm.meta),
            "model_arch": fm.meta.arch,
            "model_path": model_path,
            "dim": dim,
            "input_size": fm.input_size,
            "channel_order": fm.channel_order,
            "alignment": f"{fm.meta.template}-5point-{fm.input_size}",
            "fusion": fusion,
            "style_channels": style_channels,
            "threshold": float(
                threshold if threshold is not None else fm.meta.extra.get("threshold", DEFAULT_THRESHOLD)
            ),
            "backend": backend,
            "index_kind": index_kind,
            "milvus_uri": milvus_uri or str(store.directory / "milvus.db"),
            "collection": collection or "fuseface_gallery",
            "created": time.time(),
            "version": 0,
        }
        with store.transaction() as cur:
            store.set_meta(cur, meta)
        return cls(store, fm)

    @classmethod
    def open(
        cls, directory: str | Path, model: Any = None, stored_model: bool = False, **backend_options: Any
    ) -> Gallery:
        """Open a gallery; ``model`` (FaceModel, file or name) is needed to add or search photos and must
        be the model the gallery was created with (``stored_model=True`` without ``model`` loads the one
        recorded at creation). The index is checked against SQLite (and rebuilt when they disagree)."""
        store = GalleryStore(directory)
        if model is None and stored_model:
            model = store.meta().get("model_path") or None
            if model is None:
                store.close()
                raise ConfigError(f"{directory}: the gallery records no model file; give -m MODEL")
        try:
            fm = _load_model(model)
        except Exception:
            store.close()
            raise
        return cls(store, fm, backend_options)

    def close(self) -> None:
        self.backend.close()
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open_backend(self, options: dict[str, Any]) -> Any:
        if self.meta["backend"] == "milvus":
            from fuseface.gallery.milvus import MilvusBackend

            uri = options.get("milvus_uri") or self.meta["milvus_uri"]
            return MilvusBackend(uri, self.meta["collection"], self.dim, token=options.get("milvus_token"))
        from fuseface.gallery.index import LocalBackend

        return LocalBackend(self.directory / "index.npz", self.dim, kind=self.meta.get("index_kind", "auto"))

    def _check_model(self, model: Any) -> None:
        from fuseface.infer.model_file import model_fingerprint

        found = model_fingerprint(model.net, model.meta)
        if found != self.model_id:
            raise DataError(
                f"{self.directory}: this gallery was built with model {self.meta['model_arch']} "
                f"(fingerprint {self.model_id[:12]}), not this {model.meta.arch} ({found[:12]}); "
                "embeddings of different models cannot be mixed"
            )

    def _need_model(self) -> Any:
        if self.model is None:
            raise ConfigError(f"{self.directory}: open the gallery with its model (-m MODEL) to embed photos")
        return self.model

    # -- embedding -----------------------------------------------------------------------------
    def embed_photos(
        self, photos: Sequence[Any], detect: bool | None = None, policy: str = "largest"
    ) -> tuple[np.ndarray, np.ndarray | None, list[float | None], dict[int, str]]:
        """Detect, align and embed photos: ``(features (n, D) NaN rows for failures, styles or None,
        detector scores, {index: reason})``."""
        fm = self._need_model()
        crops: list[np.ndarray] = []
        good: list[int] = []
        scores: list[float | None] = [None] * len(photos)
        errors: dict[int, str] = {}
        for i, item in enumerate(photos):
            try:
                crop, face = fm.prepare(item, detect=detect, policy=policy)
            except (DataError, OSError) as exc:
                errors[i] = str(exc)
                continue
            crops.append(crop)
            good.append(i)
            scores[i] = None if face is None else float(face.score)
        feats = np.full((len(photos), self.dim), np.nan, np.float32)
        styles = None
        if crops:
            if self.fusion.needs_styles:
                f, s = fm.embed_with_styles(np.stack(crops))
                styles = np.full((len(photos), *s.shape[1:]), np.nan, np.float32)
                styles[good] = s
            else:
                f, _ = fm.embed_aligned(np.stack(crops))
            feats[good] = f
        return feats, styles, scores, errors

    # -- changes -------------------------------------------------------------------------------
    def add(self, name: str, photos: Sequence[Any], detect: bool | None = None, policy: str = "largest") -> AddReport:
        """Enrol photos (paths or uint8 RGB arrays) under ``name``; creates the identity if new."""
        photos = [photos] if isinstance(photos, (str, Path)) else list(photos)
        labels = [str(p) if isinstance(p, (str, Path)) else f"<array {i}>" for i, p in enumerate(photos)]
        hashes: list[str] = []
        for p in photos:
            try:
                hashes.append(content_hash(p))
            except OSError as exc:
                raise DataError(f"{p}: cannot read ({exc})") from exc
        feats, styles, scores, errors = self.embed_photos(photos, detect=detect, policy=policy)
        ok = [i for i in range(len(photos)) if i not in errors]
        report = AddReport(name, errors={labels[i]: msg for i, msg in errors.items()})
        if not ok:
            current = self.store.identity(name)
            report.template_version = 0 if current is None else current.template_version
            return report
        sub = self.add_features(
            name,
            feats[ok],
            styles=None if styles is None else styles[ok],
            sources=[labels[i] for i in ok],
            hashes=[hashes[i] for i in ok],
            det_scores=[scores[i] for i in ok],
            model_id=self.model_id,
        )
        sub.errors = report.errors
        return sub

    def add_features(
        self,
        name: str,
        features: np.ndarray,
        styles: np.ndarray | None = None,
        sources: Sequence[str] | None = None,
        hashes: Sequence[str] | None = None,
        det_scores: Sequence[float | None] | None = None,
        *,
        model_id: str,
    ) -> AddReport:
        """Enrol precomputed embeddings (n, D); ``model_id`` must be the gallery's model fingerprint."""
        if model_id != self.model_id:
            raise DataError(
                f"{self.directory}: embeddings from model {model_id[:12]} refused; this gallery holds "
                f"{self.meta['model_arch']} embeddings (fingerprint {self.model_id[:12]})"
            )
        name = name.strip()
        if not name:
            raise DataError("an identity needs a non-empty name")
        feats = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if feats.shape[1] != self.dim:
            raise DataError(f"{self.directory}: the gallery holds {self.dim}-d embeddings, got {feats.shape[1]}-d")
        n = len(feats)
        sources = list(sources) if sources is not None else [f"<features {i}>" for i in range(n)]
        hashes = list(hashes) if hashes is not None else [hashlib.sha256(f.tobytes()).hexdigest() for f in feats]
        det_scores = list(det_scores) if det_scores is not None else [None] * n
        if self.fusion.needs_styles and styles is None:
            raise DataError(f"{self.directory}: the {self.fusion_name} gallery needs styles beside the features")
        report = AddReport(name)
        with self._lock:
            with self.store.transaction() as cur:
                current = self.store.identity(name, cur)
                fresh: list[int] = []
                seen: set[str] = set()
                for i, h in enumerate(hashes):
                    if h in seen or (current is not None and self.store.has_image(cur, current.id, h)):
                        report.duplicates.append(sources[i])
                    else:
                        seen.add(h)
                        fresh.append(i)
                if fresh and not np.isfinite(feats[fresh]).all():
                    raise DataError(f"{name}: NaN/inf embeddings cannot be enrolled")
                if not fresh:
                    report.template_version = 0 if current is None else current.template_version
                    report.n_images = 0 if current is None else len(self.store.images(current.id, cur))
                    return report
                sty = None if styles is None else np.asarray(styles, np.float32)[fresh]
                state = self.fusion.merge(
                    None if current is None else state_from_bytes(current.state), self.fusion.state(feats[fresh], sty)
                )
                template = self.fusion.template(state)
                n_before = 0 if current is None else len(self.store.images(current.id, cur))
                ident, tver = self.store.upsert_identity(
                    cur, name, state_to_bytes(state), template, n_before + len(fresh), f"add {len(fresh)}"
                )
                for j, i in enumerate(fresh):
                    self.store.insert_image(
                        cur,
                        ident,
                        hashes[i],
                        sources[i],
                        feats[i],
                        None if sty is None else sty[j],
                        det_scores[i],
                        model_id,
                        self.meta["alignment"],
                    )
                version = self.store.bump_version(cur)
            self._after_commit()
            self.backend.apply(version, upserts=(np.array([ident]), np.array([tver]), template[None]), deletes=None)
        report.added = [sources[i] for i in fresh]
        report.n_images = n_before + len(fresh)
        report.template_version = tver
        return report

    def _after_commit(self) -> None:
        """Called between the SQLite commit and the index update (a seam for crash tests)."""

    def remove(self, name: str, photos: Sequence[str] | None = None) -> int:
        """Remove an identity, or only some of its photos (by source name or content hash); the
        template is recomputed from the remaining photos. Returns the number of photos removed."""
        with self._lock:
            with self.store.transaction() as cur:
                current = self.store.identity(name, cur)
                if current is None:
                    raise DataError(f"{self.directory}: no identity named {name!r}")
                rows = self.store.images(current.id, cur)
                if photos is None:
                    gone = rows
                else:
                    wanted = {str(p) for p in photos}
                    for p in photos:
                        if isinstance(p, (str, Path)) and Path(p).is_file():
                            wanted.add(content_hash(p))
                    gone = [r for r in rows if r.source in wanted or r.sha256 in wanted]
                    if not gone:
                        raise DataError(f"{name}: none of the given photos is enrolled")
                left = [r for r in rows if r not in gone]
                if not left:
                    self.store.delete_identity(cur, current.id)
                    upserts = None
                    deletes = np.array([current.id])
                else:
                    self.store.delete_images(cur, [r.id for r in gone])
                    feats = np.stack([r.feature for r in left])
                    sty = np.stack([r.styles for r in left]) if self.fusion.needs_styles else None  # type: ignore[misc]
                    state = self.fusion.state(feats, sty)
                    template = self.fusion.template(state)
                    ident, tver = self.store.upsert_identity(
                        cur, name, state_to_bytes(state), template, len(left), f"remove {len(gone)}"
                    )
                    upserts, deletes = (np.array([ident]), np.array([tver]), template[None]), None
                version = self.store.bump_version(cur)
            self._after_commit()
            self.backend.apply(version, upserts=upserts, deletes=deletes)
        return len(gone)

    # -- reading -------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """``[{name, n_images, template_version}]`` sorted by name."""
        return [{"name": r[1], "n_images": r[2], "template_version": r[3]} for r in self.store.identities()]

    def __len__(self) -> int:
        return len(self.store.identities())

    def template(self, name: str) -> np.ndarray:
        row = self.store.identity(name)
        if row is None:
            raise DataError(f"{self.directory}: no identity named {name!r}")
        return row.template.copy()

    def search_features(
        self, features: np.ndarray, k: int = 5, threshold: float | None = None, labels: Sequence[str] | None = None
    ) -> list[SearchResult]:
        """Open-set search of query embeddings (n, D); NaN rows give a result with ``error`` set."""
        thr = self.threshold if threshold is None else float(threshold)
        q = np.atleast_2d(np.asarray(features, dtype=np.float32))
        labels = list(labels) if labels is not None else [str(i) for i in range(len(q))]
        good = np.isfinite(q).all(1)
        results = [SearchResult(labels[i], None, float("-inf"), thr, error="no embedding") for i in range(len(q))]
        if not good.any():
            return results
        with self._lock:
            scores, ids = self.backend.search(q[good], k)
        names = self.store.names(sorted({int(i) for i in ids.ravel() if i >= 0}))
        for row, i in enumerate(np.flatnonzero(good)):
            cands = [
                (names[int(j)], float(s))
                for s, j in zip(scores[row], ids[row], strict=True)
                if j >= 0 and int(j) in names
            ]
            best = cands[0][1] if cands else float("-inf")
            match = cands[0][0] if cands and best >= thr else None
            results[i] = SearchResult(labels[i], match, best, thr, cands)
        return results

    def search(
        self, photos: Sequence[Any], k: int = 5, threshold: float | None = None, fuse: bool = False
    ) -> list[SearchResult]:
        """Search photos (each its own query, or ``fuse=True``: one query fused with the gallery's fusion)."""
        photos = [photos] if isinstance(photos, (str, Path)) else list(photos)
        labels = [str(p) if isinstance(p, (str, Path)) else f"<array {i}>" for i, p in enumerate(photos)]
        feats, styles, _, errors = self.embed_photos(photos)
        if fuse:
            ok = [i for i in range(len(photos)) if i not in errors]
            if not ok:
                return [
                    SearchResult(
                        "+".join(labels), None, float("-inf"), self.threshold, error="; ".join(errors.values())
                    )
                ]
            query = self.fusion.template(self.fusion.state(feats[ok], None if styles is None else styles[ok]))
            return self.search_features(query[None], k, threshold, ["+".join(labels[i] for i in ok)])
        results = self.search_features(feats, k, threshold, labels)
        for i, msg in errors.items():
            results[i].error = msg
        return results

    def export(self, path: str | Path) -> Path:
        """Write the templates and the per-photo embeddings: ``.npz``, or ``.parquet`` (needs pyarrow;
        one row per identity: name, n_images, template_version, template)."""
        path = Path(path)
        ids, templates, names, versions = self.store.templates()
        images = self.store.images()
        counts = {r[0]: r[2] for r in self.store.identities()}
        if path.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise ConfigError(f"{path}: parquet export needs pyarrow (pip install pyarrow); use .npz") from exc
            table = pa.table(
                {
                    "name": [names[int(i)] for i in ids],
                    "n_images": [counts[int(i)] for i in ids],
                    "template_version": [versions[int(i)] for i in ids],
                    "template": [t.tolist() for t in templates],
                }
            )
            table = table.replace_schema_metadata({"fuseface_gallery": json.dumps(self._export_meta())})
            pq.write_table(table, path)
            return path
        if path.suffix != ".npz":
            raise ConfigError(f"{path}: export to .npz or .parquet")
        arrays: dict[str, Any] = {
            "names": np.array([names[int(i)] for i in ids]),
            "templates": templates,
            "template_versions": np.array([versions[int(i)] for i in ids], np.int64),
            "image_names": np.array([names[r.identity_id] for r in images]),
            "image_sources": np.array([r.source for r in images]),
            "image_sha256": np.array([r.sha256 for r in images]),
            "image_features": np.stack([r.feature for r in images]) if images else np.zeros((0, self.dim), np.float32),
            "meta": np.array(json.dumps(self._export_meta())),
        }
        if self.fusion.needs_styles and images:
            arrays["image_styles"] = np.stack([r.styles for r in images])  # type: ignore[misc]
        np.savez(path, **arrays)
        return path

    def _export_meta(self) -> dict[str, Any]:
        keep = ("model_id", "model_arch", "dim", "alignment", "fusion", "threshold", "version")
        meta = self.store.meta()
        return {k: meta[k] for k in keep if k in meta}

    def verify(self) -> bool:
        """Full check: the index holds exactly SQLite's templates (ids and vectors)."""
        return self.backend.matches(self.store, full=True)
