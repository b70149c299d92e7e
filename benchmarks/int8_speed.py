"""Static int8 (ONNX Runtime QDQ) against fp32: images/s, cosine to fp32 on real faces, LFW accuracy.

    python benchmarks/int8_speed.py --threads 2 --archs ir50,dlib_resnet --pairs 600

Real faces: LFW photos aligned from the landmarks recorded in ``faces.jsonl`` of a
``fuseface align`` run (``--journal``; e.g. ``fuseface align LIST.txt DST --policy central`` over a
few hundred LFW photos for the speed and cosine rows, all of LFW for ``--pairs 6000``), with each
model's own template.
Calibration uses ``--calib`` faces (200), the cosine is measured on other faces. ``ir50`` /
``ir100`` have untrained weights (their batch-norm statistics are first settled on real crops),
so only speed and fp32 agreement are meaningful for them; ``dlib_resnet`` is the real model
(``fuseface models fetch dlib-resnet``) and also gets the 10-fold accuracy on the first
``--pairs`` LFW View-2 pairs whose photos are both in the journal. Rows, all in the same run:
torch fp32 (the baseline as shipped), torch fp32 folded + channels-last, ORT fp32 (folded),
ORT int8. Writes ``benchmarks/results/int8_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "int8_speed.json"


def load_records(journal: Path) -> tuple[Path, dict[str, np.ndarray]]:
    source = Path((journal.parent / "source.txt").read_text().strip())
    lmk: dict[str, np.ndarray] = {}
    for line in journal.read_text().splitlines():
        rec = json.loads(line)
        if rec["status"] == "ok":
            lmk[rec["source"]] = np.asarray(rec["faces"][0]["landmarks"], np.float32)
    return source, lmk


def crops(source: Path, lmk: dict[str, np.ndarray], names: list[str], size: int, template: str) -> np.ndarray:
    from fuseface.align.pipeline import read_photo
    from fuseface.align.similarity import align_face

    return np.stack([align_face(read_photo(source / n), lmk[n], size, template) for n in names])


def timed(fn, x, iters: int) -> float:  # type: ignore[no-untyped-def]
    fn(x)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--journal", type=Path, default=Path("/work/cache/lfw_mtcnn/faces.jsonl"))
    parser.add_argument("--archs", default="ir50,dlib_resnet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--calib", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS, help="result JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import fuseface
    from fuseface.align.similarity import template_size  # noqa: F401
    from fuseface.eval.verification import evaluate
    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import ModelMeta
    from fuseface.infer.optimize import prepare_for_inference

    sys_path = ROOT / "benchmarks"
    import sys

    sys.path.insert(0, str(sys_path))
    from align_speed import matmul_gflops

    gflops = matmul_gflops(args.threads)
    torch.set_num_threads(args.threads)
    source, lmk = load_records(args.journal)
    names = sorted(lmk)
    calib_names = names[:: max(1, len(names) // args.calib)][: args.calib]
    test_names = [n for n in names[1 :: max(1, len(names) // args.test)] if n not in set(calib_names)][: args.test]
    result: dict[str, object] = {"threads": args.threads, "matmul_gflops": gflops, "loadavg": os.getloadavg()[0]}
    for arch in args.archs.split(","):
        if arch == "dlib_resnet":
            fm = fuseface.load("dlib-resnet")
        else:
            torch.manual_seed(0)
            net = fuseface.create_backbone(arch)
            fm = FaceModel(net, ModelMeta(arch=arch))
        size, template = fm.input_size, fm.template
        calib = crops(source, lmk, calib_names, size, template)
        test = crops(source, lmk, test_names, size, template)
        if arch != "dlib_resnet":  # settle untrained BN statistics on real crops
            fm.net.train()
            for m in fm.net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = None
            with torch.no_grad():
                fm.net(fm.to_input(calib[:64]))
            fm.net.eval()
        with tempfile.TemporaryDirectory() as tmp:
            from fuseface.infer.export import export_onnx
            from fuseface.infer.quantize import OnnxBackbone

            t0 = time.perf_counter()
            int8 = fm.to_int8(calib, Path(tmp) / "int8.onnx")
            quant_s = time.perf_counter() - t0
            folded = prepare_for_inference(fm.net)
            ort32 = OnnxBackbone(
                export_onnx(prepare_for_inference(fm.net, channels_last=False), Path(tmp) / "fp32.onnx", size),
                size,
            )
            x = fm.to_input(test[: args.batch])
            xcl = x.contiguous(memory_format=torch.channels_last)
            variants = {
                "torch fp32": fm.net,
                "torch fp32 folded+channels_last": lambda v, f=folded: f(
                    v.contiguous(memory_format=torch.channels_last)
                ),
                "onnxruntime fp32 folded": ort32,
                "onnxruntime int8 static": int8.net,
            }
            del xcl
            speed = {}
            with torch.inference_mode():
                for name, fn in variants.items():
                    speed[name] = timed(fn, x, args.iters)
                ref = fm.embed_aligned(test)[0]
                got = int8.embed_aligned(test)[0]
            cos = np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
            entry: dict[str, object] = {
                "images_per_s": speed,
                "int8_vs_torch_fp32": speed["onnxruntime int8 static"] / speed["torch fp32"],
                "int8_vs_best_fp32": speed["onnxruntime int8 static"] / max(v for k, v in speed.items() if "fp32" in k),
                "cosine_to_fp32_min": float(cos.min()),
                "cosine_to_fp32_mean": float(cos.mean()),
                "calibration_faces": len(calib),
                "test_faces": len(test),
                "quantisation_s": quant_s,
            }
            if arch == "dlib_resnet" and args.pairs:
                from fuseface.data.lfw import read_pairs

                pairs = [p for p in read_pairs(source.parent / "pairs.txt") if p.path1 in lmk and p.path2 in lmk]
                pairs = pairs[: args.pairs - args.pairs % 10]
                uniq = sorted({q for p in pairs for q in (p.path1, p.path2)})
                faces = crops(source, lmk, uniq, size, template)
                index = {n: k for k, n in enumerate(uniq)}
                a = np.array([index[p.path1] for p in pairs])
                b = np.array([index[p.path2] for p in pairs])
                same = np.array([p.same for p in pairs])
                acc = {}
                for name, model in (("fp32", fm), ("int8", int8)):
                    emb = model.embed_aligned(faces)[0]
                    acc[name] = 100 * float(evaluate(emb[a], emb[b], same)["accuracy_mean"])
                entry["lfw_pairs"] = len(pairs)
                entry["lfw_10fold_accuracy"] = acc
        result[arch] = entry
        print(f"\n{arch} ({size}x{size}), batch {args.batch}, {args.threads} thread(s), matmul {gflops:.0f} GFLOP/s")
        for name, v in speed.items():
            print(f"  {name:<34} {v:>8.1f} img/s  {v / speed['torch fp32']:>5.2f}x")
        print(f"  cosine int8 vs fp32 on {len(test)} real faces: min {cos.min():.4f}, mean {cos.mean():.4f}")
        if "lfw_10fold_accuracy" in entry:
            print(f"  LFW 10-fold on {entry['lfw_pairs']} pairs: {entry['lfw_10fold_accuracy']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
