"""End-to-end training on the real synthetic -> RecordIO path with a tiny IResNet:
SIGKILL + resume == uninterrupted, corrupt checkpoints, 2 gloo processes == 1 process, and a
resume with another number of processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dist_helpers import register_tiny, tiny_config_dict
from fuseface.errors import CheckpointError
from fuseface.train import checkpoint as C
from fuseface.train.config import config_from_dict
from fuseface.train.trainer import Callback, TrainResult, train

HELPER = Path(__file__).with_name("dist_helpers.py")
PROJECT = Path(__file__).resolve().parents[1]


def _cfg(out_dir: Path, cache: Path, **train_kw):
    register_tiny()
    return config_from_dict(tiny_config_dict(out_dir, cache, **train_kw))


def _yaml(path: Path, out_dir: Path, cache: Path, **train_kw) -> Path:
    path.write_text(yaml.safe_dump(tiny_config_dict(out_dir, cache, **train_kw)))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(PROJECT / "src"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable weights only (BN running statistics legitimately differ with per-rank batches)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches_tracked" not in k}


def _assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


def _initial_state() -> dict[str, torch.Tensor]:
    """The tiny backbone's weights before training (the trainer seeds with train.seed=7)."""
    from dist_helpers import tiny_backbone

    torch.manual_seed(7)
    return tiny_backbone(input_size=32, num_features=32).state_dict()


def _assert_same_training(a: dict, b: dict, init: dict | None, ratio: float = 0.02) -> None:
    """Float32 reductions in another order drift a little (BN statistics of 8 images amplify it):
    per tensor, |a - b| must be tiny next to how far training moved it (|a - init|)."""
    assert a.keys() == b.keys()
    for key in a:
        moved = (a[key] - init[key]).norm() if init is not None else a[key].norm()
        diff = (a[key] - b[key]).norm()
        assert diff <= ratio * moved + 1e-6, f"{key}: |a-b|={diff:.3g} vs |a-init|={moved:.3g}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic") / "faces"


class _Recorder(Callback):
    """Records what the loop reports to its callbacks."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_train_start(self, trainer) -> None:
        self.events.append(("start", trainer.step))

    def on_step_end(self, trainer, record) -> None:
        self.events.append(("step", record["step"]))

    def on_checkpoint(self, trainer, path) -> None:
        assert path.is_file()
        self.events.append(("checkpoint", trainer.step))

    def on_train_end(self, trainer, result) -> None:
        assert result.model_path.is_file()
        self.events.append(("end", trainer.step))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> TrainResult:
    """One process, global batch 16 as 2 accumulated micro-batches of 8, 6 steps (2 epochs)."""
    out = tmp_path_factory.mktemp("reference")
    recorder = _Recorder()
    result = train(_cfg(out, cache, grad_accum=2), callbacks=[recorder])
    result.callback_events = recorder.events
    return result


def test_reference_run_learns_and_exports(reference: TrainResult) -> None:
    from fuseface.infer.model_file import read_model_file

    losses = [h["loss"] for h in reference.history]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert [h["epoch"] for h in reference.history] == [0, 0, 1, 1, 1, 2]
    _, meta = read_model_file(reference.model_path)
    assert meta.arch == "tiny_ir_test" and meta.channel_order == "rgb" and meta.input_size == 32
    assert (reference.out_dir / "config.yaml").is_file()
    lines = (reference.out_dir / "metrics.jsonl").read_text().splitlines()
    assert any('"images_per_s"' in line for line in lines)
    ckpt = C.read_checkpoint(reference.checkpoint_path)
    assert ckpt["step"] == 6 and ckpt["sampler"]["epoch"] == 2
    assert ckpt["modules"]["head"]["weight"].shape == (8, 32)
    # the callbacks saw the run: start, every step, the checkpoints, the end
    events = reference.callback_events
    assert events[0] == ("start", 0) and events[-1] == ("end", 6)
    assert [s for kind, s in events if kind == "step"] == [1, 2, 3, 4, 5, 6]
    assert ("checkpoint", 6) in events


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, cache: Path, reference: TrainResult) -> None:
    out = tmp_path / "killed"
    cfg_path = _yaml(tmp_path / "killed.yaml", out, cache, grad_accum=2)
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), "train", "--config", str(cfg_path), "--pause-after-step", "3"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not C.checkpoint_path(out, 3).is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training subprocess did not reach step 3"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()

    resumed = train(_cfg(out, cache, grad_accum=2), resume=True)
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    for got, want in zip(resumed.history, reference.history[3:], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-6)
    a = C.read_checkpoint(resumed.checkpoint_path)["modules"]
    b = C.read_checkpoint(reference.checkpoint_path)["modules"]
    for name in ("backbone", "head"):
        _assert_states_close(a[name], b[name], atol=1e-6)


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_survives(
    tmp_path: Path, cache: Path, reference: TrainResult
) -> None:
    out = tmp_path / "run"
    shutil.copytree(C.checkpoint_dir(reference.out_dir), C.checkpoint_dir(out))
    newest = C.checkpoint_path(out, 6)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    (C.checkpoint_dir(out) / "step_00000009.pt.tmp").write_bytes(b"half-written")  # crash during a write
    assert C.latest_checkpoint(out) == newest
    with pytest.raises(CheckpointError) as info:
        train(_cfg(out, cache, grad_accum=2), resume=True)
    message = str(info.value)
    assert str(newest) in message and "truncated or corrupt" in message and "step_00000003.pt" in message
    newest.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        C.read_checkpoint(newest)
    previous = C.checkpoint_path(out, 3)
    assert C.read_checkpoint(previous)["step"] == 3
    # the previous checkpoint still resumes to the reference result
    resumed = train(_cfg(out, cache, grad_accum=2), resume=str(previous))
    assert resumed.history[-1]["loss"] == pytest.approx(reference.history[-1]["loss"], rel=1e-6)


@pytest.mark.distributed
def test_two_gloo_processes_equal_one_and_resume_with_one(tmp_path: Path, cache: Path, reference: TrainResult) -> None:
    out = tmp_path / "ddp"
    cfg_path = _yaml(tmp_path / "ddp.yaml", out, cache, steps=3)
    # a checkpoint mid-run too (gathering sharded optimizer state must leave the live state alone)
    cmd_overrides = ["checkpoint.every=2"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HELPER),
        "train",
        "--config",
        str(cfg_path),
        *cmd_overrides,
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    import json

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r.get("event") == "start")
    assert start["world_size"] == 2 and start["global_batch"] == 16
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses == pytest.approx([h["loss"] for h in reference.history[:3]], rel=1e-4, abs=1e-4)
    two = C.read_checkpoint(C.checkpoint_path(out, 3))
    one = C.read_checkpoint(C.checkpoint_path(reference.out_dir, 3))
    assert two["world_size"] == 2
    init = _params(_initial_state())
    _assert_same_training(_params(two["modules"]["backbone"]), _params(one["modules"]["backbone"]), init)
    _assert_same_training(two["modules"]["head"], one["modules"]["head"], None)

    # resume the 2-process run with 1 process (same global batch via grad_accum=2)
    resumed = train(_cfg(out, cache, grad_accum=2), resume=True)
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in reference.history[3:]], rel=1e-3)
    final = C.read_checkpoint(resumed.checkpoint_path)["modules"]
    ref = C.read_checkpoint(reference.checkpoint_path)["modules"]
    _assert_same_training(_params(final["backbone"]), _params(ref["backbone"]), init)
    _assert_same_training(final["head"], ref["head"], None)


def test_lgaf_auxiliary_losses_are_added(tmp_path: Path, cache: Path) -> None:
    from fuseface.errors import ConfigError

    register_tiny()
    data = tiny_config_dict(tmp_path / "lgaf", cache, steps=2)
    data["model"]["kwargs"]["head"] = "lgaf"
    data["loss"]["aux_weights"] = {"global": 0.5, "local": 0.25}
    data["checkpoint"]["every"] = 0
    result = train(config_from_dict(data))
    for h in result.history:
        assert h["loss_main"] + 0.5 * h["loss_global"] + 0.25 * h["loss_local"] == pytest.approx(h["loss"], rel=1e-5)
    data["loss"]["aux_weights"] = {"nope": 1.0}
    data["out_dir"] = str(tmp_path / "bad")
    with pytest.raises(ConfigError, match="no aux embedding 'nope'"):
        train(config_from_dict(data))
