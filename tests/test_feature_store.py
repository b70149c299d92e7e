"""Feature store round trip, resume == uninterrupted, styles definition, augmented copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fuseface.data.feature_store import FeatureStore, FeatureStoreWriter, StoreSpec, write_feature_store
from fuseface.data.image_sources import ArraySource
from fuseface.data.transforms import CAFaceAugmenter
from fuseface.errors import DataError
from fuseface.infer.extract_features import extract_features
from fuseface.nn.fusion.caface import stage_styles


def test_round_trip_float32_and_float16(tmp_path) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(10, 3, 8)).astype(np.float32)
    s = rng.normal(size=(10, 3, 5, 2)).astype(np.float32)
    lab = np.arange(10) % 4
    store = write_feature_store(tmp_path / "a", f, s, lab, shard_size=4)
    assert len(list((tmp_path / "a").glob("shard_*.safetensors"))) == 3
    f2, s2, l2 = store.load()
    np.testing.assert_array_equal(f2, f)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(l2, lab)
    half = write_feature_store(tmp_path / "b", f, s, lab, shard_size=4, dtype="float16")
    np.testing.assert_allclose(half.load()[0], f, atol=2e-3)
    with pytest.raises(DataError, match="beyond float16"):
        write_feature_store(tmp_path / "c", f * 1e5, s, lab, shard_size=4, dtype="float16")
    with pytest.raises(DataError, match="different settings"):
        FeatureStoreWriter(
            tmp_path / "a",
            StoreSpec(num_images=11, feature_dim=8, style_channels=5, copies=3, shard_size=4, dtype="float32"),
        )


def test_incomplete_store_is_reported(tmp_path) -> None:
    writer = FeatureStoreWriter(tmp_path, StoreSpec(num_images=5, feature_dim=2, style_channels=1, shard_size=2))
    writer.write_shard(1, np.zeros((2, 1, 2)), np.zeros((2, 1, 1, 2)), [0, 1])
    assert [p[0] for p in writer.pending()] == [0, 2]
    with pytest.raises(DataError, match="2 shards missing"):
        FeatureStore(tmp_path)


def test_stage_styles_mean_and_unbiased_std() -> None:
    maps = [torch.randn(2, 4, 3, 3), torch.randn(2, 6, 5, 5), torch.randn(2, 8, 2, 2)]
    st = stage_styles(maps, (1, 2))
    assert st.shape == (2, 14, 2)
    x = maps[1][1, 2].numpy().ravel()
    np.testing.assert_allclose(st[1, 2].numpy(), [x.mean(), x.std(ddof=1)], rtol=1e-5)


def test_extract_resume_equals_uninterrupted(tmp_path) -> None:
    import fuseface

    torch.manual_seed(0)
    model = fuseface.create_backbone("ir18", num_features=32, input_size=32).eval()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(5, 48, 48, 3), dtype=np.uint8)  # resized to the 32 px input
    src = ArraySource(images, [0, 0, 1, 1, 2])
    kw = {
        "augment_copies": 2,
        "shard_size": 2,
        "batch_size": 4,
        "dtype": "float32",
        "progress": False,
        "seed": 3,
        "input_size": 32,
    }
    full = extract_features(model, src, tmp_path / "full", **kw)
    assert full is not None
    partial = extract_features(model, src, tmp_path / "resumed", max_shards=1, **kw)
    assert partial is None
    resumed = extract_features(model, src, tmp_path / "resumed", **kw)
    for a, b in zip(full.load(), resumed.load(), strict=True):
        np.testing.assert_array_equal(a, b)
    f, s, lab = full.load()
    np.testing.assert_array_equal(lab, [0, 0, 1, 1, 2])
    assert f.shape == (5, 3, 32) and s.shape == (5, 3, 384, 2)
    assert full.spec.meta["channel_order"] == "rgb"
    # copy 0 is the clean image: equal to a direct forward pass
    from fuseface.infer.extract_features import embed_with_styles

    e, st = embed_with_styles(model, [images[4]], "rgb", input_size=32)
    np.testing.assert_allclose(f[4, 0], e[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s[4, 0], st[0], rtol=1e-3, atol=1e-3)
    assert not np.allclose(f[4, 1], f[4, 0])  # augmented copies differ


def test_augmenter_is_deterministic_per_seed() -> None:
    img = np.random.default_rng(0).integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    aug = CAFaceAugmenter()
    a = aug.copies(img, 4, np.random.default_rng([7, 1]))
    b = aug.copies(img, 4, np.random.default_rng([7, 1]))
    assert len(a) == 4 and all(x.shape == img.shape and x.dtype == np.uint8 for x in a)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
