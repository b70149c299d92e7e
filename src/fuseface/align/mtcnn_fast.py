"""The MTCNN cascade, batched and vectorised: same nets, thresholds and box arithmetic, fewer calls.

:class:`fuseface.align.mtcnn.MTCNN` keeps the straightforward cascade (one ``F.interpolate`` per
pyramid level and per candidate box, PyTorch nets) as its ``engine="reference"``; this module is
the default ``engine="fast"``. What changes is only how the same numbers are computed:

* **Area resizing from an integral image.** ``F.interpolate(mode="area")`` is adaptive average
  pooling: output pixel ``i`` of ``n`` averages input rows ``floor(i*H/n) .. ceil((i+1)*H/n) - 1``
  (and the same for columns; PyTorch ``aten/src/ATen/native/AdaptiveAveragePooling.cpp``,
  ``start_index`` / ``end_index``). Every bin is a rectangle, so its sum is four look-ups in a
  summed-area table of the image. One table per photo serves every pyramid level and every
  24x24 / 48x48 candidate crop, gathered for all boxes at once (no per-box Python loop). The table
  holds exact integer sums, so the averages differ from PyTorch's float32 ones only by rounding.
* **ONNX Runtime for the three nets** when ``onnxruntime`` is installed (the ``onnx`` extra): the
  PyTorch modules are exported in memory at first use (``torch.onnx.export``, dynamic batch and,
  for P-Net, dynamic height and width). PyTorch's CPU max-pooling with ``ceil_mode=True`` and its
  per-shape kernel set-up dominate the reference's time on small crops; ONNX Runtime avoids both.
  Without onnxruntime the PyTorch nets run on the same vectorised crops.
* **R-Net and O-Net batched across photos** in :meth:`FastCascade.detect_batch`; P-Net runs per
  pyramid level (levels differ in size; stitching them into one canvas would change the outputs
  at the level borders, where ``ceil_mode`` pooling windows are partial).

Network outputs agree with the reference to float rounding (about 1e-6), so boxes and landmarks
agree to far below a pixel except where a probability sits within rounding of a threshold.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fuseface.align.nms import nms

if TYPE_CHECKING:
    from fuseface.align.mtcnn import MTCNN, Detections


def integral_image(image: np.ndarray) -> np.ndarray:
    """Summed-area table ``S`` (H+1, W+1, C) with ``S[y, x] = image[:y, :x].sum()`` (per channel).

    int32 for uint8 images small enough that no sum can overflow (up to 8.4 megapixels, which
    covers every image below the detector's ``max_side`` of 1600), float64 otherwise; both exact.
    """
    h, w, c = image.shape
    exact_int = image.dtype == np.uint8 and h * w * 255 < 2**31
    dtype = np.int32 if exact_int else np.float64
    table = np.zeros((h + 1, w + 1, c), dtype)
    np.cumsum(image, axis=0, dtype=dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


def _bins(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pooling bin bounds ``[lo, hi)`` (K, out) of K spans ``start .. start + length``."""
    i = np.arange(out, dtype=np.int64)[None, :]
    length = np.asarray(length, np.int64)[:, None]
    lo = (i * length) // out
    hi = ((i + 1) * length + out - 1) // out
    start = np.asarray(start, np.int64)[:, None]
    return start + lo, start + hi


def area_resize(
    table: np.ndarray, x0: np.ndarray, y0: np.ndarray, pw: np.ndarray, ph: np.ndarray, out_h: int, out_w: int
) -> np.ndarray:
    """K crops ``[y0, y0+ph) x [x0, x0+pw)`` area-resized to ``out_h x out_w``: (K, C, out_h, out_w) float32.

    Equals ``F.interpolate(crop, size=(out_h, out_w), mode="area")`` per crop (see module docstring):
    each output pixel is ``S[b, d] - S[a, d] - S[b, c] + S[a, c]`` over its bin ``[a, b) x [c, d)``;
    the four corners of every bin of every crop are gathered as whole (C,) pixel records at once.
    """
    _, w1, channels = table.shape
    pixels = table.reshape(-1, channels)
    r0, r1 = _bins(y0, ph, out_h)
    c0, c1 = _bins(x0, pw, out_w)
    count = (r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]

    def at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.take(pixels, (rows[:, :, None] * w1 + cols[:, None, :]).ravel(), axis=0)

    sums = (at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)).reshape(len(r0), out_h, out_w, channels)
    return np.ascontiguousarray(_means(sums, count).transpose(0, 3, 1, 2))


def resize_whole(table: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The whole image area-resized to ``out_h x out_w``: (1, C, out_h, out_w) float32.

    Same bins as :func:`area_resize`, computed separably: whole table rows first (contiguous
    copies), then columns; fewer scattered reads than four corner gathers for a large output.
    """
    h, w = table.shape[0] - 1, table.shape[1] - 1
    zero = np.zeros(1, np.int64)
    r0, r1 = _bins(zero, np.array([h]), out_h)
    c0, c1 = _bins(zero, np.array([w]), out_w)
    rows = table[r1[0]] - table[r0[0]]  # (out_h, W+1, C): column-cumulative sums of each row bin
    sums = np.take(rows, c1[0], axis=1) - np.take(rows, c0[0], axis=1)
    count = (r1 - r0)[0][:, None] * (c1 - c0)[0][None, :]
    return np.ascontiguousarray(_means(sums, count).transpose(2, 0, 1)[None])


def _means(sums: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Bin sums (..., C) divided by their pixel counts (...), in float32.

    float32 is exact for the sums here: a bin of a pyramid level or a crop of an image below
    ``max_side`` holds far less than 2**24 / 255 pixels.
    """
    return sums.astype(np.float32) / count[..., None].astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    from fuseface.align.mtcnn import NORM_MEAN, NORM_SCALE

    return (x - np.float32(NORM_MEAN)) * np.float32(NORM_SCALE)


class _PNetHead(nn.Module):
    """P-Net with its two 1x1 heads merged into one 5-channel convolution: channel 0 is the face
    logit minus the background logit (``softmax(z)[1] == sigmoid(z1 - z0)``), channels 1-4 the box
    offsets. Saves the softmax and one convolution per pyramid level; same values to rounding."""

    def __init__(self, pnet: nn.Module) -> None:
        super().__init__()
        self.pnet = pnet
        w1, b1 = pnet.conv4_1.weight, pnet.conv4_1.bias
        w2, b2 = pnet.conv4_2.weight, pnet.conv4_2.bias
        self.head = nn.Conv2d(32, 5, kernel_size=1)
        with torch.no_grad():
            self.head.weight.copy_(torch.cat([w1[1:2] - w1[0:1], w2]))
            self.head.bias.copy_(torch.cat([b1[1:2] - b1[0:1], b2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.pnet
        x = n.pool1(n.prelu1(n.conv1(x)))
        x = n.prelu3(n.conv3(n.prelu2(n.conv2(x))))
        return self.head(x)


class _Nets:
    """Run P-, R- and O-Net on float32 numpy batches: ONNX Runtime when available, else PyTorch."""

    def __init__(self, detector: MTCNN, use_onnxruntime: bool | None = None) -> None:
        self.torch_nets = {"pnet": _PNetHead(detector.pnet).eval(), "rnet": detector.rnet, "onet": detector.onet}
        self.sessions: dict[str, Any] | None = None
        if use_onnxruntime is not False:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                if use_onnxruntime:
                    raise
            else:
                self.sessions = {}

    def _session(self, name: str) -> Any:
        assert self.sessions is not None
        if name not in self.sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            providers = ["CPUExecutionProvider"]
            try:
                session = ort.InferenceSession(_cached_export(name, self.torch_nets[name]), opts, providers=providers)
            except Exception:  # a damaged cached file: export again, replacing it
                session = ort.InferenceSession(
                    _cached_export(name, self.torch_nets[name], refresh=True), opts, providers=providers
                )
            self.sessions[name] = session
        return self.sessions[name]

    def __call__(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        if self.sessions is not None:
            return list(self._session(name).run(None, {"input": x}))
        with torch.inference_mode():
            out = self.torch_nets[name](torch.from_numpy(x))
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _export(name: str, net: nn.Module) -> bytes:
    """One of the three nets as an ONNX model (opset 17, dynamic batch; P-Net also dynamic size)."""
    size = {"pnet": 12, "rnet": 24, "onet": 48}[name]
    axes = {0: "batch", 2: "height", 3: "width"} if name == "pnet" else {0: "batch"}
    outputs = {"pnet": ["maps"], "rnet": ["offsets", "prob"], "onet": ["offsets", "landmarks", "prob"]}[name]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, 3, size, size),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={"input": axes, **{o: {0: "batch"} for o in outputs}},
        )
    return buf.getvalue()


def _cached_export(name: str, net: nn.Module, refresh: bool = False) -> bytes:
    """:func:`_export`, kept in ``$FUSEFACE_CACHE/onnx/mtcnn`` so that a new process (a CLI run, a
    worker of the pipelined embedder) does not export again (about a second per net).

    The file name is a hash of everything the export depends on: the net's weights, the source of
    this module and of :mod:`fuseface.align.mtcnn` (the graph), the torch version. ``refresh``
    exports again and replaces the file (the caller does when ONNX Runtime refuses a cached one);
    a cache that cannot be written is skipped.
    """
    import hashlib
    import os
    from pathlib import Path

    from fuseface.align import mtcnn
    from fuseface.align.weights import cache_root

    h = hashlib.sha256(f"{name} {torch.__version__}".encode())
    h.update(Path(__file__).read_bytes())
    h.update(Path(mtcnn.__file__).read_bytes())
    for key, tensor in net.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache_root() / "onnx" / "mtcnn" / f"{name}-{h.hexdigest()[:20]}.onnx"
    if not refresh and path.is_file():
        try:
            return path.read_bytes()
        except OSError:
            pass
    data = _export(name, net)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass
    return data


class FastCascade:
    """Batched MTCNN cascade on the nets and settings of an :class:`~fuseface.align.mtcnn.MTCNN`."""

    def __init__(self, detector: MTCNN, use_onnxruntime: bool | None = None) -> None:
        self.detector = detector
        self.nets = _Nets(detector, use_onnxruntime)

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.nets.sessions is not None else "torch"

    def _stage1(self, table: np.ndarray, h: int, w: int) -> np.ndarray:
        from fuseface.align.mtcnn import pnet_level_candidates, pnet_merge_levels

        t0 = self.detector.thresholds[0]
        found: list[np.ndarray] = []
        for s in self.detector._scales(h, w):
            oh, ow = int(h * s + 1), int(w * s + 1)
            level = resize_whole(table, oh, ow)
            (maps,) = self.nets("pnet", _normalise(level))
            with np.errstate(over="ignore"):
                p = 1.0 / (1.0 + np.exp(-maps[0, 0]))
            ys, xs = np.nonzero(p >= t0)
            if len(ys) == 0:
                continue
            found.append(pnet_level_candidates(p, maps[0, 1:][:, ys, xs].T, ys, xs, s))
        return pnet_merge_levels(found)

    @staticmethod
    def _crops(table: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised crops of the boxes (clipped, 1-based inclusive as the reference) and the
        indices of the boxes with a non-empty crop."""
        h, w = table.shape[0] - 1, table.shape[1] - 1
        ib = np.trunc(boxes[:, :4]).astype(np.int64)
        x = np.maximum(ib[:, 0], 1)
        y = np.maximum(ib[:, 1], 1)
        ex = np.minimum(ib[:, 2], w)
        ey = np.minimum(ib[:, 3], h)
        valid = np.flatnonzero((ey > y - 1) & (ex > x - 1))
        if len(valid) == 0:
            return np.zeros((0, 3, size, size), np.float32), valid
        x, y, ex, ey = x[valid], y[valid], ex[valid], ey[valid]
        crops = area_resize(table, x - 1, y - 1, ex - x + 1, ey - y + 1, size, size)
        return _normalise(crops), valid

    def _refine(self, tables: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """R-Net over the candidates of all photos in one call; per photo threshold, NMS, regress."""
        from fuseface.align.mtcnn import _regress, _square

        crops, valid = zip(*(self._crops(t, b, 24) for t, b in zip(tables, boxes, strict=True)), strict=True)
        counts = [len(v) for v in valid]
        out: list[np.ndarray] = [np.zeros((0, 5)) for _ in tables]
        if sum(counts) == 0:
            return out
        offsets, prob = self.nets("rnet", np.concatenate(crops))
        start = 0
        for k, n in enumerate(counts):
            score, offs = prob[start : start + n, 1], offsets[start : start + n]
            start += n
            keep = score > self.detector.thresholds[1]
            rows = np.concatenate([boxes[k][valid[k]][keep, :4], score[keep, None]], axis=1)
            offs = offs[keep]
            pick = nms(rows[:, :4], rows[:, 4], 0.7, "union")
            rows, offs = rows[pick], offs[pick]
            rows[:, :4] = _square(_regress(rows[:, :4], offs, plus_one=True))
            out[k] = rows
        return out

    def _output(self, tables: list[np.ndarray], boxes: list[np.ndarray]) -> list[Detections]:
        """O-Net over the boxes of all photos in one call; landmarks, regression, "min" NMS."""
        from fuseface.align.mtcnn import Detections, _regress

        crops, valid = zip(*(self._crops(t, b, 48) for t, b in zip(tables, boxes, strict=True)), strict=True)
        counts = [len(v) for v in valid]
        out = [Detections() for _ in tables]
        if sum(counts) == 0:
            return out
        offsets, points, prob = self.nets("onet", np.concatenate(crops))
        start = 0
        for k, n in enumerate(counts):
            sl = slice(start, start + n)
            start += n
            score = prob[sl, 1]
            keep = score > self.detector.thresholds[2]
            b = boxes[k][valid[k]][keep, :4]
            pts = points[sl][keep]
            bw = (b[:, 2] - b[:, 0] + 1)[:, None]
            bh = (b[:, 3] - b[:, 1] + 1)[:, None]
            lmk = np.stack([bw * pts[:, :5] + b[:, 0:1] - 1, bh * pts[:, 5:] + b[:, 1:2] - 1], axis=2)
            b = _regress(b, offsets[sl][keep], plus_one=True)
            pick = nms(b, score[keep], 0.7, "min")
            out[k] = Detections(
                boxes=b[pick].astype(np.float32),
                scores=score[keep][pick].astype(np.float32),
                landmarks=lmk[pick].astype(np.float32),
            )
        return out

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections for several RGB uint8 images (each already checked and size-capped)."""
        if not images:
            return []
        tables = [integral_image(im) for im in images]
        boxes = [self._stage1(t, im.shape[0], im.shape[1]) for t, im in zip(tables, images, strict=True)]
        boxes = self._refine(tables, boxes)
        return self._output(tables, boxes)
