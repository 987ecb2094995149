"""Bad input to the learned controllers' configs and command lines is refused before any training, in one line
with exit status 2: numbers that are not finite or out of range, a teacher that cannot be cloned, output paths
(the log folder, the files written beside ``--save``) that could be written only after the run, if at all."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from ala_gym.agents import checkpoints, imitate, meta_train
from ala_gym.agents.adalfl import AdaLFLConfig
from ala_gym.agents.imitate import ImitateConfig
from ala_gym.agents.meta_train import MetaTrainConfig
from ala_gym.agents.pbt import PBTConfig
from ala_gym.agents.reinforce import ReinforceConfig, ReinforceController
from ala_gym.agents.reinforce import main as reinforce_main
from ala_gym.agents.sb3 import SB3Config, SB3Controller
from ala_gym.agents.sb3 import main as sb3_main

NAN, INF = math.nan, math.inf
TINY_RUN = ["--num-envs", "2", "--total-iterations", "4", "--steps-per-action", "2", "--device", "cpu",
            "--env-kwarg", "eval_points=1"]  # fmt: skip


@pytest.mark.parametrize("config, kwargs, message", [
    (ReinforceConfig, dict(lr=NAN), "lr must be a finite number"),
    (ReinforceConfig, dict(lr=INF), "lr must be a finite number"),
    (ReinforceConfig, dict(lr=1e39), "lr must be a finite number in"),  # beyond float32: the policy's steps
    (ReinforceConfig, dict(entropy_coef=NAN), "entropy_coef must be a finite number"),
    (ReinforceConfig, dict(entropy_coef=-0.1), "entropy_coef must be a finite number in \\[0, inf\\)"),
    (ReinforceConfig, dict(baseline_rate=NAN), "baseline_rate must be a finite number in \\[0, 1\\]"),
    (ReinforceConfig, dict(baseline_rate=1.5), "baseline_rate must be a finite number in \\[0, 1\\]"),
    (ReinforceConfig, dict(replay_capacity=-1), "replay_capacity must be an integer >= 0"),
    (ReinforceConfig, dict(replay_batch=-1), "replay_batch must be an integer >= 0"),
    (ReinforceConfig, dict(replay_batch=2.5), "replay_batch must be an integer"),
    (SB3Config, dict(lr=INF), "lr must be a finite number"),
    (SB3Config, dict(ent_coef=INF), "ent_coef must be a finite number"),
    (MetaTrainConfig, dict(lr=INF), "lr must be a finite number"),
    (MetaTrainConfig, dict(sigma=INF), "sigma must be a finite number"),
    (ImitateConfig, dict(lr=INF), "lr must be a finite number"),
], ids=lambda value: value.__name__ if isinstance(value, type) else None)  # fmt: skip
def test_a_config_refuses_a_number_that_is_not_finite_or_out_of_range(config: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


@pytest.mark.parametrize("config, kwargs, message", [
    (MetaTrainConfig, dict(seed=-1), "^seed must be an integer >= 0, got -1$"),
    (MetaTrainConfig, dict(env_kwargs={"total_iterations": 5000}), "^env_kwargs sets total_iterations, which horizon and steps_per_action set here; set those instead$"),
    (MetaTrainConfig, dict(task_kwargs={"ALA-Digits-v0": {"steps_per_action": 5}}), "^task_kwargs\\['ALA-Digits-v0'\\] sets steps_per_action"),
    (MetaTrainConfig, dict(ray_address="auto"), "^ray_address names a Ray cluster for the workers, but workers is 0"),
    (ImitateConfig, dict(env_kwargs={"steps_per_action": 5}), "^env_kwargs sets steps_per_action, which horizons and steps_per_action set here"),
    (MetaTrainConfig, dict(seed=2**32), "^seed must be an integer in \\[0, 2\\*\\*32 - 1\\], got 4294967296$"),
    (ImitateConfig, dict(seed=2**32), "^seed must be an integer in \\[0, 2\\*\\*32 - 1\\], got 4294967296$"),
    (MetaTrainConfig, dict(tasks=()), "tasks must name at least one env id, got \\(\\)"),
    (MetaTrainConfig, dict(tasks=("ALA-Digits-v0", 3)), "tasks must name at least one env id, got \\('ALA-Digits-v0', 3\\)"),
    (MetaTrainConfig, dict(horizon=(600, 200)), "^horizon must be \\(low, high\\) with 1 <= low <= high, got \\(600, 200\\)$"),
    (MetaTrainConfig, dict(horizon=(200, 400, 600)), "^horizon must be \\(low, high\\), got \\(200, 400, 600\\)$"),
    (MetaTrainConfig, dict(horizon=(0, 200)), "^horizon\\[0\\] must be an integer >= 1, got 0$"),
    (MetaTrainConfig, dict(horizon=(200, 400.5)), "^horizon\\[1\\] must be an integer >= 1, got 400.5 \\(float\\)$"),
    (MetaTrainConfig, dict(population=0), "^population must be an integer >= 1, got 0$"),
    (MetaTrainConfig, dict(population=2.5), "^population must be an integer >= 1, got 2.5 \\(float\\)$"),
    (MetaTrainConfig, dict(generations=0), "^generations must be an integer >= 1, got 0$"),
    (MetaTrainConfig, dict(hidden=0), "^hidden must be an integer >= 1, got 0$"),
    (MetaTrainConfig, dict(steps_per_action=0), "^steps_per_action must be an integer >= 1, got 0$"),
    (MetaTrainConfig, dict(sigma=0.0), "^sigma must be a finite number in \\(0, 3.40282e\\+38\\], got 0.0$"),
    (MetaTrainConfig, dict(lr=NAN), "^lr must be a finite number in \\(0, 3.40282e\\+38\\], got nan$"),
    (MetaTrainConfig, dict(lr="0.02"), "^lr must be a finite number in \\(0, 3.40282e\\+38\\], got '0.02' \\(str\\)$"),
    (MetaTrainConfig, dict(init_no_change=1.0), "^init_no_change must be a finite number in \\[0, 1\\), got 1.0$"),
    (MetaTrainConfig, dict(workers=-1), "^workers must be an integer >= 0, got -1$"),
    (MetaTrainConfig, dict(pairs_per_evaluation=0), "^pairs_per_evaluation must be an integer >= 1, got 0$"),
    (MetaTrainConfig, dict(tasks_per_generation=1.0), "^tasks_per_generation must be an integer, got 1.0 \\(float\\)$"),
    (ImitateConfig, dict(horizons=()), "^horizons must list at least one run length, got \\(\\)$"),
    (ImitateConfig, dict(horizons=(400, 0)), "^horizons\\[1\\] must be an integer >= 1, got 0$"),
    (ImitateConfig, dict(num_envs=0), "^num_envs must be an integer >= 1, got 0$"),
    (ImitateConfig, dict(steps_per_action=0), "^steps_per_action must be an integer >= 1, got 0$"),
    (ImitateConfig, dict(epochs=0), "^epochs must be an integer >= 1, got 0$"),
    (ImitateConfig, dict(hidden=0), "^hidden must be an integer >= 1, got 0$"),
    (ImitateConfig, dict(lr=0.0), "^lr must be a finite number in \\(0, 3.40282e\\+38\\], got 0.0$"),
    (ImitateConfig, dict(explore=1.0), "^explore must be a finite number in \\[0, 1\\), got 1.0$"),
    (ReinforceConfig, dict(lr="0.01"), "^lr must be a finite number in \\(0, 3.40282e\\+38\\], got '0.01' \\(str\\)$"),
    (ReinforceConfig, dict(start_off_diagonal=1.5), "^start_off_diagonal must be a finite number in \\[0, 1\\], got 1.5$"),
    (ReinforceConfig, dict(init_no_change=NAN), "^init_no_change must be a finite number in \\[0, 1\\), got nan$"),
    (ReinforceConfig, dict(hidden=0), "^hidden must be an integer >= 1, got 0$"),
    (ReinforceConfig, dict(updates_per_step=0), "^updates_per_step must be an integer >= 1, got 0$"),
    (ReinforceConfig, dict(return_horizon=0), "^return_horizon must be an integer >= 1, got 0$"),
    (ReinforceConfig, dict(warmup_runs=-1), "^warmup_runs must be an integer >= 0, got -1$"),
    (ReinforceConfig, dict(discount=0.0), "^discount must be a finite number in \\(0, 1\\], got 0.0$"),
    (ReinforceConfig, dict(episodic_weight=NAN), "^episodic_weight must be a finite number in \\[0, 1\\], got nan$"),
    (SB3Config, dict(n_steps=0), "^n_steps must be an integer >= 1, got 0$"),
    (SB3Config, dict(n_epochs=0), "^n_epochs must be an integer >= 1, got 0$"),
    (SB3Config, dict(hidden=0), "^hidden must be an integer >= 1, got 0$"),
    (SB3Config, dict(batch_size=-1), "^batch_size must be an integer >= 0, got -1$"),
    (SB3Config, dict(gamma=NAN), "^gamma must be a finite number in \\[0, 1\\], got nan$"),
    (SB3Config, dict(gae_lambda=1.5), "^gae_lambda must be a finite number in \\[0, 1\\], got 1.5$"),
    (SB3Config, dict(lr=0.0), "^lr must be a finite number in \\(0, 3.40282e\\+38\\], got 0.0$"),
    (PBTConfig, dict(interval=0), "^interval must be an integer >= 1, got 0$"),
    (PBTConfig, dict(quantile=0.6), "^quantile must be a finite number in \\(0, 0.5\\], got 0.6$"),
    (PBTConfig, dict(explore_step=-0.01), "^explore_step must be a finite number in \\[0, inf\\), got -0.01$"),
    (PBTConfig, dict(resample_probability=1.5), "^resample_probability must be a finite number in \\[0, 1\\], got 1.5$"),
    (AdaLFLConfig, dict(meta_lr=NAN), "^meta_lr must be a finite number in \\(0, 3.40282e\\+38\\], got nan$"),
    (AdaLFLConfig, dict(meta_lr="0.001"), "^meta_lr must be a finite number in \\(0, 3.40282e\\+38\\], got '0.001' \\(str\\)$"),
    (AdaLFLConfig, dict(smoothness=INF), "^smoothness must be a finite number in \\(0, inf\\), got inf$"),
    (AdaLFLConfig, dict(leak=1.0), "^leak must be a finite number in \\[0, 1\\), got 1.0$"),
    (AdaLFLConfig, dict(hidden=0), "^hidden must be an integer >= 1, got 0$"),
    (AdaLFLConfig, dict(offline_steps=-1), "^offline_steps must be an integer >= 0, got -1$"),
    (AdaLFLConfig, dict(shape_points=0), "^shape_points must be an integer >= 1, got 0$"),
    (AdaLFLConfig, dict(bias="no"), "^bias must be True or False, got 'no' \\(str\\)$"),
    (AdaLFLConfig, dict(nesterov=1), "^nesterov must be True or False, got 1 \\(int\\)$"),
], ids=lambda value: value.__name__ if isinstance(value, type) else None)  # fmt: skip
def test_a_config_refuses_a_setting_out_of_its_range_with_the_values_given(config: type, kwargs: dict, message: str) -> None:
    """Each refusal is one line that names the setting, the range it must lie in and what was given: values that a
    comparison alone would let through (NaN, a string, a float where a count is meant) included."""
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_the_settings_at_the_ends_of_their_ranges_are_accepted() -> None:
    ReinforceConfig(replay_capacity=0, replay_batch=0, baseline_rate=1.0, entropy_coef=0.0)
    ReinforceConfig(baseline_rate=0.0)


@pytest.mark.parametrize("teacher", ["ppo", "a2c", "adalfl"])
def test_a_teacher_that_acts_only_inside_its_own_run_is_refused_before_any_rollout(teacher: str, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=f"{teacher} chooses its actions only inside its own run"):
        ImitateConfig(teacher=teacher)
    with pytest.raises(SystemExit) as caught:
        imitate.main(["--teacher", teacher, "--save", str(tmp_path / "clone.pt")])
    check_one_line(caught, capsys.readouterr().err, f"{teacher} chooses its actions only inside its own run")
    assert not list(tmp_path.iterdir())


def test_the_named_run_only_teachers_are_the_registered_controllers_that_act_only_in_their_run() -> None:
    """:data:`RUN_ONLY_TEACHERS` (refused by name, before anything is built) is what the classes declare."""
    from ala_gym.agents import CONTROLLERS
    from ala_gym.agents.adalfl import AdaLFLController

    classes = {name: SB3Controller if name in ("ppo", "a2c") else AdaLFLController for name in imitate.RUN_ONLY_TEACHERS}
    assert all(not cls.acts_in_any_state for cls in classes.values())
    acting = [CONTROLLERS[name]() for name in CONTROLLERS if name not in classes]
    assert acting and all(controller.acts_in_any_state for controller in acting)


RUN_ONLY = """
from ala_gym.agents.baselines import RampPhi


class RunOnly(RampPhi):
    acts_in_any_state = False
"""


def test_a_teacher_of_ones_own_that_acts_only_in_its_run_is_refused_before_any_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (tmp_path / "my_teachers.py").write_text(RUN_ONLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(imitate.gym, "make_vec", lambda *args, **kwargs: pytest.fail("an env was made"))
    with pytest.raises(SystemExit) as caught:
        imitate.main(["--teacher", "my_teachers:RunOnly", "--save", str(tmp_path / "out" / "clone.pt")])
    check_one_line(caught, capsys.readouterr().err, "my_teachers:RunOnly chooses its actions only inside its own run")


def check_one_line(caught: pytest.ExceptionInfo[SystemExit], err: str, message: str) -> None:
    assert caught.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command line's training fails the test: a refusal must come first."""

    def trained(*args: Any, **kwargs: Any) -> None:
        pytest.fail("trained despite bad input")

    for owner, name in [(ReinforceController, "run"), (SB3Controller, "run"), (meta_train, "meta_train"), (imitate, "imitate")]:
        monkeypatch.setattr(owner, name, trained)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--entropy-coef", "nan"], "entropy_coef must be a finite number"),
    (["--replay-capacity", "-1"], "replay_capacity must be an integer >= 0"),
    (["--replay-batch", "-1"], "replay_batch must be an integer >= 0"),
    (["--baseline-rate", "nan"], "baseline_rate must be a finite number"),
])  # fmt: skip
def test_the_reinforce_command_line_refuses_a_bad_number_in_one_line(argv, message, monkeypatch, capsys) -> None:
    no_training(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        reinforce_main([*TINY_RUN, "--no-tensorboard", *argv])
    check_one_line(caught, capsys.readouterr().err, message)


def test_the_sb3_command_line_refuses_an_infinite_learning_rate_in_one_line(monkeypatch, capsys) -> None:
    no_training(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        sb3_main([*TINY_RUN, "--no-tensorboard", "--n-steps", "1", "--lr", "inf"])
    check_one_line(caught, capsys.readouterr().err, "lr must be a finite number")


def test_a_saved_ppo_policy_run_with_too_few_children_for_its_minibatch_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    # Trained with n_steps 1 on two children: on one child a rollout holds a single transition.
    checkpoints.save_checkpoint(tmp_path / "ppo.pt", "sb3-ppo", asdict(SB3Config(n_steps=1)), {})
    no_training(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        sb3_main([*TINY_RUN, "--no-tensorboard", "--load", str(tmp_path / "ppo.pt"), "--num-envs", "1"])
    check_one_line(caught, capsys.readouterr().err, "PPO needs minibatches of at least 2 transitions, got 1")
    assert SB3Controller.load(tmp_path / "ppo.pt", "ppo", num_envs=2).num_envs == 2  # two children suffice


COMMANDS: dict[str, Callable[[list[str]], Any]] = {
    "reinforce": lambda argv: reinforce_main([*TINY_RUN, *argv]),
    "sb3": lambda argv: sb3_main([*TINY_RUN, "--n-steps", "1", *argv]),
    "meta_train": meta_train.main,
    "imitate": imitate.main,
}


@pytest.mark.parametrize("command", ["reinforce", "sb3", "meta_train"])
def test_a_log_dir_that_cannot_be_a_folder_is_refused_before_training(command: str, tmp_path: Path, monkeypatch, capsys) -> None:
    no_training(monkeypatch)
    (tmp_path / "a-file").write_text("")
    save = ["--save", str(tmp_path / "policy.pt")]
    for log_dir, message in [(tmp_path / "a-file", "is a file; name a folder"),
                             (tmp_path / "a-file" / "logs", "a-file is no writable folder; name a folder in one")]:  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            COMMANDS[command](["--log-dir", str(log_dir), *save])
        err = capsys.readouterr().err
        check_one_line(caught, err, f"--log-dir {log_dir}")
        assert message in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("command, argv", [
    ("reinforce", ["--no-tensorboard", "--save", "policy.pt"]),
    ("meta_train", ["--state", "policy.pt", "--save", "meta.pt"]),
])  # fmt: skip
def test_an_output_file_that_is_a_folder_is_refused_before_training(command: str, argv: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    """A policy or state file named where a folder stands is refused in one line, with the fix, before the run."""
    no_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    Path("policy.pt").mkdir()
    with pytest.raises(SystemExit) as caught:
        COMMANDS[command](argv)
    option = argv[argv.index("policy.pt") - 1]
    check_one_line(caught, capsys.readouterr().err, f"{option} policy.pt is a folder; name a file in it")


@pytest.mark.parametrize("command", ["reinforce", "sb3"])
def test_a_folder_where_the_run_writes_its_records_is_refused_before_training(command: str, tmp_path: Path, monkeypatch, capsys) -> None:
    no_training(monkeypatch)
    (tmp_path / "logs" / "records.json").mkdir(parents=True)
    with pytest.raises(SystemExit) as caught:
        COMMANDS[command](["--log-dir", str(tmp_path / "logs")])
    check_one_line(caught, capsys.readouterr().err, f"{tmp_path / 'logs' / 'records.json'}, written there after the run, is a folder")


@pytest.mark.parametrize("command, beside", [("sb3", ".zip"), ("meta_train", ".json"), ("imitate", ".json")])
def test_a_folder_where_a_file_goes_beside_the_policy_is_refused_before_training(
    command: str, beside: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    no_training(monkeypatch)
    (tmp_path / f"policy{beside}").mkdir()
    extra = ["--no-tensorboard"] if command == "sb3" else []
    with pytest.raises(SystemExit) as caught:
        COMMANDS[command]([*extra, "--save", str(tmp_path / "policy.pt")])
    check_one_line(caught, capsys.readouterr().err, f"{tmp_path / f'policy{beside}'}, written beside it, is a folder")
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"policy{beside}"]


def test_a_comparison_row_with_a_nan_learning_rate_fails_before_any_run(tmp_path, monkeypatch) -> None:
    from ala_gym.benchmarks.compare import run
    from ala_gym.benchmarks.compare.errors import ComparisonError

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "run_one", lambda *args, **kwargs: pytest.fail("a run started"))
    with pytest.raises(ComparisonError, match="controller 'reinforce\\(lr=NaN\\)': lr must be a finite number"):
        run.compare("ALA-Digits-v0", ["reinforce(lr=NaN)"], [0], {"total_iterations": 20, "steps_per_action": 10}, "x")
    assert not list(tmp_path.iterdir())
