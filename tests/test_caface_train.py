"""CAFace training on a small synthetic feature store: sampler, centres, a few engine steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import fuseface
from fuseface.data.feature_store import write_feature_store
from fuseface.infer.fusion_file import load_fusion
from fuseface.train.caface import CAFaceSetObjective, SetDataset, class_centres


def _toy_store(root, num_ids: int = 12, per_id: int = 4, copies: int = 4, seed: int = 0):
    """Features = identity direction + noise whose strength grows with a per-copy degradation q;
    the styles carry q (as blur/size statistics would), so a fusion can learn to trust clean copies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, 512))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n = num_ids * per_id
    labels = np.repeat(np.arange(num_ids), per_id)
    q = rng.uniform(0, 1, size=(n, copies))
    q[:, 0] = 0.1
    noise = rng.normal(size=(n, copies, 512)) / np.sqrt(512)
    feats = centres[labels][:, None] * (1 - q[..., None]) + 2.5 * q[..., None] * noise
    feats *= (30 * (1 - 0.7 * q))[..., None] / np.linalg.norm(feats, axis=-1, keepdims=True)
    styles = np.stack(
        [
            q[..., None] + 0.1 * rng.normal(size=(n, copies, 384)),
            1 - q[..., None] + 0.1 * rng.uniform(size=(n, copies, 384)),
        ],
        -1,
    )
    return write_feature_store(root, feats, styles, labels, shard_size=16), centres


def test_class_centres_and_set_sampler(tmp_path) -> None:
    store, true_centres = _toy_store(tmp_path)
    f, s, lab = store.load()
    centres = class_centres(f, lab)
    assert centres.shape == (12, 512)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1, atol=1e-5)
    assert (np.sum(centres * true_centres, 1) > 0.9).all()
    ds = SetDataset(f, s, lab, set_size=32, max_sources=3, seed=1)
    f1, s1, y, f2, _s2 = ds[5]
    assert f1.shape == (16, 512) and s1.shape == (16, 384, 2) and f2.shape == (16, 512) and y == lab[5]
    for half in (f1, f2):  # every row is one stored copy of an image of identity y, from 1..3 sources
        rows = half.numpy()
        match = [np.where(np.abs(f.reshape(-1, 512) - r).max(1) < 1e-6)[0] for r in rows]
        assert all(len(m) >= 1 for m in match)
        images = {int(m[0]) // f.shape[1] for m in match}
        assert 1 <= len(images) <= 3 and all(lab[i] == y for i in images)
    again = ds[5]
    assert torch.equal(again[0], f1)
    ds.epoch = 1
    assert not torch.equal(ds[5][0], f1)


def test_objective_shapes_and_memory_path() -> None:
    from fuseface.nn.fusion.caface import CAFace

    obj = CAFaceSetObjective(CAFace(), prefix_step=2).train()
    f1, f2 = torch.randn(3, 8, 512) * 20, torch.randn(3, 8, 512) * 20
    s1, s2 = torch.rand(3, 8, 384, 2), torch.rand(3, 8, 384, 2)
    out = obj(f1, s1, f2, s2)
    assert len(out["aggregated_1"]) == 4 and out["aggregated_1"][0].shape == (3, 512)
    assert out["memory_aggregated"].shape == (3, 512) and out["single_aggregated"].shape == (3, 512)
    out["memory_aggregated"].sum().backward()  # the memory path keeps the graph in training
    assert obj.caface.style_maker.linear.weight.grad is not None


def test_trainer_runs_and_loss_decreases(tmp_path) -> None:
    from fuseface.train.config import config_from_dict
    from fuseface.train.trainer import train

    _toy_store(tmp_path / "store")
    cfg = config_from_dict(
        {
            "task": "caface",
            "out_dir": str(tmp_path / "run"),
            "caface": {"store": str(tmp_path / "store"), "set_size": 8},
            "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 5e-4, "clip_grad_norm": 0.0},
            "schedule": {"name": "constant"},
            "train": {"steps": 16, "batch_size": 6, "seed": 0},
            "data": {"num_workers": 0},
            "checkpoint": {"every": 0},
            "log": {"progress": False, "tensorboard": False, "every": 100},
        }
    )
    result = train(cfg)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 16
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.01, losses
    model = load_fusion(result.model_path)
    rng = np.random.default_rng(0)
    t = fuseface.fuse(
        rng.normal(size=(7, 512)) * 20,
        "caface",
        styles=rng.uniform(size=(7, 384, 2)),
        chunk_size=4,
        model=str(result.model_path),
    )
    assert t.shape == (512,) and abs(np.linalg.norm(t) - 1) < 1e-5
    assert model.config["num_clusters"] == 4


def test_recipes_load() -> None:
    from fuseface.train.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    released = load_config(configs / "caface_webface4m_adaface_ir101.yaml")
    cc = released.sections["caface"]
    assert (released.task, cc.set_size, cc.num_clusters, cc.depth, cc.confidence_dim) == ("caface", 32, 4, 2, 512)
    assert (released.optim.name, released.optim.lr, released.optim.weight_decay) == ("adamw", 1e-3, 5e-4)
    assert released.schedule.milestones == [6, 9] and released.train.epochs == 10
    assert released.train.global_batch_size == 512 and cc.memory_loss_batch_scaling
    cpu = load_config(configs / "cpu_caface_synthetic.yaml")
    assert cpu.task == "caface" and cpu.optim.clip_grad_norm == 0
