"""What every controller's command line shares: options (run settings and a config dataclass's fields),
the bad-input rule (one line, exit status 2) and the driver that makes the envs, runs, prints and saves."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np

from ala_gym import wrappers
from ala_gym.agents.checkpoints import CheckpointError
from ala_gym.agents.progress import RunLogger
from ala_gym.core.checks import check_seed
from ala_gym.core.files import write_text_atomic
from ala_gym.envs.spec import spec_keywords


def fail(message: str) -> NoReturn:
    """How every command line reports bad input: one line on stderr, exit status 2, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


def check_output_file(option: str, path: str | Path, suffix: str | None = None) -> None:
    """Refuse, before any work, an output file that could not be written at the end: a folder, a name without
    ``suffix`` (beside a policy file go files of other suffixes: its provenance ``.json``, SB3's ``.zip``), or
    a place under a file or an unwritable folder. ``ValueError`` naming ``option``."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{option} {path}: name a {suffix} file (files of other suffixes are written beside it)")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file in it")
    _check_writable_place(option, path, path.parent, "file")


def check_output_folder(option: str, path: str | Path, files: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output folder that could not be made or written: an existing file, a place
    under a file or an unwritable folder, or one holding a folder where one of the ``files`` the run writes
    into it goes. ``ValueError`` naming ``option``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; name a folder")
    _check_writable_place(option, path, path, "folder")
    for name in files:
        if (path / name).is_dir():
            raise ValueError(f"{option} {path}: {path / name}, written there after the run, is a folder; move it away")


def _check_writable_place(option: str, path: Path, folder: Path, kind: str) -> None:
    """``path`` (a ``kind``, file or folder) is made in ``folder``, or under the nearest of its parents that
    exists: that one must be a writable folder."""
    existing = next(place for place in (folder, *folder.parents) if place.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is no writable folder; name a {kind} in one")


PROVENANCE_SUFFIX = ".json"
"""Suffix of the record of what produced a policy (:func:`write_provenance`), beside the policy file."""


MACHINE_OPTIONS = ("--data-root",)
"""Options whose value is where things lie on the machine that ran a command, never part of a result's identity:
left out of the command a record holds."""


def path_option(text: str) -> str:
    """An option's file or folder (``--save``, ``--load``, ``--log-dir``, ``--state``): refused empty, as an unset
    shell variable (``--save $OUT``) gives it, which would otherwise run and save nothing."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or folder, not an empty string")
    return text


def portable_argv(argv: list[str]) -> list[str]:
    """``argv`` as a committed record holds it: :data:`MACHINE_OPTIONS` left out with their values, and an absolute
    path inside the working folder written relative to it (one outside stays as given)."""
    here, kept, skip = Path.cwd(), [], False
    for word in argv:
        if skip:
            skip = False
            continue
        option = word.partition("=")[0]
        if option in MACHINE_OPTIONS:
            skip = "=" not in word  # its value is the next word
            continue
        option, equals, value = word.partition("=") if word.startswith("--") and "=" in word else ("", "", word)
        path = Path(value)
        if path.is_absolute() and path.is_relative_to(here):
            value = str(path.relative_to(here))
        kept.append(f"{option}{equals}{value}")
    return kept


def recorded_command(module: str, argv: list[str]) -> str:
    """``python -m module argv...`` as a shell reads it, as :func:`portable_argv` records it: a committed record
    holds no path of the machine that ran it."""
    return shlex.join(["python", "-m", module, *portable_argv(argv)])


def write_provenance(save: str | Path, record: dict[str, Any]) -> None:
    """Write ``record``, what produced the policy file ``save``, beside it (the same name, :data:`PROVENANCE_SUFFIX`)."""
    write_text_atomic(Path(save).with_suffix(PROVENANCE_SUFFIX), json.dumps(record, indent=1) + "\n")


def check_save_file(save: str | Path, beside: tuple[str, ...] = ()) -> None:
    """:func:`check_output_file` for ``--save`` (a .pt file), and the files of the suffixes ``beside`` that go
    beside it under the same name (SB3's model, the provenance ``.json``): a folder of that name would fail the
    write only after the run. ``ValueError`` naming ``--save``."""
    check_output_file("--save", save, ".pt")
    for suffix in beside:
        side = Path(save).with_suffix(suffix)
        if side.is_dir():
            raise ValueError(f"--save {save}: {side}, written beside it, is a folder; move it away or name another --save")


def interrupted(prog: str, resume: str) -> NoReturn:
    """Ctrl-C: one line on what was kept and how to go on (exit status 130), not a traceback."""
    sys.stderr.write(f"{prog}: interrupted; {resume}\n")
    raise SystemExit(130)


def run_main(main: Callable[[], None], kept: str) -> None:
    """Run a command line's ``main`` (``python -m``), Ctrl-C ending it in one line that says ``kept`` (what was
    kept, and how to go on; :func:`interrupted`)."""
    try:
        main()
    except KeyboardInterrupt:
        interrupted(Path(sys.argv[0]).name, kept)


def require(extra: str, module: str) -> None:
    """:func:`ala_gym.wrappers.require` for a module that is also a command line: run as one (``module`` is
    ``__name__``, ``"__main__"``), a missing extra is bad input (:func:`fail`), even for ``--help``, since the
    module cannot be imported; imported by other code, the error goes to the importer."""
    try:
        wrappers.require(extra)
    except wrappers.MissingExtraError as error:
        if module == "__main__":
            fail(str(error))
        raise


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose refusals are one line, ``prog: error: ...`` (exit status 2), without the
    usage block above it: the package's rule for bad input on every command line (``--help`` shows the usage).
    Options are taken as spelt in full only (no ``allow_abbrev``): a command a record holds names each option as
    :func:`portable_argv` reads it, so that ``--data`` cannot carry a machine's data folder past it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it has one worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if any(action.default is value for value in (None, False, argparse.SUPPRESS)) or action.default == []:
            return action.help
        return super()._get_help_string(action)


def plain_text(text: str) -> str:
    """reStructuredText roles and literals as a terminal reads them: :class:`a.b.C` as a.b.C, ``x`` as x."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


class DescriptionFormatter(argparse.RawDescriptionHelpFormatter):
    """A module docstring as a command's description: its lines and usage examples kept, its markup plain."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(plain_text(text), width, indent)


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
            text = " ".join(str(doc_node.value.value).split())
            docs[field_node.target.id] = plain_text(text)
    return docs


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, title: str | None = None, choices: dict[str, tuple] | None = None
) -> None:
    """One ``--option`` per field of the config dataclass ``cls``, its docstring and default as help, in a group
    titled ``title`` (default: the hyperparameters of a new policy); ``choices`` lists a field's allowed values.

    Options parse as their fields are typed: a tuple is given comma-separated (``--horizon 200,600``), a dict
    as a JSON object, a bool as ``--flag`` / ``--no-flag``, an optional field as its type. An option not given
    stays absent from the parsed namespace (``default=SUPPRESS``), so that :func:`given_fields` can tell which
    ones the user set and :func:`dataclass_from_args` leaves the field's default alone.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} (hyperparameters of a new policy)")
    for item in fields(cls):
        default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
        option = f"--{item.name.replace('_', '-')}"
        shown = "" if default is None or default == {} else f" (default: {_option_text(default)})"
        help_text = f"{docs.get(item.name, '')}{shown}".strip()
        parse = _option_parser(hints[item.name])
        if parse is bool:
            group.add_argument(option, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(option, type=parse, default=argparse.SUPPRESS, help=help_text,
                               metavar=_metavar(hints[item.name]), choices=(choices or {}).get(item.name))  # fmt: skip


def _metavar(hint: Any) -> str | None:
    """How a tuple option is written (argparse's own for the others)."""
    if typing.get_origin(hint) is not tuple:
        return None
    arguments = typing.get_args(hint)
    return "A,B,..." if arguments[-1] is Ellipsis else ",".join("ABCDEFGH"[: len(arguments)])


def _option_text(value: Any) -> str:
    """A default as its option would be written."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _option_parser(hint: Any) -> Any:
    """What turns an option's text into a value of the field's type ``hint``. argparse names the parser's
    ``__name__`` in its message for a value that does not parse."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # ``X | None``: an optional field takes an X
        (hint,) = [argument for argument in arguments if argument is not type(None)]
        return _option_parser(hint)
    if origin is tuple:
        item_parser = _option_parser(arguments[0])
        length = None if arguments[-1] is Ellipsis else len(arguments)

        def comma_separated(text: str) -> tuple:
            values = tuple(item_parser(part.strip()) for part in text.split(","))
            if length is not None and len(values) != length:
                raise ValueError(f"{length} values needed")
            return values

        comma_separated.__name__ = f"comma-separated {item_parser.__name__}"
        return comma_separated
    if origin is dict or hint is dict:

        def json_object(text: str) -> dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value

        json_object.__name__ = "JSON object"
        return json_object
    return hint


def given_fields(cls: type, args: argparse.Namespace) -> list[str]:
    """The options of ``cls``'s fields that were given on the command line."""
    return [f"--{item.name.replace('_', '-')}" for item in fields(cls) if hasattr(args, item.name)]


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` with the given options applied over its defaults."""
    return cls(**{item.name: getattr(args, item.name) for item in fields(cls) if hasattr(args, item.name)})


def check_load_args(parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace) -> None:
    """Refuse options that would be ignored: hyperparameters beside ``--load`` (the saved policy runs with its
    saved ones), ``--freeze`` without it, ``--log-dir`` beside ``--no-tensorboard``."""
    given = given_fields(cls, args)
    if args.load and given:
        parser.error(f"--load runs the saved policy with its saved hyperparameters; drop {', '.join(given)}")
    if args.freeze and not args.load:
        parser.error("--freeze needs --load (a policy to run without learning)")
    if args.log_dir is not None and args.no_tensorboard:
        parser.error("--log-dir names where TensorBoard writes, but --no-tensorboard turns it off; give one of them")


def seed_option(text: str) -> int:
    """``--seed``'s value: an integer in ``[0, 2**32 - 1]`` (:func:`ala_gym.core.checks.check_seed`)."""
    try:
        return check_seed("--seed", int(text))
    except ValueError:  # argparse names the option: "argument --seed: must be ..."
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1], got {text!r}") from None


def add_run_args(parser: argparse.ArgumentParser, default_num_envs: int) -> None:
    """The options every controller's command line shares: env, budget, seed, logging, saving."""
    group = parser.add_argument_group("run")
    group.add_argument("--env", default="ALA-Digits-v0", help="a registered ALA env id")
    group.add_argument("--num-envs", type=int, default=default_num_envs, help="child networks trained in parallel")
    group.add_argument(
        "--seed", type=seed_option, default=0,
        help="seed of the run, in [0, 2**32 - 1]: child i is reset with seed + i, the controller's generators start from it",
    )
    group.add_argument("--total-iterations", type=int, help="SGD iterations per child (env default if unset)")
    group.add_argument("--steps-per-action", type=int, help="K, SGD iterations per controller step")
    group.add_argument("--beta", type=float, help="step of a Phi entry per action (env default 0.1)")
    group.add_argument("--loss-form", choices=("linear", "sigmoid"), help="Eq. 6 form (env default linear)")
    group.add_argument("--device", help="the children's device: auto, cpu or cuda")
    group.add_argument(
        "--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
        help="any other env keyword, VALUE a Python literal (repeatable), e.g. --env-kwarg eval_points=2; a relative "
        "data_root (data_root=cifar10-subset) names a folder of the data home ($ALA_GYM_DATA), as in the comparisons",
    )
    group.add_argument(
        "--log-dir", type=path_option,
        help="TensorBoard folder (default runs/<controller>-<env>-s<seed>, with -2, -3, ... where a run wrote there already)",
    )
    group.add_argument("--no-tensorboard", action="store_true", help="progress bar only")
    group.add_argument("--save", type=path_option, help="write the learned policy here after the run (a .pt file)")
    group.add_argument(
        "--load", type=path_option,
        help="start from this saved policy (a .pt file; reinforce also takes a shipped policy's name, such as digits) "
        "with its saved hyperparameters (giving any of them as well is refused)",
    )


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    import ast

    kwargs: dict[str, Any] = {}
    given: dict[str, str] = {}  # each key's option, to name both when a key is given twice
    for key in ("total_iterations", "steps_per_action", "beta", "loss_form", "device"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
            given[key] = "--" + key.replace("_", "-")
    for item in args.env_kwarg:
        key, separator, value = item.partition("=")
        if not separator or not key:
            fail(f"--env-kwarg expects KEY=VALUE, got {item!r}")
        if key in given:  # which one would win is no rule a reader should need to know
            fail(f"{key} is given twice ({given[key]} and --env-kwarg {item}); give it once")
        given[key] = f"--env-kwarg {item}"
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string such as dataset paths
    return kwargs


RECORDS_FILE = "records.json"
"""The children's episode records, written into ``--log-dir`` after a run."""


def default_log_dir(name: str, args: argparse.Namespace) -> str:
    """``runs/<controller>-<env>-s<seed>``, or, where a run wrote there already (its records, or the logs of one
    interrupted), the first of that name with ``-2``, ``-3``, ... that is empty or absent: a second run (a frozen
    rerun of a saved policy, the same command after an interruption) keeps the first's logs apart."""
    base = f"runs/{name}-{args.env}-s{args.seed}"
    return next(
        folder for folder in itertools.chain([base], (f"{base}-{k}" for k in itertools.count(2)))
        if not Path(folder).is_dir() or not any(Path(folder).iterdir())
    )


def run_cli(controller: Any, args: argparse.Namespace, beside: tuple[str, ...] = ()) -> list[Any]:
    """Make the envs, run ``controller`` once with a progress bar and logs, print a summary, save (``--save``, and
    what the controller writes beside it: the suffixes ``beside``).

    Bad input (env keywords out of range, missing data, a policy that does not fit the env, where the run
    could not write) ends the command through :func:`fail`.
    """
    from ala_gym.core.data import DataError, with_data_home

    log_dir = None if args.no_tensorboard else (args.log_dir or default_log_dir(controller.name, args))
    try:  # where the run writes, before the run, not after it
        if args.save:
            check_save_file(args.save, beside)
        if log_dir is not None:
            check_output_folder("--log-dir", log_dir, (RECORDS_FILE,))
            if (Path(log_dir) / RECORDS_FILE).is_file():  # a finished run's: its records would be replaced
                raise ValueError(f"--log-dir {log_dir} holds the records of an earlier run; name another folder, or move it away")
    except ValueError as exc:
        fail(str(exc))
    try:
        spec_keywords(args.env)  # an unknown id, or one of no ALA env, named with the package's ids
        envs = controller.make_envs(args.env, **with_data_home(env_kwargs_from_args(args)))
    except (ValueError, TypeError, DataError, gym.error.Error) as exc:
        fail(f"cannot make {args.env}: {exc}")
    try:
        controller.check_envs(envs)  # a loaded policy of other features, another autoreset mode
    except ValueError as exc:
        envs.close()
        fail(str(exc))
    total_iterations = envs.get_attr("train_config")[0].total_iterations
    steps = math.ceil(total_iterations / envs.get_attr("steps_per_action")[0])
    logger = RunLogger(steps, log_dir)
    try:
        records = controller.run(envs, args.seed, logger)
    except CheckpointError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        logs = f"; the TensorBoard logs so far are in {log_dir}" if log_dir is not None else ""
        interrupted(Path(sys.argv[0]).name, f"nothing was saved (a run does not resume: the same command starts it again){logs}")
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
        write_text_atomic(Path(log_dir, RECORDS_FILE), json.dumps([asdict(record) for record in records]))
        print(f"logs: tensorboard --logdir {log_dir}")
    if args.save:
        try:
            controller.save(args.save)
        except CheckpointError as exc:  # a diverged policy: the run's records and logs above are kept
            fail(str(exc))
        print(f"policy saved to {args.save}")
    return records
