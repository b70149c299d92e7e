"""The HTTP service, started on 127.0.0.1 (a free port) in a thread and spoken to with httpx."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from gallery_fixtures import crops, deepface_people, dlib_model, face_model, model_file  # noqa: F401

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

KEY = "s3cret-key"


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path, face_model):  # noqa: F811
    from fuseface.gallery import Gallery
    from fuseface.serve.app import ServeSettings, create_app

    gallery = Gallery.create(tmp_path / "g", face_model)
    settings = ServeSettings(api_key=KEY, max_body_bytes=2_000_000, max_images=8, max_side=2000)
    try:
        yield from ((url, gallery) for url in _serve(create_app(face_model, gallery, settings)))
    finally:
        gallery.close()


def test_health_docs_and_auth(server):
    url, _ = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "ir18" and health["identities"] == 0
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/compare", "/embed", "/enroll", "/search", "/identities/{name}", "/health"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/enroll"]["post"]["requestBody"]["content"]
    files = [("images", ("a.png", _png(crops(1, 0)[0]), "image/png"))]
    assert httpx.post(f"{url}/enroll", data={"name": "ann"}, files=files).status_code == 401
    bad = httpx.post(f"{url}/enroll", data={"name": "ann"}, files=files, headers={"X-API-Key": "nope"})
    assert bad.status_code == 403
    assert httpx.delete(f"{url}/identities/ann").status_code == 401
    assert httpx.get(f"{url}/identities").json() == {"identities": []}


def test_enroll_search_delete_multipart_and_base64(server, face_model):  # noqa: F811
    url, gallery = server
    auth = {"X-API-Key": KEY}
    ann, bob = crops(2, 1), crops(2, 2)
    r = httpx.post(
        f"{url}/enroll",
        data={"name": "ann"},
        files=[("images", (f"ann{i}.png", _png(c), "image/png")) for i, c in enumerate(ann)],
        headers=auth,
    )
    assert r.status_code == 200 and r.json()["added"] == ["ann0.png", "ann1.png"]
    r = httpx.post(
        f"{url}/enroll",
        json={"name": "bob", "images": [base64.b64encode(_png(c)).decode() for c in bob]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 200 and r.json()["n_images"] == 2
    np.testing.assert_allclose(
        gallery.template("ann"),
        gallery.fusion.template(gallery.fusion.state(face_model.embed_aligned(ann)[0])),
        atol=1e-5,
    )
    r = httpx.post(
        f"{url}/search",
        json={"images": [base64.b64encode(_png(c)).decode() for c in bob], "fuse": True, "threshold": 0.999, "k": 2},
    )
    (res,) = r.json()["results"]
    assert res["match"] == "bob" and res["score"] == pytest.approx(1.0, abs=1e-4) and len(res["candidates"]) == 2
    r = httpx.post(f"{url}/search", files=[("images", ("q.png", _png(ann[0]), "image/png"))], data={"threshold": "1.5"})
    assert r.json()["results"][0]["match"] == "unknown"
    emb = httpx.post(f"{url}/embed", files=[("images", ("e.png", _png(ann[0]), "image/png"))]).json()
    np.testing.assert_allclose(emb["embeddings"][0], face_model.embed_aligned(ann[:1])[0][0], rtol=1e-4, atol=1e-4)
    cmp = httpx.post(
        f"{url}/compare",
        json={"a": base64.b64encode(_png(ann[0])).decode(), "b": base64.b64encode(_png(ann[0])).decode()},
    ).json()
    assert cmp["similarity"] == pytest.approx(1.0, abs=1e-5) and cmp["same"] is True
    assert httpx.delete(f"{url}/identities/bob", headers=auth).json() == {"name": "bob", "removed_photos": 2}
    assert httpx.delete(f"{url}/identities/bob", headers=auth).status_code == 404
    assert [i["name"] for i in httpx.get(f"{url}/identities").json()["identities"]] == ["ann"]


def test_bad_input_is_a_client_error(server):
    url, _ = server
    png = _png(crops(1, 3)[0])
    cases = {
        "not an image": httpx.post(f"{url}/embed", files=[("images", ("x.png", b"not an image at all", "image/png"))]),
        "bad base64": httpx.post(f"{url}/embed", json={"images": ["%%%"]}),
        "truncated": httpx.post(
            f"{url}/embed", files=[("images", ("t.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 50, "image/jpeg"))]
        ),
        "tiny": httpx.post(
            f"{url}/embed", files=[("images", ("s.png", _png(np.zeros((4, 4, 3), np.uint8)), "image/png"))]
        ),
        "too many": httpx.post(f"{url}/embed", files=[("images", (f"{i}.png", png, "image/png")) for i in range(9)]),
        "too wide": httpx.post(
            f"{url}/embed", files=[("images", ("w.png", _png(np.zeros((20, 2500, 3), np.uint8)), "image/png"))]
        ),
        "no face": httpx.post(
            f"{url}/embed", files=[("images", ("blank.png", _png(np.full((300, 300, 3), 128, np.uint8)), "image/png"))]
        ),
        "no image": httpx.post(f"{url}/search", json={"images": []}),
        "bad k": httpx.post(f"{url}/search", json={"images": [base64.b64encode(png).decode()], "k": "many"}),
        "not json": httpx.post(f"{url}/search", content=b"{", headers={"content-type": "application/json"}),
    }
    for what, r in cases.items():
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert r.json()["detail"], what
    assert "x.png" in cases["not an image"].json()["detail"]
    assert "no face" in cases["no face"].json()["detail"]
    big = httpx.post(f"{url}/embed", files=[("images", ("big.png", b"\0" * 2_100_000, "image/png"))])
    assert big.status_code == 413
    assert httpx.post(f"{url}/embed", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_concurrent_requests_are_batched(server, face_model):  # noqa: F811
    url, _ = server
    images = crops(8, 4)
    before = httpx.get(f"{url}/health").json()

    def one(i: int) -> list[float]:
        r = httpx.post(f"{url}/embed", files=[("images", ("c.png", _png(images[i]), "image/png"))], timeout=60)
        assert r.status_code == 200
        return r.json()["embeddings"][0]

    with ThreadPoolExecutor(8) as pool:
        got = np.array(list(pool.map(one, range(8))))
    expect = face_model.embed_aligned(images)[0]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731 (batch size changes the last bits)
    np.testing.assert_allclose(unit(got), unit(expect), atol=1e-5)  # every request got its own row back
    after = httpx.get(f"{url}/health").json()
    assert after["batched_images"] - before["batched_images"] == 8
    assert after["batches"] - before["batches"] < 8  # some requests shared a model call


@pytest.mark.slow
def test_real_people_over_http(tmp_path, shared_data, dlib_model):  # noqa: F811
    from fuseface.gallery import Gallery
    from fuseface.serve.app import ServeSettings, create_app

    root = shared_data / "deepface_pairs"
    people = [g for g in deepface_people(root) if len(g) >= 3][:2]
    with Gallery.create(tmp_path / "g", dlib_model) as gallery:
        for url in _serve(create_app(dlib_model, gallery, ServeSettings(api_key=KEY))):
            for i, photos in enumerate(people):
                files = [("images", (p, (root / p).read_bytes(), "image/jpeg")) for p in photos[:2]]
                r = httpx.post(
                    f"{url}/enroll", data={"name": f"p{i}"}, files=files, headers={"X-API-Key": KEY}, timeout=120
                )
                assert r.status_code == 200, r.text
            files = [("images", (p[2], (root / p[2]).read_bytes(), "image/jpeg")) for p in people]
            results = httpx.post(f"{url}/search", files=files, timeout=120).json()["results"]
            assert [r["match"] for r in results] == ["p0", "p1"]
