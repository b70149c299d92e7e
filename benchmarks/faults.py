"""Inject faults and count what survives: fault | trials | survived | data lost.

Faults (tiny configs from ``tests/dist_helpers.py``: an IResNet with one block per stage on 8
synthetic identities at 32 px, so the whole script takes a few minutes on 2 CPU cores):

* ``sigkill_train_1proc`` / ``sigkill_train_2proc``: a training run (1 process, or 2 gloo processes
  under ``torch.distributed.run``) is SIGKILLed at a random moment after a random checkpoint, then
  resumed with ``--resume``, several kills per run; survived = the final weights are bit-identical
  to an uninterrupted run's (``torch.equal`` on every tensor of backbone and head);
* ``sigkill_during_checkpoint_write``: a forked child writes a large checkpoint with
  ``checkpoint.write_atomic`` and is SIGKILLed at a random moment; survived = the previous
  checkpoint loads and no unreadable file carries a checkpoint name;
* ``enospc_during_checkpoint``: the write raises ``OSError(ENOSPC)`` part-way; survived = a
  ``CheckpointError`` naming the file, the previous checkpoint loads, no ``.tmp`` left behind;
* ``corrupt_recordio_records`` / ``corrupt_bin_images``: payload bytes of some records / images
  overwritten or cut; survived = every damaged record is skipped and counted, every intact one read;
* ``truncated_photos``: JPEGs cut at random lengths; survived = decoded (partially) or listed as
  failed with a ``DataError`` naming the file, never another exception.

"data lost" counts completed work lost beyond the interrupted step (for training: runs whose
resumed result differs from the uninterrupted one; for data: intact records not read back).
Writes ``benchmarks/results/faults.json``. The machine may be shared: only counts are reported.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "dist_helpers.py"
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
STEPS = 10
KILLS_PER_RUN = 5
RUNS = 2  # per process count: RUNS x KILLS_PER_RUN kill/resume trials


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _config(path: Path, out_dir: Path, cache: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from dist_helpers import tiny_config_dict

    cfg = tiny_config_dict(out_dir, cache, steps=STEPS)
    cfg["checkpoint"] = {"every": 1, "keep": 3}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _command(cfg: Path, nproc: int, resume: bool) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, str(HELPER), "train", "--config", str(cfg), *(["--resume"] if resume else [])]


def _final_state(out_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    from fuseface.train import checkpoint as C

    return C.read_checkpoint(C.checkpoint_path(out_dir, STEPS))["modules"]


def _identical(a: dict, b: dict) -> bool:
    return all(
        a[m].keys() == b[m].keys() and all(torch.equal(a[m][k], b[m][k]) for k in a[m]) for m in ("backbone", "head")
    )


def sigkill_training(nproc: int, work: Path, rng: random.Random) -> dict[str, Any]:
    """RUNS runs, each killed KILLS_PER_RUN times at random checkpoints and resumed to the end."""
    from fuseface.train import checkpoint as C

    cache = work / "cache"
    ref_dir = work / f"ref{nproc}"
    subprocess.run(
        _command(_config(work / f"ref{nproc}.yaml", ref_dir, cache), nproc, False),
        env=_env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    reference = _final_state(ref_dir)
    trials = survived = lost = 0
    for run in range(RUNS):
        out = work / f"run{nproc}_{run}"
        cfg = _config(work / f"run{nproc}_{run}.yaml", out, cache)
        kill_after = sorted(rng.sample(range(1, STEPS), KILLS_PER_RUN))
        resume = False
        for step in kill_after:
            proc = subprocess.Popen(
                _command(cfg, nproc, resume),
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 300
            while not C.checkpoint_path(out, step).is_file() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next step(s)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            trials += 1
            resume = True
        done = subprocess.run(
            _command(cfg, nproc, True),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
        ok = done.returncode == 0 and _identical(_final_state(out), reference)
        survived += KILLS_PER_RUN if ok else 0
        lost += 0 if ok else 1
    return {"fault": f"sigkill_train_{nproc}proc", "trials": trials, "survived": survived, "data_lost": lost}


def _big_state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"format": "fuseface-train-ckpt-v1", "step": seed, "blob": torch.randn(4_000_000, generator=g)}


def sigkill_during_write(work: Path, rng: random.Random, trials: int = 10) -> dict[str, Any]:
    from fuseface.train import checkpoint as C

    survived = lost = 0
    for t in range(trials):
        out = work / f"ckpt_kill_{t}"
        previous = C.write_atomic({**_big_state(1), "format": C.FORMAT}, C.checkpoint_path(out, 1))
        pid = os.fork()
        if pid == 0:  # child: write the next checkpoint, then exit without cleanup
            try:
                C.write_atomic({**_big_state(2), "format": C.FORMAT}, C.checkpoint_path(out, 2))
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ok = C.read_checkpoint(previous)["step"] == 1
        for path in C.list_checkpoints(out):  # whatever carries a checkpoint name must load
            try:
                C.read_checkpoint(path)
            except Exception:
                ok = False
        survived += ok
        lost += not ok
    return {"fault": "sigkill_during_checkpoint_write", "trials": trials, "survived": survived, "data_lost": lost}


def enospc_during_checkpoint(work: Path, trials: int = 10) -> dict[str, Any]:
    from fuseface.errors import CheckpointError
    from fuseface.train import checkpoint as C

    survived = lost = 0
    real_save = torch.save
    for t in range(trials):
        out = work / f"enospc_{t}"
        previous = C.write_atomic({**_big_state(1), "format": C.FORMAT}, C.checkpoint_path(out, 1))
        cut = 1000 * (t + 1)

        def full_disk(obj: Any, fh: Any, *args: Any, cut: int = cut, **kwargs: Any) -> None:
            fh.write(b"\0" * cut)  # part of the file reached the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        torch.save = full_disk
        try:
            C.write_atomic({**_big_state(2), "format": C.FORMAT}, C.checkpoint_path(out, 2))
            clear = False
        except CheckpointError as exc:
            clear = "step_00000002.pt" in str(exc) and "No space left" in str(exc)
        finally:
            torch.save = real_save
        intact = C.read_checkpoint(previous)["step"] == 1
        leftovers = (
            list(C.checkpoint_dir(out).glob("*.tmp")) + [C.checkpoint_path(out, 2)] * C.checkpoint_path(out, 2).exists()
        )
        ok = clear and intact and not leftovers
        survived += ok
        lost += not intact
    return {"fault": "enospc_during_checkpoint", "trials": trials, "survived": survived, "data_lost": lost}


def corrupt_recordio(work: Path, rng: random.Random, n: int = 40, damaged: int = 10) -> dict[str, Any]:
    import cv2

    from fuseface.data.recordio import RecordIODataset, RecordIOReader, RecordIOWriter

    root = work / "rec"
    gen = np.random.default_rng(0)
    with RecordIOWriter(root) as writer:
        for i in range(n):
            writer.write_image(gen.integers(0, 255, (24, 24, 3), dtype=np.uint8), i % 4)
    reader = RecordIOReader(root)
    keys = [int(k) for k in reader.image_keys] if len(reader.image_keys) else [int(k) for k in reader.keys]
    offsets = {k: reader._offsets.get(k) for k in keys}
    reader.close()
    bad = set(rng.sample(range(n), damaged))
    data = bytearray((root / "train.rec").read_bytes())
    for i in bad:  # overwrite the JPEG data inside the record (the framing stays valid)
        start = offsets[keys[i]] + 8 + 24 + 40
        data[start : start + 200] = bytes(200)
    (root / "train.rec").write_bytes(bytes(data))
    ds = RecordIODataset(root, skip_corrupt=True)
    read_ok = 0
    for i in range(len(ds)):
        try:
            img, _ = ds.load(i)
            read_ok += int(cv2.imencode(".png", img)[0])
        except Exception:
            pass
    for i in range(len(ds)):
        ds[i]
    skipped = ds.report_skipped()
    survived = min(skipped, damaged) if read_ok >= n - damaged else 0
    return {
        "fault": "corrupt_recordio_records",
        "trials": damaged,
        "survived": survived,
        "data_lost": max(0, (n - damaged) - read_ok),
    }


def corrupt_bin(work: Path, rng: random.Random, pairs: int = 20, damaged: int = 10) -> dict[str, Any]:
    import cv2

    from fuseface.data.binfile import load_bin_tolerant, save_bin

    gen = np.random.default_rng(1)
    encoded = [
        cv2.imencode(".jpg", gen.integers(0, 255, (112, 112, 3), dtype=np.uint8))[1].tobytes() for _ in range(2 * pairs)
    ]
    bad = set(rng.sample(range(2 * pairs), damaged))
    for i in bad:
        encoded[i] = encoded[i][: rng.randint(0, 40)] if i % 2 else b"\0" * len(encoded[i])
    save_bin(work / "c.bin", encoded, [True, False] * (pairs // 2))
    images, _issame, listed = load_bin_tolerant(work / "c.bin")
    listed_ids = {i for i, _ in listed}
    intact_read = sum(1 for i in range(2 * pairs) if i not in bad and i not in listed_ids and images[i].any())
    return {
        "fault": "corrupt_bin_images",
        "trials": damaged,
        "survived": len(listed_ids & bad),
        "data_lost": (2 * pairs - damaged) - intact_read,
    }


def truncated_photos(work: Path, rng: random.Random, trials: int = 20) -> dict[str, Any]:
    import cv2

    from fuseface.data.images import read_image
    from fuseface.errors import DataError

    gen = np.random.default_rng(2)
    photo = cv2.imencode(".jpg", gen.integers(0, 255, (200, 160, 3), dtype=np.uint8))[1].tobytes()
    survived = 0
    import warnings

    for t in range(trials):
        path = work / f"photo_{t}.jpg"
        path.write_bytes(photo[: rng.randint(0, len(photo) - 1)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = read_image(path)
                survived += int(img.ndim == 3 and img.shape[2] == 3)
            except DataError as exc:
                survived += int(str(path) in str(exc))
            except Exception:
                pass
    return {"fault": "truncated_photos", "trials": trials, "survived": survived, "data_lost": 0}


def main() -> None:
    torch.set_num_threads(1)
    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuseface_faults_") as tmp:
        work = Path(tmp)
        for fn in (
            lambda: sigkill_training(1, work, rng),
            lambda: sigkill_training(2, work, rng),
            lambda: sigkill_during_write(work, rng),
            lambda: enospc_during_checkpoint(work),
            lambda: corrupt_recordio(work, rng),
            lambda: corrupt_bin(work, rng),
            lambda: truncated_photos(work, rng),
        ):
            start = time.perf_counter()
            row = fn()
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"{row['fault']:<34} {row['trials']:>6} {row['survived']:>8} {row['data_lost']:>9}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "note": "shared 2-core machine; counts only"}, indent=1) + "\n")
    print("\n| fault | trials | survived | data lost |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['fault']} | {r['trials']} | {r['survived']} | {r['data_lost']} |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
