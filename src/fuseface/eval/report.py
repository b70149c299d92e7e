"""Result files, markdown tables and plots of evaluation runs.

Every result is one JSON file: ``{"protocol", "switches", "metrics", "fuseface_version", "date"}``
(ARCHITECTURE.md: every result records the protocol, its switches and the software version).
Arrays in ``metrics`` are converted to lists; dict keys (FARs, ranks) become strings.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULT_NAME = "result.json"


def to_jsonable(obj: Any) -> Any:
    """Numbers, lists and string-keyed dicts only (numpy arrays -> lists, NaN -> null)."""
    if isinstance(obj, Mapping):
        return {format_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(x) for x in obj.tolist()]
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def format_key(k: Any) -> str:
    if isinstance(k, float | np.floating):
        return f"{float(k):g}"
    return str(k)


def write_result(path: str | Path, protocol: str, switches: Mapping[str, Any], metrics: Mapping[str, Any]) -> Path:
    """Write one result JSON (a directory gets ``result.json`` inside it)."""
    import fuseface

    path = Path(path)
    if path.suffix != ".json":
        path = path / RESULT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "protocol": protocol,
        "switches": to_jsonable(dict(switches)),
        "metrics": to_jsonable(dict(metrics)),
        "fuseface_version": fuseface.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    from fuseface.errors import DataError

    path = Path(path)
    if path.is_dir():
        path = path / RESULT_NAME
    if not path.is_file():
        raise DataError(f"{path}: result file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not a result JSON ({exc})") from exc


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers people compare, flattened to ``name -> value`` (percent where a rate)."""
    out: dict[str, float] = {}
    if "accuracy_mean" in metrics:
        out["acc"] = 100 * metrics["accuracy_mean"]
        out["acc_std"] = 100 * metrics["accuracy_std"]
        if metrics.get("val") is not None:
            out["VAL@1e-3"] = 100 * metrics["val"]
    for key, prefix in (("tar_at_far", "TAR@"), ("tpir_at_fpir", "TPIR@")):
        for k, v in (metrics.get(key) or {}).items():
            if v is not None:
                out[f"{prefix}{format_key(float(k))}"] = 100 * float(v)
    for k, v in (metrics.get("cmc") or {}).items():
        if v is not None:
            out[f"rank-{k}"] = 100 * float(v)
    for dist, per in (metrics.get("per_distance") or {}).items():
        for k, v in (per.get("cmc") or {}).items():
            if v is not None:
                out[f"{dist} rank-{k}"] = 100 * float(v)
    for name, per in (metrics.get("subsets") or {}).items():
        for k, v in (per.get("cmc") or {}).items():
            if v is not None:
                out[f"{name} rank-{k}"] = 100 * float(v)
        for k, v in (per.get("tpir_at_fpir") or {}).items():
            if v is not None:
                out[f"{name} TPIR@{format_key(float(k))}"] = 100 * float(v)
    if metrics.get("auc") is not None:
        out["AUC"] = 100 * float(metrics["auc"])
    return out


def markdown_table(rows: Sequence[tuple[str, Mapping[str, float]]], digits: int = 2) -> str:
    """A markdown table: one row per run (name, metrics), columns = union of metric names."""
    cols: list[str] = []
    for _, m in rows:
        cols.extend(c for c in m if c not in cols)
    lines = ["| run | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in rows:
        cells = [f"{m[c]:.{digits}f}" if c in m else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_table(run_dirs: Sequence[str | Path]) -> str:
    """Several results side by side (``fuseface report RUN_DIR...``)."""
    rows = []
    for d in run_dirs:
        doc = read_result(d)
        sw = doc.get("switches") or {}
        flags = ",".join(f"{k}={v}" for k, v in sw.items() if isinstance(v, bool | str) and k != "pooling")
        name = f"{Path(d).name} ({doc.get('protocol')}{'; ' + flags if flags else ''})"
        rows.append((name, headline_metrics(doc.get("metrics") or {})))
    return markdown_table(rows)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Log-FPR ROC curves (downsampled to <= 5,000 points each) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        if fpr.size > 5000:
            keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, 5000).astype(int), fpr.size - 1])
            fpr, tpr = fpr[keep], tpr[keep]
        ax.plot(np.maximum(fpr, 1e-7), tpr, lw=1, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1)
    return _save_curves(fig, ax, path, title, "False positive rate", "True positive rate")


def plot_cmc(curves: Mapping[str, np.ndarray], path: str | Path, max_rank: int = 20, title: str = "CMC") -> Path:
    """CMC curves from the ranks of the mated probes, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ks = np.arange(1, max_rank + 1)
    for name, ranks in curves.items():
        ranks = np.asarray(ranks)
        rate = [(ranks <= k).mean() if ranks.size else np.nan for k in ks]
        ax.plot(ks, rate, marker=".", lw=1, label=name)
    return _save_curves(fig, ax, path, title, "Rank", "Identification rate")


def _save_curves(fig: Any, ax: Any, path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Label, grid and legend of a curve plot, then write it as PNG and close the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(ls="--", lw=0.5)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path, dpi=100)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` (parent folders made) and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
