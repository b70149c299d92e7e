"""Per-identity fusion state: a template that is updated photo by photo and equals the batch template.

Every fusion here is written as a **sum of per-photo contributions** followed by a read-out, so
the state of an identity is the element-wise sum of the contributions of its photos. A sum does
not depend on the order or the grouping of its terms, hence enrolling photos in several batches,
in any order, gives the template of enrolling them all at once (to float rounding; the sums are
kept in float64). Removing a photo recomputes the sum over the remaining photos from their stored
features (and styles), so a removal is exact rather than a float subtraction.

* ``average``: contribution ``f̂ = f / ‖f‖``; read-out ``Σ f̂ / ‖Σ f̂‖`` — the template of
  :class:`fuseface.nn.fusion.pooling.AverageFusion` (the mean and the sum normalise to the same vector).
* ``norm_weighted``: contribution ``f`` (un-normalised, i.e. ``‖f‖ f̂``); read-out ``Σ f / ‖Σ f‖``
  — :class:`~fuseface.nn.fusion.pooling.NormWeightedFusion`.
* ``caface``: CAFace's memory (``fuseface.nn.fusion.caface``, module docstring §4): after any
  sequence of chunks the memory is ``K = Σ_t k_t``, ``μ̄ = Σ_t k_t μ_t / K``, ``σ̄ = Σ_t k_t σ_t / K``,
  symmetric in the chunks. The gallery makes **every photo its own chunk**, so a photo contributes
  ``(k, k μ, k σ)`` from the cluster network run on that photo alone (mass ``k`` (M, 1), cluster
  features ``μ`` (M, D), cluster styles ``σ`` (M, E)), and the read-out is the aggregation network
  on ``(Σ kμ / ΣK, Σ kσ / ΣK)``. This equals ``CAFace.fuse(features, styles, chunk_size=1)``; larger
  chunks would let photos of one chunk attend to each other, which makes the template depend on
  how photos were grouped into calls, so the gallery does not use them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fuseface.errors import ConfigError, DataError

FUSIONS = ("average", "norm_weighted", "caface")

State = dict[str, np.ndarray]


def state_to_bytes(state: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a fusion state (plain arrays, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in state.items()})
    return buf.getvalue()


def state_from_bytes(blob: bytes) -> State:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


class TemplateFusion:
    """A fusion written as per-photo contributions summed into a state, plus a read-out."""

    name = "base"
    needs_styles = False

    def contributions(self, features: np.ndarray, styles: np.ndarray | None = None) -> State:
        """Per-photo contribution arrays (first axis = photo) of finite ``features`` (n, D)."""
        raise NotImplementedError

    def template(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        """The L2-normalised template (D,) float32 of a state."""
        raise NotImplementedError

    def state(self, features: np.ndarray, styles: np.ndarray | None = None) -> State:
        """State of a set of photos: the sum of their contributions (float64)."""
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 2 or len(feats) == 0:
            raise DataError(f"fusion {self.name}: need features (n, D) with n >= 1, got shape {feats.shape}")
        if not np.isfinite(feats).all():
            raise DataError(f"fusion {self.name}: NaN/inf features cannot be enrolled")
        return {k: v.astype(np.float64).sum(0) for k, v in self.contributions(feats, styles).items()}

    @staticmethod
    def merge(a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray]) -> State:
        """``a + b`` element-wise (``a=None``: ``b``)."""
        if a is None:
            return {k: np.array(v, dtype=np.float64) for k, v in b.items()}
        if set(a) != set(b):
            raise DataError(f"fusion states with different keys: {sorted(a)} vs {sorted(b)}")
        return {k: np.asarray(a[k], np.float64) + np.asarray(b[k], np.float64) for k in a}


class AverageTemplate(TemplateFusion):
    name = "average"

    def contributions(self, features: np.ndarray, styles: np.ndarray | None = None) -> State:
        return {"sum": _unit(features)}

    def template(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        return _unit(state["sum"]).astype(np.float32)


class NormWeightedTemplate(TemplateFusion):
    name = "norm_weighted"

    def contributions(self, features: np.ndarray, styles: np.ndarray | None = None) -> State:
        return {"sum": np.asarray(features, dtype=np.float64)}

    def template(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        return _unit(state["sum"]).astype(np.float32)


class CAFaceTemplate(TemplateFusion):
    """CAFace with one chunk per photo (see the module docstring). ``model`` is a :class:`CAFace`."""

    name = "caface"
    needs_styles = True

    def __init__(self, model: Any) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def contributions(self, features: np.ndarray, styles: np.ndarray | None = None) -> State:
        if styles is None:
            raise DataError("fusion caface: the photos' style statistics are needed beside the features")
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32))[:, None, :]  # n chunks of 1 photo
        stys = torch.as_tensor(np.asarray(styles, dtype=np.float32))
        if stys.shape != (feats.shape[0], self.model.style_channels, 2):
            raise DataError(
                f"fusion caface: styles must be (n, {self.model.style_channels}, 2), got {tuple(stys.shape)}"
            )
        _, mass, mu, sigma = self.model.cluster(feats, self.model.style_input(stys)[:, None, :])
        return {
            "mass": mass.double().numpy(),
            "features": (mass * mu).double().numpy(),
            "styles": (mass * sigma).double().numpy(),
        }

    @torch.inference_mode()
    def template(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        denom = np.maximum(np.asarray(state["mass"]), 1e-6)
        mu = torch.from_numpy((state["features"] / denom).astype(np.float32))[None]
        sigma = torch.from_numpy((state["styles"] / denom).astype(np.float32))[None]
        aggregated, _ = self.model.fusion_net.aggregate(mu, sigma)
        return _unit(aggregated[0].double().numpy()).astype(np.float32)


def create_template_fusion(name: str, weights: Any = None) -> TemplateFusion:
    """``average`` | ``norm_weighted`` | ``caface`` (``weights``: a CAFace module or fusion weights file)."""
    if name == "average":
        return AverageTemplate()
    if name == "norm_weighted":
        return NormWeightedTemplate()
    if name == "caface":
        if weights is None:
            raise ConfigError("fusion caface needs a CAFace fusion weights file (--fusion-weights)")
        from fuseface.infer.fusion_file import load_fusion

        module = load_fusion(weights) if not isinstance(weights, torch.nn.Module) else weights
        return CAFaceTemplate(module)
    raise ConfigError(f"gallery fusion must be one of {', '.join(FUSIONS)}, got {name!r}")
