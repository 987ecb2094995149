"""Command lines: bad input ends with one clear line and exit status 2, help texts say what options do."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import pickle
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ala_gym.agents import checkpoints, cli, imitate, meta_train, progress
from ala_gym.agents.reinforce import PairPolicy, ReinforceConfig, ReinforceController, library_policy, policy_path
from ala_gym.agents.reinforce import main as reinforce_main
from ala_gym.agents.sb3 import main as sb3_main
from ala_gym.registration import UnknownEnvError, env_spec

TINY_RUN = ["--num-envs", "1", "--total-iterations", "4", "--steps-per-action", "2", "--device", "cpu",
            "--env-kwarg", "eval_points=1", "--no-tensorboard"]


def _good_checkpoint(path: Path) -> dict:
    policy = PairPolicy(24, 8, torch.Generator().manual_seed(0))
    config = {**vars(ReinforceConfig(hidden=8)), "n_features": 24}
    checkpoints.save_checkpoint(path, "reinforce", config, policy.state_dict())
    return torch.load(path, weights_only=True)


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    good = _good_checkpoint(folder / "good.pt")
    cases = {}

    def case(name: str, message: str, payload=None, raw: bytes | None = None) -> None:
        path = folder / f"{name}.pt"
        if raw is not None:
            path.write_bytes(raw)
        else:
            torch.save(payload, path)
        cases[name] = (path, message)

    # Arbitrary pickled objects, which weights_only refuses to build.
    case("pickle", "does not load as plain tensors", raw=pickle.dumps(subprocess.CompletedProcess(["x"], 0)))
    case("torch-pickle", "does not load as plain tensors", {"format_version": subprocess.CompletedProcess(["x"], 0)})
    case("random", "does not load as plain tensors", raw=bytes(range(256)) * 8)
    case("empty", "does not load as plain tensors", raw=b"")
    case("missing-keys", "no state_dict", {k: v for k, v in good.items() if k != "state_dict"})
    case("string-version", "invalid format_version '1'", {**good, "format_version": "1"})
    case("bool-version", "invalid format_version True", {**good, "format_version": True})  # True == 1 in Python
    shapes = {key: torch.zeros(3, 3) for key in good["state_dict"]}
    case("wrong-shapes", "damaged reinforce policy", {**good, "state_dict": shapes})
    cases["absent"] = (folder / "absent.pt", "no such checkpoint file")
    (folder / "a-folder.pt").mkdir()
    cases["folder"] = (folder / "a-folder.pt", "is a folder, not a checkpoint file; name the .pt file in it")
    return cases


def test_bad_checkpoints_get_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    for name, (path, message) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(checkpoints.CheckpointError, match=message) as caught:
            ReinforceController.load(path)
        text = str(caught.value)
        assert str(path) in text and "weights_only=False" not in text, name


def test_reinforce_cli_bad_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path, _ = _bad_checkpoints(tmp_path)["random"]
    done = subprocess.run(
        [sys.executable, "-m", "ala_gym.agents.reinforce", "--load", str(path), *TINY_RUN],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert str(path) in done.stderr


@pytest.mark.parametrize("main", [reinforce_main, sb3_main], ids=["reinforce", "sb3"])
def test_cli_bad_env_value_and_missing_checkpoint_exit_2(main, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*TINY_RUN, "--beta", "nan"])
    assert caught.value.code == 2 and "beta must be a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["--load", str(tmp_path / "absent.pt"), *TINY_RUN])
    assert caught.value.code == 2 and "no such checkpoint file" in capsys.readouterr().err
    for option in ("--save", "--load", "--log-dir"):  # what an unset shell variable gives: refused, not a silent run
        with pytest.raises(SystemExit) as caught:
            main([*TINY_RUN, option, ""])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and f"argument {option}: must name a file or folder, not an empty string" in err
    with pytest.raises(SystemExit) as caught:  # options are spelt in full: a record's command reads as it ran
        main([*TINY_RUN, "--no-tensor"])
    assert caught.value.code == 2 and "unrecognized arguments: --no-tensor" in capsys.readouterr().err


@pytest.mark.parametrize("main, wrong, message", [
    (reinforce_main, ["--hidden", "0"], "hidden must be an integer >= 1, got 0"),
    (sb3_main, ["--n-steps", "0"], "n_steps must be an integer >= 1, got 0"),
    (sb3_main, ["--gamma", "1.5"], "gamma must be a finite number in [0, 1], got 1.5"),
    (sb3_main, ["--n-steps", "1"], "PPO needs minibatches of at least 2 transitions, got 1"),  # one child, one step
    (sb3_main, ["--policy-device", "tpu"], "policy_device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
], ids=["reinforce-hidden", "sb3-n-steps", "sb3-gamma", "ppo-minibatch", "sb3-device"])  # fmt: skip
def test_cli_bad_hyperparameter_is_one_line_and_exit_2(main, wrong: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*TINY_RUN, *wrong])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err and err.strip().count("\n") == 0


@pytest.mark.parametrize("config, state_dict, message", [
    ({}, {"weight": torch.zeros(1)}, "the loaded ppo policy does not fit this env (Error(s) in loading state_dict"),
    ({"hidden": "32"}, {}, "holds a damaged ppo policy config (hidden must be an integer >= 1, got '32' (str))"),
    ({"gamma": float("nan")}, {}, "holds a damaged ppo policy config (gamma must be a finite number in [0, 1], got nan)"),
], ids=["weights", "config", "config-setting"])  # fmt: skip
def test_an_sb3_policy_that_does_not_fit_the_env_or_is_damaged_is_one_line_and_exit_2(
    config: dict, state_dict: dict, message: str, tmp_path: Path, capsys
) -> None:
    """A saved SB3 policy whose weights the env's model cannot take (refused when the run builds the model), or
    whose saved config does not build one (refused at load): one line, exit status 2, before any training."""
    checkpoints.save_checkpoint(tmp_path / "ppo.pt", "sb3-ppo", config, state_dict)
    with pytest.raises(SystemExit) as caught:
        sb3_main(["--load", str(tmp_path / "ppo.pt"), *TINY_RUN])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert "damaged" in message or err.rstrip().endswith("run it on an env like the one it was saved from (the same number of classes and observation features)")


def test_sb3_names_the_algorithms_it_has_when_given_another() -> None:
    from ala_gym.agents.sb3 import SB3Controller

    with pytest.raises(ValueError, match=r"unknown algo 'dqn'; choose one of \['a2c', 'ppo'\]"):
        SB3Controller("dqn")


def test_env_kwarg_values_are_python_literals_else_the_text_and_need_a_key(capsys) -> None:
    """``--env-kwarg KEY=VALUE``: VALUE is a Python literal where it parses as one, else the text itself (a model's
    name, a dataset's path); an item without ``=`` is refused in one line before any env is made."""
    items = ["eval_points=2", "phi_init=[0.5, 1]", "model=mlp", "data_root=data/my digits"]
    args = argparse.Namespace(total_iterations=4, steps_per_action=None, beta=None, loss_form=None, device=None, env_kwarg=items)
    assert cli.env_kwargs_from_args(args) == {"total_iterations": 4, "eval_points": 2, "phi_init": [0.5, 1], "model": "mlp",
                                              "data_root": "data/my digits"}  # fmt: skip
    with pytest.raises(SystemExit) as caught:
        reinforce_main([*TINY_RUN, "--env-kwarg", "eval_points"])
    assert caught.value.code == 2 and capsys.readouterr().err == "error: --env-kwarg expects KEY=VALUE, got 'eval_points'\n"


def test_the_logs_go_to_runs_controller_env_seed_without_a_log_dir(tmp_path, monkeypatch, capsys) -> None:
    """Without ``--log-dir`` (and without ``--no-tensorboard``) the TensorBoard logs and the children's records
    go to ``runs/<controller>-<env>-s<seed>`` under the working folder."""
    monkeypatch.chdir(tmp_path)
    reinforce_main([*(arg for arg in TINY_RUN if arg != "--no-tensorboard"), "--seed", "3"])
    folder = Path("runs", "reinforce-ALA-Digits-v0-s3")
    assert f"logs: tensorboard --logdir {folder}" in capsys.readouterr().out
    assert len(json.loads((folder / cli.RECORDS_FILE).read_text())) == 1 and list(folder.glob("events.out.tfevents.*"))
    # A second run of the same controller, env and seed keeps the first's logs and writes beside them.
    reinforce_main([*(arg for arg in TINY_RUN if arg != "--no-tensorboard"), "--seed", "3", "--num-envs", "2"])
    second = Path("runs", "reinforce-ALA-Digits-v0-s3-2")
    assert f"logs: tensorboard --logdir {second}" in capsys.readouterr().out
    assert len(json.loads((folder / cli.RECORDS_FILE).read_text())) == 1 and len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert len(json.loads((second / cli.RECORDS_FILE).read_text())) == 2
    # A run interrupted before its records leaves its logs alone in the next folder: the same command keeps them apart.
    interrupted = Path("runs", "reinforce-ALA-Digits-v0-s3-3")
    interrupted.mkdir()
    (interrupted / "events.out.tfevents.0.host").write_text("")
    reinforce_main([*(arg for arg in TINY_RUN if arg != "--no-tensorboard"), "--seed", "3"])
    assert f"logs: tensorboard --logdir {Path('runs', 'reinforce-ALA-Digits-v0-s3-4')}" in capsys.readouterr().out
    # Named with --log-dir, a finished run's folder is refused: its records would be replaced.
    with pytest.raises(SystemExit) as caught:
        reinforce_main([*(arg for arg in TINY_RUN if arg != "--no-tensorboard"), "--log-dir", str(folder)])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"--log-dir {folder} holds the records of an earlier run; name another folder" in err


def test_reinforce_loads_a_shipped_policy_by_name_from_any_folder(tmp_path, monkeypatch, capsys) -> None:
    assert policy_path("digits") == library_policy("digits") and policy_path("runs/x.pt") == Path("runs/x.pt")
    monkeypatch.chdir(tmp_path)  # not the repository's root: a path to agents/policies/ would not resolve
    reinforce_main(["--load", "digits", "--freeze", *TINY_RUN])
    assert "reinforce on ALA-Digits-v0: test metric" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        reinforce_main(["--load", "no-such-policy", "--freeze", *TINY_RUN])
    assert caught.value.code == 2 and "no shipped policy 'no-such-policy'" in capsys.readouterr().err


@pytest.mark.parametrize("main", [reinforce_main, sb3_main], ids=["reinforce", "sb3"])
def test_load_with_config_flags_is_refused(main, tmp_path: Path, capsys) -> None:
    _good_checkpoint(tmp_path / "policy.pt")
    with pytest.raises(SystemExit) as caught:
        main(["--load", str(tmp_path / "policy.pt"), "--hidden", "64", *TINY_RUN])
    assert caught.value.code == 2 and "drop --hidden" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["--freeze", *TINY_RUN])
    assert caught.value.code == 2 and "--freeze needs --load" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["ala_gym.agents.reinforce", "ala_gym.agents.sb3"])
def test_agent_help_documents_seed_and_shows_no_empty_defaults(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
    assert "--seed SEED seed of the run" in text and "(default: 32)" in text


def test_compare_help_describes_presets_and_counts() -> None:
    done = subprocess.run([sys.executable, "-m", "ala_gym.benchmarks.compare", "--help"], capture_output=True, text=True,
                          timeout=120)
    text = " ".join(done.stdout.split())
    assert "how many seeds: runs seeds F, F + 1, ..., F + N - 1 (F: --first-seed)" in text and "the Fashion-MNIST and CIFAR presets set 2" in text
    assert "cifar10-subset: ALA-CIFAR10-v0 (small_cnn), 5 seeds, 400 iterations, K = 20, --children 2" in text
    assert "cifar10-subset-fresh: ALA-CIFAR10-v0 (small_cnn), 5 seeds from 50, 400 iterations" in text
    assert "--env ALA-Digits-v0" in text  # the example runs on the embedded data, in any clone


@pytest.mark.parametrize(
    "module",
    ["compare.cli", "adalfl_cost", "adalfl_report", "learnloss", "malloc", "overhead", "reward_agreement", "cifar10_subset"],
)
def test_benchmark_help_reads_its_docstring_without_markup(module: str, capsys) -> None:
    """A benchmark's --help is its module docstring, usage lines kept, reStructuredText roles and literals plain."""
    main = importlib.import_module(f"ala_gym.benchmarks.{module}").main
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    text = capsys.readouterr().out
    assert caught.value.code == 0 and "python -m ala_gym.benchmarks." in text
    assert "``" not in text and not re.search(r":(func|class|meth|mod|attr|data):`", text), text


BENCHMARK_COMMANDS = ["adalfl_cost", "adalfl_report", "cifar10_subset", "compare", "gpu", "learnloss", "malloc",
                      "overhead", "reward_agreement", "throughput", "transfer"]  # fmt: skip


# runpy warns that the module, which other tests import, is imported already.
@pytest.mark.filterwarnings("ignore:.ala_gym.benchmarks.* found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", BENCHMARK_COMMANDS)
def test_python_m_runs_each_benchmarks_main_on_the_command_line(module: str, monkeypatch, capsys) -> None:
    """``python -m ala_gym.benchmarks.<module>``, every benchmark's documented usage, hands the process's arguments
    to its ``main``."""
    monkeypatch.setattr(sys, "argv", ["command", "--help"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module(f"ala_gym.benchmarks.{module}", run_name="__main__")
    assert caught.value.code == 0 and capsys.readouterr().out.startswith("usage: ")


def test_the_subset_builder_says_where_it_wrote_the_subset(tmp_path: Path, monkeypatch, capsys) -> None:
    from ala_gym.benchmarks import cifar10_subset

    built = []
    monkeypatch.setattr(cifar10_subset, "build_cifar10_subset", lambda source, out: built.append((source, out)))
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path / "home"))
    cifar10_subset.main(["--cifar10", str(tmp_path / "full")])  # into the data home by default
    assert built == [(tmp_path / "full", tmp_path / "home" / "cifar10-subset")]
    assert capsys.readouterr().err == f"wrote the CIFAR-10 subset to {tmp_path / 'home' / 'cifar10-subset'}\n"


def test_the_subset_builder_refuses_in_one_line_what_it_cannot_build_from(tmp_path: Path, monkeypatch, capsys) -> None:
    from torchvision import datasets

    from ala_gym.benchmarks import cifar10_subset

    (tmp_path / "cifar10-subset").mkdir()
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))
    for argv, message in [
        (["--cifar10", str(tmp_path / "nowhere")], f"cifar10_subset: {tmp_path / 'cifar10-subset'} already exists"),
        (["--cifar10", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new")],
         f"cannot read the full CIFAR-10 batch {tmp_path / 'nowhere' / 'data_batch_1'}"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            cifar10_subset.main(argv)
        err = capsys.readouterr().err
        assert caught.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err

    def offline(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(datasets, "CIFAR10", offline)
    with pytest.raises(SystemExit) as caught:
        cifar10_subset.main(["--cifar10", str(tmp_path / "full"), "--download", "--out", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"torchvision could not download CIFAR-10 into {tmp_path / 'full'} (no network)" in err
    assert not (tmp_path / "new").exists()


def test_agent_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = progress.RunLogger(3, None)  # under pytest, stderr is captured: not a terminal
    try:
        assert logger.bar.disable
        logger(1, {"reward": 1.0})  # still usable as on_step
    finally:
        logger.close()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    logger = progress.RunLogger(3, None)
    try:
        assert not logger.bar.disable
        logger(1, {"reward": 1.0})
    finally:
        logger.close()
    assert "1/3" in sys.stderr.getvalue()  # the bar was drawn on the terminal


def test_agent_progress_logs_each_numeric_entry_and_a_phi_heatmap_at_step_1_and_every_interval(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = progress.RunLogger(10, tmp_path, heatmap_every=4)
    phi = np.stack([np.eye(3), -np.eye(3)])  # [num_envs, C, C]
    try:
        for step in range(1, 11):
            logs = {"reward": float(step), "steps": step, "last": np.bool_(step == 10), "name": "ce", "z": 1j, "phi": phi}
            logger(step, logs)  # a controller of one's own may log a string or a complex number beside the reals
    finally:
        logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["ala/last", "ala/reward", "ala/steps"]
    assert [(e.step, e.value) for e in events.Scalars("ala/reward")] == [(s, float(s)) for s in range(1, 11)]
    assert [e.step for e in events.Images("ala/phi")] == [1, 4, 8]


def test_a_metric_learning_run_logs_its_loss_weights_as_a_heatmap_row(tmp_path) -> None:
    """Metric learning's loss parameters are a vector per child (``[num_envs, rows]``): drawn as one row, not
    refused by matplotlib as an image of the wrong shape at the first step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = progress.RunLogger(2, tmp_path, heatmap_every=1)
    try:
        for step in (1, 2):
            logger(step, {"reward": 1.0, "phi": np.full((2, 10), 0.5)})
    finally:
        logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("ala/phi")] == [1, 2]


# ---------------------------------------------------------------------- options from config dataclasses
POLICIES = Path(__file__).resolve().parents[1] / "agents" / "policies"
CONFIG_COMMANDS = {"ala_gym.agents.meta_train": meta_train, "ala_gym.agents.imitate": imitate}


@pytest.mark.parametrize("record_path", sorted(POLICIES.glob("*.json")), ids=lambda path: path.stem)
def test_every_shipped_policy_command_parses_to_the_config_it_recorded(record_path: Path) -> None:
    # The command beside a policy is how it is reproduced: the command line must still read it as it was run.
    record = json.loads(record_path.read_text())
    words = shlex.split(record["command"])
    module = CONFIG_COMMANDS[words[2]]
    config_class = module.MetaTrainConfig if module is meta_train else module.ImitateConfig
    args = module.argument_parser().parse_args(words[3:])
    parsed = json.loads(json.dumps(asdict(cli.dataclass_from_args(config_class, args))))  # tuples as lists
    defaults = json.loads(json.dumps(asdict(config_class())))
    for name, value in parsed.items():
        if name in getattr(module, "EXECUTION_FIELDS", ()):
            continue  # where a run computes is not recorded
        # A field added after the record was written must be at the value it ran with: its default, or, where the
        # default computes otherwise, the earlier behaviour's value (PRIOR_DEFAULTS).
        ran_with = getattr(module, "PRIOR_DEFAULTS", {}).get(name, defaults[name])
        assert value == record["config"].get(name, ran_with), name


def test_the_tutorials_command_for_the_ramp_clone_is_the_one_its_provenance_records() -> None:
    # The meta-training tutorial shows how the shipped ramp-clone was made: the same options, not a look-alike.
    page = (POLICIES.parents[1] / "docs" / "tutorials" / "meta-training.md").read_text()
    (command,) = re.findall(r"^python -m ala_gym\.agents\.imitate .*?--save \S+$", page, flags=re.M | re.S)
    args = imitate.argument_parser().parse_args(shlex.split(command.replace("\\\n", " "))[3:])
    shown = json.loads(json.dumps(asdict(cli.dataclass_from_args(imitate.ImitateConfig, args))))
    assert shown == json.loads((POLICIES / "ramp-clone.json").read_text())["config"]


@pytest.mark.parametrize("module", CONFIG_COMMANDS.values(), ids=CONFIG_COMMANDS)
def test_config_command_lines_document_every_option_with_its_default(module) -> None:
    parser = module.argument_parser()
    undocumented = [action.option_strings for action in parser._actions if not action.help]
    assert not undocumented
    text = " ".join(parser.format_help().split())
    assert "(default: 0.01)" in text or "(default: 0.02)" in text  # the learning rate's
    assert "``" not in text and ":class:" not in text  # docstring markup reads as plain text
    # Each config field's option shows its default as the option is written (a tuple comma-separated), but for
    # None and an empty dict, which mean "not given".
    config = module.MetaTrainConfig if hasattr(module, "MetaTrainConfig") else module.ImitateConfig
    by_option = {option: action for action in parser._actions for option in action.option_strings}
    for item in fields(config):
        default = item.default if item.default is not MISSING else item.default_factory()
        help_text = " ".join(by_option[f"--{item.name.replace('_', '-')}"].help.split())
        if default is None or default == {}:
            assert "(default:" not in help_text, item.name
        else:
            written = ",".join(map(str, default)) if isinstance(default, tuple) else (
                json.dumps(default) if isinstance(default, dict) else str(default))  # fmt: skip
            assert help_text.endswith(f"(default: {written})"), (item.name, help_text)


def test_config_options_parse_as_their_fields_are_typed(capsys) -> None:
    @dataclass
    class Config:
        names: tuple[str, ...] = ("a",)
        """Names."""
        span: tuple[int, int] = (1, 2)
        """A span."""
        extra: dict[str, Any] = field(default_factory=dict)
        """Keywords."""
        size: int | None = None
        """A size."""
        flag: bool = True
        """A flag."""

    parser = argparse.ArgumentParser()
    cli.add_dataclass_args(parser, Config, "Config")
    given = ["--names", "x,y", "--span", "3,4", "--extra", '{"k": 1}', "--size", "5", "--no-flag"]
    assert cli.dataclass_from_args(Config, parser.parse_args(given)) == Config(("x", "y"), (3, 4), {"k": 1}, 5, False)
    assert cli.dataclass_from_args(Config, parser.parse_args([])) == Config()
    for wrong, message in ((["--span", "3,4,5"], "invalid comma-separated int value: '3,4,5'"),
                           (["--span", "3,x"], "invalid comma-separated int value"),
                           (["--extra", "[1]"], "invalid JSON object value: '[1]'"),
                           (["--extra", "{no"], "invalid JSON object value")):  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(wrong)
        assert caught.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------- unknown env ids
def test_an_unknown_env_id_is_named_with_the_package_ids() -> None:
    with pytest.raises(UnknownEnvError, match="unknown env id 'ALA-Digits-v5': did you mean 'ALA-Digits-v0'?"):
        env_spec("ALA-Digits-v5")
    with pytest.raises(UnknownEnvError, match="did you mean 'ALA-CIFAR10-v0'"):
        env_spec("ala-cifar10-v0")
    with pytest.raises(UnknownEnvError, match="the package registers ALA-CIFAR10-v0, .*ALA-Classification-v0;"):
        env_spec("CartPol")  # nothing close: every id listed, none of gymnasium's other envs suggested
    with pytest.raises(UnknownEnvError, match="cannot import 'no_such_module_here'"):
        env_spec("no_such_module_here:Env-v0")
    with pytest.raises(UnknownEnvError, match="'.envs' is relative; name the module by its full import path"):
        env_spec(".envs:Env-v0")
    assert env_spec("ala_gym.envs:ALA-Digits-v0").id == "ALA-Digits-v0"  # gym.make's 'module:EnvId' form


@pytest.mark.parametrize("command", [
    ["ala_gym.agents.reinforce", "--env", "ALA-Digit-v0", *TINY_RUN],
    ["ala_gym.benchmarks.compare", "--env", "ALA-Digit-v0", "--controllers", "ce", "--seeds", "1"],
    ["ala_gym.agents.meta_train", "--tasks", "ALA-Digit-v0", "--save", "never.pt"],
    ["ala_gym.agents.imitate", "--env", "ALA-Digit-v0", "--save", "never.pt"],
], ids=lambda command: command[0].rsplit(".", 1)[1])  # fmt: skip
def test_command_lines_name_an_unknown_env_id_in_one_line(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "did you mean 'ALA-Digits-v0'?" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("module, argv", [
    ("ala_gym.benchmarks.compare.cli", ["--env", "CartPole-v1", "--controllers", "ce", "--seeds", "1"]),
    ("ala_gym.agents.meta_train", ["--tasks", "CartPole-v1", "--save", "never.pt"]),
    ("ala_gym.agents.reinforce", ["--env", "CartPole-v1", "--no-tensorboard"]),
    ("ala_gym.agents.sb3", ["--env", "CartPole-v1", "--no-tensorboard", "--total-iterations", "4"]),
    ("ala_gym.agents.imitate", ["--env", "CartPole-v1", "--save", "never.pt"]),
], ids=["compare", "meta_train", "reinforce", "sb3", "imitate"])  # fmt: skip
def test_command_lines_refuse_an_env_that_is_not_an_ala_env_in_one_line(
    module: str, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gymnasium id without an ALA task (its class has no ``make_spec``): exit 2, one line naming an id to use."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.strip().count("\n") == 0
    assert "'CartPole-v1' is not an ALA env" in err and "such as 'ALA-Digits-v0'" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_run_summary_counts_diverged_and_lost_children_and_leaves_lost_ones_out_of_the_mean(monkeypatch, capsys) -> None:
    """The closing line: the mean test metric over the children that finished (a lost Ray worker's NaN left out),
    every child's value, and how many diverged and how many were lost."""
    from ala_gym.agents.base import EpisodeRecord

    records = [EpisodeRecord(test_metric=0.2, diverged=True), EpisodeRecord(worker_lost=True),
               EpisodeRecord(test_metric=0.4), EpisodeRecord(test_metric=0.6, diverged=True)]  # fmt: skip
    monkeypatch.setattr(ReinforceController, "run", lambda self, envs, seed, on_step=None: records)
    reinforce_main([*TINY_RUN, "--num-envs", "4"])
    assert ("test metric 0.4000 (children: 0.2000, nan, 0.4000, 0.6000), diverged 2/4, worker lost 1/4"
            in capsys.readouterr().out)  # fmt: skip


def _interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


@pytest.mark.parametrize("entry", ["reinforce", "sb3", "imitate", "learnloss", "cifar10_subset"])
def test_ctrl_c_stops_a_command_line_in_one_line_with_status_130(entry: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C during the work: one line saying what was kept and how to go on, exit status 130, no traceback."""
    from ala_gym.agents.sb3 import SB3Controller
    from ala_gym.benchmarks import cifar10_subset
    from ala_gym.benchmarks import learnloss as learnloss_benchmark

    monkeypatch.chdir(tmp_path)
    if entry == "reinforce":
        monkeypatch.setattr(ReinforceController, "run", _interrupt)
        argv = [arg for arg in TINY_RUN if arg != "--no-tensorboard"]
        run, said = lambda: reinforce_main([*argv, "--log-dir", "logs"]), "TensorBoard logs so far are in logs"
    elif entry == "sb3":
        monkeypatch.setattr(SB3Controller, "run", _interrupt)
        run, said = lambda: sb3_main(TINY_RUN), "nothing was saved"
    elif entry == "imitate":
        monkeypatch.setattr(imitate, "imitate", _interrupt)
        run, said = lambda: imitate.main(["--save", "p.pt"]), "nothing was saved"
    elif entry == "learnloss":
        monkeypatch.setattr(learnloss_benchmark, "RESULTS", tmp_path)
        monkeypatch.setattr(learnloss_benchmark, "tune", _interrupt)
        run = lambda: learnloss_benchmark.main(["--datasets", "digits", "--methods", "random", "--seeds", "1"])  # noqa: E731
        said = f"the finished runs are kept in {tmp_path / 'learnloss' / 'runs'}; the same command resumes"
    else:
        monkeypatch.setattr(cifar10_subset, "build_cifar10_subset", _interrupt)
        run, said = lambda: cifar10_subset.main(["--cifar10", "absent", "--out", "subset"]), "subset was not written"
    with pytest.raises(SystemExit) as caught:
        run()
    err = capsys.readouterr().err
    assert caught.value.code == 130 and err.count("\n") == 1 and "interrupted; " in err and said in err, err


@pytest.mark.parametrize("main", [reinforce_main, sb3_main], ids=["reinforce", "sb3"])
@pytest.mark.parametrize("seed", ["-1", "4294967296", "1.5"])
def test_a_seed_outside_what_numpy_and_torch_take_is_refused_before_the_run(main, seed: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*TINY_RUN, "--seed", seed])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"argument --seed: must be an integer in [0, 2**32 - 1], got '{seed}'" in err


@pytest.mark.parametrize("device, said", [
    ("mps", "policy_device must be 'cpu', 'cuda' or 'cuda:N', got 'mps'"),
    ("cuda:99", "policy_device='cuda:99', but this machine has"),
])  # fmt: skip
def test_a_policy_device_sb3_cannot_use_or_this_machine_lacks_is_refused_in_one_line(device: str, said: str, capsys) -> None:
    """Not a crash in torch at the first step, nor SB3's silent fall-back to the CPU for a GPU that is absent."""
    with pytest.raises(SystemExit) as caught:
        sb3_main([*TINY_RUN, "--policy-device", device])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and said in err


def test_a_temperature_without_a_policy_to_scale_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        reinforce_main([*TINY_RUN, "--temperature", "2"])
    assert caught.value.code == 2 and "--temperature needs --load" in capsys.readouterr().err


@pytest.mark.parametrize("extra, said", [
    (["--load", "digits", "--env-kwarg", "history=3"], "the policy reads 24 features per class pair but the env gives 10"),
    (["--env-kwarg", "autoreset_mode=SameStep"], "a controller runs a vector env that autoresets NEXT_STEP"),
])  # fmt: skip
def test_envs_the_controller_cannot_drive_are_refused_in_one_line_before_the_run(extra: list[str], said: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        reinforce_main([*TINY_RUN, *extra])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and said in err and "Traceback" not in err


def test_the_subset_builder_refuses_an_out_folder_it_cannot_create_in_one_line(tmp_path: Path, capsys) -> None:
    from ala_gym.benchmarks import cifar10_subset

    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as caught:
        cifar10_subset.main(["--cifar10", str(tmp_path / "absent"), "--out", str(tmp_path / "afile" / "subset")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and "choose another --out" in err


@pytest.mark.parametrize("extra, said", [
    (["--total-iterations", "4", "--env-kwarg", "total_iterations=6"], "total_iterations is given twice (--total-iterations and --env-kwarg total_iterations=6)"),
    (["--env-kwarg", "beta=0.1", "--env-kwarg", "beta=0.2"], "beta is given twice (--env-kwarg beta=0.1 and --env-kwarg beta=0.2)"),
    (["--env-kwarg", "=3"], "--env-kwarg expects KEY=VALUE, got '=3'"),
])  # fmt: skip
def test_an_env_keyword_given_twice_or_without_a_name_is_refused(extra: list[str], said: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        reinforce_main(["--num-envs", "1", "--steps-per-action", "2", "--no-tensorboard", *extra])
    assert caught.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("main, extra, said", [
    (sb3_main, ["--algo", "a2c", "--n-epochs", "2"], "n_epochs=2 set PPO's minibatch updates, which a2c does not make"),
    (sb3_main, ["--log-dir", "logs"], "--log-dir names where TensorBoard writes, but --no-tensorboard turns it off"),
    (reinforce_main, ["--log-dir", "logs"], "--log-dir names where TensorBoard writes, but --no-tensorboard turns it off"),
], ids=["a2c-epochs", "sb3-log-dir", "reinforce-log-dir"])  # fmt: skip
def test_options_that_would_be_ignored_are_refused(main, extra: list[str], said: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*TINY_RUN, *extra])
    assert caught.value.code == 2 and said in capsys.readouterr().err


COMMAND_LINES = [
    "ala_gym.agents.meta_train", "ala_gym.agents.sb3", "ala_gym.agents.reinforce", "ala_gym.agents.imitate",
    "ala_gym.benchmarks.adalfl_report", "ala_gym.benchmarks.learnloss", "ala_gym.benchmarks.overhead",
    "ala_gym.benchmarks.gpu", "ala_gym.benchmarks.commands", "ala_gym.benchmarks.reward_agreement",
    "ala_gym.benchmarks.malloc", "ala_gym.benchmarks.compare.cli", "ala_gym.benchmarks.throughput",
    "ala_gym.benchmarks.transfer", "ala_gym.benchmarks.cifar10_subset", "ala_gym.benchmarks.adalfl_cost",
]  # fmt: skip


@pytest.mark.parametrize("module", COMMAND_LINES)
def test_every_command_line_refuses_in_one_line_without_the_usage_block(module: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        importlib.import_module(module).main(["--no-such-option"])
    err = capsys.readouterr().err
    # The one error is the unknown option, or a required one missing (argparse names those first).
    assert caught.value.code == 2 and err.count("\n") == 1 and re.search(r": error: (unrecognized|the following)", err), err


def test_the_command_lines_are_every_main_of_the_package() -> None:
    """The list above holds every module of agents/ and benchmarks/ that defines a main()."""
    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in [*root.glob("agents/*.py"), *root.glob("benchmarks/*.py"), *root.glob("benchmarks/compare/*.py")]:
        if re.search(r"^def main\(", path.read_text(), re.M):
            parts = path.relative_to(root).with_suffix("").parts
            found.add(".".join(("ala_gym", *parts)))
    assert found == set(COMMAND_LINES)


def test_the_throughput_benchmark_refuses_a_negative_seed_before_measuring(capsys) -> None:
    from ala_gym.benchmarks import throughput

    with pytest.raises(SystemExit) as caught:
        throughput.main(["--seed", "-1"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "argument --seed: must be an integer in [0, 2**32 - 1], got '-1'" in err


def test_a_recorded_command_writes_paths_inside_the_working_folder_relative_to_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--save", str(tmp_path / "policies" / "p.pt"), f"--state={tmp_path / 's.pt'}", "/elsewhere/x.pt", "--env-kwargs", '{"a": 1}']
    assert cli.recorded_command("ala_gym.agents.meta_train", argv) == (
        "python -m ala_gym.agents.meta_train --save policies/p.pt --state=s.pt /elsewhere/x.pt --env-kwargs '{\"a\": 1}'"
    )
    # Where the data lies is the machine's: left out, with its value, in either spelling.
    with_data = ["--data-root", "/data/here", "--seed", "1", "--data-root=/data/there", "--out", str(tmp_path / "out")]
    assert cli.portable_argv(with_data) == ["--seed", "1", "--out", "out"]
    # A value holding "=" of its own: the option is what comes before the first one.
    assert cli.portable_argv([f"--save={tmp_path / 'runs' / 'a=b.pt'}"]) == ["--save=runs/a=b.pt"]


def test_an_env_keyword_against_the_controllers_own_is_refused(capsys) -> None:
    """PPO's children step in SAME_STEP autoreset, which SB3's VecEnv semantics need; asking another is refused."""
    with pytest.raises(SystemExit) as caught:
        sb3_main([*TINY_RUN, "--env-kwarg", "autoreset_mode='next_step'"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "ppo trains its children with autoreset_mode=" in err and "leave them out" in err


def test_run_main_ends_a_ctrl_c_in_one_line_with_status_130(capsys, monkeypatch) -> None:
    """How the benchmarks' command lines run (``python -m``): Ctrl-C in one line saying what was kept."""
    monkeypatch.setattr(sys, "argv", ["overhead.py"])
    with pytest.raises(SystemExit) as caught:
        cli.run_main(_interrupt, "nothing was written; the same command measures again")
    assert caught.value.code == 130
    assert capsys.readouterr().err == "overhead.py: interrupted; nothing was written; the same command measures again\n"


@pytest.mark.parametrize("module", [m for m in COMMAND_LINES if m.startswith("ala_gym.benchmarks.")])
def test_every_benchmark_command_line_runs_its_main_through_run_main(module: str) -> None:
    source = Path(importlib.import_module(module).__file__).read_text()
    assert re.search(r'^if __name__ == "__main__":\n    (run_main|cli\.run_main)\(main, ', source, re.M) or "KeyboardInterrupt" in source, module


@pytest.mark.parametrize("main", [reinforce_main, sb3_main], ids=["reinforce", "sb3"])
def test_a_relative_data_root_names_a_folder_of_the_data_home_never_one_to_download_into(
    main, tmp_path: Path, monkeypatch, capsys
) -> None:
    """``--env-kwarg data_root=NAME`` reads NAME under the data home, as the comparisons and meta-training do: a
    missing one is refused in one line naming where it was looked for, and nothing is made in the working folder
    (a download of the full CIFAR-10 there, under the subset's name)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("ALA_GYM_DATA", str(home))
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as caught:
        main(["--env", "ALA-CIFAR10-v0", "--env-kwarg", "data_root=cifar10-subset", "--num-envs", "1",
              "--total-iterations", "20", "--no-tensorboard"])  # fmt: skip
    assert caught.value.code == 2
    assert f"no dataset folder {home / 'cifar10-subset'}" in capsys.readouterr().err
    assert list(work.iterdir()) == []


def test_a_file_that_is_no_policy_file_is_named_as_such_not_as_a_shipped_policy(tmp_path: Path, capsys) -> None:
    """``--load`` of a file that exists but does not end in ``.pt`` (or of a path) says it is no policy file, rather
    than that no shipped policy has that name."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a policy")
    for given in (str(notes), "policies/mine"):
        with pytest.raises(SystemExit) as caught:
            reinforce_main(["--load", given, *TINY_RUN])
        error = capsys.readouterr().err
        assert caught.value.code == 2 and f"{given} is not a policy file (those end in .pt" in error
