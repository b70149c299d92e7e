"""Training checkpoints: atomic writes, safe loads, exact resume, any world size.

A checkpoint is one ``torch.save`` file ``out_dir/checkpoints/step_00001234.pt`` written by rank 0
to ``<name>.tmp`` then renamed (so a crash never leaves a half-written file under the final name)
and loaded with ``torch.load(weights_only=True)``: only tensors and plain Python types are stored.
The last ``keep`` checkpoints are kept (at least 2, so the previous one survives a bad write).

Contents (``FORMAT = "fuseface-train-checkpoint-1"``):

* ``step`` — optimizer steps done; ``modules`` — state dict of every task module, with the
  rank-sharded parameters (Partial FC centres) gathered into full tensors;
* ``optimizer`` — its state dict, the state of sharded parameters (momentum, Adam moments) gathered
  the same way; ``scheduler``, ``scaler`` (AMP) state dicts;
* ``sampler`` — ``(epoch, consumed, seed, global_batch, num_samples)``;
* ``rng`` — per rank: torch CPU (+ CUDA) generator states as uint8 tensors, numpy's MT19937 state
  and Python's ``random`` state as tensors / ints;
* ``task`` — ``Task.checkpoint_state()``; ``config`` — the resolved YAML; ``world_size``.

On load, full sharded tensors are cut to this rank's rows, so a run saved with W processes resumes
with W' processes. RNG states are restored exactly when W' == W (rank r takes rank r mod W's
otherwise); the sample order never depends on them (see :mod:`fuseface.train.sampler`).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.errors import CheckpointError
from fuseface.train import distributed as D
from fuseface.train.task import ShardSpec

FORMAT = "fuseface-train-checkpoint-1"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


# -- RNG --------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- sharded tensors ------------------------------------------------------------------------------
def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's dim-0 shard of ``tensor`` in rank order (all ranks call this)."""
    if D.world_size() == 1:
        return tensor.detach().cpu().clone()
    parts = D.all_gather_variable(tensor.detach().contiguous())
    return torch.cat(parts, dim=0).cpu()


def _optimizer_param_order(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_full(optimizer: torch.optim.Optimizer, sharded: Mapping[nn.Parameter, ShardSpec]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with the per-parameter state of sharded parameters gathered."""
    state = optimizer.state_dict()
    # state_dict() shares the per-parameter dicts with the live optimizer: copy before replacing
    state["state"] = {k: dict(v) for k, v in state["state"].items()}
    params = _optimizer_param_order(optimizer)
    for index, param in enumerate(params):
        if param not in sharded:
            continue
        entry = state["state"].get(index)
        # every rank must take part in the same gathers, so walk a fixed key order
        for key in sorted(entry or {}):
            value = entry[key]
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == param.shape[0]:
                entry[key] = gather_rows(value)
    return state


def optimizer_state_local(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, sharded: Mapping[nn.Parameter, ShardSpec]
) -> dict[str, Any]:
    """Cut the gathered state of sharded parameters back to this rank's rows."""
    params = _optimizer_param_order(optimizer)
    for index, param in enumerate(params):
        spec = sharded.get(param)
        entry = state["state"].get(index)
        if spec is None or not entry:
            continue
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == spec.total:
                entry[key] = value[spec.start : spec.stop].clone()
    return state


def module_states_full(modules: Mapping[str, nn.Module], sharded: Mapping[nn.Parameter, ShardSpec]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, module in modules.items():
        sd = module.state_dict()
        for key, param in module.named_parameters():
            if param in sharded:
                sd[key] = gather_rows(param)
        out[name] = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}
    return out


def load_module_states(
    modules: Mapping[str, nn.Module], states: Mapping[str, Any], sharded: Mapping[nn.Parameter, ShardSpec], source: str
) -> None:
    missing = [n for n in modules if n not in states]
    if missing:
        raise CheckpointError(f"{source}: no state for module(s) {missing}")
    for name, module in modules.items():
        sd = dict(states[name])
        for key, param in module.named_parameters():
            spec = sharded.get(param)
            if spec is not None and key in sd:
                full = sd[key]
                if full.shape[0] != spec.total:
                    raise CheckpointError(f"{source}: {name}.{key} has {full.shape[0]} rows, expected {spec.total}")
                sd[key] = full[spec.start : spec.stop]
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: module {name!r} does not match: {str(exc).splitlines()[0]}") from None


# -- files ------------------------------------------------------------------------------------------
def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints in ``out_dir/checkpoints`` sorted by step (temp files ignored)."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def write_atomic(obj: dict[str, Any], path: Path) -> Path:
    """``torch.save`` to ``path.tmp``, flush to disk, then rename over ``path``.

    A failed write (no space left, quota, I/O error) removes the partial ``.tmp`` and raises
    :class:`CheckpointError` naming the file; earlier checkpoints are never touched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        previous = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
        kept = f"; the previous checkpoints are intact ({', '.join(previous[-2:])})" if previous else ""
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror or exc}){kept}") from None
    return path


def prune(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``max(keep, 2)`` checkpoints."""
    found = list_checkpoints(out_dir)
    for old in found[: max(0, len(found) - max(2, keep))]:
        old.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely; :class:`CheckpointError` naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign objects: all "corrupt"
        others = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
        hint = f"; other checkpoints: {', '.join(others)}" if others else ""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt: {reason[:200]}){hint}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fuseface training checkpoint")
    return obj
