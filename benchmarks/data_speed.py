"""Training-loader throughput per core: RecordIO read + JPEG decode (+ augment) of 112x112 faces.

    python benchmarks/data_speed.py --count 512

Packs ``--count`` real aligned LFW crops (``*.png`` under ``/work/cache/lfw_mtcnn``, option
``--crops``) into a RecordIO folder as JPEG (quality 95, as ``fuseface data pack``), then, in one
process with one thread, times ``RecordIODataset[i]`` for: read + decode only (no transform, the
default normalisation), the default training transform (flip), and the AdaFace augmentation.
images/s per CPU-second is the per-worker figure of the DataLoader (each worker is one process).
Writes ``benchmarks/results/data_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=Path, default=Path("/work/cache/lfw_mtcnn"))
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from fuseface.data.recordio import RecordIODataset, RecordIOWriter
    from fuseface.data.transforms import build_train_transform

    files = sorted(args.crops.glob("*/*.png"))[: args.count]
    result: dict[str, object] = {"images": len(files), "loadavg": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        with RecordIOWriter(tmp) as writer:
            for k, f in enumerate(files):
                writer.write_image(cv2.imread(str(f))[:, :, ::-1].copy(), k % 50)
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
