"""Real people: enrol the deepface_pairs identities with the pretrained dlib ResNet, search held-out
photos (MTCNN detection + alignment), and see strangers come out "unknown" at the model's threshold."""

from __future__ import annotations

import pytest

from fuseface.gallery import Gallery
from gallery_fixtures import deepface_people, dlib_model  # noqa: F401


@pytest.mark.slow
def test_enrol_and_identify_real_people(tmp_path, shared_data, dlib_model):  # noqa: F811
    root = shared_data / "deepface_pairs"
    people = [g for g in deepface_people(root) if len(g) >= 3]
    assert len(people) >= 8
    enrolled, stranger = people[:6], people[-1]
    with Gallery.create(tmp_path / "g", dlib_model) as g:
        assert g.dim == 128 and g.threshold == pytest.approx(dlib_model.meta.extra["threshold"])
        for i, photos in enumerate(enrolled):
            report = g.add(f"person{i}", [root / p for p in photos[:2]])
            assert len(report.added) == 2, report.errors
        probes = [root / photos[2] for photos in enrolled] + [root / p for p in stranger[:2]]
        results = g.search(probes, k=3)
    assert [r.match for r in results[:6]] == [f"person{i}" for i in range(6)]
    assert [r.match for r in results[6:]] == [None, None]  # not enrolled: below the threshold
    assert all(r.score > g.threshold for r in results[:6])
