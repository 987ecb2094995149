"""Population-based training over the vector env, and the env capabilities it rests on: copying one child's
state into another, saving and restoring a single env's state bit for bit."""

from __future__ import annotations

import pickle
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

import ala_gym.agents
from ala_gym.agents.pbt import PBTConfig, PBTController

TINY = dict(total_iterations=60, steps_per_action=10, batch_size=32, eval_points=2, eval_stride=5, val_subsample=200,
            device="cpu")  # fmt: skip
KEEP = np.ones(55, dtype=np.int64)


def _trace(env: gym.Env, steps: int) -> list:
    out = []
    for k in range(steps):
        observation, reward, terminated, _, info = env.step((np.arange(55) + k) % 3)
        out.append((observation, reward, terminated, info["val_metric"], info["train_loss"], info["phi"]))
    return out


def _same(first: list, second: list) -> bool:
    return all(
        np.array_equal(a[0], b[0]) and a[1:5] == b[1:5] and np.array_equal(a[5], b[5]) for a, b in zip(first, second)
    )


def test_a_single_env_state_restores_bit_for_bit() -> None:
    env = gym.make("ALA-Digits-v0", **TINY).unwrapped
    env.reset(seed=3)
    env.step(np.full(55, 2))
    state = env.get_state()
    ahead = _trace(env, 3)
    env.set_state(state)
    again = _trace(env, 3)
    assert _same(ahead, again)
    env.set_state(state)  # a state is not consumed: restoring twice gives the same run again
    assert _same(ahead, _trace(env, 3))
    with pytest.raises(ValueError, match="get_state"):
        env.set_state({"something": "else"})
    twin = gym.make("ALA-Digits-v0", **TINY).unwrapped  # the same keywords: the run moves over whole
    twin.set_state(state)
    assert _same(ahead, _trace(twin, 3))
    # An episode setting alone (same training, same spaces) counts too: gamma weighs the rewards of the rest of the run.
    # So do the loss (the metric flips the reward's sign; beta sizes the actions) and the data's split (another split
    # would train on this one's validation samples).
    others = (
        {"history": 5}, {"total_iterations": 2 * TINY["total_iterations"]}, {"lr": 0.01}, {"gamma": 0.5},
        {"metric": "accuracy"}, {"beta": 0.5}, {"split_seed": 1}, {"val_subsample": 100}, {"train_size": 500},
    )  # fmt: skip
    for other in others:
        with pytest.raises(ValueError, match="state was saved by an env of another data split, training, loss, metric"):
            gym.make("ALA-Digits-v0", **{**TINY, **other}).unwrapped.set_state(state)
    env.close()
    with pytest.raises(RuntimeError, match="this env is closed"):
        env.set_state(state)
    with pytest.raises(RuntimeError, match="this env is closed"):
        env.get_state()


def test_a_state_moves_to_an_env_of_the_same_samples_and_trains_on_its_data() -> None:
    """A state pickled (as to another process) restores into an env of the same samples, where the child trains on
    that env's data, not on a copy; an env of other samples of the same shapes refuses it."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 3, 300)
    own = dict(total_iterations=40, steps_per_action=10, batch_size=32, val_subsample=40, val_size=60, device="cpu")

    def make(features: np.ndarray) -> gym.Env:
        return gym.make("ALA-Classification-v0", dataset=(features, y, features[:50], y[:50]), **own).unwrapped

    env = make(x)
    env.reset(seed=1)
    env.step(np.ones(env.action_space.shape, dtype=np.int64))
    state = pickle.loads(pickle.dumps(env.get_state()))
    ahead = [env.step(np.full(env.action_space.shape, 2))[0] for _ in range(2)]
    twin = make(x.copy())
    twin.set_state(state)
    assert twin.trainer.data is twin.data
    assert all(np.array_equal(a, twin.step(np.full(env.action_space.shape, 2))[0]) for a in ahead)
    with pytest.raises(ValueError, match="state was saved by an env of other data"):
        make(x + 1.0).set_state(state)


@pytest.mark.parametrize("train_mode", ["sequential", "batched"])
@pytest.mark.parametrize("model", ["mlp", "resnet20"])  # the ResNet's BatchNorm statistics go with the weights
def test_copy_child_gives_the_target_the_sources_weights_statistics_and_record(train_mode: str, model: str) -> None:
    envs = gym.make_vec("ALA-Digits-v0", num_envs=3, train_mode=train_mode, model=model, **TINY)
    envs.reset(seed=0)
    envs.step(np.ones((3, 55), dtype=np.int64))
    episodes = envs.unwrapped.episodes
    source_metric = episodes[0]._last_metric
    assert episodes[2]._last_metric != source_metric
    envs.unwrapped.copy_child(0, 2)
    # The target's record of the run goes with the weights: its next reward continues from the source's metric.
    # The record goes from source to target, not back: the source's stays what it was.
    assert episodes[2]._last_metric == episodes[0]._last_metric == source_metric and episodes[2] is not episodes[0]
    children = envs.unwrapped._children
    if train_mode == "sequential":
        source, target = children.trainers[0], children.trainers[2]
        for name, value in source.model.state_dict().items():
            assert torch.equal(value, target.model.state_dict()[name]), name
        assert all(torch.equal(a, b) for a, b in zip(source.velocity.values(), target.velocity.values()))
    else:
        assert bool(children.buffers) == (model == "resnet20")
        for tensors in (children.params, children.buffers, children.momentum):
            for name, value in tensors.items():
                assert torch.equal(value[0], value[2]), name
    # Same weights, but each child keeps its own batch order: the next step trains them apart again.
    _, _, _, _, infos = envs.step(np.ones((3, 55), dtype=np.int64))
    assert infos["train_loss"][0] != infos["train_loss"][2]
    for source, target in ((0, 5), (1.0, 2), (True, 2)):  # past the end, or no index at all
        with pytest.raises(ValueError, match="must be a child index"):
            envs.unwrapped.copy_child(source, target)
    envs.close()


def test_pbt_runs_exploits_and_explores_on_a_tiny_budget(global_rng_unchanged) -> None:
    controller = ala_gym.agents.CONTROLLERS["pbt"](num_envs=4, config=PBTConfig(interval=2, quantile=0.25))
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    copies, metrics = [], []
    original = envs.unwrapped.copy_child
    envs.unwrapped.copy_child = lambda source, target: (copies.append((source, target, metrics[-1])), original(source, target))
    learn = controller.learn

    def learn_noting_the_metric(*args, **kwargs):
        metrics.append(np.array(args[-1]["val_metric_discounted"]))  # what the round ranks by (infos)
        return learn(*args, **kwargs)

    controller.learn = learn_noting_the_metric
    logs = []
    with global_rng_unchanged():
        records = controller.run(envs, seed=1, on_step=lambda step, entry: logs.append(entry))
    envs.close()
    assert len(records) == 4 and all(np.isfinite(r.test_metric) for r in records)
    assert copies and all(source != target for source, target, _ in copies)
    # A quarter of 4 children: the lowest discounted validation error is copied over the highest.
    assert all(metric[source] == metric.min() and metric[target] == metric.max() for source, target, metric in copies)
    # Each child trains under Phi = I + u: one value off the diagonal, inside the bounds.
    for record in records:
        phi = np.array(record.phi[-1])
        off = phi[~np.eye(10, dtype=bool)]
        assert np.allclose(off, off[0]) and -0.2 <= off[0] <= 0.2 and np.allclose(np.diag(phi), 1.0)
    assert any("pbt_round" in entry for entry in logs)


def test_frozen_pbt_keeps_every_childs_initial_value() -> None:
    controller = ala_gym.agents.CONTROLLERS["pbt-frozen"](num_envs=3, config=PBTConfig(interval=1))
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    envs.unwrapped.copy_child = lambda source, target: pytest.fail("a frozen population copied a child")
    records = controller.run(envs, seed=1)
    envs.close()
    for record in records:
        first, last = np.array(record.phi[0]), np.array(record.phi[-1])
        assert np.array_equal(first, last)


def test_pbt_refuses_a_population_of_one_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least 2 children"):
        PBTController(num_envs=1)
    with pytest.raises(ValueError, match=r"^quantile must be a finite number in \(0, 0.5\], got 0.75$"):
        PBTConfig(quantile=0.75)
    with pytest.raises(ValueError, match="initial_range"):
        PBTConfig(initial_range=(-0.5, 0.1))
    with pytest.raises(ValueError, match="^interval must be an integer >= 1, got 0$"):
        PBTConfig(interval=0)


def test_an_exploited_child_explores_from_its_sources_value() -> None:
    """Without resampling, the bottom child takes the top child's weights and its loss value, moved by one
    explore step; the others keep theirs. Once a child has ended (diverged), the rounds go on among the others;
    with every child ended (the last step) there is none."""
    from types import SimpleNamespace

    config = PBTConfig(interval=1, quantile=0.25, explore_step=0.01, resample_probability=0.0)
    controller = PBTController(config=config, num_envs=4)
    copies = []
    controller.envs = SimpleNamespace(evaluator=SimpleNamespace(higher_is_better=False),
                                      copy_child=lambda source, target: copies.append((source, target)))  # fmt: skip
    controller.rng, controller.steps = np.random.default_rng(0), 0
    controller.values = np.array([0.05, -0.05, 0.1, 0.0])
    controller.running = np.ones(4, dtype=bool)
    errors = {"val_metric_discounted": np.array([0.3, 0.1, 0.5, 0.2])}  # child 1 is best, child 2 worst
    none = np.zeros(4, dtype=bool)
    assert controller.learn(None, None, None, None, none, errors)["pbt_round"] == 1.0
    assert copies == [(1, 2)] and abs(controller.values[2] - (-0.05)) == pytest.approx(0.01)
    np.testing.assert_array_equal(controller.values[[0, 1, 3]], [0.05, -0.05, 0.0])
    # Child 1, the best, ends: among children 0, 2 and 3 (one each way), 3 is the best and 2 the worst.
    assert controller.learn(None, None, None, None, np.array([False, True, False, False]), errors)["pbt_round"] == 1.0
    assert copies == [(1, 2), (3, 2)]
    errors = {"val_metric_discounted": np.array([0.9, 0.1, 0.0, 0.2])}  # child 2, now the best, copies nobody
    assert controller.learn(None, None, None, None, none, errors)["pbt_round"] == 1.0
    assert copies == [(1, 2), (3, 2), (2, 0)]  # the ended child 1, best by its stale metric, takes no part
    assert "pbt_round" not in controller.learn(None, None, None, None, np.ones(4, dtype=bool), errors)
    assert copies == [(1, 2), (3, 2), (2, 0)]


def test_a_resampled_child_draws_a_fresh_value_from_the_initial_range() -> None:
    """With ``resample_probability`` 1 the bottom child takes the top child's weights but not its loss value:
    it draws one from ``initial_range``, far here from the source's value and from one explore step around it."""
    from types import SimpleNamespace

    config = PBTConfig(interval=1, quantile=0.25, resample_probability=1.0, initial_range=(0.05, 0.06))
    controller = PBTController(config=config, num_envs=4)
    copies = []
    controller.envs = SimpleNamespace(evaluator=SimpleNamespace(higher_is_better=False),
                                      copy_child=lambda source, target: copies.append((source, target)))  # fmt: skip
    controller.rng, controller.steps = np.random.default_rng(0), 0
    controller.values = np.array([0.0, -0.15, 0.1, -0.1])
    controller.running = np.ones(4, dtype=bool)
    controller.learn(None, None, None, None, np.zeros(4, dtype=bool), {"val_metric_discounted": np.array([0.3, 0.1, 0.5, 0.2])})
    assert copies == [(1, 2)] and 0.05 <= controller.values[2] <= 0.06
    np.testing.assert_array_equal(controller.values[[0, 1, 3]], [0.0, -0.15, -0.1])


def test_pbt_refuses_a_vector_env_that_cannot_copy_a_child_before_any_step() -> None:
    """Only the native vector env copies one child into another (the Ray backend's cannot): another one is
    refused by name at the start of the run, with the env to use."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    envs.step = lambda actions: pytest.fail("stepped an env PBT cannot run")
    with pytest.raises(ValueError, match="SyncVectorEnv cannot copy one child's state into another: use the native vector env"):
        PBTController(num_envs=2).run(envs, seed=0)
    envs.close()


def test_rounds_replace_the_rounded_quantile_and_explore_within_the_bounds() -> None:
    """A quarter of 6 children is 1.5: two are replaced, by two of the top ones. An explore step that would
    leave ``bounds`` stops at the bound; a higher-is-better metric ranks the other way round."""
    from types import SimpleNamespace

    config = PBTConfig(interval=1, quantile=0.25, explore_step=0.5, resample_probability=0.0, bounds=(-0.2, 0.2))
    controller = PBTController(config=config, num_envs=6)
    copies = []
    evaluator = SimpleNamespace(higher_is_better=True)
    controller_envs = SimpleNamespace(evaluator=evaluator, copy_child=lambda source, target: copies.append((source, target)))
    controller.envs, controller.rng, controller.steps = controller_envs, np.random.default_rng(0), 0
    controller.values = np.full(6, 0.15)
    controller.running = np.ones(6, dtype=bool)
    recall = {"val_metric_discounted": np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.4])}
    controller.learn(None, None, None, None, np.zeros(6, dtype=bool), recall)
    assert sorted(target for _, target in copies) == [1, 3] and {source for source, _ in copies} <= {0, 2}
    assert set(controller.values[[1, 3]]) <= {-0.2, 0.2}  # 0.15 -+ 0.5, kept in the bounds
    # Half of 3 children rounds to 2, which would put the median child in both groups: one is replaced, by the best.
    controller = PBTController(config=replace(config, quantile=0.5), num_envs=3)
    copies.clear()
    controller.envs, controller.rng, controller.steps = controller_envs, np.random.default_rng(6), 0
    controller.values, controller.running = np.full(3, 0.15), np.ones(3, dtype=bool)
    controller.learn(None, None, None, None, np.zeros(3, dtype=bool), {"val_metric_discounted": np.array([0.9, 0.5, 0.1])})
    assert copies == [(0, 2)]


def test_the_initial_values_are_drawn_from_the_run_seed() -> None:
    from types import SimpleNamespace

    def initial_values(seed: int) -> np.ndarray:
        controller = PBTController(num_envs=4)
        envs = SimpleNamespace(num_envs=4, unwrapped=SimpleNamespace(copy_child=None))
        controller.begin(envs, seed)
        controller.begin_episode(envs)
        return controller.values

    np.testing.assert_array_equal(initial_values(3), initial_values(3))
    assert not np.array_equal(initial_values(3), initial_values(4))
    assert np.all((-0.1 <= initial_values(3)) & (initial_values(3) <= 0.1))


def _direct_controller(config: PBTConfig, values: list[float]) -> tuple[PBTController, list[tuple[int, int]]]:
    """A controller with its population's values set and a stand-in env that notes each copy (lower is better)."""
    from types import SimpleNamespace

    controller = PBTController(config=config, num_envs=len(values))
    copies: list[tuple[int, int]] = []
    controller.envs = SimpleNamespace(evaluator=SimpleNamespace(higher_is_better=False),
                                      copy_child=lambda source, target: copies.append((source, target)))  # fmt: skip
    controller.rng, controller.steps = np.random.default_rng(0), 0
    controller.values = np.array(values, dtype=np.float64)
    controller.running = np.ones(len(values), dtype=bool)
    return controller, copies


def test_a_round_comes_every_interval_steps_and_logs_the_values_mean_and_spread() -> None:
    """With ``interval`` 3 the rounds fall on steps 3 and 6; every step logs the population's mean and standard
    deviation of ``u`` (before that step's round)."""
    controller, copies = _direct_controller(PBTConfig(interval=3, resample_probability=0.0), [0.05, -0.05, 0.1, 0.0])
    errors = {"val_metric_discounted": np.array([0.3, 0.1, 0.5, 0.2])}
    rounds = []
    for _ in range(6):
        values = controller.values.copy()
        logs = controller.learn(None, None, None, None, np.zeros(4, dtype=bool), errors)
        rounds.append("pbt_round" in logs)
        assert logs["pbt_value_mean"] == pytest.approx(values.mean()) and logs["pbt_value_std"] == pytest.approx(values.std())
    assert rounds == [False, False, True, False, False, True] and len(copies) == 2


def test_a_quantile_that_rounds_to_no_child_still_replaces_one() -> None:
    """A tenth of 4 children rounds to 0: one child, the worst, is still replaced by the best."""
    controller, copies = _direct_controller(PBTConfig(interval=1, quantile=0.1), [0.05, -0.05, 0.1, 0.0])
    controller.learn(None, None, None, None, np.zeros(4, dtype=bool), {"val_metric_discounted": np.array([0.3, 0.1, 0.5, 0.2])})
    assert copies == [(1, 2)]


def test_explore_moves_the_value_up_or_down_by_one_step() -> None:
    """Without resampling, an explored value is the source's plus or minus ``explore_step``, both directions
    drawn (each with probability 1/2)."""
    controller, _ = _direct_controller(PBTConfig(explore_step=0.01, resample_probability=0.0), [0.0, 0.0])
    moves = [round(controller._explore(0.05) - 0.05, 12) for _ in range(2000)]
    assert set(moves) == {-0.01, 0.01}
    # Up in half of them: 1000 +- 22 (one standard deviation); 90 is beyond four of them.
    assert abs(moves.count(0.01) - 1000) < 90
