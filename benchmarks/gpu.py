"""Training and inference throughput on one CUDA GPU, synthetic data, in under 10 minutes.

    python benchmarks/gpu.py                       # on a CUDA machine: every case, JSON out
    python benchmarks/gpu.py --device cpu --tiny   # the same code on CPU with tiny sizes (a test)

Cases (each: a few warm-up steps, then ``--steps`` timed steps with ``torch.cuda.synchronize``;
images/s and the peak of ``torch.cuda.max_memory_allocated`` after a reset):

* training of ir50 and ir100 with ArcFace + Partial FC (``--classes`` 93,431 identities, the
  MS1MV3 count of arcface_torch's figures, ``--sample-rate`` 1.0), SGD, batch 128, channels-last,
  under fp16 AMP (with a GradScaler) and bf16 AMP, each without and with ``torch.compile``;
* MSConv ir100 (``conv="msconv"``) and LGAF ir100 (``head="lgaf"``) training steps, fp16 AMP;
* inference of ir50 / ir100 at batch 256 under fp16 (weights cast, BN folded, channels-last).

Beside the figures the JSON records the GPU name, torch/CUDA versions and the fp16 / fp32 matmul
TFLOP/s measured in the same run. arcface_torch publishes about 675 (r50) and 460 (r100)
images/s per A100 with Partial FC, fp16 (its README "Speed Benchmark").

Without CUDA (and without ``--device cpu``) the script prints why and exits with code 2; the
tiny CPU mode runs every case at batch 2, 10 classes, one timed step (compile cases skipped
unless ``--compile``), which is what ``tests/test_gpu_benchmark.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
NO_CUDA_EXIT = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, reps: int = 10) -> float:
    """Matrix-multiply TFLOP/s at ``dtype`` (best of ``reps``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


def build_backbone(arch: str, **kwargs: Any) -> nn.Module:
    import fuseface

    return fuseface.create_backbone(arch, **kwargs)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step (mean of ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def train_case(
    arch: str,
    device: torch.device,
    batch: int,
    classes: int,
    sample_rate: float,
    amp: str,
    compile_model: bool,
    warmup: int,
    steps: int,
    backbone_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One training configuration: backbone + ArcFace Partial FC, SGD, channels-last, AMP."""
    from fuseface.nn.losses.margin import ArcFace
    from fuseface.nn.losses.partial_fc import PartialFC

    torch.manual_seed(0)
    _reset_peak(device)
    net = build_backbone(arch, **(backbone_kwargs or {})).to(device).to(memory_format=torch.channels_last)
    head = PartialFC(ArcFace(), 512, classes, sample_rate=sample_rate, rank=0, world_size=1).to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))
    model = torch.compile(net) if compile_model else net
    x = torch.randn(batch, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if device.type == "cuda" else nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
            emb = out[0] if isinstance(out, tuple) else out
        loss = head(emb.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    t0 = time.perf_counter()
    step()  # first step: compilation / cuDNN autotuning, reported separately
    _sync(device)
    first = time.perf_counter() - t0
    per_step = time_steps(step, device, warmup, steps)
    return {
        "arch": arch,
        "backbone_kwargs": backbone_kwargs or {},
        "amp": amp,
        "compile": compile_model,
        "batch": batch,
        "images_per_s": batch / per_step,
        "peak_mib": _peak_mib(device),
        "first_step_s": first,
    }


def inference_case(arch: str, device: torch.device, batch: int, warmup: int, steps: int) -> dict[str, Any]:
    """Inference at ``batch``: BN folded, channels-last, fp16 weights on CUDA (fp32 on CPU)."""
    from fuseface.infer.optimize import prepare_for_inference

    torch.manual_seed(0)
    _reset_peak(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    net = prepare_for_inference(build_backbone(arch).eval(), dtype=dtype).to(device)
    x = torch.randn(batch, 3, 112, 112, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode():
            net(x)

    per_step = time_steps(step, device, warmup, steps)
    return {
        "arch": arch,
        "dtype": str(dtype),
        "batch": batch,
        "images_per_s": batch / per_step,
        "peak_mib": _peak_mib(device),
    }


def plan(args: argparse.Namespace) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """The cases to run, in order, as ``(name, thunk)``."""
    device = torch.device(args.device)
    archs = ["ir18", "ir18"] if args.tiny else ["ir50", "ir100"]
    big = archs[1]
    kw = {
        "device": device,
        "batch": args.batch,
        "classes": args.classes,
        "sample_rate": args.sample_rate,
        "warmup": args.warmup,
        "steps": args.steps,
    }
    compile_options = [False, True] if (device.type == "cuda" or args.compile) else [False]
    cases: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for arch, name in zip(archs, ("ir50", "ir100"), strict=True):
        for amp in ("fp16", "bf16"):
            for comp in compile_options:
                label = f"train {name} {amp}{' compile' if comp else ''}"
                cases.append((label, lambda a=arch, m=amp, c=comp: train_case(a, amp=m, compile_model=c, **kw)))
    cases.append(
        (
            "train msconv ir100 fp16",
            lambda: train_case(big, amp="fp16", compile_model=False, backbone_kwargs={"conv": "msconv"}, **kw),
        )
    )
    cases.append(
        (
            "train lgaf ir100 fp16",
            lambda: train_case(big, amp="fp16", compile_model=False, backbone_kwargs={"head": "lgaf"}, **kw),
        )
    )
    for arch, name in zip(archs, ("ir50", "ir100"), strict=True):
        cases.append(
            (
                f"inference {name} fp16",
                lambda a=arch: inference_case(a, device, args.infer_batch, args.warmup, args.steps),
            )
        )
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (batch 2, 10 classes, 1 step): a check")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--classes", type=int, default=93431)
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile cases on CPU")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names to run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device is available (torch.cuda.is_available() is False); nothing measured.")
        print("Run it on a CUDA machine, or check the code path with `--device cpu --tiny`.")
        return NO_CUDA_EXIT
    if args.tiny:
        args.batch, args.infer_batch, args.classes, args.warmup, args.steps = 2, 2, 10, 0, 1
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    size = 256 if args.tiny else 8192
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "matmul_tflops_fp32": matmul_tflops(device, torch.float32, size),
        "matmul_tflops_fp16": matmul_tflops(device, torch.float16, size) if device.type == "cuda" else None,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "cases": {},
    }
    only = [s for s in args.only.split(",") if s]
    t_start = time.perf_counter()
    for name, run in plan(args):
        if only and not any(s in name for s in only):
            continue
        try:
            res = run()
        except Exception as exc:  # one failing case (e.g. out of memory) must not lose the others
            res = {"error": f"{type(exc).__name__}: {exc}"}
        result["cases"][name] = res
        shown = f"{res['images_per_s']:.1f} img/s" if "images_per_s" in res else res["error"]
        peak = f", peak {res['peak_mib']:.0f} MiB" if res.get("peak_mib") else ""
        print(f"{name:<30} {shown}{peak}", flush=True)
    result["total_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
