"""benchmarks/gpu.py: its cases run end to end on CPU at tiny sizes; without CUDA it exits 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu


def test_tiny_cpu_run_measures_every_selected_case(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    only = "train ir50 fp16,train lgaf,inference ir50"
    assert gpu.main(["--device", "cpu", "--tiny", "--only", only, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {
        "train ir50 fp16",
        "train lgaf ir100 fp16",
        "inference ir50 fp16",
    }
    for name, case in result["cases"].items():
        assert "error" not in case, (name, case)
        assert case["images_per_s"] > 0
    assert result["cases"]["train lgaf ir100 fp16"]["backbone_kwargs"] == {"head": "lgaf"}
    assert result["matmul_tflops_fp32"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--out", str(tmp_path / "gpu.json")]) == gpu.NO_CUDA_EXIT == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()
