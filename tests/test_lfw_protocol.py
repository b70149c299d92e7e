"""LFW View-2 pairs protocol from images: pairs.txt parsing (real file), errors, and the real
images end to end with a tiny random-weight backbone (the number does not matter, the pipeline does)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from fuseface.data.lfw import load_face_crops, pair_image_index, read_pairs
from fuseface.errors import ProtocolFileError
from fuseface.eval.lfw import lfw_pairs_protocol


def test_real_pairs_file_structure(shared_data: Path) -> None:
    pairs = read_pairs(shared_data / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.same for p in pairs) == 3000
    assert [p.fold for p in pairs[::600]] == list(range(10))
    assert pairs[0].path1 == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs[0].path2 == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert all(p.same for p in pairs[:300]) and not any(p.same for p in pairs[300:600])


def test_malformed_pairs_files_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.txt"
    bad.write_text("1\t1\nA\t1\t2\nB\t1\n")
    with pytest.raises(ProtocolFileError, match=r"pairs.txt:3: expected 'name n1 n2'"):
        read_pairs(bad)
    bad.write_text("1\t1\nA\t1\tB\t2\nB\t1\tC\t3\n")
    with pytest.raises(ProtocolFileError, match=r"pairs.txt:2: expected a same-person line"):
        read_pairs(bad)
    bad.write_text("ten folds\n")
    with pytest.raises(ProtocolFileError, match=r"pairs.txt:1"):
        read_pairs(bad)
    bad.write_text("1\t2\nA\t1\t2\n")
    with pytest.raises(ProtocolFileError, match="announces 4"):
        read_pairs(bad)


def test_lfw_end_to_end_with_tiny_backbone(shared_data: Path) -> None:
    """200 pairs of the first fold (100 same, 100 different) plus the pair holding the truncated
    Zydrunas image (fold 9), at 16x16 so that it stays within the test budget."""
    import torch

    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import ModelMeta
    from fuseface.nn.backbones.iresnet import IResNet

    root = shared_data / "lfw"
    all_pairs = read_pairs(root / "pairs.txt")
    zyd = [p for p in all_pairs if "Zydrunas_Ilgauskas" in (p.name1, p.name2)]
    assert len(zyd) == 1 and not zyd[0].same
    pairs = all_pairs[:100] + all_pairs[300:400] + zyd
    paths, i1, i2, issame = pair_image_index(pairs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crops = load_face_crops(root / "lfw-deepfunneled", paths, size=16)
    assert any("Zydrunas" in str(w.message) and "truncated" in str(w.message) for w in caught)
    assert crops.shape == (len(paths), 16, 16, 3) and crops.dtype == np.uint8
    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1), num_features=64, input_size=16)
    model = FaceModel(net, ModelMeta("ir18", {"num_features": 64, "input_size": 16}, input_size=16))
    emb, _ = model.embed_aligned(crops, batch_size=128, flip=True)
    assert emb.shape == (len(paths), 64) and np.isfinite(emb).all()
    r = lfw_pairs_protocol(emb, i1, i2, issame, nfolds=10)
    assert r["num_pairs"] == 201 and len(r["accuracy"]) == 10
    assert 0.3 < r["accuracy_mean"] <= 1.0
    # the protocol is the verification protocol on the gathered rows
    from fuseface.eval.verification import evaluate

    np.testing.assert_array_equal(r["accuracy"], evaluate(emb[i1], emb[i2], issame)["accuracy"])
