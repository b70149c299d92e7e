"""Reader for dlib's binary network files (``dlib_face_recognition_resnet_model_v1.dat``).

``from_official("dlib", "resnet_v1", path)`` reads the file and returns an eval-mode
:class:`fuseface.nn.backbones.dlib_resnet.DlibResNet`; :func:`read_dat` gives the parsed layers and
the input means for the conversion to a fuseface model file.

The format, from dlib's public source (davisking/dlib), nothing of which is executed here:

* ``dlib/serialize.h``: an integer is a control byte (low 4 bits: number of bytes that follow,
  bit 7: negative) then the magnitude in that many little-endian bytes; a ``float`` / ``double``
  is two such integers, mantissa and exponent, with value ``mantissa * 2**exponent``
  (``float_details``; exponents 32000 / 32001 / 32002 mean +inf / -inf / NaN); a ``bool`` is the
  character ``'1'`` or ``'0'``; a string is its length (integer) then its bytes;
* ``dlib/dnn/tensor.h``: a ``resizable_tensor`` is a version integer (2), four integers
  ``num_samples, k, nr, nc`` and then the values as raw little-endian float32 (version 1: dlib
  floats); an ``alias_tensor`` (the view of a layer's parameter vector) is version 1 and its four
  sizes;
* ``dlib/dnn/core.h``: ``add_loss_layer`` writes version 1, the loss details and the network;
  ``add_layer`` (version 2) writes its sub-network **first**, then its layer details, the flags
  ``this_layer_setup_called``, ``gradient_input_is_stale``, ``get_output_and_gradient_input_disabled``
  and the tensors ``x_grad``, ``cached_output``, ``params_grad``; the bottom ``add_layer``, whose
  sub-network is the input layer, is version 3: input layer, details, the three flags, ``x_grad``,
  ``cached_output``, ``grad_final`` and ``_sample_expansion_factor``; ``add_tag_layer`` and
  ``add_skip_layer`` write version 1 and their sub-network only. The file therefore starts with
  one version number per layer from the top down, then holds the layer details from the input up;
* ``dlib/dnn/input.h``: ``input_rgb_image_sized`` writes its name, ``avg_red``, ``avg_green``,
  ``avg_blue`` and the image size ``NR``, ``NC``;
* ``dlib/dnn/layers.h``: ``con_4`` (``con_5`` / ``con_6`` add ``use_bias`` / ``use_relu``):
  parameter tensor, ``num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x``, the
  ``filters`` (num_filters, k, nr, nc) and ``biases`` alias tensors (filters first in the
  parameter vector), four learning-rate / weight-decay multipliers (doubles); ``affine_``
  (``affine_2`` adds ``disabled``): parameters, ``gamma`` and ``beta`` aliases, the mode (integer);
  ``max_pool_2`` / ``avg_pool_2``: ``nr, nc, stride_y, stride_x, padding_y, padding_x``
  (``nr = nc = 0``: the whole map); ``relu_`` and ``add_prev_``: the name only; ``fc_2``:
  ``num_outputs, num_inputs``, parameters, ``weights`` (inputs, outputs) and ``biases`` aliases,
  the bias mode and four multipliers; ``dlib/dnn/loss.h``: ``loss_metric_2`` writes ``margin`` and
  ``dist_thresh``.

A truncated file, or one that is not such a network, raises :class:`CheckpointError` naming the file
and the byte offset where reading failed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.compat import load_strict
from fuseface.errors import CheckpointError
from fuseface.nn.backbones.dlib_resnet import LEVELS, DlibResNet

ARCHS = ("resnet_v1",)


@dataclass
class DlibLayer:
    """One computational layer of a dlib network, as read from the file."""

    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    offset: int  # byte offset of its details in the file
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed ``loss_metric`` network: the loss settings, input means and the layers (input first)."""

    path: str
    loss: str
    margin: float
    dist_thresh: float
    input_size: tuple[int, int]
    input_mean: tuple[float, float, float]
    layers: list[DlibLayer]
    structure: list[int]  # the version numbers from the top: 2 = computational, 1 = tag/skip, 3 = bottom


class _Reader:
    """Sequential reader of dlib's serialisation primitives with offsets in its errors."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, what: str, at: int | None = None) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what} at byte {self.pos if at is None else at}")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated file: {what} needs {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "integer") -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > 8:
            raise self.fail(f"not a dlib integer ({what}: control byte 0x{control:02x})", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def float(self, what: str = "float") -> float:
        mantissa = self.int(what + " mantissa")
        exponent = self.int(what + " exponent")
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        if exponent in special:
            return special[exponent]
        return float(np.ldexp(float(mantissa), exponent))

    def bool(self, what: str = "bool") -> bool:
        start = self.pos
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            raise self.fail(f"not a dlib bool ({what}: byte {ch!r})", start)
        return ch == b"1"

    def string(self, what: str = "name", max_len: int = 256) -> str:
        start = self.pos
        n = self.int(what + " length")
        if n > max_len:
            raise self.fail(f"implausible {what} length {n}", start)
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not ASCII ({raw[:20]!r})", start) from None

    def expect_string(self, allowed: tuple[str, ...], what: str) -> str:
        start = self.pos
        name = self.string(what)
        if name not in allowed:
            raise self.fail(f"expected {what} {' or '.join(allowed)}, found {name!r}", start)
        return name

    def tensor(self, what: str) -> np.ndarray:
        start = self.pos
        version = self.int(what + " version")
        shape = tuple(self.int(what + " size") for _ in range(4))
        if any(s < 0 for s in shape) or np.prod(shape, dtype=np.int64) > 1 << 30:
            raise self.fail(f"implausible {what} shape {shape}", start)
        count = int(np.prod(shape, dtype=np.int64))
        if version == 2:
            values = np.frombuffer(self.take(4 * count, what + " values"), dtype="<f4").astype(np.float32)
        elif version == 1:
            values = np.array([self.float(what + " value") for _ in range(count)], dtype=np.float32)
        else:
            raise self.fail(f"unsupported {what} version {version}", start)
        return values.reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        if self.int(what + " version") != 1:
            raise self.fail(f"unsupported {what} (alias tensor) version", start)
        return (self.int(what), self.int(what), self.int(what), self.int(what))


def _view(params: np.ndarray, shape: tuple[int, ...], offset: int, r: _Reader, what: str, at: int) -> np.ndarray:
    flat = params.reshape(-1)
    n = int(np.prod(shape))
    if offset + n > flat.size:
        raise r.fail(f"{what}: parameter vector of {flat.size} values is too short for {shape}", at)
    return flat[offset : offset + n].reshape(shape).copy()


def _read_details(r: _Reader) -> DlibLayer:
    start = r.pos
    name = r.string("layer name")
    if name in ("con_4", "con_5", "con_6"):
        params = r.tensor("con parameters")
        cfg = {k: r.int(k) for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        filters = r.alias("con filters")
        biases = r.alias("con biases")
        for k in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
            r.float(k + " multiplier")
        use_bias = r.bool("use_bias") if name in ("con_5", "con_6") else True
        if name == "con_6" and r.bool("use_relu"):
            raise r.fail("con_ with a fused relu is not supported", start)
        tensors = {"weight": _view(params, filters, 0, r, "con filters", start)}
        if use_bias:
            tensors["bias"] = _view(params, (int(np.prod(biases)),), int(np.prod(filters)), r, "con biases", start)
        return DlibLayer("con", start, tensors, cfg)
    if name in ("affine_", "affine_2"):
        params = r.tensor("affine parameters")
        gamma = r.alias("affine gamma")
        beta = r.alias("affine beta")
        cfg = {"mode": r.int("affine mode")}
        if name == "affine_2" and r.bool("affine disabled"):
            cfg["disabled"] = True
        n = int(np.prod(gamma))
        tensors = {
            "weight": _view(params, (n,), 0, r, "affine gamma", start),
            "bias": _view(params, (int(np.prod(beta)),), n, r, "affine beta", start),
        }
        return DlibLayer("affine", start, tensors, cfg)
    if name in ("max_pool_2", "avg_pool_2"):
        cfg = {k: r.int(k) for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        return DlibLayer(name[:-2], start, {}, cfg)
    if name in ("relu_", "add_prev_"):
        return DlibLayer(name[:-1], start)
    if name == "fc_2":
        cfg = {"num_outputs": r.int("fc outputs"), "num_inputs": r.int("fc inputs")}
        params = r.tensor("fc parameters")
        weights = r.alias("fc weights")
        biases = r.alias("fc biases")
        cfg["bias_mode"] = r.int("fc bias mode")
        for k in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
            r.float(k + " multiplier")
        n_w = int(np.prod(weights))
        w = _view(params, (n_w,), 0, r, "fc weights", start).reshape(cfg["num_inputs"], cfg["num_outputs"])
        tensors = {"weight": w}
        if cfg["bias_mode"] == 0:  # FC_HAS_BIAS
            tensors["bias"] = _view(params, (int(np.prod(biases)),), n_w, r, "fc biases", start)
        return DlibLayer("fc", start, tensors, cfg)
    raise r.fail(f"unsupported dlib layer {name!r}", start)


def _read_layer_state(r: _Reader, bottom: bool) -> None:
    """The bookkeeping ``add_layer`` writes after its details (flags and cached tensors)."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.bool(flag)
    r.tensor("x_grad")
    r.tensor("cached_output")
    r.tensor("grad_final" if bottom else "params_grad")
    if bottom:
        r.int("sample_expansion_factor")


def read_dat(path: str | os.PathLike[str]) -> DlibNet:
    """Parse a dlib ``loss_metric`` network file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: dlib model file not found")
    r = _Reader(path.read_bytes(), str(path))
    if r.int("network version") != 1:
        raise r.fail("not a dlib network file (expected add_loss_layer version 1)", 0)
    loss = r.expect_string(("loss_metric_", "loss_metric_2"), "loss layer")
    margin = r.float("margin") if loss == "loss_metric_2" else 0.04
    dist_thresh = r.float("dist_thresh") if loss == "loss_metric_2" else 0.6
    structure: list[int] = []
    while True:
        at = r.pos
        version = r.int("layer version")
        if version not in (1, 2, 3):
            raise r.fail(f"unexpected layer version {version}", at)
        structure.append(version)
        if version == 3:
            break
        if len(structure) > 100_000:
            raise r.fail("no input layer found", at)
    r.expect_string(("input_rgb_image_sized",), "input layer")
    mean = (r.float("avg_red"), r.float("avg_green"), r.float("avg_blue"))
    size = (r.int("input rows"), r.int("input columns"))
    layers = [_read_details(r)]
    _read_layer_state(r, bottom=True)
    for _ in range(structure.count(2)):
        layers.append(_read_details(r))
        _read_layer_state(r, bottom=False)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes after the network")
    return DlibNet(str(path), loss, margin, dist_thresh, size, mean, layers, structure[::-1])


def _expected_kinds() -> list[tuple[str, Any]]:
    """The layer sequence of ``DlibResNet`` (input first) with the module key of each weight layer."""
    seq: list[tuple[str, Any]] = [("con", "conv1"), ("affine", "affine1"), ("relu", None), ("max_pool", None)]
    for li, (_, blocks, down) in enumerate(LEVELS):
        for bi in range(blocks):
            pre = f"levels.{li}.{bi}."
            seq += [("con", pre + "conv1"), ("affine", pre + "affine1"), ("relu", None)]
            seq += [("con", pre + "conv2"), ("affine", pre + "affine2")]
            if down and bi == 0:
                seq.append(("avg_pool", None))
            seq += [("add_prev", None), ("relu", None)]
    seq += [("avg_pool", None), ("fc", "fc")]
    return seq


def state_dict_from_dat(net: DlibNet) -> dict[str, torch.Tensor]:
    """Map the parsed layers onto :class:`DlibResNet`'s state-dict keys, checking the layer
    sequence and the pooling / stride settings against the architecture."""
    expected = _expected_kinds()
    kinds = [layer.kind for layer in net.layers]
    if kinds != [k for k, _ in expected]:
        first = next((i for i, (a, (b, _)) in enumerate(zip(kinds, expected, strict=False)) if a != b), None)
        at = net.layers[first].offset if first is not None and first < len(net.layers) else 0
        raise CheckpointError(
            f"{net.path}: layer sequence does not match dlib_face_recognition_resnet_model_v1 "
            f"({len(kinds)} layers, expected {len(expected)}; first difference at layer {first}) at byte {at}"
        )
    sd: dict[str, torch.Tensor] = {}
    for layer, (_, key) in zip(net.layers, expected, strict=True):
        if layer.kind == "max_pool" and (layer.config["nr"], layer.config["stride_y"]) != (3, 2):
            raise CheckpointError(f"{net.path}: unexpected max_pool {layer.config} at byte {layer.offset}")
        if key is None:
            continue
        if layer.kind == "fc":
            sd[key + ".weight"] = torch.from_numpy(layer.tensors["weight"].T.copy())
        else:
            for name, value in layer.tensors.items():
                sd[f"{key}.{name}"] = torch.from_numpy(value)
    return sd


def from_path(arch: str, path: str | os.PathLike[str]) -> nn.Module:
    """Read a dlib ``.dat`` and return the eval-mode network with its weights loaded strictly."""
    if arch not in ARCHS:
        raise ValueError(f"unknown dlib arch {arch!r}; expected one of {list(ARCHS)}")
    net = read_dat(path)
    return convert(arch, state_dict_from_dat(net), input_mean=net.input_mean)


def convert(
    arch: str, state_dict: Mapping[str, torch.Tensor], input_mean: tuple[float, float, float] | None = None
) -> nn.Module:
    """Load a state dict with :class:`DlibResNet` keys (e.g. from :func:`state_dict_from_dat`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown dlib arch {arch!r}; expected one of {list(ARCHS)}")
    model = DlibResNet()
    load_strict(model, state_dict, f"dlib {arch}")
    model.arch_name = "dlib_resnet_v1"
    model.channel_order = "rgb"
    if input_mean is not None:
        model.pixel_mean = tuple(float(v) for v in input_mean)
        model.pixel_std = (256.0, 256.0, 256.0)
    return model
