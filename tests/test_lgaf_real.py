"""LGAF on dlib's frozen ResNet (``fuseface.experiments.lgaf_real``): the damage functions, the
cached trunk outputs and a few training steps of the head on real LFW crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fuseface.experiments import lgaf_real as X


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (150, 150, 3), dtype=np.uint8)


POINTS = np.array([[50.0, 60.0], [100.0, 60.0], [75.0, 85.0], [55.0, 110.0], [95.0, 110.0]])


@pytest.mark.parametrize("strength", [0.1, 0.25, 0.4])
def test_occlusion_covers_the_stated_fraction(strength: float) -> None:
    for seed in range(12):
        img = np.full((150, 150, 3), 7, np.uint8)
        out = X.occlude(img, strength, np.random.default_rng(seed), POINTS)
        changed = np.any(out != img, axis=2).mean()
        # a flat fill may equal the background by chance on a few pixels; the box itself is exact
        # up to rounding of its sides
        assert changed <= strength + 0.02
        assert changed >= strength - 0.03


def test_damage_is_seeded_and_zero_strength_is_identity() -> None:
    img = _crop()
    for kind in ("occlusion", "deformation"):
        a = X.damage(img, kind, 0.3, np.random.default_rng(5), POINTS)
        b = X.damage(img, kind, 0.3, np.random.default_rng(5), POINTS)
        c = X.damage(img, kind, 0.3, np.random.default_rng(6), POINTS)
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        assert np.array_equal(X.damage(img, kind, 0.0, np.random.default_rng(5), POINTS), img)
    assert np.array_equal(X.deform(img, 0.0, np.random.default_rng(0)), img)
    with pytest.raises(ValueError, match="unknown damage"):
        X.damage(img, "blur", 0.3, np.random.default_rng(0), POINTS)


def test_pairs_are_balanced_and_genuine_pairs_are_distinct_photos() -> None:
    labels = np.repeat(np.arange(20), 4)
    gi, pi, same = X.make_pairs(labels, 400, seed=1)
    assert len(same) == 400 and same.sum() == 200
    assert np.all(labels[gi[same]] == labels[pi[same]]) and np.all(gi[same] != pi[same])
    assert np.all(labels[gi[~same]] != labels[pi[~same]])
    gi2, pi2, _ = X.make_pairs(labels, 400, seed=1)
    assert np.array_equal(gi, gi2) and np.array_equal(pi, pi2)


def test_features_round_trip(tmp_path: Path) -> None:
    feats = X.TrunkFeatures(np.random.rand(5, 128).astype(np.float32), np.random.rand(5, 4, 2, 2).astype(np.float16))
    X.save_features(tmp_path / "f.npz", feats, labels=np.arange(5))
    back, extra = X.load_features(tmp_path / "f.npz")
    assert np.array_equal(back.global_, feats.global_) and np.array_equal(back.level, feats.level)
    assert np.array_equal(extra["labels"], np.arange(5))


def test_head_on_real_trunk(real_model, shared_data: Path, tmp_path: Path) -> None:
    """A few real people through the frozen trunk; the head trains (loss falls), its global mode is
    exactly the pretrained descriptor, the weights are a distribution, every value is finite."""
    from fuseface.data.photo_sets import identity_photos, identity_split

    lfw = shared_data / "lfw" / "lfw-deepfunneled"
    people = identity_photos(lfw)
    names = [n for n in sorted(people) if n.startswith("Ab") and len(people[n]) >= 4][:4]
    split = identity_split({n: people[n] for n in names}, max_photos=4, test_fraction=0.5, seed=0)
    assert not set(split["train"]) & set(split["test"])
    journal = tmp_path / "faces.jsonl"
    face = {"score": 0.999, "landmarks": [[100, 114], [149, 113], [125, 138], [103, 162], [147, 161]]}
    journal.write_text(json.dumps({"source": people[names[0]][0], "status": "ok", "faces": [face]}) + "\n")
    source, labels, _photos = X.crops_from_split(
        split, lfw, journal, "train", 4, real_model.template, real_model.input_size
    )
    crops = [source[i][0] for i in range(len(source))]
    torch.set_num_threads(1)
    feats = X.trunk_features(real_model, crops, level=2, batch_size=4)
    assert feats.level.shape == (len(crops), 128, 8, 8) and feats.global_.shape == (len(crops), 128)
    direct = real_model.net(real_model.to_input(np.stack(crops))).detach().numpy()
    np.testing.assert_allclose(feats.global_, direct, atol=1e-5)

    log: list[dict[str, float]] = []
    head = X.train_head(feats, labels, "fused", epochs=8, batch_size=4, lr=5e-3, log=log.append)
    assert log[-1]["loss"] < log[0]["loss"]
    modes = X.embed_modes(head, feats)
    np.testing.assert_allclose(modes["global"], feats.global_, atol=1e-6)
    assert head.head.mode == "fused"
    for k, v in modes.items():
        assert np.isfinite(v).all(), k
    np.testing.assert_allclose(modes["weights"].sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="frozen trunk"):
        X.train_head(feats, labels, "global")

    # cross-fitting re-learns only the LGF scale / bias; the branches stay as trained
    halves = X.people_halves(labels, seed=0)
    assert 0 < halves.sum() < len(labels)
    assert not set(labels[halves]) & set(labels[~halves])
    fitted = X.fit_fusion_weights(head, feats, labels, epochs=3, batch_size=4)
    before, after = head.state_dict(), fitted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {
        "head.quality_scale",
        "head.quality_bias",
        "head.quality_norm.running_mean",
        "head.quality_norm.running_var",
        "head.quality_norm.num_batches_tracked",
    }
    assert np.isfinite(X.embed_modes(fitted, feats)["fused"]).all()
