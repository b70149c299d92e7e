"""Training logs: a tqdm bar, a periodic log line, metrics as JSONL and (if installed) TensorBoard.

Only rank 0 writes. The log line reads
``step 1200/40000 ep 0 loss 21.3412 lr 0.09700 312.5 img/s ETA 3:24:10``; the JSONL file
``out_dir/metrics.jsonl`` gets one object per logged step (``step, epoch, loss, lr, images_per_s``
and the task's metrics) and one per validation (``val/<set>/accuracy`` ...).
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, int(seconds))))


class TrainLogger:
    """Progress bar + log line + JSONL + optional TensorBoard (all no-ops on ranks > 0)."""

    def __init__(
        self, out_dir: Path, total_steps: int, start_step: int, enabled: bool, progress: bool, tensorboard: bool
    ) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.bar = None
        self.tb = None
        self.jsonl = None
        self._t0 = time.perf_counter()
        self._s0 = start_step
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def rate(self, step: int, images_per_step: int) -> tuple[float, float]:
        """(images/s since start or resume, ETA seconds)."""
        elapsed = time.perf_counter() - self._t0
        done = max(1, step - self._s0)
        per_step = elapsed / done
        return images_per_step / per_step, per_step * (self.total - step)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        record = {**record, "time": time.time()}
        assert self.jsonl is not None
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])
        if line:
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
