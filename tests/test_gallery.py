"""Gallery: incremental templates equal batch templates, removal, model identity, open-set search,
persistence, and the index checked against SQLite on open — on the local (faiss) and Milvus backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fuseface.errors import ConfigError, DataError
from fuseface.gallery import Gallery
from fuseface.infer.fusion_file import save_fusion
from fuseface.nn.fusion.caface import CAFace
from fuseface.nn.fusion.pooling import AverageFusion, NormWeightedFusion
from gallery_fixtures import backend, crops, face_model, model_file, other_model_file  # noqa: F401


@pytest.fixture(scope="module")
def caface_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(3)
    module = CAFace(cfc_init_zero=False).eval()  # non-zero SIM weights, so styles matter
    return save_fusion(tmp_path_factory.mktemp("caface") / "caface.safetensors", module, "caface")


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 512)).astype(np.float32) * rng.uniform(5, 30, (n, 1)).astype(np.float32)
    styles = np.stack([rng.normal(size=(n, 384)), rng.uniform(0.1, 2, (n, 384))], -1).astype(np.float32)
    return feats, styles


def _reference(fusion: str, feats: np.ndarray, styles: np.ndarray, caface_file: Path) -> np.ndarray:
    if fusion == "average":
        return AverageFusion().fuse(feats)
    if fusion == "norm_weighted":
        return NormWeightedFusion().fuse(feats)
    from fuseface.infer.fusion_file import load_fusion

    return load_fusion(caface_file).fuse(feats, styles, chunk_size=1)


def _create(tmp: Path, model: Path, kind: str, fusion: str = "average", caface: Path | None = None) -> Gallery:
    return Gallery.create(
        tmp / "g", model, fusion=fusion, fusion_weights=caface, backend=kind, milvus_uri=str(tmp / "milvus.db")
    )


@pytest.mark.parametrize("fusion", ["average", "norm_weighted", "caface"])
def test_incremental_enrolment_equals_batch(tmp_path, model_file, backend, fusion, caface_file):  # noqa: F811
    feats, styles = _features(13, seed=1)
    with _create(tmp_path, model_file, backend, fusion, caface_file if fusion == "caface" else None) as g:
        mid = g.model_id
        g.add_features("batch", feats, styles if fusion == "caface" else None, model_id=mid)
        rng = np.random.default_rng(7)
        for name, cuts in (("shuffled", [3, 8, 11]), ("one_by_one", list(range(1, 13)))):
            order = rng.permutation(len(feats))
            for part in np.split(order, cuts):
                g.add_features(name, feats[part], styles[part] if fusion == "caface" else None, model_id=mid)
        ref = _reference(fusion, feats, styles, caface_file)
        for name in ("batch", "shuffled", "one_by_one"):
            np.testing.assert_allclose(g.template(name), ref, atol=2e-5)
        assert [r["n_images"] for r in g.list()] == [13, 13, 13]
        hit = g.search_features(ref[None], k=3)[0]
        assert {n for n, _ in hit.candidates} == {"batch", "shuffled", "one_by_one"}
        assert hit.score == pytest.approx(1.0, abs=1e-4)
        assert g.verify()


@pytest.mark.parametrize("fusion", ["average", "norm_weighted", "caface"])
def test_removing_a_photo_gives_the_template_without_it(tmp_path, model_file, backend, fusion, caface_file):  # noqa: F811
    feats, styles = _features(6, seed=2)
    with _create(tmp_path, model_file, backend, fusion, caface_file if fusion == "caface" else None) as g:
        sources = [f"p{i}.jpg" for i in range(6)]
        g.add_features("ann", feats, styles if fusion == "caface" else None, sources=sources, model_id=g.model_id)
        g.add_features("bob", feats[:2] * -1, styles[:2] if fusion == "caface" else None, model_id=g.model_id)
        assert g.remove("ann", ["p2.jpg", "p4.jpg"]) == 2
        keep = [0, 1, 3, 5]
        np.testing.assert_allclose(
            g.template("ann"), _reference(fusion, feats[keep], styles[keep], caface_file), atol=2e-5
        )
        assert [v for v, _, _ in g.store.template_history("ann")] == [1, 2]
        assert g.verify()
        g.remove("bob")
        assert [r["name"] for r in g.list()] == ["ann"]
        assert all(n == "ann" for n, _ in g.search_features(-feats[:1], k=5)[0].candidates)
        assert g.verify()
        with pytest.raises(DataError, match="no identity"):
            g.remove("bob")


def test_other_model_refused(tmp_path, model_file, other_model_file):  # noqa: F811
    with _create(tmp_path, model_file, "local") as g:
        g.add_features("ann", _features(2, 0)[0], model_id=g.model_id)
        with pytest.raises(DataError, match="refused"):
            g.add_features("ann", _features(1, 1)[0], model_id="0" * 64)
    with pytest.raises(DataError, match="cannot be mixed"):
        Gallery.open(tmp_path / "g", other_model_file)
    with Gallery.open(tmp_path / "g", model_file) as g:
        assert g.list() == [{"name": "ann", "n_images": 2, "template_version": 1}]


def test_enrol_photos_and_search_open_set(tmp_path, face_model, backend):  # noqa: F811
    people = {name: crops(2, seed=i) for i, name in enumerate(["ann", "bob", "cyd"])}
    with _create(tmp_path, face_model, backend) as g:
        assert g.threshold == 0.5  # from the model file's extra["threshold"]
        for name, photos in people.items():
            report = g.add(name, list(photos))
            assert len(report.added) == 2 and not report.errors
        again = g.add("ann", [people["ann"][0], np.zeros((5, 5), np.uint8)])
        assert again.added == [] and len(again.duplicates) == 1 and len(again.errors) == 1
        emb, _ = face_model.embed_aligned(people["bob"])
        results = g.search([people["bob"][0], people["bob"][1]], k=2)
        expect = float(g.template("bob") @ (emb[0] / np.linalg.norm(emb[0])))
        assert results[0].candidates[0] == ("bob", pytest.approx(expect, abs=1e-4))
        strict = g.search([people["bob"][0]], threshold=1.01)[0]
        assert strict.match is None and strict.to_dict()["match"] == "unknown"
        fused = g.search(list(people["cyd"]), fuse=True, threshold=0.999)[0]
        assert fused.match == "cyd" and fused.score == pytest.approx(1.0, abs=1e-4)
        bad = g.search([np.zeros((3, 3, 3), np.uint8)])[0]
        assert bad.error and bad.match is None


def test_reopen_and_rebuild_when_index_disagrees(tmp_path, model_file):  # noqa: F811
    feats, _ = _features(4, 5)
    with _create(tmp_path, model_file, "local") as g:
        for i in range(4):
            g.add_features(f"id{i}", feats[i : i + 1], model_id=g.model_id)
        index_file = g.backend.path
        stale = index_file.read_bytes()
        g.remove("id1")
    with Gallery.open(tmp_path / "g") as g:
        assert not g.rebuilt and g.verify()
        assert [r["name"] for r in g.list()] == ["id0", "id2", "id3"]
    index_file.write_bytes(stale)  # an index from before the removal: one version behind
    with Gallery.open(tmp_path / "g") as g:
        assert g.rebuilt and g.verify()
        assert {n for n, _ in g.search_features(feats[1:2], k=5)[0].candidates} == {"id0", "id2", "id3"}
    index_file.write_bytes(b"garbage")
    with Gallery.open(tmp_path / "g") as g:
        assert g.rebuilt and g.verify()


def test_export_npz_and_parquet(tmp_path, model_file):  # noqa: F811
    feats, _ = _features(3, 6)
    with _create(tmp_path, model_file, "local") as g:
        g.add_features("ann", feats[:2], sources=["a.jpg", "b.jpg"], model_id=g.model_id)
        g.add_features("bob", feats[2:], model_id=g.model_id)
        with np.load(g.export(tmp_path / "g.npz")) as data:
            assert list(data["names"]) == ["ann", "bob"]
            np.testing.assert_allclose(data["templates"][0], g.template("ann"))
            np.testing.assert_array_equal(data["image_features"], feats)
            assert list(data["image_sources"][:2]) == ["a.jpg", "b.jpg"]
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(g.export(tmp_path / "g.parquet")).to_pydict()
        assert table["name"] == ["ann", "bob"] and table["n_images"] == [2, 1]
        np.testing.assert_allclose(table["template"][1], g.template("bob"), atol=1e-7)
        with pytest.raises(ConfigError):
            g.export(tmp_path / "g.csv")


def test_index_kinds_agree_with_exact_search():
    from fuseface.gallery.index import TemplateIndex

    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    queries = base[:50] + 0.3 * rng.normal(size=(50, 64)).astype(np.float32)
    truth = np.arange(50)
    for kind in ("flat", "ivf", "hnsw"):
        index = TemplateIndex(64, kind=kind, nprobe=16)
        index.build(np.arange(3000), base)
        index.upsert(np.array([7]), -base[7:8])  # replace an entry in place
        index.remove(np.array([9]))
        _, ids = index.search(queries, 1)
        expect = truth.copy()
        hit = ids[:, 0] == expect
        assert hit[[i for i in range(50) if i not in (7, 9)]].mean() >= 0.95, kind
        assert ids[7, 0] != 7 and ids[9, 0] != 9 and len(index) == 2999
    auto = TemplateIndex(64, kind="auto", approximate_above=1000)
    auto.build(np.arange(500), base[:500])
    assert auto.kind == "flat"
    auto.upsert(np.arange(500, 3000), base[500:])
    assert auto.kind == "ivf" and len(auto) == 3000
