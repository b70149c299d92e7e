"""Every user error is one line: a sweep of the commands with bad inputs.

Each case runs ``fuseface.cli.main.main(argv)`` in-process (the console script's entry point) and
asserts exit status 2, exactly one line on stderr starting with ``error:`` (besides per-photo
``skipped:`` warnings), naming the file or
option, and no traceback. A bug in fuseface instead prints a traceback, asks for a report and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fuseface.cli import main as cli_main
from ijb_fixtures import ijbs_features, write_ijb, write_ijbs, write_scface, write_tinyface


def run_main(argv: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        cli_main.main([str(a) for a in argv])
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def assert_one_line_error(argv: list, capsys, *names: str) -> str:
    code, _out, err = run_main(argv, capsys)
    # per-photo warnings ("skipped: ...") may precede the error; the error itself is one line
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("skipped: ")]
    assert code == 2, f"{argv}: exit {code}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: not one error line:\n{err}"
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], f"{argv}: {name!r} not named in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    import torch

    from fuseface import create_backbone
    from fuseface.data.binfile import save_bin
    from fuseface.infer.model_file import ModelMeta, save_model

    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    save_bin(root / "t.bin", rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8), np.arange(10) % 2 == 0)
    ijb = write_ijb(root / "ijb", "IJBC", n_subjects=6)
    np.save(root / "ijb_f.npy", ijb.features)
    write_tinyface(root / "tf")
    write_scface(root / "sc", n_subjects=4)
    images = write_ijbs(root / "ijbs")
    (root / "ijbs_list.txt").write_text("\n".join(images) + "\n")
    np.save(root / "ijbs_f.npy", ijbs_features(images))
    np.save(root / "rows3.npy", np.zeros((3, 8), np.float32))
    np.save(root / "vec.npy", np.zeros(8, np.float32))
    (root / "empty.npy").write_bytes(b"")
    (root / "text.npy").write_text("not an array\n")
    (root / "empty.bin").write_bytes(b"")
    torch.manual_seed(0)
    net = create_backbone("ir18", input_size=16, num_features=32)
    save_model(
        root / "m.safetensors", net.eval(), ModelMeta("ir18", {"input_size": 16, "num_features": 32}, input_size=16)
    )
    (root / "broken.safetensors").write_bytes(b"\x00" * 64)
    (root / "config.yaml").write_text("model: {name: nope\n")
    return {"root": root, "ijb": ijb.root}


def test_bin_bad_inputs(files, capsys) -> None:
    r = files["root"]
    assert_one_line_error(["eval", "bin", r / "missing.bin", "--features", r / "rows3.npy"], capsys, "missing.bin")
    assert_one_line_error(["eval", "bin", r / "empty.bin", "--features", r / "rows3.npy"], capsys, "empty.bin")
    assert_one_line_error(["eval", "bin", r / "t.bin", "--features", r / "rows3.npy"], capsys, "rows3.npy", "20")
    assert_one_line_error(["eval", "bin", r / "t.bin", "--features", r / "empty.npy"], capsys, "empty.npy")
    assert_one_line_error(["eval", "bin", r / "t.bin", "--features", r / "text.npy"], capsys, "text.npy")
    assert_one_line_error(["eval", "bin", r / "t.bin", "--features", r / "vec.npy"], capsys, "vec.npy")
    assert_one_line_error(["eval", "bin", r / "t.bin", "--features", r / "nope.npy"], capsys, "nope.npy")
    np.save(r / "f20.npy", np.ones((20, 8), np.float32))
    np.save(r / "f20w.npy", np.ones((20, 4), np.float32))
    args = ["eval", "bin", r / "t.bin", "--features", r / "f20.npy", "--nfolds", "5"]
    assert_one_line_error([*args, "--flip-features", r / "f20w.npy"], capsys, "f20w.npy")
    assert_one_line_error(
        ["eval", "bin", r / "t.bin", "--features", r / "f20.npy", "--nfolds", "50"], capsys, "--nfolds"
    )
    assert_one_line_error(["eval", "bin", r / "t.bin", "--model", r / "broken.safetensors"], capsys, "broken")


def test_lfw_bad_inputs(files, capsys) -> None:
    r = files["root"]
    assert_one_line_error(["eval", "lfw", "--root", r / "nolfw", "--features", r / "rows3.npy"], capsys, "pairs.txt")


def test_ijb_bad_inputs(files, capsys) -> None:
    r, ijb = files["root"], files["ijb"]
    base = ["eval", "ijb", "--root", ijb]
    assert_one_line_error([*base, "--features", r / "rows3.npy"], capsys, "rows3.npy")
    assert_one_line_error([*base, "--task", "1:N", "--features", r / "rows3.npy"], capsys, "rows3.npy")
    assert_one_line_error([*base, "--features", r / "ijb_f.npy", "--flip-features", r / "rows3.npy"], capsys, "rows3")
    assert_one_line_error([*base, "--features", r / "ijb_f.npy", "--fusion", "median"], capsys, "--fusion", "median")
    assert_one_line_error([*base, "--features", r / "ijb_f.npy", "--target", "IJBX"], capsys, "IJBX")
    assert_one_line_error([*base, "--features", r / "ijb_f.npy", "--task", "2:2"], capsys, "--task")
    args = [*base, "--features", r / "ijb_f.npy", "--fusion", "caface", "--styles", r / "nostyles.npy"]
    assert_one_line_error(args, capsys, "nostyles.npy")
    assert_one_line_error([*base, "--features", r / "ijb_f.npy", "--fusion", "caface"], capsys, "--styles")
    args = [*base, "--features", r / "ijb_f.npy", "--fusion", "caface", "--styles", r / "rows3.npy"]
    assert_one_line_error(args, capsys, "rows3.npy")


def test_tinyface_scface_ijbs_bad_inputs(files, capsys) -> None:
    r = files["root"]
    assert_one_line_error(["eval", "tinyface", "--root", r / "tf", "--features", r / "rows3.npy"], capsys, "rows3.npy")
    assert_one_line_error(
        ["eval", "tinyface", "--root", r / "nothing", "--features", r / "rows3.npy"], capsys, "nothing"
    )
    assert_one_line_error(["eval", "scface", "--root", r / "sc", "--features", r / "rows3.npy"], capsys, "rows3.npy")
    assert_one_line_error(
        ["eval", "scface", "--root", r / "sc", "--split", "half", "--features", r / "rows3.npy"], capsys, "half"
    )
    base = ["eval", "ijbs", "--protocol-dir", r / "ijbs", "--image-list", r / "ijbs_list.txt"]
    assert_one_line_error([*base, "--features", r / "rows3.npy"], capsys, "rows3.npy")
    assert_one_line_error([*base, "--features", r / "ijbs_f.npy", "--fusion", "median"], capsys, "--fusion")
    assert_one_line_error([*base, "--features", r / "ijbs_f.npy", "--protocol", "nope"], capsys, "nope")
    assert_one_line_error(
        [*base, "--features", r / "ijbs_f.npy", "--fusion", "caface", "--styles", r / "x.npy"], capsys, "x.npy"
    )


def test_other_commands_bad_inputs(files, capsys) -> None:
    r = files["root"]
    model = r / "m.safetensors"
    assert_one_line_error(
        ["features", "extract", r / "ijbs", "--out", r / "st", "--model", model, "--stages", "a"], capsys, "--stages"
    )
    assert_one_line_error(["features", "info", r / "nostore"], capsys, "nostore")
    assert_one_line_error(["embed", r / "nophoto.jpg", "--model", model, "--out", r / "e.npz"], capsys, "nophoto.jpg")
    assert_one_line_error(["embed", r / "rows3.npy", "--model", r / "nomodel.safetensors"], capsys, "nomodel")
    assert_one_line_error(["compare", r / "a.jpg", r / "b.jpg", "--model", r / "broken.safetensors"], capsys, "broken")
    assert_one_line_error(["fuse", r / "a.jpg", "--model", model, "--method", "median"], capsys, "median")
    assert_one_line_error(
        ["search", "--gallery", r / "nogal", "--probe", r / "a.jpg", "--model", model], capsys, "nogal"
    )
    assert_one_line_error(["models", "info", "nonet"], capsys, "nonet")
    assert_one_line_error(["train", "--config", r / "noconfig.yaml"], capsys, "noconfig.yaml")
    assert_one_line_error(["train", "--config", r / "config.yaml"], capsys, "config.yaml")
    assert_one_line_error(["data", "pack", r / "nofolder", r / "packed"], capsys, "nofolder")
    assert_one_line_error(["report", r / "norun"], capsys, "norun")
    assert_one_line_error(["export", r / "broken.safetensors", "--onnx", r / "x.onnx"], capsys, "broken")


def test_export_without_onnx_gives_install_hint(files, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    line = assert_one_line_error(
        ["export", files["root"] / "m.safetensors", "--onnx", files["root"] / "m.onnx"], capsys
    )
    assert "pip install" in line and "onnx" in line


def test_internal_error_shows_traceback_and_asks_for_a_report(capsys, monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("fuseface.eval.report.report_table", broken)
    code, _out, err = run_main(["report", "anything"], capsys)
    assert code == 1
    assert "Traceback" in err and "RuntimeError: boom" in err and "please report" in err
