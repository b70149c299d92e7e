"""fuseface.train: the training engine.

``load_config(path, overrides) -> TrainConfig`` (:mod:`.config`), ``train(cfg, resume=None) ->
TrainResult`` (:mod:`.trainer`), the :class:`~fuseface.train.task.Task` protocol and registry
(:mod:`.task`). Nothing is imported until used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_config", "train"]


def load_config(*args: Any, **kwargs: Any) -> Any:
    from fuseface.train.config import load_config as _load

    return _load(*args, **kwargs)


def train(*args: Any, **kwargs: Any) -> Any:
    from fuseface.train.trainer import train as _train

    return _train(*args, **kwargs)
