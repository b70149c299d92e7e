"""Training-loader throughput per core: RecordIO read + JPEG decode (+ augment) of 112x112 faces.

    python benchmarks/data_speed.py --count 512

Packs ``--count`` real 112x112 faces into a RecordIO folder as JPEG (quality 95, as ``fuseface
data pack``): aligned crops (``*/*.png`` or ``*/*.jpg`` under ``--crops``, e.g. the output of
``fuseface align``) or, by default, the central 150x150 of LFW's deep-funneled photos (faces
already centred) resized to 112x112 (``--photos``). Then, in one
process with one thread, times ``RecordIODataset[i]`` for: read + decode only (no transform, the
default normalisation), the default training transform (flip), and the AdaFace augmentation.
images/s per CPU-second is the per-worker figure of the DataLoader (each worker is one process);
a last row runs a real ``DataLoader`` with one worker (AdaFace augment, batches of ``--batch``)
and gives its images/s on the wall clock, collation and transfer to the main process included.
Writes ``benchmarks/results/data_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_speed.json"


def loader_rate(root: str, transform: object, batch: int, batches: int = 24) -> dict[str, float]:
    """Images/s on the wall clock of a ``DataLoader`` with one worker process (batches collated
    and sent to the main process, as in training), after its first batch (worker start-up)."""
    from torch.utils.data import DataLoader, RandomSampler

    from fuseface.data.recordio import RecordIODataset

    ds = RecordIODataset(root, transform=transform)
    sampler = RandomSampler(ds, replacement=True, num_samples=batch * (batches + 1), generator=torch.Generator())
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=1, prefetch_factor=4)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    count = sum(len(labels) for _, labels in it)
    seconds = time.perf_counter() - t0
    return {"images_per_s": count / seconds, "images": count, "batch_size": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("FUSEFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--crops", type=Path, default=None, help="folder of aligned crops (default: --photos)")
    parser.add_argument("--photos", type=Path, default=shared / "lfw" / "lfw-deepfunneled")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="DataLoader batch size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from align_speed import matmul_gflops
    from fuseface.data.recordio import RecordIODataset, RecordIOWriter
    from fuseface.data.transforms import build_train_transform

    if args.crops is not None:
        files = sorted(f for f in args.crops.glob("*/*") if f.suffix in (".png", ".jpg"))[: args.count]
        faces = [cv2.imread(str(f)) for f in files]
    else:
        files = sorted(args.photos.glob("*/*.jpg"))[:: max(1, len(list(args.photos.glob("*/*.jpg"))) // args.count)]
        files = files[: args.count]
        faces = [
            cv2.resize(cv2.imread(str(f))[50:200, 50:200], (112, 112), interpolation=cv2.INTER_AREA) for f in files
        ]
    if not faces:
        raise SystemExit(f"no images under {args.crops or args.photos}")
    result: dict[str, object] = {
        "images": len(faces),
        "source": str(args.crops or args.photos),
        "loadavg": os.getloadavg()[0],
        "matmul_gflops_1_thread": matmul_gflops(1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        with RecordIOWriter(tmp) as writer:
            for k, face in enumerate(faces):
                writer.write_image(np.ascontiguousarray(face[:, :, ::-1]), k % 50)
        variants = {
            "read + decode": None,
            "read + decode + flip": build_train_transform(seed=0),
            "read + decode + AdaFace augment": build_train_transform(adaface_aug=True, seed=0),
        }
        rows = {}
        for name, transform in variants.items():
            ds = RecordIODataset(tmp, transform=transform)
            best = float("inf")
            for _ in range(args.passes):
                c0 = time.process_time()
                for i in range(len(ds)):
                    ds[i]
                best = min(best, time.process_time() - c0)
            rows[name] = {"images_per_cpu_s": len(ds) / best, "us_per_image": 1e6 * best / len(ds)}
            print(f"{name:<34} {rows[name]['images_per_cpu_s']:>8.0f} images/CPU-s")
        result["per_core"] = rows
        result["dataloader_one_worker"] = loader_rate(tmp, build_train_transform(adaface_aug=True), args.batch)
        print(
            f"DataLoader, 1 worker, batch {args.batch}, AdaFace augment: "
            f"{result['dataloader_one_worker']['images_per_s']:.0f} images/s (wall)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
