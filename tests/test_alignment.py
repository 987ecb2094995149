"""The defaults that keep ALA from collapsing: a held diagonal, off-diagonal steps scaled per row, per-pair
credit consistent with the validation statistics, and the controller options that use them."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.nn import functional as F

import ala_gym.agents
from ala_gym.agents.baselines import UniformPhi
from ala_gym.agents.reinforce import PAPER_ENV_KWARGS, PairPolicy, ReinforceConfig, ReinforceController, pair_rewards
from ala_gym.core.losses import class_pairs, phi_loss

TINY = dict(total_iterations=12, steps_per_action=4, eval_points=1, device="cpu")
PAIRS = class_pairs(10)
DIAGONAL = PAIRS[:, 0] == PAIRS[:, 1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_diagonal_stays_one_and_off_diagonal_moves_beta_over_c_minus_one():
    env = gym.make("ALA-Digits-v0", beta=0.1, **TINY).unwrapped
    env.reset(seed=0)
    assert not env.movable_rows[DIAGONAL].any() and env.movable_rows[~DIAGONAL].all()
    actions = [np.full(55, 2), np.full(55, 0), np.full(55, 0)]  # +, -, -
    expected_off = [0.1 / 9, 0.0, -0.1 / 9]
    for action, off in zip(actions, expected_off):
        *_, info = env.step(action)
        phi = info["phi"]
        np.testing.assert_array_equal(np.diag(phi), np.ones(10))
        np.testing.assert_allclose(phi[~np.eye(10, dtype=bool)], off, atol=1e-12)
        # beta bounds how much one step moves a row's off-diagonal mass, whatever the class count.
    assert np.abs(phi - np.eye(10)).sum(axis=1).max() == pytest.approx(0.1)


def test_paper_step_rules_stay_selectable():
    env = gym.make("ALA-Digits-v0", beta=0.1, **PAPER_ENV_KWARGS, **TINY).unwrapped
    env.reset(seed=0)
    assert env.movable_rows.all()
    *_, info = env.step(np.full(55, 0))
    np.testing.assert_allclose(info["phi"], np.eye(10) * 0.9 - 0.1 * (1 - np.eye(10)), atol=1e-12)
    with pytest.raises(ValueError, match="step_scaling"):
        gym.make("ALA-Digits-v0", step_scaling="column")


def pair_values(class_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The metric on the samples of each pair's two classes, from per-class values and class counts."""
    i, j = PAIRS[:, 0], PAIRS[:, 1]
    pooled = (counts[i] * class_values[i] + counts[j] * class_values[j]) / (counts[i] + counts[j])
    return np.where(i == j, class_values[i], pooled)


def test_row_improvement_matches_the_confusion_statistics_under_nll():
    # With one evaluation per step the discounted metric is the step's last evaluation; under metric="nll"
    # a class's metric is its diagonal Eq. 7 statistic, so the per-pair credit follows from info["confusion"].
    env = gym.make("ALA-Digits-v0", metric="nll", **TINY).unwrapped
    _, info = env.reset(seed=1)
    counts = env.val_class_counts.astype(float)
    assert counts.sum() == len(env.val_eval.labels)
    previous = pair_values(np.diag(info["confusion"]), counts)
    np.testing.assert_array_equal(info["row_improvement"], np.zeros(55))
    rng = np.random.default_rng(0)
    for _ in range(3):
        *_, info = env.step(rng.integers(0, 3, 55))
        now = pair_values(np.diag(info["confusion"]), counts)
        np.testing.assert_allclose(info["row_improvement"], previous - now, atol=1e-9)
        # Pooled over all classes the per-class NLL is the validation NLL.
        assert np.dot(counts, np.diag(info["confusion"])) / counts.sum() == pytest.approx(info["val_metric"], abs=1e-6)
        previous = now


def test_row_improvement_under_error_counts_the_pair_samples_mistakes():
    env = gym.make("ALA-Digits-v0", **TINY).unwrapped
    env.reset(seed=2)
    before = class_errors(env)
    *_, info = env.step(np.full(55, 1))
    after = class_errors(env)
    counts = env.val_class_counts.astype(float)
    np.testing.assert_allclose(info["row_improvement"], pair_values(before, counts) - pair_values(after, counts), atol=1e-6)
    assert np.dot(counts, after) / counts.sum() == pytest.approx(info["val_metric"], abs=1e-6)


def class_errors(env) -> np.ndarray:
    logits = env.trainer.logits(env.val_eval)
    wrong = (logits.argmax(1) != env.val_eval.labels).double()
    return np.array([wrong[env.val_eval.labels == c].mean().item() for c in range(10)])


def test_pair_rewards_use_each_pairs_sign_and_the_penalty_on_divergence():
    infos = {"row_improvement": np.array([[0.2, -0.1, 0.0], [0.5, 0.5, 0.5]]), "diverged": np.array([False, True])}
    rewards = np.array([1.0, -10.0])
    np.testing.assert_array_equal(pair_rewards(rewards, infos, True, 3), [[1, -1, 0], [-10, -10, -10]])
    np.testing.assert_array_equal(pair_rewards(rewards, infos, False, 3), [[1, 1, 1], [-10, -10, -10]])


def test_leave_one_out_advantages_cancel_what_children_share():
    controller = ReinforceController(ReinforceConfig(baseline="loo"), num_envs=3)
    per_pair, step = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 1.0]]), [7, 7, 7]  # three children's decisions of a step
    advantages = np.stack(controller._fresh_advantages(per_pair, step))
    np.testing.assert_allclose(advantages[:, 0], [1.0, 1.0, -2.0])
    np.testing.assert_allclose(advantages[:, 1], [-1.0, 0.5, 0.5])
    np.testing.assert_allclose(controller._fresh_advantages(per_pair + 5.0, step), advantages)  # a shared shift cancels
    assert controller._fresh_advantages(per_pair[:1], step[:1]) == [None]  # one child: moving average instead
    assert ReinforceController(ReinforceConfig(baseline="ema"))._fresh_advantages(per_pair, step) == [None] * 3


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_init_no_change_sets_the_initial_probability(p):
    policy = PairPolicy(24, 32, torch.Generator().manual_seed(0), init_no_change=p)
    observations = torch.rand(50, 55, 24, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(policy(observations), -1)
    assert probs[..., 1].mean().item() == pytest.approx(p, abs=0.01)
    assert (probs[..., 1] - p).abs().max().item() < 0.02  # in every state: the output layer barely reads it
    with pytest.raises(ValueError, match="init_no_change"):
        ReinforceConfig(init_no_change=1.0)


def run_digits(controller: ala_gym.agents.Controller, seed: int = 0):
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    logs: list[dict] = []
    try:
        return controller.run(envs, seed, lambda step, entry: logs.append(entry)), logs
    finally:
        envs.close()


def test_held_diagonal_gets_no_gradient_and_frozen_policy_never_moves():
    learner = ReinforceController(ReinforceConfig(updates_per_step=3), num_envs=2)
    records, logs = run_digits(learner)
    assert all(np.all(np.diag(np.array(r.phi[-1])) == 1.0) for r in records)
    assert "policy_loss" in logs[-1] and 0 <= logs[-1]["p_no_change"] <= 1
    assert learner.optimizer.state[learner.policy.net[0].weight]["step"].item() == 3 * len(logs)

    frozen = ala_gym.agents.CONTROLLERS["reinforce-frozen"](num_envs=2)
    initial = PairPolicy(24, frozen.config.hidden, torch.Generator().manual_seed(0)).state_dict()
    run_digits(frozen)
    assert all(torch.equal(initial[k], v) for k, v in frozen.policy.state_dict().items())


def test_paper_controller_is_the_papers_configuration_on_the_papers_env_rules():
    controller = ala_gym.agents.CONTROLLERS["reinforce-paper-multi"]()
    assert controller.num_envs == 10 and controller.multi_child and controller.learned
    assert controller.config == ReinforceConfig(lr=1e-3, baseline="ema", pair_credit=False)
    assert controller.env_kwargs() == {"fixed_diagonal": False, "step_scaling": "entry"}
    records, _ = run_digits(ala_gym.agents.CONTROLLERS["reinforce-paper"]())
    # Its untrained policy moves the free diagonal down from its bound, by beta per entry.
    diagonals = np.array([np.diag(np.array(phi)) for phi in records[0].phi])
    assert diagonals.min() < 1.0 and np.allclose(diagonals * 10, np.round(diagonals * 10))


def test_label_smoothing_phi_is_cross_entropy_with_label_smoothing():
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    phi = torch.as_tensor(UniformPhi(label_smoothing=0.1).matrix(10), dtype=torch.float32)
    torch.testing.assert_close(phi_loss(logits, labels, phi), F.cross_entropy(logits, labels, label_smoothing=0.1))
    uniform = UniformPhi(off_diagonal=0.02).matrix(4)
    np.testing.assert_allclose(uniform, np.eye(4) + 0.02 * (1 - np.eye(4)))
    records, _ = run_digits(ala_gym.agents.CONTROLLERS["label-smoothing"](num_envs=2))
    np.testing.assert_allclose(records[1].phi[-1], UniformPhi(label_smoothing=0.1).matrix(10), atol=1e-6)
    for bad in ({"label_smoothing": 1.5}, {"label_smoothing": -0.1}, {"off_diagonal": 1.5}):
        with pytest.raises(ValueError, match=r"must be a finite number in \[-?[01], 1\]"):
            UniformPhi(**bad)


def test_shipped_policy_loads_weights_only_and_runs_frozen_and_fine_tuned():
    from ala_gym.agents.reinforce import library_policy

    path = library_policy("digits")
    assert path.stat().st_size < 50_000
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["kind"] == "reinforce" and checkpoint["config"]["n_features"] == 24
    frozen = ala_gym.agents.CONTROLLERS["reinforce-transfer-frozen"](num_envs=2)
    assert not frozen.train and frozen.learned and frozen.multi_child
    run_digits(frozen)
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in frozen.policy.state_dict().items())
    tuned = ala_gym.agents.CONTROLLERS["reinforce-transfer"](num_envs=2)
    run_digits(tuned)
    assert not all(torch.equal(checkpoint["state_dict"][k], v) for k, v in tuned.policy.state_dict().items())
    with pytest.raises(ValueError, match="shipped"):
        library_policy("imagenet")


def test_a_temperature_makes_the_deterministic_shipped_policy_explore_again():
    from ala_gym.agents.reinforce import PairPolicy, library_policy, transfer_controller

    shipped = ReinforceController.load(library_policy("digits"))
    warm = transfer_controller(train=True, num_envs=2, temperature=10.0)
    policies = []
    for controller in (shipped, warm):
        policy = PairPolicy(24, controller.config.hidden, torch.Generator())
        policy.load_state_dict(controller.initial_state)
        policies.append(policy)
    observations = torch.rand(5, 55, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(policies[1](observations), policies[0](observations) / 10.0)
    entropies = []
    for temperature in (1.0, 10.0):
        _, logs = run_digits(transfer_controller(train=True, num_envs=2, temperature=temperature))
        entropies.append(logs[0]["entropy"])
    assert entropies[0] < 0.01 < 0.05 < entropies[1]  # at 1 the policy acts deterministically: nothing to learn
    for refused in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number in \\(0, "):
            transfer_controller(temperature=refused)
    with pytest.raises(ValueError, match="temperature 1e-45 scales the policy's output layer past float32's range"):
        transfer_controller(temperature=1e-45)


def test_reward_agreement_draws_two_disjoint_subsets_of_each_size() -> None:
    from ala_gym.benchmarks.reward_agreement import disjoint_halves

    halves = disjoint_halves(50, [5, 25], seed=3)
    for size, (first, second) in halves.items():
        assert len(first) == len(second) == size and len(set(first.tolist()) | set(second.tolist())) == 2 * size
    assert set(halves[25][0].tolist()) | set(halves[25][1].tolist()) == set(range(50))
    assert torch.equal(halves[5][0], disjoint_halves(50, [5], seed=3)[5][0])  # drawn from the seed alone
    assert not torch.equal(halves[25][0], disjoint_halves(50, [25], seed=4)[25][0])


def test_reward_agreement_counts_agreements_oppositions_and_ties_of_known_rewards(tmp_path, monkeypatch) -> None:
    """Pooled over seeds: agree = same sign, ties counted (0, 0 agrees); opposite = +1 against -1; ties = the share
    of zero rewards among both halves'; agree when both non-zero = same sign among the steps without a zero."""
    from ala_gym.benchmarks import reward_agreement

    monkeypatch.setattr(reward_agreement, "RESULTS", tmp_path / "agreement.json")
    per_seed = [np.array([[1, 1], [1, -1], [0, 0], [-1, 0]]), np.array([[-1, -1], [0, 1]])]
    monkeypatch.setattr(reward_agreement, "trajectory_rewards", lambda env, kwargs, sizes, seed: {10: per_seed[seed]})
    reward_agreement.main(["--env", "ALA-Digits-v0", "--sizes", "10", "--seeds", "2"])
    (row,) = json_load(tmp_path / "agreement.json")["ALA-Digits-v0"]["rows"]
    assert row["steps"] == 6 and row["agree"] == pytest.approx(3 / 6) and row["opposite"] == pytest.approx(1 / 6)
    assert row["ties"] == pytest.approx(4 / 12) and row["agree_nonzero"] == pytest.approx(2 / 3)
    assert row["agree_per_seed"] == pytest.approx([2 / 4, 1 / 2])


def test_reward_agreement_script_compares_two_disjoint_validation_subsets(tmp_path, monkeypatch, capsys):
    from ala_gym.benchmarks import reward_agreement

    monkeypatch.setattr(reward_agreement, "RESULTS", tmp_path / "agreement.json")
    halves, scored = [], []  # the halves drawn, and the labels of every scored set, in order
    draw, score = reward_agreement.disjoint_halves, reward_agreement.error_rate
    monkeypatch.setattr(reward_agreement, "disjoint_halves", lambda *args: halves.append(draw(*args)) or halves[-1])
    monkeypatch.setattr(reward_agreement, "error_rate", lambda logits, labels: scored.append(labels) or score(logits, labels))
    kwargs = '{"total_iterations": 20, "steps_per_action": 10, "eval_points": 1, "device": "cpu"}'
    reward_agreement.main(["--env", "ALA-Digits-v0", "--sizes", "20,100", "--seeds", "2", "--env-kwargs", kwargs])
    # Each size's two halves are scored on their own images: the first evaluation of the first seed reads, per
    # size, the labels of half 0 and then of half 1, which differ.
    labels = gym.make("ALA-Digits-v0", **json.loads(kwargs)).unwrapped.data.val.labels
    first = [labels[index] for size in (20, 100) for index in halves[0][size]]
    assert not torch.equal(first[0], first[1])
    assert len(scored) > len(first) and all(torch.equal(got, expected) for got, expected in zip(scored, first, strict=False))
    rows = {row["size"]: row for row in json_load(tmp_path / "agreement.json")["ALA-Digits-v0"]["rows"]}
    assert rows[20]["steps"] == rows[100]["steps"] == 4  # 2 seeds x 2 steps
    for row in rows.values():
        assert row["agree"] + row["opposite"] <= 1 and 0 <= row["ties"] <= 1
    assert "| ALA-Digits-v0 |" in (tmp_path / "agreement.md").read_text()
    results = (tmp_path / "agreement.json").read_text()
    wrongs = {  # each refused in one line with exit status 2, the results left as they were
        "--sizes up to 180 fit two halves": ["--env", "ALA-Digits-v0", "--sizes", "200"],  # a 360-image split
        "did you mean 'ALA-Digits-v0'?": ["--env", "ALA-Digit-v0", "--sizes", "20"],
        "lr must be a finite number": ["--env", "ALA-Digits-v0", "--sizes", "20", "--env-kwargs", '{"lr": -1}'],
        "--sizes, --seeds and --threads must be positive": ["--env", "ALA-Digits-v0", "--sizes", "0"],
    }
    for message, wrong in wrongs.items():
        with pytest.raises(SystemExit) as caught:
            argv = [*wrong, "--seeds", "1", "--replace"]
            reward_agreement.main(argv if "--env-kwargs" in wrong else [*argv, "--env-kwargs", kwargs])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and message in err and err.strip().count("\n") == 0
    assert (tmp_path / "agreement.json").read_text() == results
    # The env's record is replaced only when asked: another measurement of it is refused, naming the one there.
    with pytest.raises(SystemExit) as caught:
        reward_agreement.main(["--env", "ALA-Digits-v0", "--sizes", "30", "--seeds", "1", "--env-kwargs", kwargs])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "holds a record of ALA-Digits-v0 (seeds 2, sizes 20,100" in err and "--replace" in err
    assert (tmp_path / "agreement.json").read_text() == results
    # --out writes elsewhere, the table beside it.
    reward_agreement.main(["--env", "ALA-Digits-v0", "--sizes", "20", "--seeds", "1", "--env-kwargs", kwargs,
                           "--out", str(tmp_path / "other" / "mine.json")])  # fmt: skip
    assert (tmp_path / "other" / "mine.md").is_file() and (tmp_path / "agreement.json").read_text() == results


def json_load(path):
    import json

    return json.loads(path.read_text())
