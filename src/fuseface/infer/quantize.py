"""Post-training static int8 quantisation of a backbone through ONNX Runtime (QDQ format).

Dynamic int8 (:func:`fuseface.infer.optimize.quantize_dynamic_int8`) only reaches the Linear
layers, which are a small part of a convolutional backbone's time. Static quantisation covers the
convolutions too: activation ranges are measured once on calibration images, so no range is
computed at run time. The path is ONNX Runtime's maintained tool-chain
(``onnxruntime.quantization.quantize_static``, see its documentation "Quantize ONNX models"):

1. the backbone (batch norms folded, :func:`fuseface.infer.optimize.prepare_for_inference`) is
   exported with :func:`fuseface.infer.export.export_onnx`;
2. ``quant_pre_process`` runs shape inference and graph optimisations (fusions) before
   quantisation, as the ORT documentation recommends;
3. ``quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs (QDQ): weights int8 per
   output channel, activations uint8 per tensor, ranges from the calibration batches
   (``CalibrationMethod.MinMax`` by default, ``Percentile`` available); on x86 without VNNI the
   weights use a 7-bit range (``reduce_range``) to avoid the saturation of the u8 x s8 ->
   s16 multiply-add (ORT's x86 guidance);
4. at run time ONNX Runtime fuses each DQ -> Conv -> Q into an integer ``QLinearConv``.

:class:`OnnxBackbone` wraps the resulting session as an ``nn.Module`` so that
:class:`fuseface.infer.embedder.FaceModel` runs it like any backbone (``FaceModel.to_int8``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.errors import ConfigError


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader`` over a float32 (N, 3, S, S) array."""

    def __init__(self, name: str, data: np.ndarray, batch_size: int) -> None:
        self.name, self.data, self.batch_size = name, data, batch_size
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = iter(
                {self.name: np.ascontiguousarray(self.data[k : k + self.batch_size], dtype=np.float32)}
                for k in range(0, len(self.data), self.batch_size)
            )
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


class _PerTensorFallbackFilter(logging.Filter):
    """Drops ORT's "Axis 1 is out-of-range for weight ..." warning: it is logged once per consumer of
    each rank-1 weight (the batch norms that precede a convolution in an IR block, which cannot be
    folded) when ``per_channel=True``, and ORT then quantises that tensor per tensor, as intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Axis 1 is out-of-range for weight")


@contextlib.contextmanager
def _quiet_per_tensor_fallback() -> Iterator[None]:
    root = logging.getLogger()
    flt = _PerTensorFallbackFilter()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def quantize_onnx_static(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calibration: np.ndarray,
    method: str = "minmax",
    batch_size: int = 16,
) -> Path:
    """Static QDQ int8 copy of an fp32 ONNX backbone, calibrated on ``calibration`` (float32
    (N, 3, S, S), already normalised as the model's input); returns ``onnx_out``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"calibration images: expected a non-empty (N, 3, S, S) array, got {calibration.shape}")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ConfigError(f"calibration method {method!r}: expected one of {sorted(methods)}")
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(onnx_in), str(pre), skip_symbolic_shape=True)
        import onnx

        input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        with _quiet_per_tensor_fallback():
            quantize_static(
                str(pre),
                str(onnx_out),
                _Batches(input_name, calibration, batch_size),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=not _cpu_has_vnni(),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
            )
    return onnx_out


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (default torch's count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxBackbone(nn.Module):
    """An ONNX backbone file behind the ``nn.Module`` interface: ``forward(x) -> embeddings``.

    Inference only (CPU, float32 input and output); used for the int8 model of ``FaceModel``.
    """

    def __init__(self, path: str | Path, input_size: int, threads: int | None = None) -> None:
        import hashlib

        super().__init__()
        self.path = Path(path)
        # the file's digest as a buffer, so that model fingerprints (journals, galleries) tell
        # this network from the fp32 one and from another int8 file
        digest = hashlib.sha256(self.path.read_bytes()).digest()
        self.register_buffer("onnx_sha256", torch.frombuffer(bytearray(digest), dtype=torch.uint8))
        self.input_size = input_size  # read by the input-size check of FaceModel
        self.session = ort_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)


def quantize_backbone(
    net: nn.Module,
    calibration: np.ndarray,
    out_path: str | Path,
    input_size: int,
    method: str = "minmax",
) -> Path:
    """Fold batch norms, export to ONNX and quantise statically; returns the int8 ONNX file."""
    from fuseface.infer.export import export_onnx
    from fuseface.infer.optimize import prepare_for_inference

    folded = prepare_for_inference(net, channels_last=False)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(folded, Path(tmp) / "fp32.onnx", input_size=input_size)
        return quantize_onnx_static(fp32, out_path, calibration, method=method)


def read_calibration_crops(folder: str | Path, size: int, count: int = 300, option: str = "calibration") -> np.ndarray:
    """Up to ``count`` aligned face crops from the images under ``folder`` (recursive, sorted,
    evenly spread), as uint8 RGB (N, size, size, 3); crops of another size are resized (area)."""
    import cv2

    from fuseface.data.images import IMAGE_EXTENSIONS, read_image

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"{option} {root}: no aligned face images found")
    files = files[:: max(1, len(files) // count)][:count]
    crops = []
    for f in files:
        image = read_image(f, channel_order="rgb")
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        crops.append(image)
    return np.stack(crops)


def export_int8_file(
    model_path: str | Path, onnx_path: str | Path, calibration_dir: str | Path, count: int = 300
) -> dict[str, Any]:
    """``fuseface export --int8``: a model file -> static int8 ONNX, calibrated on up to ``count``
    aligned crops found under ``calibration_dir`` (recursive, sorted, evenly spread); returns
    ``{"path", "calibration_images", "cosine_min", "cosine_mean"}`` (int8 vs fp32 on those crops)."""
    from fuseface.infer.embedder import FaceModel

    fm = FaceModel.from_file(model_path)
    calib = read_calibration_crops(calibration_dir, fm.input_size, count, option="--calibration")
    int8 = fm.to_int8(calib, onnx_path)
    ref, got = fm.embed_aligned(calib)[0], int8.embed_aligned(calib)[0]
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {
        "path": str(onnx_path),
        "calibration_images": len(calib),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }
