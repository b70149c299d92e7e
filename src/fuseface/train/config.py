"""Typed training configuration: dataclasses filled from YAML plus dotted ``key=value`` overrides.

``load_config("configs/x.yaml", ["optim.lr=0.05", "model.kwargs.conv=msconv"])`` reads the YAML,
applies the overrides (values parsed as YAML scalars / lists), and converts the nested mapping into
:class:`TrainConfig` strictly: an unknown key, a value of the wrong type, or a data path that does
not exist raises one :class:`~fuseface.errors.ConfigError` whose message names the file and the
dotted key. ``int`` is accepted where a ``float`` is expected; ``dict`` fields (``model.kwargs``,
``loss.aux_weights``) are free-form. The resolved configuration is written beside every run as
``out_dir/config.yaml`` (:func:`save_config`), and that file loads back to the same config.

Task-specific sections: the task selected by ``task:`` may declare ``config_section`` and
``config_class`` (see :mod:`fuseface.train.task`); its section is parsed with the same rules into
``cfg.sections[config_section]``.

Batch size: ``train.batch_size`` is the per-process micro-batch (insightface's "128 per GPU");
``train.global_batch_size`` (if > 0) fixes the global batch instead and the per-process batch is
derived from the world size, which keeps the sample order identical when a run is resumed with a
different number of processes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fuseface.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "ir50"  # registered backbone name
    kwargs: dict[str, Any] = field(default_factory=dict)  # create_backbone keywords (conv, head, input_size...)


@dataclass
class SyntheticConfig:
    num_identities: int = 64
    images_per_identity: int = 8
    seed: int = 0
    nuisance: str = "default"
    cache_dir: str = ""  # default: <out_dir>/../.synthetic_cache/<hash of these settings>


@dataclass
class DataConfig:
    kind: str = "recordio"  # recordio | folder | synthetic
    root: str = ""  # RecordIO folder (train.rec/.idx) or image folder
    channel_order: str = "rgb"  # order the network sees: rgb (insightface) or bgr (AdaFace)
    image_size: int = 112  # side fed to the network (images are resized if they differ)
    num_classes: int = 0  # 0: taken from the dataset
    flip: bool = True
    adaface_aug: bool = False  # AdaFace crop / low-res / photometric augmentation (p=0.2 each)
    occlusion_p: float = 0.0
    skip_corrupt: bool = False
    num_workers: int = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class LossConfig:
    name: str = "arcface"  # arcface | cosface | combined | adaface
    s: float = 64.0
    m1: float = 1.0  # combined: cos(m1*theta + m2) - m3
    m2: float = 0.5
    m3: float = 0.0
    m: float = 0.4  # adaface margin (arcface/cosface use m2/m3 via their defaults)
    h: float = 0.333
    t_alpha: float = 0.01
    no_grad_margin: bool = False  # insightface's margin-under-no_grad behaviour
    sample_rate: float = 1.0  # Partial FC: fraction of class centres per step
    fc_init_std: float = 0.01
    aux_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    no_decay_bn: bool = False  # AdaFace: no weight decay on BatchNorm parameters
    clip_grad_norm: float = 5.0  # 0: off (applied to the backbone, as insightface)


@dataclass
class ScheduleConfig:
    name: str = "poly"  # poly | cosine | multistep | constant
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # added to warmup_epochs * steps_per_epoch
    power: float = 1.0
    milestones: list[float] = field(default_factory=list)  # multistep, in epochs
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class LoopConfig:
    epochs: float = 20.0
    steps: int = 0  # > 0 overrides epochs
    batch_size: int = 128  # per process
    global_batch_size: int = 0  # > 0: fixed global batch (per-process batch derived)
    grad_accum: int = 1
    seed: int = 2048
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | fp16 | bf16 (bf16 also on CPU)
    deterministic: bool = False
    num_threads: int = 0  # torch.set_num_threads when > 0


@dataclass
class CheckpointConfig:
    every: int = 2000  # steps; 0: only at the end
    keep: int = 2


@dataclass
class LogConfig:
    every: int = 50
    progress: bool = True
    tensorboard: bool = True


@dataclass
class ValConfig:
    bins: list[str] = field(default_factory=list)
    every: int = 0  # steps; 0: only at the end when bins are given
    batch_size: int = 64
    flip: bool = True


@dataclass
class TrainConfig:
    task: str = "recognition"
    out_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    val: ValConfig = field(default_factory=ValConfig)
    sections: dict[str, Any] = field(default_factory=dict)  # task sections (not a YAML key)


_CHOICES = {
    "data.kind": ("recordio", "folder", "synthetic"),
    "data.channel_order": ("rgb", "bgr"),
    "loss.name": ("arcface", "cosface", "combined", "adaface"),
    "optim.name": ("sgd", "adamw"),
    "schedule.name": ("poly", "cosine", "multistep", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.amp": ("none", "fp16", "bf16"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}: expected a list, got {value!r} ({type(value).__name__})")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r} ({type(value).__name__})")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sections" or cls is not TrainConfig]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key {where}{unknown[0]!r}; valid keys{' of ' + prefix if prefix else ''}: "
            f"{', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        converted = _convert(value, hints[name], key, source)
        choices = _CHOICES.get(key)
        if choices and converted not in choices:
            raise ConfigError(f"{source}: {key}: expected one of {', '.join(choices)}, got {converted!r}")
        kwargs[name] = converted
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}={value!r}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=0.05", "val.bins=[a.bin,b.bin]"]`` -> ``[("optim.lr", 0.05), ...]``."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def config_from_dict(data: dict[str, Any], source: str = "<config>", check_paths: bool = True) -> TrainConfig:
    """Strictly convert a nested mapping into :class:`TrainConfig` (see the module docstring)."""
    from fuseface.train.task import resolve_task

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    task_name = data.get("task", "recognition")
    if not isinstance(task_name, str):
        raise ConfigError(f"{source}: task: expected str, got {task_name!r}")
    task_cls = resolve_task(task_name)
    sections: dict[str, Any] = {}
    section = getattr(task_cls, "config_section", None)
    if section:
        section_cls = getattr(task_cls, "config_class", None)
        raw = data.pop(section, None) or {}
        sections[section] = _build(section_cls, raw, section, source) if section_cls else raw
    cfg = _build(TrainConfig, data, "", source)
    cfg.sections = sections
    validate(cfg, source, check_paths=check_paths)
    return cfg


def validate(cfg: TrainConfig, source: str = "<config>", check_paths: bool = True) -> None:
    """Cross-field checks: data paths exist, sizes positive."""
    if check_paths and cfg.task == "recognition" and cfg.data.kind in ("recordio", "folder"):
        if not cfg.data.root:
            raise ConfigError(f"{source}: data.root: required for data.kind={cfg.data.kind}")
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"{source}: data.root: {root} does not exist (data.kind={cfg.data.kind})")
        if cfg.data.kind == "recordio" and not (root / "train.rec").is_file():
            raise ConfigError(f"{source}: data.root: {root} has no train.rec (data.kind=recordio)")
    for key, value in (
        ("train.batch_size", cfg.train.batch_size),
        ("train.grad_accum", cfg.train.grad_accum),
        ("data.image_size", cfg.data.image_size),
    ):
        if value <= 0:
            raise ConfigError(f"{source}: {key}: must be > 0, got {value}")
    if not 0.0 < cfg.loss.sample_rate <= 1.0:
        raise ConfigError(f"{source}: loss.sample_rate: must be in (0, 1], got {cfg.loss.sample_rate}")
    if cfg.train.steps <= 0 and cfg.train.epochs <= 0:
        raise ConfigError(f"{source}: train.steps or train.epochs must be > 0")
    if cfg.val.bins and check_paths:
        for b in cfg.val.bins:
            if not Path(b).expanduser().is_file():
                raise ConfigError(f"{source}: val.bins: {b} does not exist")


def load_config(path: str | Path | None, overrides: list[str] | None = None, check_paths: bool = True) -> TrainConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    for key, value in parse_overrides(list(overrides or [])):
        _set_dotted(data, key, value)
    return config_from_dict(data, source, check_paths=check_paths)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` with the task section back at the top level (YAML-ready)."""
    out = dataclasses.asdict(cfg)
    sections = out.pop("sections", {}) or {}
    for name, value in cfg.sections.items():
        out[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else sections.get(name, value)
    return out


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path
