"""Training metrics: tensorboard scalars (tensorboardX), optional wandb (offline works), a tqdm progress bar.

Nested metric dicts are flattened with "/" (the original's wandb keys: `training/loss`, `timer/wait`, ...).
`StepTimer` splits each learner step into waiting for data and computing, and reports rates.
"""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1}} -> {"a/b": 1.0}; non-scalar and non-finite values are dropped (tensorboard refuses them)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
            continue
        arr = np.asarray(value)
        if arr.size == 1 and np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
            scalar = float(arr.reshape(()))
            if math.isfinite(scalar):
                out[name] = scalar
    return out


class MetricsWriter:
    """logdir: tensorboard event files go here. wandb_project: also log to wandb (mode "offline" needs no
    network; the run syncs later with `wandb sync`). progress_total: show a tqdm bar up to this step."""

    def __init__(
        self,
        logdir,
        *,
        wandb_project: str | None = None,
        wandb_mode: str = "offline",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        progress_total: int | None = None,
        initial_step: int = 0,
    ):
        from tensorboardX import SummaryWriter

        self.logdir = pathlib.Path(logdir).expanduser()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(self.logdir), flush_secs=10)
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("metrics.wandb_project is set but wandb is not installed: pip install wandb") from err
            self._wandb = wandb.init(
                project=wandb_project,
                name=run_name,
                mode=wandb_mode,
                dir=str(self.logdir),
                config=dict(config or {}),
                resume="allow",
            )
        self._bar = None
        if progress_total is not None:
            from tqdm import tqdm

            self._bar = tqdm(total=progress_total, initial=initial_step, unit="step", dynamic_ncols=True)
        self._last_step = initial_step

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        scalars = flatten(metrics, prefix)
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, global_step=step)
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=step)
        return scalars

    @property
    def last_step(self) -> int:
        """The step of the latest `progress()` call (where other threads log, e.g. the actors' episode stats)."""
        return self._last_step

    def progress(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        last, self._last_step = self._last_step, step
        if self._bar is None:
            return
        self._bar.update(max(0, step - last))
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def flush(self) -> None:
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


class StepTimer:
    """Accumulates per-step wait (data) and compute times; `rates()` averages since the last call and resets."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self.wait = self.compute = 0.0
        self.steps = self.samples = 0
        self._start = self._clock()

    def add(self, wait_s: float, compute_s: float, samples: int) -> None:
        self.wait += wait_s
        self.compute += compute_s
        self.steps += 1
        self.samples += samples

    def rates(self) -> dict[str, float]:
        elapsed = max(self._clock() - self._start, 1e-9)
        busy = max(self.wait + self.compute, 1e-9)
        out = {
            "steps_per_s": self.steps / elapsed,
            "samples_per_s": self.samples / elapsed,
            "wait_s": self.wait / max(self.steps, 1),
            "compute_s": self.compute / max(self.steps, 1),
            "wait_fraction": self.wait / busy,
        }
        self._reset()
        return out
