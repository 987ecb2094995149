"""Progress of a controller's run: a progress bar on a terminal and, optionally, TensorBoard scalars and
Phi heatmaps."""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsFloat, cast

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


class RunLogger:
    """A tqdm progress bar plus, when ``log_dir`` is given, TensorBoard scalars and a Phi heatmap.

    Use it as ``on_step`` of :meth:`ala_gym.agents.base.Controller.run`: every numeric entry of ``logs`` becomes
    a scalar; ``logs["phi"]`` (``[num_envs, C, C]``) becomes a heatmap of child 0 every
    ``heatmap_every`` steps.
    """

    def __init__(self, total_steps: int | None, log_dir: str | Path | None = None, heatmap_every: int = 10) -> None:
        from tqdm.auto import tqdm

        # disable=None: a bar on a terminal only; a log file gets the one summary line of run_cli.
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=None)
        self.heatmap_every = heatmap_every
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def __call__(self, step: int, logs: dict[str, Any]) -> None:
        # Real numbers only (numpy's register as numbers.Real, but for its bool): a controller of one's own may
        # log a string or a complex number beside them, which no scalar plot can show.
        scalars = {
            key: float(cast(SupportsFloat, value)) for key, value in logs.items() if isinstance(value, (Real, np.bool_))
        }
        self.bar.update(1)
        shown = ("reward", "val_metric", "entropy")
        self.bar.set_postfix({key: f"{scalars[key]:.3g}" for key in shown if key in scalars})
        if self.writer is None:
            return
        for key, value in scalars.items():
            self.writer.add_scalar(f"ala/{key}", value, step)
        if "phi" in logs and (step == 1 or step % self.heatmap_every == 0):
            self.writer.add_figure("ala/phi", phi_figure(np.asarray(logs["phi"])[0], step), step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def phi_figure(phi: np.ndarray, step: int) -> Figure:
    """A matplotlib heatmap of one child's loss parameters on the fixed scale [-1, 1] (comparable across steps):
    a ``C x C`` Phi, or a metric-learning task's vector of loss weights as one row."""
    from matplotlib.figure import Figure

    # A figure of its own, not pyplot's: the process's backend (a notebook's, a GUI's) stays as it was.
    figure = Figure(figsize=(4, 3.4) if np.ndim(phi) == 2 else (4, 1.6))
    axis = figure.subplots()
    image = axis.imshow(np.atleast_2d(phi), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    axis.set_title(f"{'Phi' if np.ndim(phi) == 2 else 'loss weights'}, step {step}")
    axis.set_xlabel("class j" if np.ndim(phi) == 2 else "row")
    if np.ndim(phi) == 2:
        axis.set_ylabel("class i")
    else:
        axis.set_yticks([])
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure
