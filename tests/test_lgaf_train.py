"""LGAF through the training engine: the recipes parse, and a few steps on synthetic faces learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fuseface
from fuseface.nn.heads.lgaf import LGAFHead
from fuseface.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ("lgaf_ms1mv2_ir100_arcface.yaml", "lgaf_ms1mv3_ir100_adaface.yaml", "cpu_lgaf_synthetic.yaml")


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_follow_the_engine_schema_and_build_the_head(name: str) -> None:
    cfg = load_config(CONFIGS / name, check_paths=False)
    kwargs = cfg.model.kwargs
    assert kwargs["head"] == "lgaf"
    assert cfg.data.adaface_aug and cfg.data.occlusion_p > 0  # the low-quality augmentations are on
    assert set(cfg.loss.aux_weights) == {"global", "local"}
    head = LGAFHead(num_features=kwargs.get("num_features", 512), **kwargs["head_kw"])  # every key is an option
    assert head.mode == "fused"


def test_cpu_recipe_builds_a_model_whose_aux_matches_the_loss() -> None:
    cfg = load_config(CONFIGS / "cpu_lgaf_synthetic.yaml", check_paths=False)
    model = fuseface.create_backbone(cfg.model.name, **cfg.model.kwargs).eval()
    size = cfg.data.image_size
    with torch.no_grad():
        emb, aux = model(torch.randn(2, 3, size, size), return_aux=True)
    assert emb.shape == (2, cfg.model.kwargs["num_features"])
    assert set(aux["aux_embeddings"]) == set(cfg.loss.aux_weights)


def test_a_few_training_steps_on_synthetic_faces_decrease_the_loss(tmp_path: Path) -> None:
    from fuseface.train.trainer import train

    cfg = load_config(
        CONFIGS / "cpu_lgaf_synthetic.yaml",
        [
            f"out_dir={tmp_path / 'run'}",
            "model.kwargs.input_size=32",
            "model.kwargs.num_features=64",
            "model.kwargs.head_kw.merge_channels=64",
            "model.kwargs.head_kw.kernel_sizes=[3,5]",
            "data.image_size=32",
            "data.adaface_aug=false",
            "data.occlusion_p=0.0",
            "data.flip=false",
            "data.synthetic.num_identities=4",
            "data.synthetic.images_per_identity=4",
            "data.synthetic.nuisance=none",
            f"data.synthetic.cache_dir={tmp_path / 'synth'}",
            "loss.s=16.0",
            "loss.m2=0.1",
            "optim.lr=0.05",
            "schedule.name=constant",
            "schedule.warmup_steps=0",
            "train.steps=6",
            "train.batch_size=16",
            "train.num_threads=1",
            "log.progress=false",
            "log.every=1",
        ],
    )
    result = train(cfg)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 6 and np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2]), losses
    # the branch losses are logged and both branches learned too
    branch = [h["loss_local"] for h in result.history if "loss_local" in h]
    assert branch[-1] < branch[0]
    model = fuseface.load(str(result.model_path))
    assert isinstance(model.net.head, LGAFHead)
    emb, norms = model.embed_aligned(np.zeros((2, 32, 32, 3), np.uint8))
    assert emb.shape == (2, 64) and np.all(norms > 0)
