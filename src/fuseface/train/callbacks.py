"""Trainer callbacks: the loop of :mod:`fuseface.train.trainer` runs the optimizer steps and hands
everything else to callbacks, as arcface_torch's loop hands it to ``utils_callbacks``
(``CallBackLogging``, ``CallBackVerification``) and its checkpoint saving.

The loop calls, on every rank, for each callback in turn (the user's first, then the built-in
:func:`default_callbacks`):

* ``on_train_start`` once the run folder, the config and a resumed state are in place;
* ``on_step_end`` after each optimizer step, with its history record;
* ``on_checkpoint`` after a checkpoint is written (:meth:`Trainer.save_checkpoint` and the barrier);
* ``on_validation`` after a validation round during training, with its metrics;
* ``on_loop_exit`` when the loop is left, normally or by an exception (close files here);
* ``on_steps_done`` after the last step, before the model file is exported;
* ``on_train_end`` after the export, with the :class:`TrainResult`.

Built-in callbacks: :class:`LoggingCallback` (progress bar, log line, ``metrics.jsonl``,
TensorBoard), :class:`CheckpointCallback` (every ``checkpoint.every`` steps and at the end) and
:class:`ValidationCallback` (the ``.bin`` sets every ``val.every`` steps and at the end).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuseface.train.logging import TrainLogger, format_eta

if TYPE_CHECKING:  # pragma: no cover
    from fuseface.train.trainer import Trainer, TrainResult

__all__ = ["Callback", "CheckpointCallback", "LoggingCallback", "ValidationCallback", "default_callbacks"]


class Callback:
    """Hooks the loop calls (see the module docstring): subclass and override what you need, pass
    instances as ``train(cfg, callbacks=[...])``. Each hook gets the :class:`Trainer` (its ``step``,
    ``modules``, ``cfg``, ``out_dir``, ``history``)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After the run folder, the config and a resumed state are in place."""

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each optimizer step, with its history record (``step``, ``loss``, ``lr``, ...)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint is written (and every rank passed the barrier)."""

    def on_validation(self, trainer: Trainer, results: dict[str, float]) -> None:
        """After a validation round during training, with its metrics."""

    def on_loop_exit(self, trainer: Trainer) -> None:
        """When the step loop is left, after the last step or by an exception."""

    def on_steps_done(self, trainer: Trainer) -> None:
        """After the last step, before the model file is exported."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """After the model file is exported."""


class LoggingCallback(Callback):
    """The run's log (:class:`fuseface.train.logging.TrainLogger`, rank 0 only): a start record, a
    tick of the progress bar per step, a log line and JSONL record every ``log.every`` steps and at
    the last step (with ``images_per_s``), and one per validation round."""

    def __init__(self) -> None:
        self.logger: TrainLogger | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        cfg, env = trainer.cfg, trainer.env
        self.logger = TrainLogger(
            trainer.out_dir, trainer.total_steps, trainer.step, env.is_main, cfg.log.progress, cfg.log.tensorboard
        )
        if env.is_main:
            self.logger.write(
                {
                    "step": trainer.step,
                    "event": "start",
                    "world_size": env.world_size,
                    "global_batch": trainer.global_batch,
                    "total_steps": trainer.total_steps,
                    "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
                }
            )

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        assert self.logger is not None
        self.logger.step()
        step, total = trainer.step, trainer.total_steps
        if step % max(1, trainer.cfg.log.every) == 0 or step == total:
            ips, eta = self.logger.rate(step, trainer.global_batch)
            record["images_per_s"] = ips
            self.logger.write(
                record,
                f"step {step}/{total} ep {record['epoch']} "
                f"loss {record['loss']:.4f} lr {record['lr']:.5f} {ips:.1f} img/s ETA {format_eta(eta)}",
            )

    def on_validation(self, trainer: Trainer, results: dict[str, float]) -> None:
        if results and self.logger is not None:
            self.logger.write({"step": trainer.step, **results}, "  ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def on_loop_exit(self, trainer: Trainer) -> None:
        if self.logger is not None:
            self.logger.close()


class CheckpointCallback(Callback):
    """A checkpoint every ``checkpoint.every`` steps (0: none) and after the last step, through
    :meth:`Trainer.checkpoint` (which tells every callback with ``on_checkpoint``)."""

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        every = trainer.cfg.checkpoint.every
        if (every > 0 and trainer.step % every == 0) or trainer.step == trainer.total_steps:
            trainer.checkpoint()


class ValidationCallback(Callback):
    """The ``val.bins`` sets every ``val.every`` steps before the last (through
    :meth:`Trainer.run_validation`, which tells every callback with ``on_validation``) and once
    after the last step: that round is appended to ``metrics.jsonl`` and to the history."""

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        val = trainer.cfg.val
        if val.bins and val.every > 0 and trainer.step % val.every == 0 and trainer.step < trainer.total_steps:
            trainer.run_validation()

    def on_steps_done(self, trainer: Trainer) -> None:
        if not trainer.cfg.val.bins:
            return
        results = trainer.validate()
        if results and trainer.env.is_main:
            with open(trainer.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": trainer.step, **results, "time": time.time()}) + "\n")
            trainer.history.append({"step": trainer.step, **results})


def default_callbacks() -> list[Callback]:
    """The built-in callbacks every run has, in the order the loop calls them."""
    return [LoggingCallback(), CheckpointCallback(), ValidationCallback()]
