"""`fuseface eval lfw|bin|ijb|ijbs|tinyface|scface` and `fuseface report RUN_DIR...`.

Each command takes either ``--model`` (a fuseface model file: images are read, aligned or cropped,
and embedded with a progress bar; the channel order comes from the model file) or ``--features``
(an ``.npy`` with one row per image in the protocol's image order; ``--flip-features`` optional),
runs the protocol from :mod:`fuseface.eval`, prints a table, writes a JSON result (``--out``) and,
with ``--plot``, ROC / CMC PNGs next to it. Library imports are lazy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from fuseface.cli.options import flip_option, fusion_option, model_option, out_option

MODEL_DETAIL = "the images are read and embedded with it"
FEATURES_HELP = "Precomputed features (.npy, one row per image in the protocol's image order)."
FLIP_FEATURES_HELP = "Features of the mirrored images (.npy, same rows as --features)."
OUT_DETAIL = "result JSON file or run directory (result.json inside)"


# ----------------------------------------------------------------------------- helpers (orchestration)
IJB_FUSIONS = ("insightface", "average", "norm_weighted", "score_weighted", "caface")
IJBS_FUSIONS = ("norm_sum", "average", "norm_weighted", "caface")


def _load_npy(path: Path | None, what: str, ndim: int = 2) -> Any:
    if path is None:
        return None
    import numpy as np

    from fuseface.errors import DataError

    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a numeric .npy array ({exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: {what} must be a numeric .npy array, got {getattr(arr, 'dtype', type(arr))}")
    if arr.ndim != ndim:
        shape = "(rows, dim)" if ndim == 2 else "(rows, channels, 2)"
        raise DataError(f"{path}: {what} must be {ndim}-D {shape}, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{path}: {what} file holds no rows")
    return arr


def _load_features(features: Path | None, flip_features: Path | None, rows: int, order: str) -> tuple[Any, Any]:
    """``--features`` (and ``--flip-features``) checked against the protocol: ``rows`` rows (one per
    image in ``order``), the flip file of the same shape; errors name the file."""
    from fuseface.errors import DataError

    f, ff = _load_npy(features, "features"), _load_npy(flip_features, "flip features")
    if f.shape[0] != rows:
        raise DataError(f"{features}: {f.shape[0]} rows, but {order} has {rows} images (one row per image)")
    if ff is not None and ff.shape != f.shape:
        raise DataError(f"{flip_features}: shape {ff.shape} differs from {features} {f.shape}")
    return f, ff


def _load_styles(styles: Path | None, rows: int, fusion: str) -> Any:
    """The ``--styles`` array (rows, channels, 2) that CAFace fusion needs, checked against the features."""
    from fuseface.errors import ConfigError, DataError

    if fusion != "caface":
        return None
    if styles is None:
        raise ConfigError("--fusion caface needs --styles (styles.npy, one (channels, 2) row per image)")
    arr = _load_npy(styles, "styles", ndim=3)
    if arr.shape[0] != rows or arr.shape[2] != 2:
        raise DataError(f"{styles}: styles shape {arr.shape}, expected ({rows}, channels, 2) to match the features")
    return arr


def _check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    from fuseface.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{option} {value!r} is not one of: {', '.join(choices)}")


def _check_nfolds(nfolds: int, pairs: int) -> None:
    from fuseface.errors import ConfigError

    if not 2 <= nfolds <= pairs:
        raise ConfigError(f"--nfolds {nfolds}: need 2 <= nfolds <= number of pairs ({pairs})")


def _need_one(model: Path | None, features: Path | None) -> None:
    from fuseface.errors import ConfigError

    if (model is None) == (features is None):
        raise ConfigError("give exactly one of --model or --features")


def _embed_stream(
    model_path: Path, n: int, load: Callable[[int, int], Any], batch_size: int, flip: bool, chunk: int = 512
) -> tuple[Any, Any]:
    """Embed ``n`` images produced by ``load(a, b)`` (uint8 RGB crops) in chunks; returns raw
    features and, with ``flip``, the features of the mirrored crops."""
    import numpy as np
    from tqdm import tqdm

    import fuseface

    model = fuseface.load(str(model_path))
    feats, flips = [], []
    with tqdm(total=n, desc="embedding", unit="img") as bar:
        for a in range(0, n, chunk):
            crops = load(a, min(n, a + chunk))
            crops = np.stack([_fit(c, model.input_size) for c in crops])
            feats.append(model.embed_aligned(crops, batch_size=batch_size)[0])
            if flip:
                flips.append(model.embed_aligned(np.ascontiguousarray(crops[:, :, ::-1]), batch_size=batch_size)[0])
            bar.update(len(crops))
    return np.concatenate(feats), (np.concatenate(flips) if flip else None)


def _fit(img: Any, size: int) -> Any:
    import cv2

    if img.shape[0] != size or img.shape[1] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def _finish(
    out: Path | None,
    protocol: str,
    switches: dict[str, Any],
    metrics: dict[str, Any],
    plot: bool,
    roc: dict[str, tuple[Any, Any]] | None = None,
    cmc_ranks: dict[str, Any] | None = None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from fuseface.eval import report

    head = report.headline_metrics(metrics)
    table = Table(title=protocol, caption=", ".join(f"{k}={v}" for k, v in switches.items()))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in head.items():
        table.add_row(k, f"{v:.2f}")
    for k in (
        "invalid_images",
        "invalid_pairs",
        "invalid_probes",
        "invalid_gallery",
        "empty_templates",
        "pairs_with_empty_template",
        "empty_probe_templates",
    ):
        if metrics.get(k):
            table.add_row(k, str(metrics[k]))
    Console().print(table)
    if out is None:
        return
    path = report.write_result(out, protocol, switches, metrics)
    typer.echo(f"wrote {path}")
    if plot and roc:
        typer.echo(f"wrote {report.plot_roc(roc, path.with_name(path.stem + '_roc.png'), title=protocol)}")
    if plot and cmc_ranks:
        typer.echo(f"wrote {report.plot_cmc(cmc_ranks, path.with_name(path.stem + '_cmc.png'), title=protocol)}")


def _strip(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in keys}


def _normalize(x: Any) -> Any:
    from fuseface.eval.verification import l2_normalize

    return l2_normalize(x)


def _unit_features_of_images(
    paths: Sequence[Any],
    model: Path | None,
    features: Path | None,
    flip_features: Path | None,
    batch_size: int,
    flip: bool,
    order: str,
) -> tuple[Any, Any]:
    """Unit features of ``paths`` (images read from disk and embedded, or rows of ``features``),
    flip-summed first when mirrored features exist; returns them and the flip features (or None)."""
    from fuseface.data.images import read_image
    from fuseface.eval.verification import flip_sum

    if model is not None:
        f, ff = _embed_stream(model, len(paths), lambda a, b: [read_image(p) for p in paths[a:b]], batch_size, flip)
    else:
        f, ff = _load_features(features, flip_features, len(paths), order)
    return _normalize(flip_sum(f, ff) if (flip and ff is not None) else f), ff


# ----------------------------------------------------------------------------- commands


def eval_lfw(
    root: Path = typer.Option(..., "--root", help="LFW folder with pairs.txt and lfw-deepfunneled/."),
    model: Path | None = model_option(None, MODEL_DETAIL),
    features: Path | None = typer.Option(
        None, "--features", help=FEATURES_HELP + " Order: distinct images of pairs.txt, first use first."
    ),
    flip_features: Path | None = typer.Option(None, "--flip-features", help=FLIP_FEATURES_HELP),
    images_dir: Path | None = typer.Option(
        None,
        "--images-dir",
        help="Aligned crops in the LFW layout (<name>/<name>_0001.jpg), e.g. from `fuseface align`; "
        "default: MTCNN detection + alignment onto the model's template.",
    ),
    landmarks: Path | None = typer.Option(
        None, "--landmarks", help="faces.jsonl of `fuseface align` on LFW: reuse its landmarks, detect the rest."
    ),
    detect: bool = typer.Option(
        True, "--detect/--no-detect", help="--no-detect: photos missing from --landmarks take the mean landmarks."
    ),
    centre_crop: bool = typer.Option(
        False, "--centre-crop", help="No alignment: centre crops of the 250x250 images (an approximation)."
    ),
    crop: int = typer.Option(150, "--crop", help="Centre crop side (px) with --centre-crop."),
    save_features: Path | None = typer.Option(
        None, "--save-features", help="Also write the features (.npy, rows as --features expects)."
    ),
    flip: bool = flip_option(True, negatable=True),
    batch_size: int = typer.Option(64, "--batch-size"),
    max_pairs: int | None = typer.Option(None, "--max-pairs", help="Only the first N pairs (smoke runs)."),
    nfolds: int = typer.Option(10, "--nfolds"),
    out: Path | None = out_option(None, OUT_DETAIL),
    plot: bool = typer.Option(False, "--plot", help="Save the ROC curve as PNG."),
) -> None:
    """LFW View-2 pairs protocol from images and pairs.txt (insightface 10-fold accuracy).

    \b
    Example: fuseface eval lfw --root data/lfw -m dlib-resnet --landmarks lfw_mtcnn/faces.jsonl -o runs/lfw
    """
    from fuseface.data import lfw
    from fuseface.eval.verification import flip_sum

    _need_one(model, features)
    pairs = lfw.read_pairs(root / "pairs.txt")[: max_pairs or None]
    paths, i1, i2, issame = lfw.pair_image_index(pairs)
    _check_nfolds(nfolds, len(pairs))
    how: dict[str, Any] = {"crop": "aligned" if images_dir else f"centre{crop}"}
    if model is not None:
        src = images_dir or root / lfw.IMAGE_SUBDIR
        if images_dir is not None or centre_crop:
            c = None if images_dir else crop

            def load(a: int, b: int) -> Any:
                return lfw.load_face_crops(src, paths[a:b], size=_model_size(model), crop=c)

        else:
            from fuseface.align.pipeline import read_face_journal
            from fuseface.infer.model_file import read_model_file

            meta = read_model_file(model)[1]
            known = read_face_journal(landmarks) if landmarks is not None else None
            lmk, counts = lfw.lfw_landmarks(src, paths, known, progress=True, detect=detect)
            how = {"crop": f"mtcnn+{meta.template}", **{f"landmarks_{k}": v for k, v in counts.items()}}

            def load(a: int, b: int) -> Any:
                return lfw.load_aligned_crops(src, paths[a:b], lmk[a:b], meta.input_size, meta.template)

        f, ff = _embed_stream(model, len(paths), load, batch_size, flip)
        if save_features is not None:
            import numpy as np

            np.save(save_features, f)
            if ff is not None:
                np.save(save_features.with_name(save_features.stem + "_flip.npy"), ff)
    else:
        f, ff = _load_features(features, flip_features, len(paths), "the distinct images of pairs.txt")
    emb = flip_sum(f, ff) if (flip and ff is not None) else f
    m = lfw.lfw_pairs_protocol(emb, i1, i2, issame, nfolds=nfolds)
    switches = {
        "flip": bool(flip and ff is not None),
        **how,
        "pairs": len(pairs),
        "nfolds": nfolds,
    }
    _finish(
        out,
        f"LFW pairs.txt {nfolds}-fold",
        switches,
        _strip(m, ("tpr", "fpr")),
        plot,
        roc={"LFW": (m["fpr"], m["tpr"])},
    )


def eval_bin(
    path: Path = typer.Argument(..., help="insightface .bin verification set (lfw.bin, cfp_fp.bin, ...)."),
    model: Path | None = model_option(None, MODEL_DETAIL),
    features: Path | None = typer.Option(None, "--features", help=FEATURES_HELP + " Order: the .bin's images."),
    flip_features: Path | None = typer.Option(None, "--flip-features", help=FLIP_FEATURES_HELP),
    flip: bool = flip_option(True, negatable=True),
    batch_size: int = typer.Option(64, "--batch-size"),
    nfolds: int = typer.Option(10, "--nfolds"),
    out: Path | None = out_option(None, OUT_DETAIL),
    plot: bool = typer.Option(False, "--plot", help="Save the ROC curve as PNG."),
) -> None:
    """10-fold verification on a .bin set (insightface protocol).

    \b
    Example: fuseface eval bin data/lfw.bin -m model.safetensors -o runs/lfw_bin
    """
    from fuseface.data.binfile import load_bin_tolerant, read_bin_labels
    from fuseface.eval.verification import evaluate_interleaved, flip_sum

    _need_one(model, features)
    if model is not None:
        images, issame, bad = load_bin_tolerant(path)
        _check_nfolds(nfolds, len(issame))
        f, ff = _embed_stream(model, len(images), lambda a, b: images[a:b], batch_size, flip)
        for i, reason in bad:  # undecodable image: invalid feature, its pair scored as a miss
            typer.secho(f"skipped: {reason}", fg=typer.colors.YELLOW, err=True)
            f[i] = float("nan")
            if ff is not None:
                ff[i] = float("nan")
    else:
        issame = read_bin_labels(path)
        _check_nfolds(nfolds, len(issame))
        f, ff = _load_features(features, flip_features, 2 * len(issame), str(path))
    emb = flip_sum(f, ff) if (flip and ff is not None) else f
    m = evaluate_interleaved(emb, issame, nfolds=nfolds)
    switches = {"flip": bool(flip and ff is not None), "nfolds": nfolds}
    _finish(
        out,
        f"{path.stem} .bin {nfolds}-fold",
        switches,
        _strip(m, ("tpr", "fpr")),
        plot,
        roc={path.stem: (m["fpr"], m["tpr"])},
    )


def eval_ijb(
    root: Path = typer.Option(..., "--root", help="Folder holding IJBB/ and/or IJBC/ (insightface layout)."),
    target: str = typer.Option("IJBC", "--target", help="IJBB or IJBC."),
    task: str = typer.Option("1:1", "--task", help="1:1 (TAR@FAR) or 1:N (TPIR@FPIR, CMC)."),
    model: Path | None = model_option(None, "images are aligned from the 5 landmarks of *_name_5pts_score.txt"),
    features: Path | None = typer.Option(None, "--features", help=FEATURES_HELP + " Order: the landmark file."),
    flip_features: Path | None = typer.Option(None, "--flip-features", help=FLIP_FEATURES_HELP),
    flip_test: bool = flip_option(True, negatable=True, alias=True),
    keep_norm: bool = typer.Option(
        True, "--keep-norm/--no-keep-norm", help="Keep feature norms as quality weights (--no-keep-norm: L2 first)."
    ),
    detector_score: bool = typer.Option(
        True, "--detector-score/--no-detector-score", help="Weight each image by its detector faceness score."
    ),
    legacy: bool = typer.Option(False, "--legacy", help="1:N: ijb_1n.py's pooled G1+G2 gallery."),
    fusion: str = fusion_option(
        "insightface", "insightface (media mean, template sum) | average | norm_weighted | score_weighted | caface"
    ),
    fusion_model: Path | None = typer.Option(None, "--fusion-model", help="Weights of the fusion module (caface)."),
    styles: Path | None = typer.Option(None, "--styles", help="styles.npy (N, 384, 2) for caface."),
    chunk_size: int | None = typer.Option(None, "--chunk-size", help="CAFace chunk size (None: whole set)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    out: Path | None = out_option(None, OUT_DETAIL),
    plot: bool = typer.Option(False, "--plot", help="Save the ROC (1:1) or CMC (1:N) curve as PNG."),
) -> None:
    """IJB-B / IJB-C 1:1 verification or 1:N identification.

    \b
    Example: fuseface eval ijb --root data/ijb --target IJBC --task 1:1 --features feats.npy -o runs/ijbc
    """

    from fuseface.data.ijb import load_ijb
    from fuseface.errors import ConfigError
    from fuseface.eval import ijb

    _need_one(model, features)
    if task not in ("1:1", "1:N", "1:n"):
        raise ConfigError(f"--task must be 1:1 or 1:N, got {task!r}")
    _check_choice("--fusion", fusion, IJB_FUSIONS)
    one_n = task.upper() == "1:N"
    # 1:1: a helper process parses the pair file while the features are computed or loaded
    proto = load_ijb(root, target, one_to_n=one_n, pairs=False if one_n else "background")
    if model is not None:
        from fuseface.align.similarity import align_face
        from fuseface.data.images import read_image

        def load(a: int, b: int) -> Any:
            return [
                align_face(read_image(proto.image_dir / proto.image_names[i]), proto.landmarks[i]) for i in range(a, b)
            ]

        f, ff = _embed_stream(model, proto.num_images, load, batch_size, flip_test)
    else:
        f, ff = _load_features(features, flip_features, proto.num_images, f"the {proto.target} landmark file")
    style_rows = _load_styles(styles, proto.num_images, fusion)
    tfeat = None
    if fusion != "insightface":
        from fuseface.eval.templates import fuse_templates
        from fuseface.infer.fusion_file import load_fusion

        raw = f + ff if (flip_test and ff is not None and fusion != "caface") else f
        tf = fuse_templates(
            raw,
            proto.templates,
            fusion,
            styles=style_rows,
            scores=proto.faceness if fusion == "score_weighted" else None,
            chunk_size=chunk_size,
            model=load_fusion(fusion_model) if fusion_model else None,
        )
        tfeat = tf
    kw = {
        "flip_test": flip_test,
        "keep_norm": keep_norm,
        "detector_score": detector_score,
        "template_features": tfeat,
    }
    fusion_switches: dict[str, Any] = {"fusion": fusion}
    if fusion == "caface":
        fusion_switches["chunk_size"] = chunk_size if chunk_size else "all"
    if one_n:
        m = ijb.evaluate_1toN(proto, target, f, ff, legacy=legacy, **kw)
        ranks = m.pop("mated_ranks", None)
        switches = {**m.pop("switches"), **fusion_switches}
        _finish(out, m.pop("protocol"), switches, m, plot, cmc_ranks={fusion: ranks} if ranks is not None else None)
    else:
        m = ijb.evaluate_1to1(proto, target, f, ff, **kw)
        roc = m.pop("roc")
        switches = {**m.pop("switches"), **fusion_switches}
        _finish(out, m.pop("protocol"), switches, m, plot, roc={fusion: (roc["fpr"], roc["tpr"])})


def eval_tinyface(
    root: Path = typer.Option(..., "--root", help="Folder holding tinyface/Testing_Set/."),
    images_dir: Path | None = typer.Option(
        None,
        "--images-dir",
        help="Aligned copy with Probe/, Gallery_Match/, Gallery_Distractor/ (AdaFace: aligned_pad_0.1_pad_high).",
    ),
    model: Path | None = model_option(None, MODEL_DETAIL),
    features: Path | None = typer.Option(
        None, "--features", help=FEATURES_HELP + " Order: probes, gallery matches, distractors."
    ),
    flip_features: Path | None = typer.Option(None, "--flip-features", help=FLIP_FEATURES_HELP),
    flip: bool = flip_option(True, negatable=True),
    batch_size: int = typer.Option(64, "--batch-size"),
    out: Path | None = out_option(None, OUT_DETAIL),
    plot: bool = typer.Option(False, "--plot", help="Save the CMC curve as PNG."),
) -> None:
    """TinyFace closed-set identification (rank 1/5/20, distractors in the gallery).

    \b
    Example: fuseface eval tinyface --root data -m model.safetensors -o runs/tinyface
    """
    from fuseface.data.tinyface import load_tinyface
    from fuseface.eval.identification import closed_set

    _need_one(model, features)
    proto = load_tinyface(root, images_dir)
    emb, ff = _unit_features_of_images(
        proto.image_paths,
        model,
        features,
        flip_features,
        batch_size,
        flip,
        "TinyFace (probes, matches, distractors)",
    )
    probe, gallery = proto.split(emb)
    m = closed_set(probe, proto.probe_labels, gallery, proto.gallery_labels, ranks=(1, 5, 20))
    r = m.pop("mated_ranks")
    _finish(out, "TinyFace", {"flip": bool(flip and ff is not None)}, m, plot, cmc_ranks={"TinyFace": r})


def eval_scface(
    root: Path = typer.Option(
        ..., "--root", help="SCface root (mugshot_frontal_cropped_all/, surveillance_cameras_distance_{1,2,3}/)."
    ),
    split: str = typer.Option("all", "--split", help="all (130 subjects) or test80 (last 80 subjects)."),
    model: Path | None = model_option(None, MODEL_DETAIL + ", resized to its input"),
    features: Path | None = typer.Option(
        None, "--features", help=FEATURES_HELP + " Order: gallery, then probes of d1, d2, d3."
    ),
    flip_features: Path | None = typer.Option(None, "--flip-features", help=FLIP_FEATURES_HELP),
    flip: bool = flip_option(True, negatable=True),
    batch_size: int = typer.Option(64, "--batch-size"),
    out: Path | None = out_option(None, OUT_DETAIL),
    plot: bool = typer.Option(False, "--plot", help="Save the CMC curves as PNG."),
) -> None:
    """SCface: mugshot gallery vs surveillance probes, rank-1/5 per distance (our documented split).

    \b
    Example: fuseface eval scface --root data/scface -m model.safetensors --split test80 -o runs/scface
    """
    from fuseface.data.scface import load_scface
    from fuseface.eval.identification import closed_set

    _need_one(model, features)
    _check_choice("--split", split, ("all", "test80"))
    proto = load_scface(root, split)
    emb, ff = _unit_features_of_images(
        proto.image_paths, model, features, flip_features, batch_size, flip, f"SCface split {split}"
    )
    gallery, probes = proto.split_features(emb)
    per, curves = {}, {}
    for d, feats in probes.items():
        labels = proto.probes[d][1]
        per[d] = closed_set(feats, labels, gallery, proto.gallery_labels, ranks=(1, 5))
        curves[d] = per[d].pop("mated_ranks")
    m = {"per_distance": per, "num_gallery": len(gallery)}
    _finish(
        out, f"SCface ({split})", {"flip": bool(flip and ff is not None), "split": split}, m, plot, cmc_ranks=curves
    )


def eval_ijbs(
    protocol_dir: Path = typer.Option(
        ..., "--protocol-dir", help="Folder with cs6_metadata.csv, the probe csvs and galleries/."
    ),
    image_list: Path = typer.Option(
        ..., "--image-list", help="One image path per line (.../<subject>/<file>); the rows of --features."
    ),
    features: Path = typer.Option(..., "--features", help=FEATURES_HELP),
    flip_features: Path | None = typer.Option(None, "--flip-features", help=FLIP_FEATURES_HELP),
    protocol: list[str] = typer.Option(
        ["surveillance_to_single", "surveillance_to_booking", "surveillance_to_surveillance"], "--protocol"
    ),
    fusion: str = fusion_option(
        "norm_sum", "norm_sum (sum of raw features, then L2) | average | norm_weighted | caface"
    ),
    fusion_model: Path | None = typer.Option(None, "--fusion-model", help="Weights of the fusion module."),
    styles: Path | None = typer.Option(
        None, "--styles", help="styles.npy (N, 384, 2), rows as --features; needed by --fusion caface."
    ),
    chunk_size: int | None = typer.Option(None, "--chunk-size"),
    out: Path | None = out_option(None, OUT_DETAIL),
) -> None:
    """IJB-S identification (rank 1/5/10, TPIR at FPIR 1%/10%) from precomputed features.

    \b
    Example: fuseface eval ijbs --protocol-dir data/ijbs --image-list images.txt --features feats.npy -o runs/ijbs
    """
    from fuseface.data.ijbs import PROTOCOLS, load_ijbs, read_image_list
    from fuseface.eval.identification import two_gallery_identification
    from fuseface.eval.invalid import invalid_rows
    from fuseface.eval.templates import fuse_row_sets
    from fuseface.infer.fusion_file import load_fusion

    _check_choice("--fusion", fusion, IJBS_FUSIONS)
    for name in protocol:
        _check_choice("--protocol", name, tuple(PROTOCOLS))
    names = read_image_list(image_list)
    f, ff = _load_features(features, flip_features, len(names), str(image_list))
    f = f + ff if ff is not None else f
    style_rows = _load_styles(styles, len(names), fusion)
    bad = invalid_rows(f)
    fusion_module = load_fusion(fusion_model) if fusion_model and fusion != "norm_sum" else None

    def templates(rows_list: list[Any]) -> tuple[Any, int]:
        return fuse_row_sets(f, rows_list, fusion, styles=style_rows, chunk_size=chunk_size, model=fusion_module)

    subsets: dict[str, Any] = {}
    for name in protocol:
        t = load_ijbs(protocol_dir, names, name)
        probe, e_p = templates(t.probe_rows)
        gals, e_g = [], 0
        for sids, rows in t.galleries:
            g, e = templates(rows)
            gals.append((g, sids))
            e_g += e
        res = two_gallery_identification(probe, t.probe_subjects, gals)
        res["empty_probe_templates"], res["empty_gallery_templates"] = e_p, e_g
        subsets[name] = res
    m = {"subsets": subsets, "invalid_images": int(bad.sum())}
    _finish(out, "IJB-S", {"flip": ff is not None, "fusion": fusion}, m, False)


def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (or result JSON files)."),
    out: Path | None = out_option(None, "also write the markdown table to this file"),
) -> None:
    """Put several evaluation results side by side in one markdown table.

    \b
    Example: fuseface report runs/lfw runs/ijbc -o report.md
    """
    from fuseface.eval.report import report_table

    table = report_table(run_dirs)
    typer.echo(table)
    if out is not None:
        out.write_text(table + "\n")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add the eval commands to ``groups['eval']`` and ``report`` to the root app."""
    groups["eval"].command("lfw")(eval_lfw)
    groups["eval"].command("bin")(eval_bin)
    groups["eval"].command("ijb")(eval_ijb)
    groups["eval"].command("tinyface")(eval_tinyface)
    groups["eval"].command("scface")(eval_scface)
    groups["eval"].command("ijbs")(eval_ijbs)
    app.command("report")(report_cmd)


def _model_size(model: Path) -> int:
    from fuseface.infer.model_file import read_model_file

    return read_model_file(model)[1].input_size
