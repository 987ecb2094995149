"""Controllers (agents/): every one runs end to end on a tiny ALA-Digits budget, REINFORCE learns in the
right direction, policies save, load and transfer from the 10-class env to a 5-class one."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import threading
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import ala_gym.agents
from ala_gym.agents.base import phi_stats
from ala_gym.agents.reinforce import ReinforceConfig, ReinforceController
from ala_gym.envs import spec
from ala_gym.envs.vector import ALAVectorEnv

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")
STEPS = 2  # TINY's controller steps per episode


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(controller: ala_gym.agents.Controller, seed: int = 0, envs: gym.vector.VectorEnv | None = None):
    envs = envs or controller.make_envs("ALA-Digits-v0", **TINY)
    logs: list[dict] = []
    try:
        records = controller.run(envs, seed, lambda step, entry: logs.append(entry))
    finally:
        envs.close()
    return records, logs


def check_records(records: list[ala_gym.agents.EpisodeRecord], num_envs: int, num_classes: int = 10) -> None:
    assert len(records) == num_envs
    for record in records:
        assert len(record.rewards) == len(record.val_metric) == len(record.phi) == STEPS
        assert record.iterations == TINY["total_iterations"]
        assert 0.0 <= record.test_metric <= 1.0 and not record.diverged
        assert np.shape(record.phi[-1]) == (num_classes, num_classes)


def check_logs(logs: list[dict], num_classes: int = 10, learner: bool = True) -> None:
    assert len(logs) == STEPS
    for entry in logs:
        assert {"reward", "val_metric", "phi_drift", "phi_max_offdiag"} <= set(entry)
        assert np.shape(entry["phi"])[1:] == (num_classes, num_classes)
        if learner:
            assert 0 < entry["entropy"] <= np.log(3) + 1e-6


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture
def five_class_envs(monkeypatch):
    """ALA-Digits restricted to digits 0-4: a 5-class env (15 pairs), built natively or for SB3."""
    load = spec.load_dataset

    def load_five(*args, **kwargs):
        data = load(*args, **kwargs)
        keep = {split: getattr(data, split).subset(torch.nonzero(getattr(data, split).labels < 5).squeeze(1))
                for split in ("train", "val", "test")}
        return dataclasses.replace(data, num_classes=5, **keep)

    monkeypatch.setattr(spec, "load_dataset", load_five)
    return lambda num_envs, **kwargs: ALAVectorEnv("ALA-Digits-v0", num_envs, **TINY, **kwargs)


def fake_envs(num_envs: int, n_features: int = 24, n_pairs: int = 3) -> SimpleNamespace:
    """Just what ReinforceController.begin reads, for unit tests without training (every pair movable)."""
    return SimpleNamespace(
        num_envs=num_envs,
        single_observation_space=gym.spaces.Box(-1, 1, (n_pairs, n_features)),
        single_action_space=gym.spaces.MultiDiscrete([3] * n_pairs),
        get_attr=lambda name: (np.ones(n_pairs, dtype=bool),) * num_envs,
    )


def test_a_controller_refuses_a_vector_env_that_resets_on_the_same_step():
    # Under SAME_STEP the step that ends a child's episode returns the next episode's info: the run's record
    # would hold NaN test metrics and no iterations, silently.
    envs = gym.make_vec("ALA-Digits-v0", num_envs=2, autoreset_mode=AutoresetMode.SAME_STEP, **TINY)
    with pytest.raises(ValueError, match="autoresets NEXT_STEP"):
        ala_gym.agents.CONTROLLERS["ce"]().run(envs, seed=0)
    envs.close()


# ---------------------------------------------------------------------- registry and fixed baselines
def test_registry_names_and_interface():
    assert set(ala_gym.agents.CONTROLLERS) == {
        "ce", "auc-pairwise", "phi-identity", "phi-identity-sigmoid", "label-smoothing", "phi-uniform", "phi-ramp", "random", "confusion",
        "reinforce", "reinforce-multi", "reinforce-frozen", "reinforce-paper", "reinforce-paper-multi",
        "reinforce-transfer", "reinforce-transfer-frozen", "ppo", "a2c", "adalfl", "learnloss", "fixed-loss", "phi-init",
        "online-smoothing", "pbt", "pbt-frozen",
    }
    for name, factory in ala_gym.agents.CONTROLLERS.items():
        controller = factory()
        assert isinstance(controller, ala_gym.agents.Controller) and controller.name == name
    assert [ala_gym.agents.CONTROLLERS[name]().num_envs for name in ("ce", "reinforce", "reinforce-multi", "ppo")] == [1, 1, 10, 10]


def test_identity_baselines_keep_phi_and_linear_identity_equals_cross_entropy():
    records = {}
    for name, loss_form in (("ce", "cross_entropy"), ("phi-identity", "linear"), ("phi-identity-sigmoid", "sigmoid")):
        controller = ala_gym.agents.CONTROLLERS[name]()
        # The controller's env keywords apply; a caller's that ask otherwise are refused, not replaced unseen.
        with pytest.raises(ValueError, match=f"{name} trains its children with loss_form='{loss_form}', but the env"):
            controller.make_envs("ALA-Digits-v0", **{**TINY, "loss_form": "linear" if name == "ce" else "cross_entropy"})
        envs = controller.make_envs("ALA-Digits-v0", **{**TINY, "loss_form": loss_form})  # the same: fine
        assert envs.get_attr("task_settings")[0].loss_form == loss_form
        (records[name],), logs = run(controller, envs=envs)
        check_records([records[name]], 1)
        check_logs(logs, learner=False)
        assert np.array_equal(records[name].phi[-1], np.eye(10)) and logs[-1]["phi_drift"] == 0.0
    assert np.allclose(records["ce"].val_metric, records["phi-identity"].val_metric)
    assert records["ce"].test_metric == pytest.approx(records["phi-identity"].test_metric, abs=1e-6)
    assert records["ce"].val_metric != records["phi-identity-sigmoid"].val_metric


def test_auc_pairwise_trains_the_child_under_the_pairwise_loss_and_raises_its_aucpr():
    controller = ala_gym.agents.CONTROLLERS["auc-pairwise"]()
    assert controller.env_kwargs() == {"loss_form": "auc_pairwise"} and not controller.learned
    budget = dict(TINY, total_iterations=200, steps_per_action=50, lr=0.1)
    (record,), logs = run(controller, envs=controller.make_envs("ALA-Digits-AUCPR-v0", **budget))
    assert np.array_equal(record.phi[-1], np.eye(10)) and not record.diverged
    # From an untrained child's validation AUCPR (about 0.1-0.3) to a trained one's, within 200 iterations.
    assert record.val_metric[-1] > record.val_metric[0] and record.test_metric > 0.85
    assert sum(record.rewards) > 0  # higher is better: AUCPR going up is rewarded


def test_random_phi_is_noisy_symmetric_identity_redrawn_and_seeded():
    records, logs = run(ala_gym.agents.CONTROLLERS["random"]())
    check_records(records, 1)
    assert logs[0]["phi_drift"] > 0

    def draws(seed: int) -> np.ndarray:
        controller = ala_gym.agents.CONTROLLERS["random"]()
        controller.begin(fake_envs(2), seed)
        infos = {"phi": np.zeros((2, 10, 10))}
        return np.stack([controller.prescribe_phi(np.zeros((2, 55, 24)), infos) for _ in range(50)])

    phi = draws(0)
    assert np.allclose(phi, np.swapaxes(phi, -1, -2)) and np.abs(phi).max() <= 1.0
    off_diagonal = phi[..., ~np.eye(10, dtype=bool)]
    assert 0.09 < off_diagonal.std() < 0.11 and abs(off_diagonal.mean()) < 0.01  # 10% noise around identity
    assert np.all(phi[..., np.arange(10), np.arange(10)] > 0.5)
    assert not np.array_equal(phi[0], phi[1])  # redrawn every step
    assert np.array_equal(draws(0), phi) and not np.array_equal(draws(1), phi)


def test_confusion_phi_follows_eq7_statistics():
    controller = ala_gym.agents.CONTROLLERS["confusion"]()
    # C: class 0 is often read as class 1, everything else is confident.
    confusion = np.full((1, 3, 3), 5.0)
    confusion[0, np.arange(3), np.arange(3)] = 0.1
    confusion[0, 0, 1] = 0.5
    phi = controller.prescribe_phi(np.zeros((1, 6, 24)), {"confusion": confusion})[0]
    assert np.allclose(phi, phi.T) and np.all((phi >= 0) & (phi <= 1))
    assert phi[0, 1] > phi[0, 2] > 0 and phi[1, 1] > phi[0, 1]
    assert np.array_equal(np.diag(phi), np.ones(3))  # cross-entropy kept, confusions added on top
    records, _ = run(controller)
    check_records(records, 1)
    assert not np.allclose(records[0].phi[-1], np.eye(10))


def test_confusion_phi_is_the_symmetrised_row_normalised_exp_of_minus_the_statistics():
    """Phi = (P + P^T) / 2 with the diagonal set to 1, where P is ``exp(-C)`` normalised per row, computed here by
    hand; statistics so large that ``exp(-C)`` underflows to 0 (an untrained child's, shifted by 1000) give the
    same Phi, since a row's normalisation cancels any shift of that row."""
    controller = ala_gym.agents.CONTROLLERS["confusion"]()
    confusion = np.array([[0.1, 0.5, 5.0], [2.0, 0.2, 1.0], [3.0, 4.0, 0.3]])
    p = np.exp(-confusion)
    p /= p.sum(axis=1, keepdims=True)
    expected = (p + p.T) / 2
    np.fill_diagonal(expected, 1.0)
    phi = controller.prescribe_phi(np.zeros((2, 6, 24)), {"confusion": np.stack([confusion, confusion + 1000.0])})
    np.testing.assert_allclose(phi[0], expected, rtol=1e-12)
    np.testing.assert_allclose(phi[1], expected, rtol=1e-12)


def test_random_phi_draws_each_childs_noise_apart_and_refuses_a_negative_spread():
    from ala_gym.agents.baselines import RandomPhi

    controller = ala_gym.agents.CONTROLLERS["random"]()
    controller.begin(fake_envs(2), 0)
    phi = controller.prescribe_phi(np.zeros((2, 55, 24)), {"phi": np.zeros((2, 10, 10))})
    assert phi.shape == (2, 10, 10) and not np.array_equal(phi[0], phi[1])  # two children, two draws
    for noise in (-0.1, float("nan")):
        with pytest.raises(ValueError, match=r"noise must be a finite number in \[0, inf\)"):
            RandomPhi(noise=noise)
    quiet = RandomPhi(noise=0.0)
    quiet.begin(fake_envs(1), 0)
    np.testing.assert_array_equal(quiet.prescribe_phi(np.zeros((1, 6, 24)), {"phi": np.zeros((1, 3, 3))}), np.eye(3)[None])


def test_the_registered_fixed_rows_prescribe_their_documented_phi():
    """The rows of the benchmark tables with their documented defaults, on 3 classes: ``phi-uniform`` I + 0.03 off
    the diagonal, ``label-smoothing`` eps = 0.1 (1 - 0.1 + 0.1 / 3 on the diagonal, 0.1 / 3 off it),
    ``phi-ramp`` from 0 to 0.1 (0.05 half way), ``online-smoothing`` alpha = 0.5, ``random`` noise of std 0.1."""
    observations, infos = np.zeros((1, 6, 24)), {"phi": np.eye(3)[None]}
    off = 1 - np.eye(3)

    def prescribed(name: str, **extra) -> np.ndarray:
        return ala_gym.agents.CONTROLLERS[name]().prescribe_phi(observations, {**infos, **extra})[0]

    np.testing.assert_allclose(prescribed("phi-uniform"), np.eye(3) + 0.03 * off)
    np.testing.assert_allclose(prescribed("label-smoothing"), (0.9 + 0.1 / 3) * np.eye(3) + 0.1 / 3 * off)
    half_way = np.zeros((1, 6, 24))
    half_way[..., -1] = 0.5
    ramp = ala_gym.agents.CONTROLLERS["phi-ramp"]()
    assert not ramp.follow
    np.testing.assert_allclose(ramp.prescribe_phi(half_way, infos)[0], np.eye(3) + 0.05 * off)
    soft = np.array([[[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]]])
    symmetric = np.array([[0.6, 0.2, 0.1], [0.2, 1.0, 0.0], [0.1, 0.0, 0.8]])
    np.testing.assert_allclose(prescribed("online-smoothing", soft_labels=soft), 0.5 * np.eye(3) + 0.5 * symmetric)
    assert ala_gym.agents.CONTROLLERS["random"]().noise == 0.1


def test_fixed_rows_take_the_ends_of_their_ranges_and_refuse_what_lies_past_them():
    """Every setting that keeps Phi in [-1, 1] is taken, ends included (label smoothing 1 is the uniform target);
    a ramp that would start or end outside is refused, whichever end it is."""
    from ala_gym.agents.baselines import OnlineSmoothingPhi, RampPhi, RandomPhi, UniformPhi

    np.testing.assert_allclose(UniformPhi(label_smoothing=1.0).matrix(4), np.full((4, 4), 0.25))
    np.testing.assert_allclose(UniformPhi(label_smoothing=0.0).matrix(4), np.eye(4))
    np.testing.assert_allclose(UniformPhi(off_diagonal=-1.0).matrix(2), [[1.0, -1.0], [-1.0, 1.0]])
    assert RampPhi(start=-1.0, end=1.0).target(np.array([0.0, 1.0])).tolist() == [-1.0, 1.0]
    assert OnlineSmoothingPhi(alpha=0.0).alpha == 0.0 and OnlineSmoothingPhi(alpha=1.0).alpha == 1.0
    assert RandomPhi(noise=0.0).noise == 0.0
    for start, end, named in ((1.5, 0.0, "start"), (-1.5, 0.0, "start"), (float("nan"), 0.0, "start"), (0.0, -1.5, "end"),
                              ("x", 0.0, "start")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"{named} must be a finite number in \[-1, 1\]"):
            RampPhi(start=start, end=end)


# ---------------------------------------------------------------------- REINFORCE
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reinforce_gradient_moves_towards_rewarded_action(sign):
    controller = ReinforceController(ReinforceConfig(lr=1e-2, pair_credit=False), num_envs=16)
    controller.begin(fake_envs(16), seed=0)
    observations = np.random.default_rng(0).uniform(-1, 1, (16, 3, 24)).astype(np.float32)

    def prob_of_plus_beta() -> float:
        with torch.no_grad():
            return torch.softmax(controller.policy(torch.as_tensor(observations)), -1)[..., 2].mean().item()

    before = prob_of_plus_beta()
    for _ in range(20):
        actions = controller.act(observations, {})
        # The reward favours (sign 1) or punishes (sign -1) choosing +beta on the pairs.
        rewards = sign * ((actions == 2).mean(axis=1) * 3 - 1)
        controller.learn(observations, actions, rewards, observations, np.zeros(16, bool), {})
    assert (prob_of_plus_beta() - before) * sign > 0.1, (before, prob_of_plus_beta())


def test_reinforce_is_seeded_by_the_run_seed_and_leaves_global_rngs_alone():
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    observations = np.random.default_rng(0).uniform(-1, 1, (2, 3, 24)).astype(np.float32)
    trajectories = []
    for seed in (3, 3, 4):
        controller = ReinforceController(ReinforceConfig(pair_credit=False), num_envs=2)
        controller.begin(fake_envs(2), seed)
        actions = [controller.act(observations, {}) for _ in range(5)]
        controller.learn(observations, actions[-1], np.ones(2), observations, np.zeros(2, bool), {})
        trajectories.append((np.stack(actions), controller.policy.state_dict()))
    assert np.array_equal(trajectories[0][0], trajectories[1][0]) and same_weights(trajectories[0][1], trajectories[1][1])
    assert not np.array_equal(trajectories[0][0], trajectories[2][0])
    # The actions' generator is not the stream that drew the initial weights (seeded by the run seed itself).
    controller = ReinforceController(ReinforceConfig(pair_credit=False), num_envs=2)
    controller.begin(fake_envs(2), 4)
    assert not torch.equal(controller.sampler.get_state(), torch.Generator().manual_seed(4).get_state())
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_reinforce_imposes_its_starting_phi_once_at_the_start_of_each_run() -> None:
    """``start_off_diagonal`` s: before a run's first step every child gets ``Phi = I + s`` off the diagonal; later
    steps leave Phi to the actions, until the next run starts from it again. 0 (the paper) imposes nothing."""
    observations, infos = np.zeros((2, 3, 24)), {"phi": np.stack([np.eye(3)] * 2)}
    controller = ReinforceController(ReinforceConfig(start_off_diagonal=0.05), num_envs=2)
    controller.begin(fake_envs(2), seed=0)
    start = controller.prescribe_phi(observations, infos)
    np.testing.assert_allclose(start, np.stack([np.eye(3) + 0.05 * (1 - np.eye(3))] * 2))
    assert controller.prescribe_phi(observations, infos) is None
    controller.begin_episode(fake_envs(2))
    np.testing.assert_array_equal(controller.prescribe_phi(observations, infos), start)
    identity = ReinforceController(num_envs=2)
    identity.begin(fake_envs(2), seed=0)
    assert identity.prescribe_phi(observations, infos) is None


@pytest.fixture(scope="module")
def reinforce_policy(tmp_path_factory):
    """REINFORCE learned on 10-class ALA-Digits through the command line, saved."""
    from ala_gym.agents.reinforce import main

    folder = tmp_path_factory.mktemp("reinforce")
    main(["--num-envs", "2", "--total-iterations", "10", "--steps-per-action", "5", "--device", "cpu",
          "--env-kwarg", "eval_points=2", "--env-kwarg", "eval_stride=2", "--hidden", "16", "--lr", "0.01",
          "--log-dir", str(folder / "logs"), "--save", str(folder / "policy.pt")])
    return folder


def test_reinforce_cli_writes_tensorboard_logs_records_and_policy(reinforce_policy):
    assert list((reinforce_policy / "logs").glob("events.out.tfevents.*"))
    records = (reinforce_policy / "logs" / "records.json").read_text()
    assert records.count("test_metric") == 2  # one record per child
    assert ReinforceController.load(reinforce_policy / "policy.pt").config.hidden == 16


def test_reinforce_single_and_multi_run_end_to_end():
    single = ala_gym.agents.CONTROLLERS["reinforce"]()
    records, logs = run(single)
    check_records(records, 1)
    check_logs(logs)
    assert {"policy_loss", "baseline"} <= set(logs[-1]) and logs[-1]["phi_drift"] > 0  # a random policy moves Phi
    multi = ala_gym.agents.CONTROLLERS["reinforce-multi"](num_envs=2)
    records, logs = run(multi)
    check_records(records, 2)
    check_logs(logs)
    assert records[0].phi != records[1].phi  # children act independently


def test_reinforce_save_load_round_trip_and_version_check(reinforce_policy, tmp_path):
    path = reinforce_policy / "policy.pt"
    loaded = ReinforceController.load(path)
    assert loaded.config == ReinforceConfig(hidden=16, lr=0.01) and not loaded.train and loaded.n_features == 24
    assert same_weights(loaded.initial_state, torch.load(path, weights_only=True)["state_dict"])  # the file's weights
    loaded.begin(fake_envs(1), seed=0)
    assert same_weights(loaded.policy.state_dict(), loaded.initial_state)
    loaded.save(tmp_path / "again.pt")
    assert same_weights(ReinforceController.load(tmp_path / "again.pt").initial_state, loaded.initial_state)

    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "format_version": 0, "ala_gym_version": "0.0.1"}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"ala-gym 0\.0\.1 in checkpoint format 0.*reads format 1"):
        ReinforceController.load(tmp_path / "old.pt")
    torch.save({**checkpoint, "kind": "sb3-ppo"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a 'reinforce'"):
        ReinforceController.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="reads 24 features"):
        loaded.begin(fake_envs(1, n_features=16), seed=0)


def test_reinforce_policy_from_10_classes_runs_frozen_and_finetuned_on_5(reinforce_policy, five_class_envs):
    path = reinforce_policy / "policy.pt"
    frozen = ReinforceController.load(path, num_envs=1)
    envs = five_class_envs(1)
    assert envs.single_action_space.shape == (15,)
    records, logs = run(frozen, envs=envs)
    check_records(records, 1, num_classes=5)
    check_logs(logs, num_classes=5)
    assert same_weights(frozen.policy.state_dict(), frozen.initial_state)  # frozen: no learning

    tuned = ReinforceController.load(path, train=True, num_envs=1)
    records, _ = run(tuned, envs=five_class_envs(1))
    check_records(records, 1, num_classes=5)
    assert not same_weights(tuned.policy.state_dict(), tuned.initial_state)  # fine-tuned


# ---------------------------------------------------------------------- Stable-Baselines3
@pytest.fixture(scope="module")
def ppo_policy(tmp_path_factory):
    """PPO with the pair-shared policy learned on 10-class ALA-Digits through the command line, saved.
    ``n_steps 1`` makes SB3 update after every step of the tiny budget."""
    from ala_gym.agents.sb3 import main

    folder = tmp_path_factory.mktemp("ppo")
    main(["--algo", "ppo", "--num-envs", "2", "--total-iterations", "10", "--steps-per-action", "5", "--device", "cpu",
          "--env-kwarg", "eval_points=2", "--env-kwarg", "eval_stride=2", "--n-steps", "1", "--lr", "0.01",
          "--log-dir", str(folder / "logs"), "--save", str(folder / "policy.pt")])
    return folder


def test_ppo_pair_policy_cli_learns_logs_and_saves(ppo_policy):
    from ala_gym.agents.sb3 import SB3Controller

    assert len(list((ppo_policy / "logs").glob("events.out.tfevents.*"))) == 2  # ours and SB3's train/*
    assert (ppo_policy / "logs" / "records.json").read_text().count("test_metric") == 2
    loaded = SB3Controller.load(ppo_policy / "policy.pt", "ppo")
    assert loaded.config.policy == "pair" and loaded.config.n_steps == 1
    # Every weight is per pair: none has a dimension of 55 (pairs) or 165 (pairs x actions).
    assert all(55 not in value.shape and 165 not in value.shape for value in loaded.initial_state.values())
    # Beside it, Stable-Baselines3's own file: PPO.load reads it, and the model acts on an observation.
    from stable_baselines3 import PPO

    model = PPO.load(ppo_policy / "policy.zip", device="cpu")
    action, _ = model.predict(np.zeros((55, 24), dtype=np.float32), deterministic=True)
    assert action.shape == (55,) and set(np.unique(action)) <= {0, 1, 2}


@pytest.mark.parametrize("module", ["ala_gym.wrappers.sb3", "ala_gym.agents.sb3"])
def test_importing_the_sb3_adapters_in_a_fresh_process_leaves_pythons_random_alone(module: str) -> None:
    """Stable-Baselines3's first import draws from Python's global RNG (rich seeds a counter from it); only a
    fresh interpreter imports it for the first time."""
    script = f"import random\nstate = random.getstate()\nimport {module}\nassert random.getstate() == state\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("algo, policy", [("a2c", "mlp"), ("a2c", "pair"), ("ppo", "mlp")])
def test_sb3_controllers_run_end_to_end(algo, policy, tmp_path, monkeypatch):
    from ala_gym.agents.sb3 import SB3Config, isolated_global_rngs
    from ala_gym.wrappers.sb3 import SB3VecEnv

    controller = ala_gym.agents.CONTROLLERS[algo](num_envs=2, config=SB3Config(policy=policy, n_steps=1, lr=0.01))
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    with isolated_global_rngs():  # the policy the run will start from (SB3 seeds it from the run seed)
        initial = controller._make_model(SB3VecEnv(envs.unwrapped), seed=0).policy.state_dict()
    torch_state = torch.random.get_rng_state()
    records, logs = run(controller, envs=envs)
    assert torch.equal(torch.random.get_rng_state(), torch_state)  # SB3's seeding stays inside the run
    check_records(records, 2)
    check_logs(logs)
    assert not same_weights(controller.model.policy.state_dict(), initial)  # it learned online
    # Without a log folder, SB3's learn() makes none of its own (an empty SB3-<date> folder in the temp dir).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run(controller, envs=controller.make_envs("ALA-Digits-v0", **TINY))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("algo, updates_per_rollout", [("ppo", 4), ("a2c", 1)])
@pytest.mark.parametrize("steps, rollouts", [(16, 2), (4, 1), (12, 2)])
def test_sb3_learns_from_the_last_rollout_that_the_end_of_the_runs_cuts_short(algo, updates_per_rollout, steps, rollouts):
    """Rollouts of 8 steps: a run of 16 steps is two full ones, of 12 a full one and half of one, of 4 half of one;
    each is trained on, the last one too (SB3 leaves it when a callback ends the learning)."""
    from ala_gym.agents.sb3 import SB3Config, SB3Controller

    controller = SB3Controller(algo, SB3Config(n_steps=8, n_epochs=4), num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", **{**TINY, "total_iterations": 10 * steps, "steps_per_action": 10})
    records = controller.run(envs, seed=0)
    envs.close()
    assert all(len(record.rewards) == steps for record in records) and controller.model is not None
    assert controller.model._n_updates == rollouts * updates_per_rollout
    assert controller.model.num_timesteps == 2 * steps


def test_an_sb3_run_with_a_log_folder_writes_its_curves_and_leaves_no_writer_thread_behind(tmp_path):
    from ala_gym.agents.sb3 import SB3Config, SB3Controller

    controller = SB3Controller("a2c", SB3Config(n_steps=1), num_envs=2, log_dir=tmp_path / "logs")
    before = set(threading.enumerate())
    run(controller, envs=controller.make_envs("ALA-Digits-v0", **TINY))
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    assert [thread for thread in threading.enumerate() if thread not in before and thread.is_alive()] == []


def test_sb3_pair_policy_transfers_to_5_classes(ppo_policy, five_class_envs):
    from ala_gym.agents.sb3 import SB3Controller

    frozen = SB3Controller.load(ppo_policy / "policy.pt", "ppo", num_envs=2)
    records, logs = run(frozen, envs=five_class_envs(2, autoreset_mode=AutoresetMode.SAME_STEP))
    check_records(records, 2, num_classes=5)
    check_logs(logs, num_classes=5)
    assert same_weights(frozen.model.policy.state_dict(), frozen.initial_state)


def test_the_sb3_pair_extractor_reads_each_pairs_row_from_the_flattened_observation() -> None:
    """SB3 flattens the ``[n_pairs, n_features]`` observation; the extractor restores the rows, so pair ``k``'s
    actor latent is the shared MLP of row ``k`` alone and the critic's is the mean over the rows."""
    from ala_gym.agents.sb3 import PairExtractor

    extractor = PairExtractor(n_features=4, hidden=8)
    observation = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    actor, critic = extractor(observation.flatten(start_dim=1))
    for pair in range(3):
        torch.testing.assert_close(actor[:, pair], extractor.policy_net(observation[:, pair]))
    torch.testing.assert_close(critic, torch.stack([extractor.value_net(observation[:, k]) for k in range(3)]).mean(0))


def test_phi_stats():
    """Matrices ``[children, C, C]``: drift from identity and the largest off-diagonal entry; loss parameters that
    are a vector per child (``[children, rows]``, metric learning): their mean and largest absolute value."""
    phi = np.eye(4)
    phi[0, 1] = phi[1, 0] = -0.5
    stats = phi_stats(phi[None])
    assert stats["phi_max_offdiag"] == 0.5 and np.isclose(stats["phi_drift"], np.sqrt(0.5) / 4)
    assert phi_stats(np.array([[0.2, -0.6], [0.5, 0.3]])) == pytest.approx({"phi_mean": 0.1, "phi_max_abs": 0.6})


def test_phi_ramp_moves_the_off_diagonal_with_each_childs_progress() -> None:
    from ala_gym.agents.baselines import RampPhi

    observations = np.zeros((2, 6, 24))
    observations[1, :, -1] = 0.5
    phi = RampPhi(start=0.1, end=-0.1).prescribe_phi(observations, {"phi": np.eye(3)[None].repeat(2, 0)})
    np.testing.assert_allclose(phi[0], np.eye(3) + 0.1 * (1 - np.eye(3)))  # at the start
    np.testing.assert_allclose(phi[1], np.eye(3), atol=1e-12)  # half way: the mean of 0.1 and -0.1
    controller = ala_gym.agents.CONTROLLERS["phi-ramp"](start=0.0, end=0.2, num_envs=1)
    envs = controller.make_envs("ALA-Digits-v0", total_iterations=80, steps_per_action=20, device="cpu")
    records = controller.run(envs, seed=0)
    envs.close()
    # Four steps of 20 iterations: Phi before each is set at progress 0, 1/4, 1/2, 3/4.
    off = [float(np.array(phi)[0, 1]) for phi in records[0].phi]
    np.testing.assert_allclose(off, [0.0, 0.05, 0.1, 0.15], atol=1e-6)
    # Followed by actions: one step of 0.1 / 9 a decision from identity towards the ramp, then within a step of it.
    follower = ala_gym.agents.CONTROLLERS["phi-ramp"](start=0.1, end=0.0, follow=True, num_envs=1)
    envs = follower.make_envs("ALA-Digits-v0", total_iterations=400, steps_per_action=20, device="cpu")
    records = follower.run(envs, seed=0)
    envs.close()
    path = np.array([np.array(phi)[~np.eye(10, dtype=bool)] for phi in records[0].phi])
    assert np.ptp(path, axis=1).max() < 1e-9 and all(np.diag(np.array(phi)).min() == 1.0 for phi in records[0].phi)
    step = 0.1 / 9
    np.testing.assert_allclose(path[:5, 0], step * np.arange(1, 6), atol=1e-6)  # climbing
    ramp = 0.1 * (1 - np.arange(20) / 20)  # the ramp at each decision's progress
    assert np.abs(path[8:, 0] - ramp[8:]).max() <= step + 1e-6  # caught up: within a step
    with pytest.raises(ValueError, match="end must be a finite number in"):
        RampPhi(end=1.5)
    # The follower leaves the diagonal alone even where the env would let it move (fixed_diagonal=False).
    actions = RampPhi(start=0.1, end=0.0, follow=True).act(np.zeros((1, 6, 24)), {"phi": np.eye(3)[None]})
    np.testing.assert_array_equal(actions[0], [1, 2, 2, 1, 2, 1])  # pairs (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)


def test_online_smoothing_prescribes_alpha_identity_plus_the_symmetrised_soft_labels() -> None:
    from ala_gym.agents.baselines import OnlineSmoothingPhi

    soft = np.array([[[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]]])
    phi = OnlineSmoothingPhi(alpha=0.5).prescribe_phi(np.zeros((1, 6, 24)), {"soft_labels": soft})
    expected = 0.5 * np.eye(3) + 0.5 * np.array([[0.8, 0.15, 0.0], [0.15, 0.9, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(phi[0], expected)
    # alpha weighs the hard label: at 0.75 a quarter of the soft labels' off-diagonal mass remains.
    phi = OnlineSmoothingPhi(alpha=0.75).prescribe_phi(np.zeros((1, 6, 24)), {"soft_labels": soft})
    np.testing.assert_allclose(phi[0][0], [0.75 + 0.25 * 0.8, 0.25 * 0.15, 0.0])
    controller = ala_gym.agents.CONTROLLERS["online-smoothing"](num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", total_iterations=40, steps_per_action=20, device="cpu")
    records = controller.run(envs, seed=0)
    envs.close()
    final = np.array(records[0].phi[-1])
    assert np.allclose(final, final.T) and 0.5 <= np.diag(final).min() <= 1.0 and final[~np.eye(10, dtype=bool)].max() > 0
    with pytest.raises(ValueError, match="alpha"):
        OnlineSmoothingPhi(alpha=1.5)


@pytest.mark.parametrize("name, key", [("confusion", "confusion"), ("online-smoothing", "soft_labels")])
def test_statistics_controllers_give_a_child_that_just_diverged_the_identity(name: str, key: str) -> None:
    """A child that diverged at the last step reports NaN statistics; it is reset before it trains again, and
    the controller gives it the identity instead of a NaN Phi (which the env refuses), the others theirs."""
    controller = ala_gym.agents.CONTROLLERS[name](num_envs=2)
    statistics = np.stack([np.full((3, 3), 0.5), np.full((3, 3), np.nan)])
    phi = controller.prescribe_phi(np.zeros((2, 6, 24)), {key: statistics})
    np.testing.assert_array_equal(phi[1], np.eye(3))
    assert np.isfinite(phi[0]).all() and not np.array_equal(phi[0], np.eye(3))


def test_the_recorder_keeps_each_final_metric_under_its_own_name() -> None:
    """Test metric, final validation metric and loss, and the other test keys come from their own info keys; a
    child's later (autoreset) episodes are not recorded."""
    from ala_gym.agents.base import EpisodeRecorder

    recorder = EpisodeRecorder(1)
    step = {"val_metric": 0.4, "phi": np.eye(2), "iteration": 10, "diverged": False}
    recorder.add_child(0, 1.0, False, step)
    final = {**step, "iteration": 20, "test_metric": 0.11, "final_val_metric": 0.22, "final_val_loss": 0.33,
             "test_recall@1": 0.44}  # fmt: skip
    recorder.add_child(0, -1.0, True, final)
    recorder.add_child(0, 1.0, True, {**final, "test_metric": 0.99})
    (record,) = recorder.records
    assert (record.test_metric, record.final_val_metric, record.final_val_loss) == (0.11, 0.22, 0.33)
    assert record.test_statistics == {"test_recall@1": 0.44} and record.rewards == [1.0, -1.0] and recorder.done


class ChildEndsEarly:
    """A made-up two-child vector env: child 1 ends after the first step (diverged), child 0 after the third; the
    vector env then restarts child 1, whose values (a reward of 100 and a validation metric of 1) are not the
    run's."""

    num_envs = 2
    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self) -> None:
        self.steps = 0

    def infos(self, val_metric: list[float]) -> dict:
        return {"phi": np.stack([np.eye(3)] * 2), "val_metric": np.array(val_metric), "iteration": np.array([self.steps] * 2),
                "diverged": np.array([False, self.steps == 1])}  # fmt: skip

    def reset(self, seed=None):
        self.steps = 0
        return np.zeros((2, 6, 24)), self.infos([0.5, 0.5])

    def step(self, actions):
        self.steps += 1
        restarted = self.steps > 1  # child 1's later steps belong to its next episode
        rewards = np.array([1.0, 100.0 if restarted else -1.0])
        ended = np.array([self.steps == 3, self.steps == 1])
        return np.zeros((2, 6, 24)), rewards, ended, np.zeros(2, bool), self.infos([0.4, 1.0 if restarted else 0.6])


def test_step_logs_cover_the_children_still_in_the_recorded_run() -> None:
    from ala_gym.agents.baselines import FixedPhi

    logs = []
    records = FixedPhi().run_episode(ChildEndsEarly(), seed=0, on_step=lambda step, entry: logs.append(entry))
    assert [entry["reward"] for entry in logs] == [0.0, 1.0, 1.0]
    assert [entry["val_metric"] for entry in logs] == [0.5, 0.4, 0.4]
    assert [len(entry["phi"]) for entry in logs] == [2, 1, 1]
    assert records[1].diverged and records[1].rewards == [-1.0] and records[0].rewards == [1.0] * 3


@pytest.mark.parametrize("name", ["phi-identity", "reinforce", "adalfl", "ppo"])
def test_a_single_env_is_refused_in_one_line_naming_the_vector_env_to_build(name: str) -> None:
    """What the guides show first is a single env; a controller drives a vector env, and says how to build one."""
    import ala_gym.agents as agents

    env = gym.make("ALA-Digits-v0", total_iterations=20, steps_per_action=10)
    with pytest.raises(TypeError, match=r"^a controller runs a vector env, not a single env \(ALAClassificationEnv\): "
                                        r"build one with controller.make_envs\(env_id\)"):  # fmt: skip
        agents.CONTROLLERS[name]().run(env, seed=0)
    env.close()


def test_a_config_setting_given_to_a_factory_names_the_config_to_put_it_in() -> None:
    """``CONTROLLERS["reinforce"](lr=0.1)``: lr is a ReinforceConfig field, which the comparison's row text routes
    there; in Python the factory says where it goes instead of Python's bare unexpected-keyword message."""
    import ala_gym.agents as agents
    from ala_gym.agents.reinforce import ReinforceConfig

    with pytest.raises(TypeError, match=r"^lr: a setting of ReinforceConfig, not a keyword of ReinforceController; "
                                        r"pass config=ReinforceConfig\(lr=...\)"):  # fmt: skip
        agents.CONTROLLERS["reinforce"](lr=0.1)
    assert agents.CONTROLLERS["reinforce"](config=ReinforceConfig(lr=0.1)).config.lr == 0.1
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):  # no config field: Python's own
        agents.CONTROLLERS["reinforce"](nonsense=1)
    # A keyword the controller takes itself and its config also names (SB3's policy) is no misplaced setting.
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):
        agents.CONTROLLERS["ppo"](policy="mlp", nonsense=1)


def test_uniform_phi_takes_one_of_its_two_settings() -> None:
    """off_diagonal and label_smoothing each set the whole Phi; given both, one was silently ignored."""
    import ala_gym.agents as agents
    from ala_gym.agents.baselines import UniformPhi

    with pytest.raises(ValueError, match="^off_diagonal and label_smoothing are two ways to set Phi: give one of them$"):
        agents.CONTROLLERS["label-smoothing"](off_diagonal=0.05)
    assert UniformPhi().off_diagonal == 0.03 and UniformPhi(off_diagonal=-0.1).matrix(2)[0, 1] == -0.1
    np.testing.assert_allclose(UniformPhi(label_smoothing=0.1).matrix(2), [[0.95, 0.05], [0.05, 0.95]])
