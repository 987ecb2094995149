"""What every controller's command line shares: Phi statistics, the progress bar, TensorBoard logs and
the checkpoint format.

Named ``runlog`` rather than ``logging`` so that running a file of this folder as a script cannot
shadow the standard library's ``logging`` module.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ala_gym

FORMAT_VERSION = 1
"""Version of the checkpoint layout; bump it whenever a saved policy can no longer be loaded as is."""


def phi_stats(phi: np.ndarray) -> dict[str, float]:
    """Drift of Phi (``[..., C, C]``, averaged over leading axes) from identity.

    ``phi_drift = ||Phi - I||_F / C`` and ``phi_max_offdiag = max |Phi(i, j)|, i != j``: the two numbers
    that showed Phi blowing up at the paper's beta on 100 classes in the public re-implementation.
    """
    phi = np.asarray(phi, dtype=np.float64).reshape(-1, *np.shape(phi)[-2:])
    num_classes = phi.shape[-1]
    identity = np.eye(num_classes)
    drift = np.linalg.norm(phi - identity, axis=(1, 2)) / num_classes
    off_diagonal = np.abs(phi[:, ~identity.astype(bool)]) if num_classes > 1 else np.zeros((len(phi), 1))
    return {"phi_drift": float(drift.mean()), "phi_max_offdiag": float(off_diagonal.max())}


class RunLogger:
    """A tqdm progress bar plus, when ``log_dir`` is given, TensorBoard scalars and a Phi heatmap.

    Use it as ``on_step`` of :meth:`agents.base.Controller.run`: every numeric entry of ``logs`` becomes
    a scalar; ``logs["phi"]`` (``[num_envs, C, C]``) becomes a heatmap of child 0 every
    ``heatmap_every`` steps.
    """

    def __init__(self, total_steps: int | None, log_dir: str | Path | None = None, heatmap_every: int = 10) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
        self.heatmap_every = heatmap_every
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def __call__(self, step: int, logs: dict[str, Any]) -> None:
        scalars = {key: float(value) for key, value in logs.items() if np.isscalar(value)}
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


def phi_figure(phi: np.ndarray, step: int):
    """A matplotlib heatmap of one ``C x C`` Phi on the fixed scale [-1, 1] (comparable across steps)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: figures only go to TensorBoard
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 3.4))
    image = axis.imshow(phi, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    axis.set_title(f"Phi, step {step}")
    axis.set_xlabel("class j")
    axis.set_ylabel("class i")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure


def save_checkpoint(path: str | Path, kind: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Write a policy as plain tensors and primitives, so that it loads with ``weights_only=True``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "ala_gym_version": ala_gym.__version__,
            "kind": kind,
            "config": config,
            "state_dict": state_dict,
        },
        path,
    )


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read a checkpoint of ``kind`` written by :func:`save_checkpoint`; a clear error if it is not one."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise ValueError(f"{path} is not an ala-gym policy checkpoint")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by ala-gym {checkpoint.get('ala_gym_version', '?')} in checkpoint format "
            f"{checkpoint['format_version']}; this ala-gym {ala_gym.__version__} reads format {FORMAT_VERSION} only"
        )
    if checkpoint.get("kind") != kind:
        raise ValueError(f"{path} holds a {checkpoint.get('kind')!r} policy, not a {kind!r} one")
    return checkpoint


# ---------------------------------------------------------------------- command lines
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (CleanRL style), read from its source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    for field_node, doc_node in zip(body, body[1:]):
        if (
            isinstance(field_node, ast.AnnAssign)
            and isinstance(field_node.target, ast.Name)
            and isinstance(doc_node, ast.Expr)
            and isinstance(doc_node.value, ast.Constant)
        ):
            docs[field_node.target.id] = " ".join(str(doc_node.value.value).split())
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per field of the config dataclass ``cls``, its docstring as help."""
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__)
    for item in fields(cls):
        kind = type(item.default)
        option = f"--{item.name.replace('_', '-')}"
        if kind is bool:
            group.add_argument(
                option, action=argparse.BooleanOptionalAction, default=item.default, help=docs.get(item.name)
            )
        else:
            group.add_argument(option, type=kind, default=item.default, help=docs.get(item.name))


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{item.name: getattr(args, item.name) for item in fields(cls)})


def add_run_args(parser: argparse.ArgumentParser, default_num_envs: int) -> None:
    """The options every controller's command line shares: env, budget, seed, logging, saving."""
    group = parser.add_argument_group("run")
    group.add_argument("--env", default="ALA-Digits-v0", help="a registered ALA env id")
    group.add_argument("--num-envs", type=int, default=default_num_envs, help="child networks trained in parallel")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--total-iterations", type=int, help="SGD iterations per child (env default if unset)")
    group.add_argument("--steps-per-action", type=int, help="K, SGD iterations per controller step")
    group.add_argument("--beta", type=float, help="step of a Phi entry per action (env default 0.1)")
    group.add_argument("--loss-form", choices=("linear", "sigmoid"), help="Eq. 6 form (env default linear)")
    group.add_argument("--device", help="the children's device: auto, cpu or cuda")
    group.add_argument(
        "--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
        help="any other env keyword, VALUE a Python literal (repeatable), e.g. --env-kwarg eval_points=2",
    )
    group.add_argument("--log-dir", help="TensorBoard folder (default runs/<controller>-<env>-s<seed>)")
    group.add_argument("--no-tensorboard", action="store_true", help="progress bar only")
    group.add_argument("--save", help="write the learned policy here after the run")
    group.add_argument("--load", help="start from this saved policy (and its saved config, not the options below)")


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    import ast

    kwargs: dict[str, Any] = {}
    for key in ("total_iterations", "steps_per_action", "beta", "loss_form", "device"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    for item in args.env_kwarg:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--env-kwarg expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string such as dataset paths
    return kwargs


def default_log_dir(name: str, args: argparse.Namespace) -> str:
    return f"runs/{name}-{args.env}-s{args.seed}"


def run_cli(controller: Any, args: argparse.Namespace) -> list[Any]:
    """Make the envs, run ``controller`` once with a progress bar and logs, print a summary, save."""
    envs = controller.make_envs(args.env, **env_kwargs_from_args(args))
    total_iterations = envs.get_attr("train_config")[0].total_iterations
    steps = math.ceil(total_iterations / envs.get_attr("steps_per_action")[0])
    log_dir = None if args.no_tensorboard else (args.log_dir or default_log_dir(controller.name, args))
    logger = RunLogger(steps, log_dir)
    try:
        records = controller.run(envs, args.seed, logger)
    finally:
        logger.close()
        envs.close()
    tests = [record.test_metric for record in records]
    children = ", ".join(f"{test:.4f}" for test in tests)
    diverged = sum(record.diverged for record in records)
    print(f"{controller.name} on {args.env}: test metric {np.mean(tests):.4f} (children: {children}), "
          f"diverged {diverged}/{len(records)}")
    if log_dir is not None:
        Path(log_dir, "records.json").write_text(json.dumps([asdict(record) for record in records]))
        print(f"logs: tensorboard --logdir {log_dir}")
    if args.save:
        controller.save(args.save)
        print(f"policy saved to {args.save}")
    return records
