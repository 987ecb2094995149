"""Behaviour cloning of a controller into the pair-shared policy (``agents/imitate.py``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ala_gym.agents.imitate import (
    ImitateConfig,
    argument_parser,
    config_from_args,
    fit_policy,
    imitate,
    main,
    teacher_rows,
)
from ala_gym.agents.meta_train import initial_policy_state
from ala_gym.agents.reinforce import NO_CHANGE, ReinforceConfig, ReinforceController, save_policy

TINY_ENV = dict(device="cpu", batch_size=32, eval_points=2, eval_stride=5, val_subsample=200)
RAMP = {"start": 0.1, "end": 0.0, "follow": True}


def tiny(**overrides) -> ImitateConfig:
    return ImitateConfig(**{"teacher_kwargs": RAMP, "env_kwargs": TINY_ENV, "horizons": (60, 120),
                            "steps_per_action": 10, "num_envs": 1, "hidden": 16, "epochs": 400, **overrides})  # fmt: skip


def test_a_cloned_ramp_follower_follows_the_ramp_and_loads_as_a_policy(tmp_path, global_rng_unchanged) -> None:
    """The clone agrees with the teacher on its rows, and on rows it never saw it steps an entry up below the
    ramp and down above it; it loads frozen and as the start of a meta-training; its rows are reproducible."""
    config = tiny()
    states, labels = teacher_rows(config)
    again, same_labels = teacher_rows(config)
    assert torch.equal(states, again) and torch.equal(labels, same_labels)
    # 45 off-diagonal pairs of 10 classes; steps of both runs (the first action is taken before step 1).
    assert len(labels) == 45 * (60 // 10 + 120 // 10)
    assert set(labels.tolist()) == {NO_CHANGE - 1, NO_CHANGE + 1}  # the follower never keeps an entry off the ramp
    policy, agreement = fit_policy(states, labels, config)
    with torch.no_grad():  # the share of the teacher's rows the clone's own choice matches
        assert agreement == float((policy(states).argmax(-1) == labels).float().mean()) > 0.9
    # New rows: a seen row with the entry's value moved 0.05 under and over the ramp, at progress values where
    # the runs visited both sides (Phi starts at identity, below the ramp, and catches up within the first half).
    row = states[0].clone()
    progress = torch.tensor([0.5, 0.7, 0.9])
    ramp = 0.1 * (1 - progress)
    below, above = row.repeat(3, 1), row.repeat(3, 1)
    below[:, -1] = above[:, -1] = progress
    below[:, -2], above[:, -2] = ramp - 0.05, ramp + 0.05
    with torch.no_grad():
        assert (policy(below).argmax(-1) == NO_CHANGE + 1).all()
        assert (policy(above).argmax(-1) == NO_CHANGE - 1).all()
    save_policy(tmp_path / "clone.pt", policy, ReinforceConfig(hidden=config.hidden))
    controller = ReinforceController.load(tmp_path / "clone.pt", train=False)
    assert controller.config.hidden == 16
    start = initial_policy_state(str(tmp_path / "clone.pt"), states.shape[-1], 16)
    assert all(torch.equal(start[name], value) for name, value in policy.state_dict().items())


def test_exploration_moves_the_states_but_keeps_the_teachers_labels() -> None:
    """With ``explore`` the executed actions are partly random, so Phi leaves the ramp; every label is still the
    teacher's action in the state it saw."""
    states, labels = teacher_rows(tiny(explore=0.5, horizons=(60,)))
    value, progress = states[:, -2], states[:, -1]
    ramp = 0.1 * (1 - progress)
    expected = torch.where(value < ramp, NO_CHANGE + 1, NO_CHANGE - 1)
    assert torch.equal(labels, expected)
    plain, _ = teacher_rows(tiny(horizons=(60,)))
    assert (states[:, -2] - plain[:, -2]).abs().max() > 0.01


def test_a_teacher_that_imposes_phi_or_bad_input_is_a_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="phi-uniform imposes Phi instead of acting"):
        imitate(tiny(teacher="phi-uniform", teacher_kwargs={"off_diagonal": 0.1}))
    # PBT (which needs each run begun as its own runs begin it) and LearnLoss (a factory of no child count): the
    # same refusal, not an attribute or keyword error of the teacher's.
    for teacher in ("pbt", "learnloss"):
        with pytest.raises(ValueError, match=f"^{teacher} imposes Phi instead of acting"):
            imitate(tiny(teacher=teacher, teacher_kwargs={}, num_envs=2, horizons=(40,)))
    with pytest.raises(ValueError, match="explore must be a finite number in"):
        tiny(explore=1.0)
    with pytest.raises(ValueError, match="env_kwargs sets loss_form='sigmoid', but the teacher phi-ramp trains its "
                                         "children with loss_form='linear'"):  # fmt: skip
        imitate(tiny(env_kwargs={"loss_form": "sigmoid"}))
    for argv in (["--teacher", "nonesuch"], ["--teacher-kwargs", "{not json"], ["--env", "ALA-Nonesuch-v0"]):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--save", str(tmp_path / "never.pt")])
        assert exited.value.code == 2 and not (tmp_path / "never.pt").exists()
        assert "Traceback" not in capsys.readouterr().err


def test_another_teacher_on_the_command_line_does_not_get_the_ramps_keywords() -> None:
    def parsed(*argv: str) -> ImitateConfig:
        return config_from_args(argument_parser().parse_args([*argv, "--save", "x.pt"]))

    assert parsed() == ImitateConfig()  # the default teacher with its keywords
    assert parsed("--teacher", "ce").teacher_kwargs == {}
    assert parsed("--teacher", "phi-ramp", "--teacher-kwargs", '{"end": 0.2}').teacher_kwargs == {"end": 0.2}


def test_the_command_line_writes_the_policy_and_its_provenance(tmp_path) -> None:
    main(["--teacher-kwargs", json.dumps(RAMP), "--env-kwargs", json.dumps(TINY_ENV), "--horizons", "60",
          "--steps-per-action", "10", "--num-envs", "1", "--hidden", "16", "--epochs", "50",
          "--save", str(tmp_path / "clone.pt")])  # fmt: skip
    record = json.loads((tmp_path / "clone.json").read_text())
    assert record["command"].startswith("python -m ala_gym.agents.imitate --teacher-kwargs")
    assert record["config"]["teacher"] == "phi-ramp" and record["config"]["horizons"] == [60]
    assert record["rows"] == 45 * 6 and sum(record["label_counts"]) == record["rows"]
    assert 0 <= record["agreement"] <= 1 and np.isfinite(record["wall_seconds"])
    ReinforceController.load(tmp_path / "clone.pt", train=False)


def test_each_run_draws_its_seed_and_explores_the_fraction_asked_for(monkeypatch) -> None:
    """Every horizon's children start from their own seed (drawn from ``seed``), and about ``explore`` of the
    executed actions are uniform draws: two thirds of those differ from the teacher's label."""
    from ala_gym.agents import imitate as imitate_module

    make_vec, seeds, executed = imitate_module.gym.make_vec, [], []

    class Recorder:
        def __init__(self, envs) -> None:
            self.envs = envs

        def __getattr__(self, name: str):
            return getattr(self.envs, name)

        def reset(self, seed=None, **kwargs):
            seeds.append(seed)
            return self.envs.reset(seed=seed, **kwargs)

        def step(self, actions):
            executed.append(np.array(actions))
            return self.envs.step(actions)

    monkeypatch.setattr(imitate_module.gym, "make_vec", lambda *args, **kwargs: Recorder(make_vec(*args, **kwargs)))
    config = tiny(explore=0.2, horizons=(60, 60, 60))
    movable = ~np.eye(10, dtype=bool)[np.triu_indices(10)]
    _, labels = teacher_rows(config)
    assert len(set(seeds)) == 3
    chosen = np.concatenate([actions[:, movable].reshape(-1) for actions in executed])
    changed = float(np.mean(chosen != labels.numpy()))
    assert 0.2 * 2 / 3 - 0.07 < changed < 0.2 * 2 / 3 + 0.07  # 810 actions: inverted, it would be near 0.53
    # The draws are uniform over all three actions: each of the teacher's steps is also seen reversed, and the
    # no-change action the follower never chooses is executed too.
    labels = labels.numpy()
    assert np.any((labels == 0) & (chosen == 2)) and np.any((labels == 2) & (chosen == 0)) and np.any(chosen == 1)
    first_seeds = list(seeds)
    seeds.clear()
    teacher_rows(replace(config, seed=1))
    assert len(set(seeds)) == 3 and seeds != first_seeds


def test_the_fit_starts_from_weights_drawn_from_its_seed() -> None:
    states, labels = torch.rand(20, 24, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 3
    first = fit_policy(states, labels, tiny(epochs=1))[0].state_dict()
    assert all(torch.equal(value, fit_policy(states, labels, tiny(epochs=1))[0].state_dict()[name]) for name, value in first.items())
    other = fit_policy(states, labels, tiny(epochs=1, seed=1))[0].state_dict()
    assert not all(torch.equal(value, other[name]) for name, value in first.items())


class TwoChildren:
    """A made-up vector env of two 3-class children (no training): child 1's first run ends after one step by
    truncation, child 0's after three by termination; column 0 of every observation says whose state it is and
    when (``10 * step + child``). It fails a rollout that steps on far past both runs."""

    num_envs = 2

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.steps, self.seeds = kwargs, 0, []

    def get_attr(self, name: str) -> tuple[np.ndarray, ...]:
        assert name == "movable_rows"
        return (np.array([False, True, True, False, True, False]),) * 2  # pairs (0,1) (0,2) (1,2)

    def _observations(self) -> tuple[np.ndarray, dict]:
        observations = np.zeros((2, 6, 24))
        observations[..., 0] = 10 * self.steps + np.arange(2)[:, None]
        return observations, {"phi": np.stack([np.eye(3)] * 2)}

    def reset(self, seed=None):
        self.seeds.append(seed)
        self.steps = 0
        return self._observations()

    def step(self, actions):
        self.steps += 1
        if self.steps > 6:
            pytest.fail("the rollout stepped on past both children's first runs")
        terminated, truncated = np.array([self.steps == 3, False]), np.array([False, self.steps == 1])
        observations, infos = self._observations()
        return observations, np.zeros(2), terminated, truncated, infos

    def close(self) -> None:
        pass


def test_each_run_is_made_with_its_horizon_and_the_teachers_keywords_and_keeps_only_first_runs(monkeypatch) -> None:
    """Every run's children are made with the run's horizon and the config's K, with the caller's env keywords,
    and with the teacher's own (phi-ramp trains under the linear form; ``env_kwargs`` setting any of these is
    refused, in the config's test); the teacher
    begins on the seed the children reset with; a child's rows stop where its first run ends, by termination or
    by truncation, while the other child runs on."""
    from ala_gym.agents import imitate as imitate_module
    from ala_gym.agents.baselines import RampPhi

    made, begun = [], []

    class SeenRamp(RampPhi):
        def begin(self, envs, seed: int) -> None:
            begun.append(seed)

    def make_vec(env_id: str, num_envs: int, **kwargs) -> TwoChildren:
        made.append(TwoChildren(**kwargs))
        return made[-1]

    monkeypatch.setattr(imitate_module, "resolve_controller", lambda name: SeenRamp)
    monkeypatch.setattr(imitate_module.gym, "make_vec", make_vec)
    states, labels = teacher_rows(tiny(env_kwargs={"beta": 0.2}, horizons=(60, 30), num_envs=2))
    assert [(env.kwargs["total_iterations"], env.kwargs["steps_per_action"], env.kwargs["loss_form"], env.kwargs["beta"])
            for env in made] == [(60, 10, "linear", 0.2), (30, 10, "linear", 0.2)]  # fmt: skip
    assert begun == [env.seeds[0] for env in made] and len(set(begun)) == 2
    # Child 0 at steps 0-2, child 1 at step 0 only, three movable rows each, in both runs.
    assert sorted(states[:, 0].tolist()) == sorted([0.0, 10.0, 20.0, 1.0] * 3 * 2)
    assert torch.equal(labels, torch.full((24,), NO_CHANGE + 1))  # Phi at 0, below the ramp's 0.1: up


def test_the_label_counts_name_every_action_even_one_never_chosen(monkeypatch) -> None:
    """A teacher that only ever steps down (a ramp at -1) still reports a count for each of the three actions."""
    from ala_gym.agents import imitate as imitate_module

    monkeypatch.setattr(imitate_module.gym, "make_vec", lambda env_id, num_envs, **kwargs: TwoChildren(**kwargs))
    _, outcome = imitate(tiny(teacher_kwargs={"start": -1.0, "end": -1.0, "follow": True}, horizons=(60,), num_envs=2,
                              epochs=1))  # fmt: skip
    assert outcome["rows"] == 12 and outcome["label_counts"] == [12, 0, 0]
