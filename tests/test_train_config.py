"""Training configuration: strict typed parsing, overrides, one clear message per error, task sections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fuseface.errors import ConfigError
from fuseface.train.config import TrainConfig, load_config, save_config
from fuseface.train.task import BaseTask, register_task

PROJECT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_recipes_load_with_their_documented_settings() -> None:
    r50 = load_config(PROJECT / "configs/arcface_ms1mv3_r50.yaml", check_paths=False)
    assert (r50.model.name, r50.data.num_classes, r50.data.channel_order) == ("ir50", 93431, "rgb")
    assert (r50.optim.lr, r50.optim.weight_decay, r50.optim.clip_grad_norm, r50.train.amp) == (0.1, 5e-4, 5.0, "fp16")
    assert (r50.train.batch_size, r50.train.epochs, r50.schedule.name) == (128, 20.0, "poly")
    assert (r50.loss.m1, r50.loss.m2, r50.loss.m3, r50.loss.s) == (1.0, 0.5, 0.0, 64.0)
    r100 = load_config(PROJECT / "configs/arcface_ms1mv3_r100.yaml", check_paths=False)
    assert r100.model.name == "ir100"
    ada = load_config(PROJECT / "configs/adaface_ms1mv2_ir101.yaml", check_paths=False)
    assert (ada.loss.name, ada.data.channel_order, ada.train.global_batch_size) == ("adaface", "bgr", 512)
    assert (ada.schedule.name, ada.schedule.milestones, ada.train.epochs) == ("multistep", [12.0, 20.0, 24.0], 26.0)
    assert ada.optim.no_decay_bn and ada.data.adaface_aug
    for demo in sorted(PROJECT.glob("configs/cpu_demo_*.yaml")):
        cfg = load_config(demo)
        assert cfg.data.kind == "synthetic" and cfg.train.device == "cpu"


def test_overrides_and_saved_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.kind=synthetic",
            "optim.lr=0.02",
            "model.kwargs.conv=msconv",
            "model.kwargs.stages=[3,4]",
            "schedule.milestones=[1,2]",
            "loss.aux_weights.local=0.5",
            f"out_dir={tmp_path}",
        ],
    )
    assert cfg.optim.lr == 0.02 and isinstance(cfg.optim.lr, float)
    assert cfg.model.kwargs == {"conv": "msconv", "stages": [3, 4]}
    assert cfg.schedule.milestones == [1.0, 2.0] and cfg.loss.aux_weights == {"local": 0.5}
    saved = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "unknown key optim.'lrr'"),
        ("bogus=1", "unknown key 'bogus'"),
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
        ("train.steps=1.5", "train.steps: expected int"),
        ("log.progress=3", "log.progress: expected bool"),
        ("optim.name=rmsprop", "optim.name: expected one of sgd, adamw"),
        ("data.root=/no/such/dir", "data.root: /no/such/dir does not exist"),
        ("task=nope", "unknown task 'nope'"),
        ("loss.sample_rate=0", "loss.sample_rate: must be in (0, 1]"),
        ("optim", "expected key=value"),
    ],
)
def test_config_errors_are_one_clear_message(tmp_path: Path, override: str, needle: str) -> None:
    path = _write(tmp_path, {"data": {"kind": "recordio", "root": str(tmp_path)}})
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    if override.startswith(("optim.lr", "bogus")):
        assert str(path) in message


def test_missing_recordio_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no train\.rec"):
        load_config(_write(tmp_path, {"data": {"kind": "recordio", "root": str(tmp_path)}}))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_cli_prints_config_errors_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fuseface.cli.main import main

    path = _write(tmp_path, {"data": {"kind": "synthetic"}, "optim": {"lr": "x"}})
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "optim.lr: expected float" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@dataclass
class _ToyConfig:
    dim: int = 4
    name: str = "toy"


class _ToyTask(BaseTask):
    config_section = "toy"
    config_class = _ToyConfig


def test_task_sections_are_typed_and_strict(tmp_path: Path) -> None:
    register_task("toy_test", _ToyTask)
    cfg = load_config(_write(tmp_path, {"task": "toy_test", "toy": {"dim": 9}}))
    assert cfg.sections["toy"] == _ToyConfig(dim=9)
    cfg2 = load_config(None, ["task=toy_test", "toy.name=abc"])
    assert cfg2.sections["toy"].name == "abc"
    with pytest.raises(ConfigError, match=r"unknown key toy\.'width'"):
        load_config(_write(tmp_path, {"task": "toy_test", "toy": {"width": 9}}))
    with pytest.raises(ConfigError, match=r"toy\.dim: expected int"):
        load_config(None, ["task=toy_test", "toy.dim=wide"])
    # a section of a task that is not selected is an unknown key
    with pytest.raises(ConfigError, match="unknown key 'toy'"):
        load_config(None, ["toy.dim=3"])
    assert isinstance(load_config(None, ["data.kind=synthetic"]), TrainConfig)
