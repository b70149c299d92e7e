"""A tiny real-face store (a few LFW identities, dlib's ResNet) through split -> extract -> train a few
CAFace steps -> fuse -> evaluate, with the split's disjointness and the streamed template's order
invariance on real sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fuseface.data.photo_sets import identity_photos, identity_split, read_split, split_labels, write_split
from fuseface.errors import ProtocolFileError


@pytest.fixture(scope="module")
def dlib_model() -> str:
    from fuseface.infer.pretrained import is_fetched

    if not is_fetched("dlib-resnet"):
        pytest.skip("dlib-resnet not fetched (fuseface models fetch dlib-resnet)")
    return "dlib-resnet"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, dlib_model: str, shared_data: Path) -> dict[str, Path]:
    import torch

    from fuseface.data.photo_sets import split_source
    from fuseface.data.transforms import SurveillanceDegradation
    from fuseface.infer.extract_features import extract_features, load_backbone_meta

    lfw = shared_data / "lfw" / "lfw-deepfunneled"
    work = tmp_path_factory.mktemp("real_sets")
    people = identity_photos(lfw)
    names = [n for n in sorted(people) if n.startswith("Ab") and len(people[n]) >= 4][:6]
    split = identity_split({n: people[n] for n in names}, max_photos=4, seed=3)
    split_path = write_split(work / "split.json", split)
    # landmarks for the first photo of each person only: the others use the mean landmarks
    journal = work / "faces.jsonl"
    face = {"score": 0.999, "landmarks": [[100, 114], [149, 113], [125, 138], [103, 162], [147, 161]]}
    journal.write_text(json.dumps({"source": people[names[0]][0], "status": "ok", "faces": [face]}) + "\n")
    net, meta = load_backbone_meta(dlib_model)
    source, store_meta = split_source(read_split(split_path), lfw, journal, meta.template, meta.input_size)
    torch.set_num_threads(1)
    store = extract_features(
        net,
        source,
        work / "store",
        augment_copies=2,
        degradation=SurveillanceDegradation(),
        input_size=meta.input_size,
        pixel_mean=meta.pixel_mean,
        pixel_std=meta.pixel_std,
        shard_size=16,
        progress=False,
        meta=store_meta,
    )
    assert store is not None
    return {"store": work / "store", "split": split_path, "work": work}


def test_split_is_identity_disjoint_and_refuses_overlap(tmp_path: Path) -> None:
    people = {f"p{i}": [f"p{i}/{j}.jpg" for j in range(4 + i % 3)] for i in range(12)}
    people["few"] = ["few/0.jpg"]
    split = identity_split(people, min_photos=4, seed=1)
    assert not set(split["train"]) & set(split["test"])
    assert "few" not in split["train"] and "few" not in split["test"]
    assert len(split["train"]) == len(split["test"]) == 6
    photos, _, labels, _ = split_labels(split)
    assert len(photos) == len(labels) == sum(len(v) for v in people.values()) - 1
    bad = dict(split, test={**split["test"], next(iter(split["train"])): ["x.jpg"]})
    with pytest.raises(ProtocolFileError, match="both sides"):
        write_split(tmp_path / "bad.json", bad)


def test_real_store_train_fuse_evaluate(tiny_store: dict[str, Path]) -> None:
    import fuseface
    from fuseface.data.feature_store import FeatureStore
    from fuseface.experiments.set_fusion_real import caface_templates, draw_sets, evaluate_store, load_test_identities
    from fuseface.infer.fusion_file import load_fusion
    from fuseface.train.caface import training_rows
    from fuseface.train.config import config_from_dict
    from fuseface.train.trainer import train

    store = FeatureStore(tiny_store["store"])
    features, styles, labels = store.load()
    extras = store.load_extras()
    n = store.num_images
    assert features.shape == (n, 3, 128) and styles.shape == (n, 3, 192, 2)
    assert np.isfinite(features).all() and np.isfinite(styles).all()
    assert (extras["kind"][:, 0] == 0).all() and (extras["kind"][:, 1:] > 0).all()
    params = store.copy_params()
    assert len(params) == n and params[0][1]["kind_id"] == extras["kind"][0, 1]
    assert store.spec.meta["landmark_source"].count("mtcnn") == 1

    # training sees only the training identities (sets and centres)
    sides = store.spec.meta["identity_sides"]
    rows = training_rows(store.spec.meta, labels)
    assert {sides[i] for i in labels[rows]} == {"train"}
    assert len(rows) == sum(sides[i] == "train" for i in labels)

    cfg = config_from_dict(
        {
            "task": "caface",
            "out_dir": str(tiny_store["work"] / "run"),
            "caface": {"store": str(tiny_store["store"]), "set_size": 8},
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 5e-4},
            "schedule": {"name": "constant"},
            "train": {"steps": 3, "batch_size": 4, "num_threads": 1},
            "data": {"num_workers": 0},
            "checkpoint": {"every": 0},
            "log": {"every": 1, "tensorboard": False, "progress": False},
        }
    )
    result = train(cfg)
    caface = load_fusion(result.model_path)
    assert caface.style_channels == 192 and caface.feature_dim == 128
    assert caface.style_maker.linear.in_features == 192

    test = load_test_identities(tiny_store["store"])
    assert {sides[i] for i in test["labels"]} == {"test"}
    ident = test["labels"][0]
    items = np.flatnonzero(test["labels"] == ident)
    f = test["features"][items].reshape(-1, 128)
    s = test["styles"][items].reshape(-1, 192, 2)
    template = fuseface.fuse(f, "caface", styles=s, model=result.model_path)
    assert template.shape == (128,) and np.isfinite(template).all()
    assert abs(np.linalg.norm(template) - 1) < 1e-5

    # streamed == one-shot fuse with the same chunks, for several chunk sizes and chunk orders
    rng = np.random.default_rng(0)
    from fuseface.nn.fusion.caface import chunk_indices

    for chunk in (1, 3, 5):
        expected = caface.fuse(f, s, chunk_size=chunk)
        for _ in range(3):
            caface.start()
            for idx in rng.permutation(np.array(chunk_indices(len(f), chunk), dtype=object)):
                caface.update(f[idx.astype(int)], s[idx.astype(int)])
            np.testing.assert_allclose(caface.read(), expected, atol=1e-5)
        batched = caface_templates(caface, f[None], s[None], chunk)[0]
        np.testing.assert_allclose(batched, expected, atol=1e-5)

    ids, a, b = draw_sets(test["labels"], 2, 0.25, test["copies"], rng)
    assert len(ids) >= 2 and not (set(map(tuple, a[:, :, 0].tolist())) & set(map(tuple, b[:, :, 0].tolist())))
    out = evaluate_store(
        tiny_store["store"],
        result.model_path,
        sizes=(1, 2),
        repetitions=2,
        bootstrap=10,
        min_identities=2,
        progress=False,
    )
    assert out["rows"] and all(np.isfinite(r["auc"]) and 0 <= r["rank1"] <= 1 for r in out["rows"])
    assert {r["method"] for r in out["rows"]} == {
        "average",
        "norm_weighted",
        "score_weighted",
        "caface",
        "caface_stream",
    }


def test_demo_real_section_says_why_when_lfw_is_missing(tmp_path: Path) -> None:
    from fuseface.experiments.set_fusion import real_face_section

    text = real_face_section(tmp_path / "no_lfw", tmp_path / "out")
    assert "Skipped: no LFW folder" in text and str(tmp_path / "no_lfw") in text
