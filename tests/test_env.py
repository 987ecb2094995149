"""The registered ALA environments, registry-wide: API conformance, determinism, pickling, edge cases."""

from __future__ import annotations

import importlib
import math
import pickle
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import FlattenObservation
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ala_gym

ENV_IDS = sorted(ala_gym.ENV_IDS)
TINY = dict(total_iterations=6, steps_per_action=3, batch_size=16, eval_points=2, eval_stride=1, val_subsample=None, device="cpu")
METRIC_TINY = dict(samples_per_class=4)  # 4 classes x 4 samples: the tiny datasets hold 8-16 images a class


def _is_metric_learning(env_id: str) -> bool:
    return "-Triplet-" in env_id or "-Margin-" in env_id


def _expected_phi_shape(env_id: str) -> tuple[int, ...]:
    """Eq. 6's C x C Phi, Eq. 9's 10 mixture weights (triplet framework), Eq. 10's 2 focal scales (margin)."""
    return (10,) if "-Triplet-" in env_id else (2,) if "-Margin-" in env_id else (10, 10)


@pytest.fixture
def make(tiny_cifar_dir: Path, tiny_fashion_mnist_dir: Path):
    """``make(env_id, **overrides)``: the registered env on tiny data with a tiny budget."""
    data = {  # by id prefix: every twin of a dataset (AUCPR, metric learning) reads the same data
        "ALA-CIFAR10-": dict(data_root=str(tiny_cifar_dir), val_size=20),
        "ALA-FashionMNIST-": dict(data_root=str(tiny_fashion_mnist_dir), val_size=40),
        "ALA-Digits-": {},
        "ALA-Classification-": {},  # the generic id's default data: digits
    }

    def factory(env_id: str, **overrides) -> gym.Env:
        (dataset,) = (kwargs for prefix, kwargs in data.items() if env_id.startswith(prefix))
        metric = METRIC_TINY if _is_metric_learning(env_id) else {}
        return gym.make(env_id, disable_env_checker=True, **{**TINY, **dataset, **metric, **overrides})

    return factory


def _rollout(env: gym.Env, seed: int) -> list:
    """Observations, rewards and scalar info values of a full episode from ``reset(seed=seed)``.

    The actions come from a fixed seed, so rollouts differ only through the env's own seeding.
    """
    obs, info = env.reset(seed=seed)
    env.action_space.seed(0)
    trace = [obs, _scalars(info)]
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        trace += [obs, reward, terminated, truncated, _scalars(info)]
    return trace


def _scalars(info: dict) -> dict:
    return {k: v for k, v in info.items() if np.isscalar(v)}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _same_trace(a: list, b: list) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env(make, env_id: str) -> None:
    env = make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_check_env(make, env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(FlattenObservation(make(env_id)), warn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The observation is a (n_pairs, features) Box; SB3 recommends flattening any 2-D Box it would
        # not read as an image ("unconventional shape"). That single recommendation is expected here;
        # FlattenObservation (checked above) is the answer for SB3 policies.
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")
        sb3_check_env(make(env_id).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rollout_contract(make, env_id: str) -> None:
    env = make(env_id, total_iterations=7, steps_per_action=3)
    n_classes = env.unwrapped.num_classes
    phi_shape = _expected_phi_shape(env_id)
    rows = phi_shape[0] if len(phi_shape) == 1 else n_classes * (n_classes + 1) // 2  # a parameter or a class pair
    assert env.action_space.shape == (rows,) and n_classes == 10
    assert env.observation_space.shape == (rows, 24)
    assert np.all(np.isfinite(env.observation_space.low)) and np.all(np.isfinite(env.observation_space.high))
    # The last two columns: the row's value within the task's bounds, then progress in [0, 1].
    bounds = env.unwrapped.episode.task.bounds
    np.testing.assert_array_equal(env.observation_space.low[:, -2:], np.tile([bounds[0], 0.0], (rows, 1)).astype(np.float32))
    np.testing.assert_array_equal(env.observation_space.high[:, -2:], np.tile([bounds[1], 1.0], (rows, 1)).astype(np.float32))
    obs, info = env.reset(seed=0)
    observations, infos = [obs], [info]
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not truncated and reward in (-1.0, 0.0, 1.0)
        observations.append(obs)
        infos.append(info)
    assert len(observations) - 1 == math.ceil(7 / 3)  # the last step is shorter
    for obs in observations:
        assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    for info in infos:
        assert {"val_metric", "val_loss", "train_loss", "iteration", "phi", "diverged"} <= info.keys()
        assert info["phi"].shape == phi_shape and not info["diverged"]
    assert [info["iteration"] for info in infos] == [0, 3, 6, 7]
    assert "test_metric" in infos[-1] and 0.0 <= infos[-1]["test_metric"] <= 1.0
    # The NLL on the full validation split, measured once more by the env: the same model, the same number.
    assert infos[-1]["final_val_loss"] == env.unwrapped.evaluate_split("val").loss > 0
    assert all("test_metric" not in info and "final_val_loss" not in info for info in infos[:-1])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_determinism(make, env_id: str) -> None:
    first, second, other = (_rollout(make(env_id), seed) for seed in (3, 3, 4))
    assert _same_trace(first, second)
    assert not _same_trace(first, other)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_mid_episode(make, env_id: str) -> None:
    env = make(env_id, total_iterations=9).unwrapped
    env.reset(seed=5)
    env.step(np.full(env.action_space.shape, 2))
    clone = pickle.loads(pickle.dumps(env))
    action = np.random.default_rng(0).integers(0, 3, env.action_space.shape)
    for _ in range(2):
        original, copied = env.step(action), clone.step(action)
        assert _same(original[0], copied[0]) and original[1:4] == copied[1:4]
        assert _same(_scalars(original[4]), _scalars(copied[4]))
        np.testing.assert_array_equal(original[4]["phi"], copied[4]["phi"])


def test_global_rng_untouched(make, global_rng_unchanged) -> None:
    with global_rng_unchanged():
        env = make("ALA-Digits-v0")
        env.reset(seed=0)
        env.step(np.ones(55, dtype=np.int64))
        env.reset(seed=1)


@pytest.mark.parametrize(
    "action",
    [np.ones(54, dtype=np.int64), np.ones((55, 1), dtype=np.int64), np.full(55, 3), np.full(55, -1), np.full(55, 0.5), "up"],
    ids=["short", "2d", "three", "negative", "half", "string"],
)
def test_invalid_actions_raise(make, action) -> None:
    env = make("ALA-Digits-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_step_before_reset_raises(make) -> None:
    with pytest.raises(RuntimeError, match="reset"):
        make("ALA-Digits-v0").unwrapped.step(np.ones(55, dtype=np.int64))


@pytest.mark.parametrize(
    "phi_init", [np.eye(10) * 1.5, np.eye(10) + np.triu(np.full((10, 10), 0.2), 1), np.eye(3)], ids=["range", "asym", "shape"]
)
def test_bad_phi_init_raises(make, phi_init: np.ndarray) -> None:
    with pytest.raises(ValueError, match="Phi"):
        make("ALA-Digits-v0", phi_init=phi_init)


def test_phi_symmetric_and_clipped(make) -> None:
    # The paper's literal steps: beta per entry, diagonal free (it starts at its bound 1).
    env = make(
        "ALA-Digits-v0", total_iterations=60, steps_per_action=1, eval_points=1, fixed_diagonal=False, step_scaling="entry"
    ).unwrapped
    env.reset(seed=0)
    up = np.full(55, 2)
    for step in range(12):
        obs, *_, info = env.step(up)
        phi = info["phi"]
        np.testing.assert_array_equal(phi, phi.T)
        expected_off = min(0.1 * (step + 1), 1.0)
        np.testing.assert_allclose(phi[0, 1], expected_off, atol=1e-9)
        # The child trains under the Phi the info reports, not merely one recorded beside it.
        np.testing.assert_array_equal(env.episode.loss.phi.cpu().numpy(), phi.astype(np.float32))
    assert np.all(phi == 1.0) and np.all(obs[:, 22] == 1.0)
    np.testing.assert_array_equal(env.phi, phi)


def test_phi_setter_validates(make) -> None:
    env = make("ALA-Digits-v0").unwrapped
    env.reset(seed=0)
    target = np.full((10, 10), -0.3)
    env.phi = target
    np.testing.assert_allclose(env.phi, target)
    with pytest.raises(ValueError, match=r"Phi entries must lie in \[-1.0, 1.0\]"):
        env.phi = np.full((10, 10), 2.0)
    for not_numbers in ("eye", [[1.0, 0.0], [0.0]]):  # a string, a ragged list: named, not numpy's message
        with pytest.raises(ValueError, match="Phi must be a 10 x 10 array of numbers"):
            env.phi = not_numbers
    np.testing.assert_allclose(env.phi, target)  # a refused value changes nothing


def test_raw_reward_is_metric_difference(make) -> None:
    env = make("ALA-Digits-v0", reward="raw", metric="nll", total_iterations=12).unwrapped
    _, info = env.reset(seed=1)
    previous = info["val_metric_discounted"]
    terminated = False
    while not terminated:
        _, reward, terminated, _, info = env.step(np.ones(55, dtype=np.int64))
        assert reward == pytest.approx(previous - info["val_metric_discounted"], abs=1e-12)
        assert reward != 0.0
        previous = info["val_metric_discounted"]


def test_sign_reward_matches_raw(make) -> None:
    action = np.ones(55, dtype=np.int64)
    raw, sign = (make("ALA-Digits-v0", reward=kind, metric="nll") for kind in ("raw", "sign"))
    raw.reset(seed=2)
    sign.reset(seed=2)
    for _ in range(2):
        assert sign.step(action)[1] == np.sign(raw.step(action)[1])


def test_accuracy_rewards_have_the_signs_of_error_rewards(make) -> None:
    # accuracy = 1 - error, higher is better: the same seed and actions give the same reward signs,
    # the same per-pair credit, and rewards that are not all zero (so the direction is exercised).
    envs = {metric: make("ALA-Digits-v0", metric=metric, total_iterations=12) for metric in ("error", "accuracy")}
    for env in envs.values():
        env.reset(seed=3)
    actions = np.random.default_rng(0).integers(0, 3, (4, 55))
    rewards = {metric: [] for metric in envs}
    for action in actions:
        steps = {metric: env.step(action) for metric, env in envs.items()}
        for metric, step in steps.items():
            rewards[metric].append(step[1])
        # the metrics are float32 on the device: equal up to its rounding, so the credit up to that too
        credit = {metric: step[4]["row_improvement"] for metric, step in steps.items()}
        np.testing.assert_allclose(credit["accuracy"], credit["error"], atol=1e-6)
        assert steps["accuracy"][4]["val_metric"] == pytest.approx(1.0 - steps["error"][4]["val_metric"], abs=1e-6)
        if steps["error"][2]:
            break
    assert rewards["accuracy"] == rewards["error"]
    assert any(reward != 0.0 for reward in rewards["error"])


def test_aucpr_rewards_are_increases_of_the_discounted_aucpr(make) -> None:
    # Higher AUCPR is better: the raw reward is M_{t+1} - M_t (the sign of Eq. 5 flipped), and training from
    # a random initialisation raises the AUCPR, so the first rewards are positive.
    env = make("ALA-Digits-AUCPR-v0", reward="raw", total_iterations=40, steps_per_action=10, lr=0.1).unwrapped
    assert env.metric == "aucpr"
    _, info = env.reset(seed=1)
    previous, rewards, terminated = info["val_metric_discounted"], [], False
    while not terminated:
        _, reward, terminated, _, info = env.step(np.ones(55, dtype=np.int64))
        assert reward == pytest.approx(info["val_metric_discounted"] - previous, abs=1e-12)
        previous = info["val_metric_discounted"]
        rewards.append(reward)
    assert rewards[0] > 0 and sum(rewards) > 0
    assert info["val_metric"] > 0.5 and 0.5 < info["test_metric"] <= 1.0


def test_aucpr_on_a_validation_subsample_of_one_class_is_refused(make) -> None:
    """The macro AUCPR over the classes present is 1 on items of one class, whatever the model: every reward 0."""
    with pytest.raises(ValueError, match=r"^AUCPR on the validation subsample \(1 item\(s\) of one class\) is 1 whatever"):
        make("ALA-Digits-AUCPR-v0", val_size=1)
    make("ALA-Digits-v0", val_size=1)  # an error rate still measures something there


@pytest.mark.parametrize("loss_form", ["linear", "sigmoid", "cross_entropy"])
def test_loss_forms(make, loss_form: str) -> None:
    env = make("ALA-Digits-v0", loss_form=loss_form)
    env.reset(seed=0)
    losses = [env.step(np.ones(55, dtype=np.int64))[4]["train_loss"] for _ in range(2)]
    if loss_form == "sigmoid":
        # At Phi = I: -sigmoid(log p_y) = -p_y / (1 + p_y), in (-1/2, 0); other Phi reach below -1/2.
        assert all(-0.5 < loss < 0.0 for loss in losses)
    else:
        assert all(0.0 < loss < 10.0 for loss in losses)  # cross-entropy, Phi = I or ignored
    with pytest.raises(ValueError, match="loss_form"):
        make("ALA-Digits-v0", loss_form="quadratic")
    # Off the identity the forms part: cross-entropy ignores Phi, the linear form reads it.
    smoothed = make("ALA-Digits-v0", loss_form=loss_form, phi_init=np.eye(10) + 0.3 * (1 - np.eye(10))).unwrapped
    smoothed.reset(seed=0)
    logits, labels = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.isclose(smoothed.episode.loss(logits, labels), plain) == (loss_form == "cross_entropy")


def test_divergence_terminates_with_penalty(make) -> None:
    phi = np.where(np.eye(10) > 0, 1.0, -1.0)  # linear form: rewards pushing wrong classes to -inf
    env = make("ALA-Digits-v0", phi_init=phi, lr=1e4, total_iterations=300, steps_per_action=50, divergence_penalty=-7.0)
    env.reset(seed=0)
    terminated, steps = False, 0
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(np.ones(55, dtype=np.int64))
        steps += 1
    assert info["diverged"] and reward == -7.0 and steps < 6
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
    assert "test_metric" in info


def test_registration_is_idempotent() -> None:
    before = {env_id: gym.spec(env_id) for env_id in ENV_IDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering would warn "Overriding environment"
        importlib.reload(ala_gym)
        import ala_gym as again  # noqa: F401
    for env_id in ENV_IDS:
        assert gym.spec(env_id).entry_point == before[env_id].entry_point


def _threads_after_set_threads(queue, num_threads) -> None:
    import torch

    from ala_gym.envs.base import set_threads

    torch.set_num_threads(2)
    set_threads(num_threads)
    queue.put(torch.get_num_threads())


def test_a_multiprocessing_worker_trains_on_one_thread_unless_told_otherwise() -> None:
    """Async vector envs run each child in a worker process: there ``num_threads=None`` means 1 thread (N workers
    would otherwise each take every core); a number given is kept; in the main process None changes nothing."""
    import multiprocessing

    import torch

    from ala_gym.envs.base import set_threads

    context = multiprocessing.get_context("spawn")
    seen = []
    for num_threads in (None, 2):
        queue = context.Queue()
        worker = context.Process(target=_threads_after_set_threads, args=(queue, num_threads))
        worker.start()
        seen.append(queue.get(timeout=120))
        worker.join(30)
    assert seen == [1, 2]
    before = torch.get_num_threads()
    set_threads(None)
    assert torch.get_num_threads() == before
