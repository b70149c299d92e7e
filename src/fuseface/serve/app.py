"""The FastAPI application: routes are a few lines each over :class:`fuseface.gallery.Gallery`.

Routes (JSON out; images in as ``multipart/form-data`` files or as base64 strings in JSON):

* ``GET /health`` — model, embedding size, gallery size, backend, batching counters;
* ``POST /embed`` (``images``) — un-normalised embeddings and norms;
* ``POST /compare`` (``a``, ``b``) — cosine similarity and the verdict at the threshold;
* ``POST /search`` (``images``, ``k``, ``threshold``, ``fuse``) — open-set gallery search;
* ``GET /identities`` — the enrolled identities;
* ``POST /enroll`` (``name``, ``images``) and ``DELETE /identities/{name}`` — change the gallery:
  they need the API key (header ``X-API-Key`` or ``Authorization: Bearer KEY``): 401 without a key,
  403 with a wrong one, 403 when the server was started without any key.

Bounds: a request body above ``max_body_bytes`` gets 413 (checked on ``Content-Length`` and while
the body streams in); more than ``max_images`` images, or an image whose side exceeds ``max_side``
pixels (read from the header before decoding), gets 400. An image that cannot be decoded or has no
face gets 400 naming it; errors fuseface reports (:class:`fuseface.errors.FusefaceError`) are 400,
an unknown identity 404. Embedding goes through :class:`fuseface.serve.batching.BatchQueue`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fuseface.errors import DataError, FusefaceError
from fuseface.serve.batching import BatchQueue


@dataclass
class ServeSettings:
    """Limits and switches of the service."""

    api_key: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    max_images: int = 32
    max_side: int = 4096
    max_batch: int = 32
    max_wait_ms: float = 5.0


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, {"detail": f"request body of {int(declared)} bytes exceeds {self.limit}"})
            return
        seen = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLargeError()
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await _send_json(send, 413, {"detail": f"request body exceeds {self.limit} bytes"})


class _BodyTooLargeError(Exception):
    pass


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    import json

    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def decode_upload(data: bytes, name: str, max_side: int) -> np.ndarray:
    """Bytes of an uploaded image -> uint8 RGB array, refusing over-large sides before decoding."""
    from fuseface.data.images import decode_image

    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as pil:
            w, h = pil.size
    except ImportError:  # pragma: no cover - Pillow is present with matplotlib
        w = h = 0
    except Exception:  # Pillow cannot parse the header: let the decoder give the reason
        w = h = 0
    if max(w, h) > max_side:
        raise DataError(f"{name}: image of {w}x{h} pixels exceeds the {max_side}-pixel limit")
    image = decode_image(data, source=name, on_truncated="error")
    if max(image.shape[:2]) > max_side:
        raise DataError(f"{name}: image of {image.shape[1]}x{image.shape[0]} pixels exceeds the {max_side}-pixel limit")
    if min(image.shape[:2]) < 16:
        raise DataError(f"{name}: image of {image.shape[1]}x{image.shape[0]} pixels is too small to hold a face")
    return image


def _body_doc(images: dict[str, str], params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI request body for a route that takes image fields as files or base64 JSON."""
    binary = {
        k: {"type": "array", "items": {"type": "string", "format": "binary"}, "description": v}
        for k, v in images.items()
    }
    b64 = {
        k: {"type": "array", "items": {"type": "string", "format": "byte"}, "description": v} for k, v in images.items()
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {**binary, **params}}},
                "application/json": {"schema": {"type": "object", "properties": {**b64, **params}}},
            },
        }
    }


def create_app(model: Any, gallery: Any = None, settings: ServeSettings | None = None) -> Any:
    """The application for a loaded :class:`FaceModel` and an open :class:`Gallery` (or ``None``:
    compare and embed only)."""
    settings = settings or ServeSettings()

    def embed_fn(images: Any) -> Any:
        if gallery is not None:
            return gallery.embed_photos(images)
        res = model.embed_photos(images)
        return res.embeddings, None, res.scores, res.errors

    batcher = BatchQueue(embed_fn, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
    threshold = gallery.threshold if gallery is not None else float(model.meta.extra.get("threshold", 0.3))

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="fuseface",
        summary="Face compare, embed, enrol and open-set search over a persistent gallery.",
        version=_version(),
    )
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(FusefaceError)
    async def _fuseface_error(request: Request, exc: FusefaceError) -> Any:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    async def read_body(
        request: Request, image_fields: tuple[str, ...]
    ) -> tuple[dict[str, list[tuple[str, bytes]]], dict[str, Any]]:
        kind = request.headers.get("content-type", "")
        files: dict[str, list[tuple[str, bytes]]] = {f: [] for f in image_fields}
        params: dict[str, Any] = {}
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            for key, value in form.multi_items():
                if key in files and hasattr(value, "read"):
                    files[key].append((value.filename or key, await value.read()))
                elif key in files:
                    raise HTTPException(400, f"field {key!r} must be a file upload")
                else:
                    params[key] = value
        elif kind.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError as exc:
                raise HTTPException(400, f"request body is not valid JSON ({exc})") from exc
            if not isinstance(body, dict):
                raise HTTPException(400, "the JSON body must be an object")
            for key, value in body.items():
                if key in files:
                    items = value if isinstance(value, list) else [value]
                    for i, item in enumerate(items):
                        if not isinstance(item, str):
                            raise HTTPException(400, f"{key}[{i}]: expected a base64 string")
                        try:
                            files[key].append((f"{key}[{i}]", base64.b64decode(item, validate=True)))
                        except (binascii.Error, ValueError) as exc:
                            raise HTTPException(400, f"{key}[{i}]: invalid base64 ({exc})") from exc
                else:
                    params[key] = value
        else:
            raise HTTPException(415, "send multipart/form-data (image files) or application/json (base64 images)")
        total = sum(len(v) for v in files.values())
        if total > settings.max_images:
            raise HTTPException(400, f"{total} images in one request; the limit is {settings.max_images}")
        return files, params

    async def embed(items: list[tuple[str, bytes]]) -> tuple[Any, list[str]]:
        if not items:
            raise HTTPException(400, "no image given")
        names = [n for n, _ in items]
        images = [decode_upload(data, name, settings.max_side) for name, data in items]
        result = await asyncio.wrap_future(batcher.submit(images))
        if result.errors:
            raise HTTPException(400, "; ".join(f"{names[i]}: {msg}" for i, msg in sorted(result.errors.items())))
        return result, names

    def need_gallery() -> Any:
        if gallery is None:
            raise HTTPException(503, "the server runs without a gallery (start it with --gallery DIR)")
        return gallery

    def require_key(request: Request) -> None:
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if settings.api_key is None:
            raise HTTPException(
                403, "changes are disabled: the server has no API key (FUSEFACE_API_KEY or --api-key-file)"
            )
        if not given:
            raise HTTPException(
                401, "this request changes the gallery: send the API key in X-API-Key", {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(403, "wrong API key")

    def number(params: dict[str, Any], key: str, kind: type, default: Any) -> Any:
        value = params.get(key, default)
        if value is None or value == "":
            return default
        try:
            if kind is bool:
                return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            return kind(value)
        except (TypeError, ValueError) as exc:
            raise HTTPException(400, f"{key}: expected {kind.__name__}, got {value!r}") from exc

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what is loaded."""
        return {
            "status": "ok",
            "model": model.meta.arch,
            "dim": gallery.dim if gallery is not None else None,
            "gallery": None if gallery is None else str(gallery.directory),
            "identities": None if gallery is None else len(gallery),
            "backend": None if gallery is None else gallery.meta["backend"],
            "threshold": threshold,
            "batches": batcher.batches,
            "batched_images": batcher.images,
        }

    @app.post("/embed", openapi_extra=_body_doc({"images": "photos or aligned crops"}, {}))
    async def embed_route(request: Request) -> dict[str, Any]:
        """Un-normalised embeddings (their norm is a quality signal) of the faces in the images."""
        files, _ = await read_body(request, ("images",))
        result, names = await embed(files["images"])
        return {
            "names": names,
            "embeddings": result.features.tolist(),
            "norms": np.linalg.norm(result.features, axis=1).tolist(),
        }

    @app.post(
        "/compare",
        openapi_extra=_body_doc({"a": "first photo", "b": "second photo"}, {"threshold": {"type": "number"}}),
    )
    async def compare_route(request: Request) -> dict[str, Any]:
        """Cosine similarity of the faces in ``a`` and ``b`` and the verdict at the threshold."""
        files, params = await read_body(request, ("a", "b"))
        if len(files["a"]) != 1 or len(files["b"]) != 1:
            raise HTTPException(400, "compare takes exactly one image in 'a' and one in 'b'")
        result, _ = await embed(files["a"] + files["b"])
        a, b = result.features
        sim = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
        thr = number(params, "threshold", float, threshold)
        return {"similarity": sim, "threshold": thr, "same": sim >= thr}

    search_params = {
        "k": {"type": "integer", "default": 5},
        "threshold": {"type": "number"},
        "fuse": {"type": "boolean"},
    }

    @app.post("/search", openapi_extra=_body_doc({"images": "query photos"}, search_params))
    async def search_route(request: Request) -> dict[str, Any]:
        """Open-set search: per query the best identity if its score reaches the threshold, else unknown."""
        g = need_gallery()
        files, params = await read_body(request, ("images",))
        k = number(params, "k", int, 5)
        if not 1 <= k <= 100:
            raise HTTPException(400, f"k must be between 1 and 100, got {k}")
        thr = number(params, "threshold", float, None)
        result, names = await embed(files["images"])
        feats = result.features
        if number(params, "fuse", bool, False):
            fusion = g.fusion
            feats = fusion.template(fusion.state(feats, result.styles))[None]
            names = ["+".join(names)]
        found = await run_in_threadpool(g.search_features, feats, k, thr, names)
        return {"results": [r.to_dict() for r in found]}

    @app.get("/identities")
    def identities_route() -> dict[str, Any]:
        """The enrolled identities, photo counts and template versions."""
        return {"identities": need_gallery().list()}

    @app.post("/enroll", openapi_extra=_body_doc({"images": "photos of the person"}, {"name": {"type": "string"}}))
    async def enroll_route(request: Request) -> dict[str, Any]:
        """Add photos to an identity (created if new); needs the API key."""
        g = need_gallery()
        require_key(request)
        files, params = await read_body(request, ("images",))
        name = str(params.get("name", "")).strip()
        if not name:
            raise HTTPException(400, "enroll needs a 'name'")
        result, names = await embed(files["images"])
        hashes = [hashlib.sha256(data).hexdigest() for _, data in files["images"]]
        report = await run_in_threadpool(
            lambda: g.add_features(
                name, result.features, result.styles, names, hashes, result.scores, model_id=g.model_id
            )
        )
        return report.to_dict()

    @app.delete("/identities/{name}")
    def delete_route(name: str, request: Request) -> dict[str, Any]:
        """Remove an identity with all its photos; needs the API key."""
        g = need_gallery()
        require_key(request)
        if g.store.identity(name) is None:
            raise HTTPException(404, f"no identity named {name!r}")
        return {"name": name, "removed_photos": g.remove(name)}

    return app


def _version() -> str:
    import fuseface

    return fuseface.__version__
