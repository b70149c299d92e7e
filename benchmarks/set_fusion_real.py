"""Set fusion on real faces (held-out LFW identities, dlib's ResNet): CAFace vs pooling by set size.

    python benchmarks/set_fusion_real.py --store /work/cache/fusion/store_lfw_dlib_k3 \
        --caface /work/cache/fusion/caface_lfw_dlib.safetensors [--sizes 1,2,4,8,16,32,64] [--reps 5]

Protocol and methods: :mod:`fuseface.experiments.set_fusion_real`. Prints the tables, writes
``benchmarks/results/set_fusion_real[_TAG].json`` and a plot of TAR@FAR=1e-2 (and rank-1) against N.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fuseface.experiments import set_fusion_real as sfr

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="feature store extracted with --split (test identities used)")
    ap.add_argument("--caface", required=True, help="CAFace fusion weights file")
    ap.add_argument("--sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (fresh halves and sets)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--stream-chunk", type=int, default=4)
    ap.add_argument("--min-identities", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result files (ablations)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = sfr.evaluate_store(
        args.store,
        args.caface,
        sizes=[int(s) for s in args.sizes.split(",")],
        repetitions=args.reps,
        bootstrap=args.bootstrap,
        stream_chunk=args.stream_chunk,
        min_identities=args.min_identities,
        seed=args.seed,
    )
    result["seconds"] = time.time() - t0
    result["machine"] = "2 shared CPU cores (other jobs running)"
    name = "set_fusion_real" + (f"_{args.tag}" if args.tag else "")
    sfr.write_json(result, RESULTS / f"{name}.json")
    for metric in ("tar@1e-2", "rank1"):
        sfr.plot(result, RESULTS / f"{name}_{metric.replace('@', '_')}.png", metric)
    print(sfr.markdown(result))
    print(f"written {RESULTS / (name + '.json')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
