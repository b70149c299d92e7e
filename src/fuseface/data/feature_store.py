"""Sharded, resumable store of precomputed backbone features for set fusion (CAFace training/eval).

Layout of a store directory::

    manifest.json                # format, sizes, copies, dtype, backbone info, shard table
    shard_00000.safetensors      # tensors: features (n, C, D), styles (n, C, S, 2), labels (n,), index (n,)
    shard_00001.safetensors
    ...

``C`` copies per image: copy 0 is the clean image, copies 1..C-1 augmented versions (the CAFace
training blob stores 16 augmented versions per image, ``METHODS.md`` §3.9). Features are the
**un-normalised** embeddings (unit feature times norm); styles are the per-channel [mean, unbiased
std] of the chosen stage outputs (CAFace: stages 2 and 3 -> S = 384). Values are stored as float16
(as the official blob) or float32.

Resuming: each shard is written to a temporary file and renamed when complete, then recorded in
the manifest (also written atomically). :meth:`FeatureStoreWriter.pending` lists the shards still
missing, so an interrupted extraction continues where it stopped; re-opening a store with different
sizes raises :class:`fuseface.errors.DataError` naming the mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuseface.errors import DataError

__all__ = ["FeatureStore", "FeatureStoreWriter", "StoreSpec", "write_feature_store"]

FORMAT = "fuseface-feature-store"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class StoreSpec:
    """What every shard of a store holds (checked when a store is re-opened for resuming)."""

    num_images: int
    feature_dim: int = 512
    style_channels: int = 384
    copies: int = 1
    shard_size: int = 4096
    dtype: str = "float16"
    meta: dict[str, Any] = field(default_factory=dict)  # backbone, channel order, stages, augmentation...

    def shard_ranges(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_size, self.num_images)) for s in range(0, self.num_images, self.shard_size)]


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


class FeatureStoreWriter:
    """Create (or resume) a store at ``root`` for ``spec``; write shards in any order."""

    def __init__(self, root: str | Path, spec: StoreSpec) -> None:
        if spec.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {spec.dtype!r}")
        if spec.num_images <= 0 or spec.shard_size <= 0 or spec.copies <= 0:
            raise ValueError(f"num_images, shard_size and copies must be > 0: {spec}")
        self.root = Path(root)
        self.spec = spec
        self.root.mkdir(parents=True, exist_ok=True)
        manifest_path = self.root / MANIFEST
        self.done: set[int] = set()
        if manifest_path.is_file():
            old = _read_manifest(self.root)
            old_spec = {
                k: old["spec"].get(k)
                for k in ("num_images", "feature_dim", "style_channels", "copies", "shard_size", "dtype")
            }
            new_spec = {k: getattr(spec, k) for k in old_spec}
            if old_spec != new_spec:
                diff = {k: (old_spec[k], new_spec[k]) for k in old_spec if old_spec[k] != new_spec[k]}
                raise DataError(f"{manifest_path}: existing store has different settings (old, new): {diff}")
            self.done = {int(i) for i in old.get("complete", []) if (self.root / _shard_name(int(i))).is_file()}
        self._save_manifest()

    def _save_manifest(self) -> None:
        _write_json(
            self.root / MANIFEST,
            {
                "format": FORMAT,
                "version": VERSION,
                "spec": asdict(self.spec),
                "num_shards": len(self.spec.shard_ranges()),
                "complete": sorted(self.done),
            },
        )

    def pending(self) -> list[tuple[int, int, int]]:
        """``(shard_id, start, stop)`` of the shards not written yet."""
        return [(i, s, e) for i, (s, e) in enumerate(self.spec.shard_ranges()) if i not in self.done]

    def write_shard(
        self,
        shard_id: int,
        features: Any,
        styles: Any,
        labels: Any,
        extras: Mapping[str, Any] | None = None,
        copy_params: list[list[dict[str, Any]]] | None = None,
    ) -> None:
        """Write shard ``shard_id`` (rows ``start..stop`` of the store) atomically and record it.

        ``extras``: more per-row arrays (n, ...) stored as ``extra.NAME`` (e.g. per-copy degradation
        kind, severity and detector score, (n, C)); ``copy_params``: per row, per copy, the JSON
        parameters of how the copy was made (stored in the shard's metadata).
        """
        from safetensors.torch import save_file

        start, stop = self.spec.shard_ranges()[shard_id]
        n, c = stop - start, self.spec.copies
        dt = torch.float16 if self.spec.dtype == "float16" else torch.float32
        f = torch.as_tensor(np.asarray(features, dtype=np.float32)).reshape(n, c, self.spec.feature_dim)
        s = torch.as_tensor(np.asarray(styles, dtype=np.float32)).reshape(n, c, self.spec.style_channels, 2)
        lab = torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(n)
        if dt == torch.float16:
            big = max(float(f.abs().nan_to_num(0.0).max()), float(s.abs().nan_to_num(0.0).max()))
            if big > 65000.0:
                raise DataError(
                    f"{self.root}: shard {shard_id} has values up to {big:.3g}, beyond float16; "
                    "use dtype float32 (--dtype float32)"
                )
        tensors = {
            "features": f.to(dt).contiguous(),
            "styles": s.to(dt).contiguous(),
            "labels": lab.contiguous(),
            "index": torch.arange(start, stop, dtype=torch.int64),
        }
        for name, value in (extras or {}).items():
            arr = np.asarray(value)
            if arr.shape[:1] != (n,):
                raise ValueError(f"extra {name!r} has {arr.shape[:1]} rows, shard {shard_id} has {n}")
            tensors[f"extra.{name}"] = torch.from_numpy(np.ascontiguousarray(arr))
        metadata = None
        if copy_params is not None:
            if len(copy_params) != n:
                raise ValueError(f"copy_params has {len(copy_params)} rows, shard {shard_id} has {n}")
            metadata = {"copy_params": json.dumps(copy_params, separators=(",", ":"), default=float)}
        path = self.root / _shard_name(shard_id)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        self.done.add(shard_id)
        self._save_manifest()

    @property
    def complete(self) -> bool:
        return not self.pending()


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root}: not a feature store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: corrupt manifest (not a JSON object)")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a fuseface feature store manifest (format={manifest.get('format')!r})")
    return manifest


class FeatureStore:
    """Read a complete store: ``load()`` -> (features (N,C,D), styles (N,C,S,2), labels (N,)) float32."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = _read_manifest(self.root)
        path = self.root / MANIFEST
        try:
            self.spec = StoreSpec(**manifest["spec"])
            ints = (self.spec.num_images, self.spec.feature_dim, self.spec.style_channels, self.spec.copies)
            if not all(isinstance(v, int) and v > 0 for v in (*ints, self.spec.shard_size)):
                raise ValueError("sizes must be positive integers")
            complete = {int(i) for i in manifest.get("complete", [])}
            num_shards = int(manifest["num_shards"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: corrupt manifest ({type(exc).__name__}: {exc})") from None
        if num_shards != len(self.spec.shard_ranges()):
            raise DataError(f"{path}: corrupt manifest ({num_shards} shards for {self.spec.num_images} images)")
        missing = sorted(set(range(num_shards)) - complete)
        if missing:
            raise DataError(
                f"{self.root}: incomplete feature store, {len(missing)} shards missing "
                f"(first: {_shard_name(missing[0])}); re-run the extraction to resume"
            )

    @property
    def num_images(self) -> int:
        return self.spec.num_images

    @property
    def copies(self) -> int:
        return self.spec.copies

    def shards(self) -> Iterator[dict[str, np.ndarray]]:
        """Each shard as a dict of arrays (features/styles float32), in order."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        for i in range(len(self.spec.shard_ranges())):
            path = self.root / _shard_name(i)
            try:
                data = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as exc:
                raise DataError(f"{path}: unreadable feature shard ({exc})") from None
            a, b = self.spec.shard_ranges()[i]
            sp = self.spec
            expected = {
                "features": (b - a, sp.copies, sp.feature_dim),
                "styles": (b - a, sp.copies, sp.style_channels, 2),
                "labels": (b - a,),
            }
            for key, shape in expected.items():
                if key not in data or tuple(data[key].shape) != shape:
                    got = tuple(data[key].shape) if key in data else "missing"
                    raise DataError(f"{path}: corrupt feature shard ({key} {got}, expected {shape})")
            for key in ("features", "styles"):
                data[key] = data[key].astype(np.float32)
            yield data

    def load_extras(self) -> dict[str, np.ndarray]:
        """The ``extra.NAME`` arrays of every shard, concatenated (``{}`` for a store without)."""
        parts = [{k[6:]: v for k, v in p.items() if k.startswith("extra.")} for p in self.shards()]
        names = set(parts[0]) if parts else set()
        return {k: np.concatenate([p[k] for p in parts]) for k in sorted(names)}

    def copy_params(self) -> list[list[dict[str, Any]]]:
        """Per image, per copy, the parameters recorded at extraction (empty dicts when none)."""
        from safetensors import safe_open

        out: list[list[dict[str, Any]]] = []
        for i, (start, stop) in enumerate(self.spec.shard_ranges()):
            with safe_open(str(self.root / _shard_name(i)), framework="np") as f:
                meta = f.metadata() or {}
            if "copy_params" in meta:
                out.extend(json.loads(meta["copy_params"]))
            else:
                out.extend([[{} for _ in range(self.spec.copies)] for _ in range(stop - start)])
        return out

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = list(self.shards())
        return (
            np.concatenate([p["features"] for p in parts]),
            np.concatenate([p["styles"] for p in parts]),
            np.concatenate([p["labels"] for p in parts]),
        )


def write_feature_store(
    root: str | Path,
    features: Any,
    styles: Any,
    labels: Any,
    shard_size: int = 4096,
    dtype: str = "float32",
    meta: dict[str, Any] | None = None,
) -> FeatureStore:
    """Write in-memory arrays (N, C, D) / (N, C, S, 2) / (N,) as a store (``C`` may be omitted)."""
    f = np.asarray(features, dtype=np.float32)
    s = np.asarray(styles, dtype=np.float32)
    if f.ndim == 2:
        f, s = f[:, None], s[:, None]
    spec = StoreSpec(
        num_images=len(f),
        feature_dim=f.shape[-1],
        style_channels=s.shape[-2],
        copies=f.shape[1],
        shard_size=shard_size,
        dtype=dtype,
        meta=dict(meta or {}),
    )
    writer = FeatureStoreWriter(root, spec)
    lab = np.asarray(labels)
    for i, a, b in writer.pending():
        writer.write_shard(i, f[a:b], s[a:b], lab[a:b])
    return FeatureStore(root)
