"""The vector envs (native: sequential and batched paths; Ray: the same contract through the ``make_vec``
fixture), make_vec modes, and the SB3 adapter.

Seeds: ``ALAVectorEnv.reset(seed=s)`` seeds child ``i`` as ``single.reset(seed=s + i)``; later
autoresets continue each child's own generator, as ``single.reset()`` without a seed does.

Tolerances: the sequential path is compared bit for bit with single envs. The batched (vmapped) path
uses other kernels, so it is compared to the sequential path with ``atol=1e-4`` on observations, raw
rewards and losses, and test/validation error rates within one image.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import ala_gym
from ala_gym.core.batched import BatchedTrainer, default_train_mode
from ala_gym.core.data import load_dataset
from ala_gym.core.losses import PhiLoss
from ala_gym.core.trainer import ChildTrainer, TrainConfig
from ala_gym.envs.vector import ALAVectorEnv
from ala_gym.wrappers.sb3 import SB3VecEnv

ENV_ID = "ALA-Digits-v0"
TINY = dict(total_iterations=40, steps_per_action=10, eval_points=2, eval_stride=2, device="cpu", reward="raw")
N_PAIRS = 55
STEPS = 4  # 40 iterations / K = 10
ATOL = 1e-4
ONE_IMAGE = 1 / 360 + 1e-9  # digits' validation and test splits hold 360 images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def action_plan(num_envs: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=(steps, num_envs, N_PAIRS))


def run_vector(envs, actions: np.ndarray, seed: int) -> dict[str, list]:
    observation, info = envs.reset(seed=seed)
    out = {"obs": [observation], "rewards": [], "terminated": [], "infos": [info]}
    for action in actions:
        observation, reward, terminated, truncated, info = envs.step(action)
        out["obs"].append(observation)
        out["rewards"].append(reward)
        out["terminated"].append(terminated)
        out["infos"].append(info)
    return out


def test_every_id_has_a_vector_entry_point_and_reregistering_is_harmless() -> None:
    importlib.reload(ala_gym)
    for env_id in ala_gym.ENV_IDS:
        assert gym.spec(env_id).vector_entry_point is not None
    envs = gym.make_vec(ENV_ID, num_envs=2, **TINY)
    assert isinstance(envs, ALAVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.observation_space.shape == (2, N_PAIRS, 24) and envs.action_space.shape == (2, N_PAIRS)


def test_an_env_spec_round_trips_through_json_and_makes_the_same_vector_env(tmp_path: Path) -> None:
    """Gymnasium serialises only strings: every id's spec, the single env's and the vector env's (an id of
    one's own too), writes to JSON, and the spec read back makes the package's vector env and the same env."""
    from gymnasium.envs.registration import EnvSpec

    ala_gym.register_env("Own-Json-v0", dict(dataset="digits", model="mlp", **TINY))
    try:
        for env_id in [*ala_gym.ENV_IDS, "Own-Json-v0"]:
            assert EnvSpec.from_json(gym.spec(env_id).to_json()) == gym.spec(env_id)
        single = gym.make(ENV_ID, **TINY)
        back = EnvSpec.from_json(single.spec.to_json())
        first = single.reset(seed=3)[0]
        np.testing.assert_array_equal(gym.make(back).reset(seed=3)[0], first)
        envs = gym.make_vec(EnvSpec.from_json(gym.spec("Own-Json-v0").to_json()), num_envs=2)
        assert isinstance(envs.unwrapped, ALAVectorEnv) and envs.spec.id == "Own-Json-v0"
        np.testing.assert_array_equal(envs.reset(seed=3)[0][0], first)
        json.loads(envs.spec.to_json())
    finally:
        del gym.registry["Own-Json-v0"]
    from ala_gym import vector_entry_points

    with pytest.raises(AttributeError, match="has no attribute 'No-Such-v0'"):
        vector_entry_points.__getattr__("No-Such-v0")


@pytest.mark.parametrize(
    "results", ["throughput.json", "throughput-mlp/throughput.json", "throughput-mlp-epyc/throughput.json"]
)
def test_auto_train_mode_is_the_faster_path_in_the_committed_cpu_measurements(results: str) -> None:
    """The CPU choice of ``train_mode="auto"`` must agree with what ``benchmarks/throughput.py`` measured."""
    from ala_gym.benchmarks.throughput import fastest_native_mode

    report = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / results).read_text())
    assert report["args"]["device"] == "cpu"
    for model in report["args"]["models"]:
        largest = max(report["args"]["num_envs"])
        chosen = default_train_mode(torch.device("cpu"), model, largest)
        assert f"native-{chosen}" == fastest_native_mode(report, model), model
        assert default_train_mode(torch.device("cpu"), model, 1) == "sequential"


def test_on_a_gpu_every_package_model_batches_and_a_users_model_or_one_child_does_not() -> None:
    cuda = torch.device("cuda")  # only a device object: nothing runs on it
    assert [default_train_mode(cuda, model, 4) for model in ("mlp", "small_cnn", "resnet32")] == ["batched"] * 3
    assert default_train_mode(cuda, "resnet32", 1) == "sequential"
    assert default_train_mode(cuda, lambda shape, classes: torch.nn.Linear(1, classes), 4) == "sequential"


def test_sequential_vector_env_equals_single_envs_bit_for_bit(make_vec) -> None:
    """Child i of reset(seed=s) is the single env reset with s + i, through an episode and its autoreset
    (on Ray: children on two actors)."""
    num_envs, seed = 3, 11
    actions = action_plan(num_envs, STEPS + 2)
    vector = run_vector(make_vec(ENV_ID, num_envs, train_mode="sequential", **TINY), actions, seed)
    assert vector["terminated"][STEPS - 1].all() and not vector["terminated"][STEPS - 2].any()
    for child in range(num_envs):
        env = gym.make(ENV_ID, **TINY)
        observation, _ = env.reset(seed=seed + child)
        np.testing.assert_array_equal(vector["obs"][0][child], observation)
        for t in range(STEPS):
            observation, reward, terminated, _, info = env.step(actions[t, child])
            np.testing.assert_array_equal(vector["obs"][t + 1][child], observation)
            assert vector["rewards"][t][child] == reward
            assert vector["infos"][t + 1]["val_metric"][child] == info["val_metric"]
        assert terminated
        assert vector["infos"][STEPS]["test_metric"][child] == info["test_metric"]
        assert vector["infos"][STEPS]["final_val_metric"][child] == info["final_val_metric"]
        assert vector["infos"][STEPS]["final_val_loss"][child] == info["final_val_loss"]
        # NEXT_STEP: the vector's step after the end is the child's reset (no seed: its generator goes on).
        observation, _ = env.reset()
        np.testing.assert_array_equal(vector["obs"][STEPS + 1][child], observation)
        observation, reward, *_ = env.step(actions[STEPS + 1, child])
        np.testing.assert_array_equal(vector["obs"][STEPS + 2][child], observation)
        assert vector["rewards"][STEPS + 1][child] == reward
    # Different seeds give different children.
    assert not np.array_equal(vector["obs"][1][0], vector["obs"][1][1])


@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_batched_children_are_what_the_docstring_promises(model: str) -> None:
    """Batched child i vs ``single.reset(seed=s + i)``: reset and (for the MLP and the small CNN) first step agree
    to float tolerance, Phi follows the actions exactly at every step, and a batched run repeats itself bit for
    bit (later metrics may drift apart from the single env's: another float order of a chaotic process)."""
    num_envs, seed, kwargs = 2, 7, {**TINY, "model": model}
    actions = action_plan(num_envs, STEPS, seed=3)
    batched = [run_vector(gym.make_vec(ENV_ID, num_envs=num_envs, train_mode="batched", **kwargs), actions, seed)
               for _ in range(2)]
    for key in ("obs", "rewards"):
        np.testing.assert_array_equal(np.array(batched[0][key]), np.array(batched[1][key]))
    for child in range(num_envs):
        env = gym.make(ENV_ID, **kwargs)
        observation, _ = env.reset(seed=seed + child)
        np.testing.assert_allclose(batched[0]["obs"][0][child], observation, rtol=0, atol=ATOL)
        for t in range(STEPS):
            observation, _, _, _, info = env.step(actions[t, child])
            np.testing.assert_array_equal(batched[0]["infos"][t + 1]["phi"][child], info["phi"])
            if t == 0:
                np.testing.assert_allclose(batched[0]["obs"][1][child], observation, rtol=0, atol=ATOL)
                assert batched[0]["infos"][1]["train_loss"][child] == pytest.approx(info["train_loss"], abs=ATOL)


def test_batched_path_matches_sequential_path() -> None:
    num_envs, seed = 3, 5
    actions = action_plan(num_envs, STEPS + 2, seed=1)
    runs = {
        mode: run_vector(gym.make_vec(ENV_ID, num_envs=num_envs, train_mode=mode, **TINY), actions, seed)
        for mode in ("sequential", "batched")
    }
    seq, bat = runs["sequential"], runs["batched"]
    np.testing.assert_allclose(np.array(bat["obs"]), np.array(seq["obs"]), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.array(bat["rewards"]), np.array(seq["rewards"]), rtol=0, atol=ATOL)
    assert np.array_equal(np.array(bat["terminated"]), np.array(seq["terminated"]))
    for key in ("train_loss", "val_loss"):
        for info_b, info_s in zip(bat["infos"][1:], seq["infos"][1:]):
            np.testing.assert_allclose(info_b[key], info_s[key], rtol=0, atol=ATOL)
    for key in ("test_metric", "final_val_metric"):
        np.testing.assert_allclose(bat["infos"][STEPS][key], seq["infos"][STEPS][key], rtol=0, atol=ONE_IMAGE)


def test_batched_trainer_keeps_per_child_batchnorm_stats_and_masks_inactive_children(tiny_cifar_dir) -> None:
    """ResNet (BatchNorm) children under vmap: weights, running statistics and momentum match ChildTrainer."""
    data = load_dataset("cifar10", data_root=tiny_cifar_dir, download=False, val_size=20)
    config = TrainConfig(model="resnet20", total_iterations=10, batch_size=8, lr=0.05)
    seeds = [3, 4]
    batched = BatchedTrainer(data, config, seeds)
    singles = [ChildTrainer(data, config, s) for s in seeds]
    phi = torch.eye(10)
    phis = torch.stack([phi, phi])
    losses = singles[0].train_step(lambda logits, labels: -(phi[labels] * logits.log_softmax(1)).sum(1).mean())
    batched_losses = batched.train_step(phis, np.array([True, False]), PhiLoss(phi))
    assert batched.iterations.tolist() == [1, 0]
    assert batched_losses[1] == 0
    torch.testing.assert_close(batched_losses[0], losses, rtol=0, atol=ATOL)
    for name, value in singles[0].model.state_dict().items():
        torch.testing.assert_close(batched.buffers.get(name, batched.params.get(name))[0].detach(), value, rtol=0, atol=ATOL)
    # The inactive child is untouched: weights and BatchNorm statistics still those of its initial model.
    for name, value in singles[1].model.state_dict().items():
        torch.testing.assert_close(batched.buffers.get(name, batched.params.get(name))[1].detach(), value, rtol=0, atol=0)
    assert not torch.equal(batched.buffers["bn.running_mean"][0], batched.buffers["bn.running_mean"][1])
    # Evaluation mode uses each child's own running statistics.
    evaluation = batched.evaluate(data.val, [0, 1])
    for child, single in enumerate(singles):
        np.testing.assert_allclose(evaluation[child].confusion, single.evaluate(data.val).confusion, atol=ATOL)


def test_batched_env_on_batchnorm_model_matches_sequential(tiny_cifar_dir) -> None:
    kwargs = dict(
        data_root=tiny_cifar_dir, download=False, val_size=20, model="resnet20", batch_size=8,
        total_iterations=4, steps_per_action=2, eval_points=1, device="cpu", reward="raw",
    )
    actions = action_plan(2, 2, seed=2)
    runs = [run_vector(gym.make_vec("ALA-CIFAR10-v0", num_envs=2, train_mode=m, **kwargs), actions, 0) for m in ("sequential", "batched")]
    # Reset: the same to float tolerance. After two steps of BatchNorm training in another float order the
    # confusion statistics (up to 10) differ by up to about 5e-4: the drift the vector env's docstring describes.
    np.testing.assert_allclose(runs[1]["obs"][0], runs[0]["obs"][0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.array(runs[1]["obs"]), np.array(runs[0]["obs"]), rtol=0, atol=2e-3)
    np.testing.assert_allclose(np.array(runs[1]["rewards"]), np.array(runs[0]["rewards"]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("train_mode", ["sequential", "batched"])
def test_autoreset_next_step_masks_and_final_metrics(make_vec, train_mode: str) -> None:
    envs = make_vec(ENV_ID, 2, train_mode=train_mode, max_episode_steps=2, **TINY)
    actions = np.ones((2, N_PAIRS), dtype=np.int64)
    envs.reset(seed=0)
    _, _, terminated, truncated, info = envs.step(actions)
    assert not terminated.any() and not truncated.any()
    assert "test_metric" not in info  # no child finished: the key is absent
    observation, reward, terminated, truncated, info = envs.step(actions)
    assert truncated.all() and not terminated.any()  # max_episode_steps=2 < 4 steps of budget
    # Truncated, not finished: no final metrics (as in the single env under gym.make(max_episode_steps=...)).
    assert "test_metric" not in info and "final_val_metric" not in info and info["episode_step"].tolist() == [2, 2]
    assert np.all(observation[:, :, -1] == 0.5)  # progress 20 / 40
    # NEXT_STEP: this step resets both children; actions are ignored, reward 0, not done.
    observation, reward, terminated, truncated, info = envs.step(np.zeros((2, N_PAIRS), dtype=np.int64))
    assert reward.tolist() == [0.0, 0.0] and not terminated.any() and not truncated.any()
    assert np.all(observation[:, :, -1] == 0) and np.all(observation[:, :, -2] == np.eye(10)[np.triu_indices(10)])
    assert info["episode_step"].tolist() == [0, 0] and np.isnan(info["train_loss"]).all()
    _, _, _, _, info = envs.step(actions)
    assert info["episode_step"].tolist() == [1, 1]


def test_a_reset_after_an_ended_episode_starts_every_child_afresh(make_vec) -> None:
    """``reset()`` starts every child at step 0 whatever came before: a child whose episode ended (NEXT_STEP: due to
    reset at the next step) takes the first step of its new episode, not a reset, and the steps counted before the
    reset bring no early truncation. The same seed then gives the same episode again."""
    actions = action_plan(2, 2, seed=4)
    envs = make_vec(ENV_ID, 2, train_mode="sequential", max_episode_steps=2, **TINY)
    envs.reset(seed=5)
    first = [envs.step(action) for action in actions]
    assert first[-1][3].all()  # both truncated, due to reset at the next step
    envs.reset(seed=5)
    for t, action in enumerate(actions):
        observation, reward, terminated, truncated, info = envs.step(action)
        assert info["episode_step"].tolist() == [t + 1, t + 1] and not terminated.any()
        assert truncated.tolist() == [t == 1, t == 1]  # the second step of the new episode, not the fourth
        np.testing.assert_array_equal(observation, first[t][0])
        np.testing.assert_array_equal(reward, first[t][1])


def test_the_ignored_action_of_a_child_due_to_reset_is_not_checked(make_vec) -> None:
    """NEXT_STEP: the step after a child's episode ended resets it and ignores its action, so whatever a controller
    passes there is accepted (as Gymnasium's vector envs do); the next step checks every action again."""
    envs = make_vec(ENV_ID, 2, train_mode="sequential", max_episode_steps=1, **TINY)
    envs.reset(seed=0)
    assert envs.step(np.ones((2, N_PAIRS), dtype=np.int64))[3].all()
    _, reward, _, _, info = envs.step(np.full((2, N_PAIRS), 7))  # out of {0, 1, 2}: ignored
    assert reward.tolist() == [0.0, 0.0] and info["episode_step"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="0, 1, 2"):
        envs.step(np.full((2, N_PAIRS), 7))


def test_a_budget_that_ends_at_max_episode_steps_terminates_and_truncates_as_the_single_env_does() -> None:
    """When the training budget runs out at the very step that ``max_episode_steps`` cuts, the run is finished and
    cut at once: terminated, with its final metrics, and truncated, as Gymnasium's ``TimeLimit`` reports it for the
    single env under ``gym.make(..., max_episode_steps=...)``."""
    envs = gym.make_vec(ENV_ID, num_envs=2, train_mode="sequential", max_episode_steps=STEPS, **TINY)
    envs.reset(seed=0)
    for _ in range(STEPS):
        _, _, terminated, truncated, info = envs.step(np.ones((2, N_PAIRS), dtype=np.int64))
    assert terminated.tolist() == [True, True] and truncated.tolist() == [True, True]
    assert info["_test_metric"].tolist() == [True, True] and info["episode_step"].tolist() == [STEPS, STEPS]
    single = gym.make(ENV_ID, max_episode_steps=STEPS, **TINY)
    single.reset(seed=0)
    for _ in range(STEPS):
        *_, single_terminated, single_truncated, single_info = single.step(np.ones(N_PAIRS, dtype=np.int64))
    assert (single_terminated, single_truncated) == (True, True) and single_info["test_metric"] == info["test_metric"][0]


def test_an_integer_seed_seeds_the_vector_envs_own_generator() -> None:
    """``reset(seed=s)`` seeds ``envs.np_random`` with ``s`` as well (Gymnasium's ``VectorEnv`` convention), so that a
    controller drawing from it repeats itself."""
    envs = gym.make_vec(ENV_ID, num_envs=2, **TINY)
    envs.reset(seed=3)
    assert envs.np_random_seed == 3
    assert envs.np_random.random() == np.random.default_rng(3).random()


@pytest.mark.parametrize("train_mode", ["sequential", "batched"])
def test_divergence_terminates_only_that_child(train_mode: str) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=2, train_mode=train_mode, **TINY)
    envs.reset(seed=0)
    # Poison child 0's first-layer weights (no Phi diverges reliably within one short step on digits).
    with torch.no_grad():
        if train_mode == "batched":
            envs.unwrapped._children.params["fc1.weight"][0].fill_(float("inf"))
        else:
            envs.unwrapped._children.trainers[0].model.fc1.weight.fill_(float("inf"))
    envs.set_attr("phi", [np.eye(10), 0.5 * np.eye(10)])
    np.testing.assert_array_equal(envs.get_attr("phi")[1], 0.5 * np.eye(10))
    _, reward, terminated, truncated, info = envs.step(np.ones((2, N_PAIRS), dtype=np.int64))
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert reward[0] == -10.0 and reward[1] != -10.0
    assert info["diverged"].tolist() == [True, False]
    assert info["_test_metric"].tolist() == [True, False] and info["test_metric"][0] == 1.0  # all wrong
    # The diverged child stopped at the evaluation that found it broken, short of the step's K iterations.
    assert info["iteration"][0] < info["iteration"][1] == TINY["steps_per_action"]
    _, reward, terminated, _, info = envs.step(np.ones((2, N_PAIRS), dtype=np.int64))
    assert reward[0] == 0.0 and info["episode_step"].tolist() == [0, 2]  # child 0 reset, child 1 went on
    assert not info["diverged"].any()
    with pytest.raises(ValueError, match="copy only between children at the same point of training"):
        envs.unwrapped.copy_child(1, 0)


@pytest.mark.parametrize("train_mode", ["sequential", "batched"])
def test_each_childs_last_step_is_cut_to_its_own_remaining_budget(train_mode: str) -> None:
    """Children out of step (child 0 diverged and started again) each plan their step from their own iteration: with
    25 iterations and K = 10, child 1's third step trains the 5 left of its budget and ends there, while child 0,
    at its second step, trains a whole K."""
    envs = gym.make_vec(ENV_ID, num_envs=2, train_mode=train_mode, **{**TINY, "total_iterations": 25})
    envs.reset(seed=0)
    with torch.no_grad():  # child 0 diverges at its first evaluation, as in the test above
        if train_mode == "batched":
            envs.unwrapped._children.params["fc1.weight"][0].fill_(float("inf"))
        else:
            envs.unwrapped._children.trainers[0].model.fc1.weight.fill_(float("inf"))
    keep = np.ones((2, N_PAIRS), dtype=np.int64)
    assert envs.step(keep)[2].tolist() == [True, False]
    envs.step(keep)  # child 0 starts again at iteration 0; child 1 reaches 20
    _, _, terminated, truncated, info = envs.step(keep)
    assert info["iteration"].tolist() == [10, 25]
    assert terminated.tolist() == [False, True] and not truncated.any()


def test_bad_input_and_calls_out_of_order_are_refused(make_vec) -> None:
    """Each refusal is the env's own error (not a backend's wrapper of it), names what was wrong, and leaves the env
    as it was: no child to step or copy before the first ``reset()``, only ``"phi"`` to set, an attribute the
    children lack named beside those they have, actions, Phi, seeds and arguments out of range."""
    envs = make_vec(ENV_ID, 2, **TINY)
    with pytest.raises(RuntimeError, match=r"^call reset\(\) before step\(\)$"):
        envs.step(np.ones((2, N_PAIRS), dtype=np.int64))
    if hasattr(envs.unwrapped, "copy_child"):  # the native env's (Ray's cannot copy)
        with pytest.raises(RuntimeError, match=r"^call reset\(\) before copy_child\(\)$"):
            envs.unwrapped.copy_child(0, 1)
    with pytest.raises(ValueError, match=r"^only 'phi' can be set on the children, not 'lr'$"):
        envs.set_attr("lr", [0.1, 0.1])
    with pytest.raises(AttributeError) as missing:
        envs.get_attr("nosuch")
    message = str(missing.value)
    assert type(missing.value) is AttributeError and "'train_config'" in message
    assert message.startswith("the children have no attribute 'nosuch'; they have 'phi', 'movable_rows' and [")
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.ones((3, N_PAIRS), dtype=np.int64))
    with pytest.raises(ValueError, match="0, 1, 2"):
        envs.step(np.full((2, N_PAIRS), 5))
    phi_before = [np.array(phi) for phi in envs.get_attr("phi")]
    only_second_wrong = np.full((2, N_PAIRS), 2, dtype=np.int64)
    only_second_wrong[1, 0] = 5
    with pytest.raises(ValueError, match="0, 1, 2"):  # child 0's valid action is not applied before the refusal
        envs.step(only_second_wrong)
    for before, after in zip(phi_before, envs.get_attr("phi")):
        np.testing.assert_array_equal(after, before)
    with pytest.raises(ValueError, match="one value per child"):
        envs.set_attr("phi", [np.eye(10)])
    with pytest.raises(ValueError, match="symmetric"):
        envs.set_attr("phi", [np.eye(10), np.triu(np.ones((10, 10)))])
    envs.set_attr("phi", np.stack([np.eye(10), 0.5 * np.eye(10)]))  # one stacked array: a Phi per child
    np.testing.assert_array_equal(envs.get_attr("phi")[1], 0.5 * np.eye(10))
    with pytest.raises(ValueError, match="one value per child"):
        envs.set_attr("phi", np.stack([np.eye(10)] * 3))
    envs.set_attr("phi", (0.25 * np.eye(10)).tolist())  # one Phi as nested lists: for every child, as an array is
    for phi in envs.get_attr("phi"):
        np.testing.assert_array_equal(phi, 0.25 * np.eye(10))
    with pytest.raises(ValueError, match=r"^actions must have shape \(2, 55\) \(children x rows\), got a ragged sequence$"):
        envs.step([[1] * N_PAIRS, [1] * (N_PAIRS - 1)])
    with pytest.raises(ValueError, match="train_mode"):
        make_vec(ENV_ID, 2, train_mode="fast", **TINY)
    modes = r"AutoresetMode.NEXT_STEP or AutoresetMode.SAME_STEP \('NextStep' or 'SameStep'\)"
    with pytest.raises(ValueError, match=rf"^autoreset_mode must be {modes}, got AutoresetMode\.DISABLED$"):
        make_vec(ENV_ID, 2, autoreset_mode=AutoresetMode.DISABLED, **TINY)
    with pytest.raises(ValueError, match=rf"^autoreset_mode must be {modes}, got 'same_step'$"):
        make_vec(ENV_ID, 2, autoreset_mode="same_step", **TINY)
    with pytest.raises(ValueError, match=r"the vector env does not render \(render_mode must be None, got 'rgb_array'\)"):
        make_vec(ENV_ID, 2, render_mode="rgb_array", **TINY)
    make_vec(ENV_ID, 2, render_mode=None, **TINY).close()  # what gymnasium passes when nothing is asked
    with pytest.raises(ValueError, match=r"need one seed per child \(2\), got 3"):
        envs.reset(seed=[1, 2, 3])
    for child in (-1, 2) if hasattr(envs.unwrapped, "copy_child") else ():  # the native env's (Ray's cannot copy)
        with pytest.raises(ValueError, match=r"target must be a child index in \[0, 2\)"):
            envs.unwrapped.copy_child(0, child)
    with pytest.raises(ValueError, match="beta") as caught:  # a task keyword, checked where the children live
        make_vec(ENV_ID, 2, **{**TINY, "beta": -1.0})
    assert type(caught.value) is ValueError  # the task's own error, not a backend's wrapper of it
    # The failed calls changed nothing: the next step is a normal first step.
    _, _, _, _, info = envs.step(np.ones((2, N_PAIRS), dtype=np.int64))
    assert info["episode_step"].tolist() == [1, 1]


def test_batched_children_train_on_a_training_split_smaller_than_a_batch() -> None:
    """``train_size=100`` under the default batch of 128: every batch is the whole (reshuffled) split, in the
    batched path as in the sequential one, which it follows to float tolerance."""
    actions = action_plan(2, 4, seed=1)
    runs = {
        mode: run_vector(gym.make_vec(ENV_ID, num_envs=2, train_mode=mode, train_size=100, **TINY), actions, 4)
        for mode in ("batched", "sequential")
    }
    np.testing.assert_allclose(np.array(runs["batched"]["obs"]), np.array(runs["sequential"]["obs"]), rtol=0, atol=1e-4)


def test_make_vec_refuses_an_unknown_backend_by_naming_the_backends() -> None:
    """A backend that is neither the native env nor Ray's is refused with the two there are, before any env is made."""
    with pytest.raises(ValueError, match=r"^backend must be one of \['native', 'ray'\], got 'dask'$"):
        gym.make_vec(ENV_ID, num_envs=2, backend="dask", **TINY)


def test_a_ray_keyword_on_the_native_backend_is_told_to_ask_for_ray() -> None:
    """``children_per_worker`` and the other Ray keywords, given without ``backend="ray"``, say which backend takes
    them, where the env class would call them unknown keywords of its own."""
    with pytest.raises(TypeError, match=r'^children_per_worker is a keyword of the Ray vector env: pass backend="ray"'):
        gym.make_vec(ENV_ID, num_envs=2, children_per_worker=2, **TINY)
    with pytest.raises(TypeError, match=r"^children_per_worker, address are keywords of the Ray vector env: .*them out$"):
        gym.make_vec(ENV_ID, num_envs=2, backend="native", address="auto", children_per_worker=2, **TINY)


def test_sync_and_async_make_vec_on_the_single_env_match_the_native_env() -> None:
    actions = action_plan(2, 2, seed=3)
    native = run_vector(gym.make_vec(ENV_ID, num_envs=2, train_mode="sequential", **TINY), actions, 4)
    sync = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync", **TINY)
    sync_run = run_vector(sync, actions, 4)
    np.testing.assert_array_equal(np.array(sync_run["obs"]), np.array(native["obs"]))
    np.testing.assert_array_equal(np.array(sync_run["rewards"]), np.array(native["rewards"]))
    # Async workers are forked after this process used torch; they run one torch thread each.
    asynchronous = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="async", **TINY)
    try:
        async_run = run_vector(asynchronous, actions, 4)
        assert asynchronous.get_attr("phi")[0].shape == (10, 10)
    finally:
        asynchronous.close()
    np.testing.assert_allclose(np.array(async_run["obs"]), np.array(native["obs"]), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.array(async_run["rewards"]), np.array(native["rewards"]), rtol=0, atol=ATOL)


def test_sb3_adapter_seeding_terminal_observation_and_episode_stats(make_vec) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 warns when a VecEnv cannot say its render mode
        env = SB3VecEnv(make_vec(ENV_ID, 2, autoreset_mode=AutoresetMode.SAME_STEP, **TINY))
    assert env.render_mode is None and env.get_attr("render_mode") == [None, None]
    env.seed(7)
    first = env.reset()
    native_first, _ = gym.make_vec(ENV_ID, num_envs=2, **TINY).reset(seed=7)
    np.testing.assert_array_equal(first, native_first)  # SB3's seed + i is the native convention
    env.seed(7)
    np.testing.assert_array_equal(env.reset(), first)
    started = [dict(info) for info in env.reset_infos]
    for _ in range(2):  # each episode's statistics are its own: the second does not add the first's
        rewards = []
        for step in range(STEPS):
            observation, reward, done, infos = env.step(np.ones((2, N_PAIRS), dtype=np.int64))
            assert reward.shape == (2,) and len(infos) == 2
            assert done.all() == (step == STEPS - 1)
            rewards.append(reward)
        for child, info in enumerate(infos):
            assert info["terminal_observation"].shape == (N_PAIRS, 24)
            assert np.all(info["terminal_observation"][:, -1] == 1.0)  # the finished episode's last observation
            assert info["TimeLimit.truncated"] is False and 0 <= info["test_metric"] <= 1
            assert info["episode"]["l"] == STEPS
            assert info["episode"]["r"] == pytest.approx(float(np.sum(np.array(rewards)[:, child], dtype=np.float64)), rel=1e-6)
            # The info of the episode that starts now (a new child) is kept for SB3; gymnasium's own keys are not.
            assert env.reset_infos[child]["iteration"] == 0 and "final_obs" not in env.reset_infos[child]
            assert env.reset_infos[child]["val_metric"] != started[child]["val_metric"]
        started = [dict(info) for info in env.reset_infos]
    assert np.all(observation[:, :, -1] == 0.0)  # SAME_STEP: the returned observation is the reset one
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(gym.make_vec(ENV_ID, num_envs=2, **TINY))
    with pytest.raises(ValueError, match=r"^SB3VecEnv runs its vector env in AutoresetMode.SAME_STEP, got autoreset_mode='NextStep'; leave it out$"):
        SB3VecEnv.make(ENV_ID, num_envs=2, autoreset_mode="NextStep", **TINY)
    SB3VecEnv.make(ENV_ID, num_envs=1, autoreset_mode="SameStep", **TINY).close()  # what it sets anyway

    truncating = SB3VecEnv.make(ENV_ID, num_envs=1, max_episode_steps=1, **TINY)
    truncating.reset()
    _, _, done, infos = truncating.step(np.ones((1, N_PAIRS), dtype=np.int64))
    assert done[0] and infos[0]["TimeLimit.truncated"] is True


def test_sb3_seed_without_a_seed_continues_each_childs_generator_and_leaves_numpys_alone(global_rng_unchanged) -> None:
    """SB3's ``VecEnv.seed(None)`` draws a seed from NumPy's global generator; the adapter's draws nothing, and the
    next reset continues every child's own generator, as the native ``reset()`` without a seed does."""
    env = SB3VecEnv.make(ENV_ID, num_envs=2, **TINY)
    native = gym.make_vec(ENV_ID, num_envs=2, autoreset_mode=AutoresetMode.SAME_STEP, **TINY)
    env.seed(5)
    np.testing.assert_array_equal(env.reset(), native.reset(seed=5)[0])
    with global_rng_unchanged():
        assert env.seed() == [None, None]
    np.testing.assert_array_equal(env.reset(), native.reset()[0])


def test_sb3_adapter_reads_and_sets_phi_per_child_and_refuses_what_it_cannot_do() -> None:
    """SB3's ``VecEnv`` calls: ``get_attr`` and ``set_attr`` with ``indices`` reach the children named (the others'
    Phi unchanged), ``env_is_wrapped`` is False for each child (no SB3 wrapper inside; ``evaluate_policy`` asks);
    a single env, ``step_wait()`` without ``step_async()`` and ``env_method`` are refused by name."""
    single = gym.make(ENV_ID, **TINY)
    with pytest.raises(TypeError, match=r"^SB3VecEnv wraps an ALA vector env \(gym.make_vec of an ALA id\), got Order"):
        SB3VecEnv(single)
    env = SB3VecEnv.make(ENV_ID, num_envs=2, **TINY)
    env.reset()
    with pytest.raises(RuntimeError, match=r"^step_wait\(\) without step_async\(\): call step_async\(actions\) first$"):
        env.step_wait()
    initial = env.get_attr("phi")[0]
    env.set_attr("phi", 0.5 * initial, indices=[1])
    first, second = env.get_attr("phi")
    np.testing.assert_array_equal(first, initial)
    np.testing.assert_array_equal(second, 0.5 * initial)
    np.testing.assert_array_equal(env.get_attr("phi", indices=1)[0], 0.5 * initial)
    assert env.get_attr("metric") == ["error", "error"]
    assert env.env_is_wrapped(gym.Wrapper) == [False, False] and env.env_is_wrapped(gym.Wrapper, indices=[0]) == [False]
    with pytest.raises(NotImplementedError, match=r"^the children are not separate env objects; use get_attr/set_attr"):
        env.env_method("reset")
    # Actions of another shape than (num_envs, pairs) are refused, never dealt out among the children by a reshape.
    actions = np.ones((2, 55), dtype=np.int64)
    for wrong in (actions.T, actions.reshape(-1)):
        with pytest.raises(ValueError, match=r"actions must have shape \(2, 55\)"):
            env.step(wrong)
    env.set_options({"anything": 1})  # what the native env takes no options for is refused, not dropped
    with pytest.raises(ValueError, match="reset takes no options"):
        env.reset()


@pytest.mark.parametrize("algorithm", ["PPO", "A2C"])
def test_sb3_trains_end_to_end(make_vec, algorithm: str) -> None:
    import stable_baselines3

    env = SB3VecEnv(make_vec(ENV_ID, 2, autoreset_mode=AutoresetMode.SAME_STEP, **{**TINY, "reward": "sign"}))
    extra = {"batch_size": 8, "n_epochs": 1} if algorithm == "PPO" else {}
    model = getattr(stable_baselines3, algorithm)("MlpPolicy", env, n_steps=4, seed=0, device="cpu", **extra)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=16)
    assert model.num_timesteps >= 16
    assert len(model.ep_info_buffer) >= 2  # two children finished at least one 4-step episode each
    assert all(info["l"] == STEPS for info in model.ep_info_buffer)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (2, N_PAIRS)
