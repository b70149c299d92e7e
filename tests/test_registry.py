"""The registry sweep: every entry of every kind builds; every backbone runs forward and backward
on a small input and round-trips through the model file with the settings its entry states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fuseface
from fuseface import registry
from fuseface.infer.model_file import ModelMeta, load_model, save_model

BACKBONE_FIELDS = ("input_size", "channel_order", "pixel_mean", "pixel_std", "embedding_size", "template")


@pytest.mark.parametrize("name", registry.names("backbone"))
def test_backbone_entry_builds_trains_and_round_trips(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    kwargs = dict(registry.settings(name)["test_kwargs"])
    cfg = registry.settings(name, **kwargs)
    assert set(BACKBONE_FIELDS) <= set(cfg) and cfg["channel_order"] in ("rgb", "bgr")
    net = fuseface.create_backbone(name, **kwargs)
    size = cfg["input_size"]
    x = torch.randn(2, 3, size, size)
    net.train()
    emb = net(x)
    assert emb.shape == (2, cfg["embedding_size"])  # the stated embedding size is the built one
    emb.square().sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:1]) and any(float(g.abs().sum()) > 0 for g in grads)
    meta = ModelMeta(arch=name, arch_kwargs=kwargs, **{k: cfg[k] for k in BACKBONE_FIELDS})
    path = save_model(tmp_path / f"{name}.safetensors", net.eval(), meta)
    again, meta2 = load_model(path)
    assert meta2 == meta
    state, state2 = net.state_dict(), again.state_dict()
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    with torch.no_grad():  # deep nets at random init may give NaN in eval mode: compare NaN as equal
        torch.testing.assert_close(again(x[:1]), net(x[:1]), rtol=0, atol=0, equal_nan=True)


def test_other_kinds_build() -> None:
    from fuseface.train.task import BaseTask

    c = 64
    for name in registry.names("conv"):
        out = registry.create("conv", name, c, 2)(torch.randn(2, c, 8, 8))
        assert out.shape == (2, c, 4, 4), name
    for name in registry.names("loss"):
        logits = registry.create("loss", name)(
            torch.rand(4, 10) * 2 - 1, torch.arange(4), *([torch.ones(4, 1)] if name == "adaface" else [])
        )
        assert logits.shape == (4, 10), name
    for name in registry.names("fusion"):
        module = registry.create("fusion", name)
        assert isinstance(module, torch.nn.Module) and hasattr(module, "fuse"), name
    head = registry.create("head", "lgaf", stage_channels=(8, 8, 8, 8), stage_sizes=(8, 4, 2, 1), num_features=16)
    assert isinstance(head, torch.nn.Module)
    for name in registry.names("task"):
        assert issubclass(registry.resolve("task", name), BaseTask), name
    for name in registry.names("checkpoint_source"):
        assert callable(registry.resolve("checkpoint_source", name)) and registry.settings(name, "checkpoint_source")
    from fuseface.align.detector import FaceDetector  # noqa: F401  (the protocol the detectors satisfy)

    detector = registry.resolve("detector", "mtcnn")
    assert callable(getattr(detector, "detect", None))


def test_settings_follow_kwargs_and_registration() -> None:
    assert registry.settings("ir50")["channel_order"] == "rgb"
    assert registry.settings("adaface_ir50")["channel_order"] == "bgr"
    assert registry.settings("ir50", input_size=64, num_features=128)["input_size"] == 64
    assert registry.settings("ir50", num_features=128)["embedding_size"] == 128
    registry.register("backbone", "tiny_bgr_net", "fuseface.nn.backbones.iresnet:ir18", channel_order="bgr")
    try:
        assert registry.settings("tiny_bgr_net")["channel_order"] == "bgr"
        assert registry.settings("tiny_bgr_net")["template"] == "arcface"  # the default fills in
    finally:
        registry._ENTRIES["backbone"].pop("tiny_bgr_net")
        registry._SETTINGS["backbone"].pop("tiny_bgr_net")
    with pytest.raises(KeyError, match="unknown backbone"):
        registry.settings("no_such_net")


def test_thin_wrappers_use_the_registry() -> None:
    from fuseface.align.detector import create_detector, register_detector
    from fuseface.errors import ConfigError
    from fuseface.nn.fusion import fuse_features
    from fuseface.train.task import register_task, resolve_task, task_names

    assert "recognition" in task_names() and "caface" in registry.names("task")
    register_task("toy_task", "fuseface.train.recognition:RecognitionTask")
    register_detector("toy_detector", lambda **kw: ("toy", kw))
    registry.register("fusion", "toy_mean", "fuseface.nn.fusion.pooling:NormWeightedFusion")
    try:
        assert resolve_task("toy_task").__name__ == "RecognitionTask"
        assert create_detector("toy_detector", a=1) == ("toy", {"a": 1})
        feats = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)
        out = fuse_features(feats, method="toy_mean")  # a user fusion is accepted (no fixed list)
        np.testing.assert_allclose(out, np.array([1.0, 3.0]) / np.sqrt(10), rtol=1e-6)
    finally:
        for kind, name in (("task", "toy_task"), ("detector", "toy_detector"), ("fusion", "toy_mean")):
            registry._ENTRIES[kind].pop(name)
            registry._SETTINGS[kind].pop(name)
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_task("toy_task")
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("toy_detector")
