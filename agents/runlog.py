"""What every controller's command line shares: Phi statistics, the progress bar, TensorBoard logs and
the checkpoint format.

Named ``runlog`` rather than ``logging`` so that running a file of this folder as a script cannot
shadow the standard library's ``logging`` module.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np
import torch

import ala_gym

FORMAT_VERSION = 1
"""Version of the checkpoint layout; bump it whenever a saved policy can no longer be loaded as is."""
CHECKPOINT_KEYS = ("format_version", "ala_gym_version", "kind", "config", "state_dict")


class CheckpointError(ValueError):
    """A file that is not a loadable ala-gym policy checkpoint; the message says which file and why."""


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

        # disable=None: a bar on a terminal only; a log file gets the one summary line of run_cli.
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=None)
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
    """Read a checkpoint of ``kind`` written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    not one (never torch's own message, whose advice to load with ``weights_only=False`` would run
    whatever code the file holds)."""
    written_by = "write one with --save (python -m agents.reinforce / agents.sb3)"
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; {written_by}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not an ala-gym policy checkpoint (it does not load as plain tensors: "
            f"{type(exc).__name__}); {written_by}"
        ) from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not an ala-gym policy checkpoint (no {', '.join(missing)}); {written_by}")
    version = checkpoint["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} has an invalid format_version {version!r} (an integer is written); {written_by}")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by ala-gym {checkpoint['ala_gym_version']} in checkpoint format {version}; this "
            f"ala-gym {ala_gym.__version__} reads format {FORMAT_VERSION} only: save the policy again with this version"
        )
    if checkpoint["kind"] != kind:
        raise CheckpointError(f"{path} holds a {checkpoint['kind']!r} policy, not a {kind!r} one")
    if not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["state_dict"], dict):
        raise CheckpointError(f"{path} is damaged: its config and state_dict must be dictionaries; {written_by}")
    return checkpoint


def fail(message: str) -> NoReturn:
    """How every command line reports bad input: one line on stderr, exit status 2, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


# ---------------------------------------------------------------------- command lines
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it has one worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if any(action.default is value for value in (None, False, argparse.SUPPRESS)) or action.default == []:
            return action.help
        return super()._get_help_string(action)


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
    """One ``--option`` per field of the config dataclass ``cls``, its docstring as help.

    An option not given stays absent from the parsed namespace (``default=SUPPRESS``), so that
    :func:`given_fields` can tell which ones the user set.
    """
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} (hyperparameters of a new policy)")
    for item in fields(cls):
        kind = type(item.default)
        option = f"--{item.name.replace('_', '-')}"
        help_text = f"{docs.get(item.name, '')} (default: {item.default})".strip()
        if kind is bool:
            group.add_argument(option, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(option, type=kind, default=argparse.SUPPRESS, help=help_text)


def given_fields(cls: type, args: argparse.Namespace) -> list[str]:
    """The options of ``cls``'s fields that were given on the command line."""
    return [f"--{item.name.replace('_', '-')}" for item in fields(cls) if hasattr(args, item.name)]


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` with the given options applied over its defaults."""
    return cls(**{item.name: getattr(args, item.name) for item in fields(cls) if hasattr(args, item.name)})


def check_load_args(parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace) -> None:
    """``--load`` runs the saved policy with its saved hyperparameters: refuse options that would be ignored."""
    given = given_fields(cls, args)
    if args.load and given:
        parser.error(f"--load runs the saved policy with its saved hyperparameters; drop {', '.join(given)}")
    if args.freeze and not args.load:
        parser.error("--freeze needs --load (a policy to run without learning)")


def add_run_args(parser: argparse.ArgumentParser, default_num_envs: int) -> None:
    """The options every controller's command line shares: env, budget, seed, logging, saving."""
    group = parser.add_argument_group("run")
    group.add_argument("--env", default="ALA-Digits-v0", help="a registered ALA env id")
    group.add_argument("--num-envs", type=int, default=default_num_envs, help="child networks trained in parallel")
    group.add_argument(
        "--seed", type=int, default=0,
        help="seed of the run: child i is reset with seed + i, the controller's generators start from it",
    )
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
    group.add_argument(
        "--load",
        help="start from this saved policy with its saved hyperparameters (giving any of them as well is refused)",
    )


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    import ast

    kwargs: dict[str, Any] = {}
    for key in ("total_iterations", "steps_per_action", "beta", "loss_form", "device"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    for item in args.env_kwarg:
        key, separator, value = item.partition("=")
        if not separator:
            fail(f"--env-kwarg expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string such as dataset paths
    return kwargs


def default_log_dir(name: str, args: argparse.Namespace) -> str:
    return f"runs/{name}-{args.env}-s{args.seed}"


def run_cli(controller: Any, args: argparse.Namespace) -> list[Any]:
    """Make the envs, run ``controller`` once with a progress bar and logs, print a summary, save.

    Bad input (env keywords out of range, missing data, a policy that does not fit the env) ends the
    command through :func:`fail`.
    """
    from ala_gym.core.data import DataError

    try:
        envs = controller.make_envs(args.env, **env_kwargs_from_args(args))
    except (ValueError, TypeError, DataError, gym.error.Error) as exc:
        fail(f"cannot make {args.env}: {exc}")
    total_iterations = envs.get_attr("train_config")[0].total_iterations
    steps = math.ceil(total_iterations / envs.get_attr("steps_per_action")[0])
    log_dir = None if args.no_tensorboard else (args.log_dir or default_log_dir(controller.name, args))
    logger = RunLogger(steps, log_dir)
    try:
        records = controller.run(envs, args.seed, logger)
    except CheckpointError as exc:
        fail(str(exc))
    finally:
        logger.close()
        envs.close()
    tests = [record.test_metric for record in records]
    children = ", ".join(f"{test:.4f}" for test in tests)
    diverged = sum(record.diverged for record in records)
    lost = sum(record.worker_lost for record in records)  # their NaN test metric is left out of the mean
    mean = np.nanmean(tests) if lost < len(records) else float("nan")
    print(f"{controller.name} on {args.env}: test metric {mean:.4f} (children: {children}), "
          f"diverged {diverged}/{len(records)}" + (f", worker lost {lost}/{len(records)}" if lost else ""))
    if log_dir is not None:
        Path(log_dir, "records.json").write_text(json.dumps([asdict(record) for record in records]))
        print(f"logs: tensorboard --logdir {log_dir}")
    if args.save:
        controller.save(args.save)
        print(f"policy saved to {args.save}")
    return records
