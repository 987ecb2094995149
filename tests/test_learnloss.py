"""LearnLoss (agents/learnloss.py): the selection LP on cases with known answers, its fallbacks, the anytime
loop, the on-the-fly controller on a tiny digits episode, and the tuning benchmark on a tiny budget."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

import ala_gym.agents
from ala_gym.agents.learnloss import (
    LearnLossConfig,
    LearnLossPhi,
    LearnLossPhiConfig,
    Trial,
    best_trial,
    confusion_features,
    hull_selections,
    learn_loss,
    propose,
    random_lambda,
    select_loss,
    weights_to_phi,
)
from ala_gym.benchmarks import learnloss as bench
from ala_gym.core.losses import phi_loss
from ala_gym.core.machine import source_digest

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")

# Three models in one tuned component: loss = data + lambda * reg. Model 2 (the best) beats model 0 for
# lambda >= 2/3 and model 1 for lambda <= 3/2; in the box [0, 1] the loss margin min(0.6 lambda - 0.4,
# 0.6 - 0.4 lambda) is largest at lambda = 1 (t = 0.2); the region [2/3, 1] has its centre at 5/6 (radius 1/6).
LINE = np.array([[0.0, 1.0], [1.0, 0.0], [0.4, 0.4]])
LINE_ERRORS = np.array([0.5, 0.5, 0.1])


def test_selection_lp_known_answers():
    plain = select_loss(LINE, LINE_ERRORS, np.array([1.0]), centre=False)
    assert (plain.model, plain.rank) == (2, 0)
    np.testing.assert_allclose([plain.lam[0], plain.margin], [1.0, 0.2], atol=1e-9)
    centre = select_loss(LINE, LINE_ERRORS, np.array([1.0]), centre=True)
    np.testing.assert_allclose([centre.lam[0], centre.margin], [5 / 6, 1 / 6], atol=1e-9)
    # The box bound scales the answer: with U = 0.5 the region is empty for model 2 below 2/3.
    assert select_loss(LINE, LINE_ERRORS, np.array([0.5]), centre=True).model != 2


@pytest.mark.parametrize("seed", range(5))
def test_selection_lp_makes_the_best_model_the_minimiser(seed):
    """Random models; the best is, by construction, the minimiser under a known lambda*: the LP must find a
    lambda (not necessarily lambda*) under which the best model has the strictly lowest loss."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 1, size=(12, 3))
    lam_star = np.array([0.3, 0.7])
    errors = rng.uniform(0.2, 0.9, size=12)
    errors[np.argmin(features @ np.concatenate([[1.0], lam_star]))] = 0.1
    for centre in (False, True):
        selection = select_loss(features, errors, np.array([1.0, 1.0]), centre=centre)
        assert selection.rank == 0 and selection.margin > 0
        losses = features @ np.concatenate([[1.0], selection.lam])
        assert np.argmin(losses) == np.argmin(errors)
        assert np.all(selection.lam >= -1e-12) and np.all(selection.lam <= 1 + 1e-12)


def test_best_model_off_the_hull_falls_back_to_the_next_best():
    # (0.6, 0.6) lies above the segment from (0, 1) to (1, 0): no lambda makes it the minimiser.
    features = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.6]])
    selection = select_loss(features, np.array([0.3, 0.5, 0.1]), np.array([1.0]))
    assert (selection.model, selection.rank) == (0, 1)
    np.testing.assert_allclose(selection.lam, [0.5])  # model 0 wins on all of [0, 1]: the centre


def test_degenerate_cases_give_a_defined_result():
    upper = np.array([1.0, 1.0])
    equal = select_loss(np.ones((4, 3)), np.array([0.3, 0.1, 0.2, 0.4]), upper)
    assert equal.lam is None and equal.model == 1 and equal.margin == np.inf
    # No preference is the last answer: the models further down are the same, walking on would find nothing.
    assert list(hull_selections(np.ones((4, 3)), np.array([0.3, 0.1, 0.2, 0.4]), upper)) == [equal]
    nothing = select_loss(np.full((3, 3), np.nan), np.array([0.1, 0.2, 0.3]), upper)
    assert nothing.lam is None and nothing.model is None and nothing.rank == -1
    # The best model has the same regulariser values as another model but a higher data term: dominated.
    dominated = select_loss(np.array([[1.0, 0.5, 0.5], [0.5, 0.5, 0.5], [0.7, 0.0, 1.0]]), np.array([0.1, 0.2, 0.3]), upper)
    assert dominated.model != 0
    one = select_loss(np.ones((1, 3)), np.array([0.1]), upper)
    assert one.lam is None and one.model == 0
    # The loop turns "no choice" into a random lambda in the box, never a crash.
    config = LearnLossConfig(upper=(1.0, 1.0), budget=6)
    trials = learn_loss(lambda lam: (np.ones(3), 0.5, {}), config, np.random.default_rng(0))
    assert [t.source for t in trials] == ["initial"] * 3 + ["explore"] * 3
    assert all(np.all((t.lam > 0) & (t.lam <= 1)) for t in trials)
    with pytest.raises(ValueError, match="features must be"):
        select_loss(np.ones((3, 2)), np.ones(3), upper)


@pytest.mark.parametrize("upper", [(1.0, 0.0), (1.0, -0.5)])
def test_box_bounds_that_are_not_positive_are_refused(upper: tuple[float, float]) -> None:
    """The LP's box is ``[0, U]``: a bound that is not positive is refused by the LP, and by the loop's config
    before any training run (alike an infinite or NaN one, which no random lambda can be drawn under)."""
    with pytest.raises(ValueError, match=f"box bounds must be positive, got {re.escape(str(np.array(upper)))}"):
        select_loss(np.ones((3, 3)), np.array([0.1, 0.2, 0.3]), np.array(upper))
    for bounds in (upper, (1.0, np.inf), (np.nan,), ()):
        with pytest.raises(ValueError, match="upper must hold a positive, finite box bound per tuned weight, got"):
            LearnLossConfig(upper=bounds)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("budget", 0, "budget must be an integer >= 1, got 0"),
        ("budget", 2.5, "budget must be an integer >= 1, got 2.5 (float)"),
        ("initial_runs", 0, "initial_runs must be an integer >= 1, got 0"),
        ("log_low", 0.0, "log_low must be a finite number in (0, 1], got 0.0"),
        ("log_low", 2.0, "log_low must be a finite number in (0, 1], got 2.0"),
        ("margin_tol", float("nan"), "margin_tol must be a finite number in [0, inf), got nan"),
        ("repeat_rtol", -0.1, "repeat_rtol must be a finite number in [0, inf), got -0.1"),
    ],
)
def test_the_loops_other_settings_are_refused_by_name(field: str, value: float, message: str) -> None:
    """A budget of no run, no initial run, a log-uniform range from 0 and tolerances that are not non-negative
    numbers fail at the config with one line naming the setting, before any training run."""
    with pytest.raises(ValueError) as caught:
        LearnLossConfig(**{field: value})
    assert str(caught.value) == message


def grid_family() -> tuple[np.ndarray, np.ndarray]:
    """An idealised "easy" case: models theta on a 101 x 101 grid in [0, 1]^2 with components
    ``[||theta - 1||^2, theta_1^2, theta_2^2]``; "training" with lambda returns the grid point minimising the
    loss (near ``1 / (1 + lambda)``), and the error of a model is its loss under a hidden lambda* = (3, 0.5)
    minus the minimum, so exactly one of the 10,201 models has error 0."""
    axis = np.linspace(0.0, 1.0, 101)
    theta = np.array(np.meshgrid(axis, axis, indexing="ij")).reshape(2, -1).T
    features = np.column_stack([((theta - 1) ** 2).sum(1), theta[:, 0] ** 2, theta[:, 1] ** 2])
    errors = features @ np.array([1.0, 3.0, 0.5])
    return features, errors - errors.min()


def grid_train(lam: np.ndarray) -> tuple[np.ndarray, float, dict]:
    features, errors = grid_family()
    j = int(np.argmin(features @ np.concatenate([[1.0], lam])))
    return features[j], float(errors[j]), {"model": j}


@pytest.mark.parametrize("seed", range(3))
def test_anytime_loop_returns_its_best_and_finds_the_optimum_in_the_easy_case(seed):
    config = LearnLossConfig(upper=(10.0, 10.0), budget=30)
    seen = []
    trials = learn_loss(grid_train, config, np.random.default_rng(seed), on_trial=seen.append)
    assert seen == trials and len(trials) == 30
    assert [t.source for t in trials[:3]] == ["initial"] * 3 and trials[3].source == "lp"
    for n in range(1, len(trials) + 1):  # anytime: every prefix's answer is that prefix's best
        assert best_trial(trials[:n]).error == min(t.error for t in trials[:n])
    assert best_trial(trials).error == 0.0  # the one optimal model of 10,201 was found
    # Random search with the same draws and budget does not find it: the LP, not luck, did.
    rng = np.random.default_rng(seed)
    assert min(grid_train(random_lambda(config, rng))[1] for _ in range(30)) > 0.0


def test_anytime_loop_is_seeded():
    config = LearnLossConfig(upper=(10.0, 10.0), budget=8)
    runs = [[t.lam.tolist() for t in learn_loss(grid_train, config, np.random.default_rng(s))] for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_tried_proposal_moves_to_the_next_models_region_then_to_a_random_lambda():
    config = LearnLossConfig(upper=(1.0,), budget=5)
    lams = [0.0, 1.0, 5 / 6]  # the best model's centre (5/6) is tried already
    trials = [Trial(np.array([lam]), f, e, "initial", 0.0) for lam, f, e in zip(lams, LINE, LINE_ERRORS)]
    lam, source = propose(trials, config, np.random.default_rng(0))
    assert source == "lp"
    np.testing.assert_allclose(lam, [1 / 3])  # model 0 wins on [0, 2/3]: its centre
    trials.append(Trial(np.array([1 / 3]), LINE[0], LINE_ERRORS[0], "lp", 0.0))  # model 1 wins nowhere in [0, 1]
    lam, source = propose(trials, config, np.random.default_rng(0))
    assert source == "explore" and 0 < lam[0] <= 1


# ---------------------------------------------------------------------- on the fly
def test_confusion_features_are_the_components_of_the_linear_phi_loss():
    """On a class-balanced batch, the env's loss under Phi = I + offdiag(s + c) equals (1, s, c) . features."""
    generator = torch.Generator().manual_seed(0)
    num_classes, per_class = 4, 6
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    logits = torch.randn(len(labels), num_classes, generator=generator, dtype=torch.float64)
    neg_log = -torch.log_softmax(logits, 1)
    confusion = torch.stack([neg_log[labels == i].mean(0) for i in range(num_classes)]).numpy()
    weights = np.array([0.02, 0.01, 0.0, 0.03, 0.02, 0.01, 0.0])  # s, then c_01, c_02, c_03, c_12, c_13, c_23
    phi = weights_to_phi(weights, num_classes)
    loss = float(phi_loss(logits, labels, torch.from_numpy(phi), negative_floor=None))
    assert loss == pytest.approx(confusion_features(confusion) @ np.concatenate([[1.0], weights]), rel=1e-12)


def infos_for(confusions, errors, iteration):
    return {"phi": np.eye(3)[None], "iteration": np.array([iteration]), "confusion": np.array([confusions]),
            "val_metric_discounted": np.array([errors])}


def fake_envs(metric: str):
    """One child's envs as the controller sees them: a size and the env's metric."""
    return type("Envs", (), {"num_envs": 1, "get_attr": lambda self, name: (metric,)})()


def test_controller_reads_accuracy_as_negated_error():
    controller = LearnLossPhi()
    controller.begin(fake_envs("accuracy"), seed=0)
    controller.prescribe_phi(np.zeros((1, 3, 24)), infos_for(np.ones((3, 3)), 0.8, 0))
    assert controller.errors == [[-0.8]]


def test_controller_moves_phi_when_an_earlier_checkpoint_was_better():
    controller = LearnLossPhi(LearnLossPhiConfig(smoothing_max=0.02, pair_max=0.03, rate=1.0))
    controller.begin(fake_envs("error"), seed=0)
    observations = np.zeros((1, 3, 24))
    confident = np.array([[0.3, 4.0, 4.0], [4.0, 0.3, 4.0], [4.0, 4.0, 0.3]])
    soft = np.array([[0.4, 1.5, 1.5], [1.5, 0.4, 1.5], [1.5, 1.5, 0.4]])
    phi = controller.prescribe_phi(observations, infos_for(soft, 0.2, 0))
    np.testing.assert_array_equal(phi[0], np.eye(3))  # one checkpoint: nothing to prefer, cross-entropy
    # A later, more confident checkpoint with a lower data term but a higher error: the LP prefers the
    # earlier one, which only off-diagonal weight can make the minimiser.
    phi = controller.prescribe_phi(observations, infos_for(confident, 0.3, 5))[0]
    assert np.allclose(phi, phi.T) and np.all(np.diag(phi) == 1)
    assert np.all(phi[~np.eye(3, dtype=bool)] > 0) and phi.max() <= 1.0
    assert np.all(phi[~np.eye(3, dtype=bool)] <= 0.05 + 1e-12)


def test_controller_sees_its_last_window_of_checkpoints_and_forgets_them_when_a_run_restarts(monkeypatch):
    """With ``window`` the LP gets the last checkpoints' components beside their own errors; a child back at
    iteration 0 (the vector env restarted it) starts from cross-entropy with no checkpoints."""
    from ala_gym.agents import learnloss as learnloss_module

    seen = []
    select = learnloss_module.select_loss
    monkeypatch.setattr(learnloss_module, "select_loss", lambda features, errors, *rest: seen.append((features, errors)) or select(features, errors, *rest))
    controller = LearnLossPhi(LearnLossPhiConfig(window=2, rate=1.0))
    controller.begin(fake_envs("error"), seed=0)
    confusions = [np.full((3, 3), value) + np.eye(3) for value in (1.0, 2.0, 3.0)]
    for step, (confusion, error) in enumerate(zip(confusions, (0.5, 0.4, 0.3))):
        controller.prescribe_phi(np.zeros((1, 3, 24)), infos_for(confusion, error, 5 * step))
    features, errors = seen[-1]
    np.testing.assert_array_equal(errors, [0.4, 0.3])
    np.testing.assert_array_equal(features, [confusion_features(confusions[1]), confusion_features(confusions[2])])
    phi = controller.prescribe_phi(np.zeros((1, 3, 24)), infos_for(confusions[0], 0.9, 0))  # a restarted child
    assert controller.errors == [[0.9]] and np.array_equal(phi[0], np.eye(3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(smoothing_max=0.6, pair_max=0.5), "smoothing_max \\+ pair_max must be at most 1"),
    (dict(window=1), "window must be None \\(every step\\) or at least 2"),
    (dict(rate=0.0), "0 < rate <= 1"),
])  # fmt: skip
def test_controller_settings_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnLossPhiConfig(**kwargs)


def test_a_model_on_the_hulls_edge_is_no_choice_and_a_diverged_run_is_never_the_best():
    """A model that is a minimiser only on the boundary of the box (margin 0) does not count: the LP moves on
    to the next model it can make the strict minimiser. A run with a NaN error never counts as the best."""
    features = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # the best model lies between the other two
    selection = select_loss(features, np.array([0.1, 0.2, 0.3]), np.array([1.0]), centre=False)
    assert selection.model == 2 and selection.lam == pytest.approx([1.0]) and selection.margin == pytest.approx(1.0)
    trials = [Trial(np.ones(1), np.zeros(2), error, "lp", 0.0) for error in (float("nan"), 0.3, 0.2)]
    assert best_trial(trials).error == 0.2


def test_controller_runs_a_tiny_digits_episode_with_valid_phi_and_is_seeded():
    assert ala_gym.agents.CONTROLLERS["learnloss"]().env_kwargs() == {"loss_form": "linear"}
    runs = []
    for _ in range(2):
        controller = ala_gym.agents.CONTROLLERS["learnloss"]()
        envs = controller.make_envs("ALA-Digits-v0", **{**TINY, "total_iterations": 20})
        try:
            records = controller.run(envs, seed=1)
        finally:
            envs.close()
        runs.append(records)
    (record,) = runs[0]
    assert len(record.phi) == 4 and not record.diverged and 0 <= record.test_metric <= 1
    for phi in np.array(record.phi):
        assert np.allclose(phi, phi.T) and np.all(np.diag(phi) == 1)
        assert np.all(phi[~np.eye(10, dtype=bool)] >= 0) and np.all(phi[~np.eye(10, dtype=bool)] <= 0.05 + 1e-9)
    assert runs[0][0].phi == runs[1][0].phi and runs[0][0].test_metric == runs[1][0].test_metric


# ---------------------------------------------------------------------- the tuning benchmark
def test_tuning_curves_report_the_test_error_of_the_best_validation_model_so_far() -> None:
    """After each training run: the lowest validation error yet, the test error of that run's model (the first
    on ties, never a later or a test-selected one), the seconds spent; and the runs needed to reach a target."""
    trials = [{"val_error": v, "test_error": t, "fit_s": 1.0, "propose_s": 0.5}
              for v, t in [(0.3, 0.31), (0.2, 0.25), (0.4, 0.10), (0.2, 0.05), (0.1, 0.12)]]  # fmt: skip
    val, test, seconds = bench.curves({"trials": trials})
    np.testing.assert_allclose(val, [0.3, 0.2, 0.2, 0.2, 0.1])
    np.testing.assert_allclose(test, [0.31, 0.25, 0.25, 0.25, 0.12])
    np.testing.assert_allclose(seconds, [1.5, 3.0, 4.5, 6.0, 7.5])
    assert bench.runs_to_reach({"trials": trials}, 0.2) == 2 and bench.runs_to_reach({"trials": trials}, 0.05) is None


def test_the_summary_counts_runs_to_reach_the_comparators_median_with_a_miss_as_budget_plus_one() -> None:
    """Target: the median over seeds of random search's final best validation error (0.25 here). LearnLoss reaches
    it at run 2 on one seed and never on the other (counted 5, budget + 1): median 3.5; random search 5 and 4:
    median 4.5; the ratio is the comparator's median over LearnLoss's."""

    def run(method: str, seed: int, val: list[float]) -> dict:
        trials = [{"val_error": v, "test_error": v + 0.01, "fit_s": 1.0, "propose_s": 0.0, "source": "random"} for v in val]
        return {"dataset": "digits", "method": method, "seed": seed, "budget": 4, "trials": trials}

    runs = [run("random", 0, [0.5, 0.4, 0.3, 0.3]), run("random", 1, [0.5, 0.5, 0.5, 0.2]),
            run("learnloss", 0, [0.5, 0.2, 0.4, 0.4]), run("learnloss", 1, [0.6, 0.6, 0.6, 0.6])]  # fmt: skip
    summary = bench.summarize(runs, budget=4)["digits"]
    assert summary["methods"]["random"]["best_val_per_seed"] == [0.3, 0.2]
    assert summary["methods"]["learnloss"]["test_per_seed"] == pytest.approx([0.21, 0.61])
    reach = summary["runs_to_reach"]["random"]
    assert reach["target_val_error"] == pytest.approx(0.25)
    assert reach["runs_per_seed"] == {"learnloss": [2, None], "random": [None, 4]}
    assert reach["median_runs"] == {"learnloss": 3.5, "random": 4.5} and reach["ratio"] == pytest.approx(4.5 / 3.5)
    assert "tpe" not in summary["runs_to_reach"]  # no TPE runs: no comparison with it


def test_tuning_benchmark_writes_runs_table_plot_and_resumes(tmp_path, monkeypatch, request):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    request.addfinalizer(partial(torch.set_num_threads, torch.get_num_threads()))  # the later tests keep theirs
    torch.set_num_threads(1)
    summary = bench.run_benchmark(["digits"], list(bench.METHODS), [0, 1], 5, "tiny", problem_kwargs={"train_size": 300})
    out = tmp_path / "tiny"
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == sorted(
        f"digits-{m}-seed{s}.json" for m in bench.METHODS for s in (0, 1)
    )
    assert (out / "best_val_error.png").exists() and "runs to reach" in (out / "table.md").read_text()
    runs = json.loads((out / "results.json").read_text())["runs"]
    by_key = {(r["method"], r["seed"]): r for r in runs}
    for run in runs:
        assert len(run["trials"]) == 5 and run["source"] == source_digest()
        val, test, seconds = bench.curves(run)
        assert np.all(np.diff(val) <= 0) and np.all(np.diff(seconds) >= 0)
        assert val[-1] == min(t["val_error"] for t in run["trials"])
    # LearnLoss starts from random search's first three lambdas (same seed), then chooses its own.
    for seed in (0, 1):
        lams = [[t["lam"] for t in by_key[(m, seed)]["trials"]] for m in ("learnloss", "random")]
        assert lams[0][:3] == lams[1][:3] and lams[0][3:] != lams[1][3:]
    assert set(summary["digits"]["runs_to_reach"]) == {"random", "tpe"}
    # Resuming: every run file exists, so nothing is trained again.
    monkeypatch.setattr(bench, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    bench.run_benchmark(["digits"], list(bench.METHODS), [0, 1], 5, "tiny", problem_kwargs={"train_size": 300})


def test_a_tuning_table_is_never_shrunk_or_rebudgeted_by_another_plan(tmp_path, monkeypatch, capsys) -> None:
    """A folder's results.json (a clone holds the committed one without its run files) is not rewritten by a plan
    that leaves out its runs or has another budget: one line, exit 2, before any training; a larger plan adds."""
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "fit", lambda *args, **kwargs: pytest.fail("trained despite the refusal"))
    out = tmp_path / "learnloss"
    out.mkdir()
    held = [{"dataset": d, "method": m, "seed": k} for d in ("digits", "cifar10") for m in ("random", "tpe") for k in (0, 1)]
    (out / "results.json").write_text(json.dumps({"header": {"budget": 20}, "runs": held}))
    before = (out / "results.json").read_text()
    cases = {
        ("--datasets", "digits", "--methods", "random,tpe", "--seeds", "2", "--budget", "20"): "datasets ['cifar10']",
        ("--datasets", "digits,cifar10", "--methods", "random,tpe", "--seeds", "1", "--budget", "20"): "seeds [1]",
        ("--datasets", "digits,cifar10", "--methods", "random,tpe", "--seeds", "2", "--budget", "4"): "--budget 4, but",
    }
    for argv, named in cases.items():
        with pytest.raises(SystemExit) as caught:
            bench.main(list(argv))
        err = capsys.readouterr().err
        assert caught.value.code == 2 and err.count("\n") == 1 and named in err and "--name a folder of its own" in err
    assert (out / "results.json").read_text() == before
    bench.check_same_plan(out, ["digits", "cifar10", "fashion-mnist"], ["random", "tpe", "learnloss"], [0, 1, 2], 20)
    with pytest.raises(SystemExit) as caught:  # the folder of every result, not one of its own
        bench.main(["--datasets", "digits", "--methods", "random", "--seeds", "1", "--budget", "4", "--name", "."])
    assert caught.value.code == 2 and "which holds other results; name a folder of its own" in capsys.readouterr().err


def test_the_tables_script_line_names_datasets_and_methods_other_than_the_defaults() -> None:
    assert bench.script_options({"datasets": list(bench.DATASETS), "methods": list(bench.METHODS)}) == ""
    assert bench.script_options({}) == ""  # a header from before they were recorded
    assert bench.script_options({"datasets": ["digits"], "methods": list(bench.METHODS)}) == " --datasets digits"


@pytest.mark.parametrize("dataset, features, test_images", [("fashion-mnist", 14 * 14, 50), ("cifar10", 3 * 8 * 8, 20)])
def test_image_datasets_become_pooled_pixels_standardised_on_the_training_subsample(
    dataset, features, test_images, tiny_fashion_mnist_dir, tiny_cifar_dir, monkeypatch
) -> None:
    """Fashion-MNIST's 28x28 images pooled 2x2 (196 features), the CIFAR-10 subset's 3x32x32 pooled 4x4 (192), each
    read from the folder given (the tiny sets' whole test splits); features standardised with the training
    subsample's mean and std."""
    from ala_gym.core.data import load_fashion_mnist

    # The tiny folder holds 200 training images: fewer than the loader's default validation split.
    monkeypatch.setattr(bench, "load_fashion_mnist", partial(load_fashion_mnist, val_size=50))
    problem = bench.load_problem(dataset, str(tiny_fashion_mnist_dir), str(tiny_cifar_dir), train_size=60)
    assert problem.x_train.shape == (60, features) and problem.x_test.shape == (test_images, features)
    assert problem.x_val.shape[1] == features
    assert problem.num_classes == 10 and problem.x_train.dtype == torch.float64
    assert torch.allclose(problem.x_train.mean(0), torch.zeros(features, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--budget", "3"]])
def test_tuning_cli_refuses_no_seeds_or_a_budget_below_four(argv, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "fit", lambda *args, **kwargs: pytest.fail("trained despite bad input"))
    with pytest.raises(SystemExit) as caught:
        bench.main(["--datasets", "digits", "--methods", "random", *argv])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("--seeds must be >= 1 and --budget >= 4 (LearnLoss starts with 3 random runs)")
    assert not list(tmp_path.iterdir())


def test_tuning_cli_refuses_bad_input_in_one_line():
    result = subprocess.run([sys.executable, "-m", "ala_gym.benchmarks.learnloss", "--datasets", "mnist"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown ['mnist']" in result.stderr and "Traceback" not in result.stderr


def test_the_tuning_benchmarks_functions_name_a_dataset_or_method_they_do_not_have() -> None:
    """``load_problem`` and ``tune`` are callable on their own (the command line checks its choices first): an
    unknown name is a ValueError listing the names they take, not a run of another method."""
    with pytest.raises(ValueError, match=re.escape(f"unknown dataset 'mnist'; choose from {bench.DATASETS}")):
        bench.load_problem("mnist")
    with pytest.raises(ValueError, match=re.escape(f"unknown method 'cma'; choose from {bench.METHODS}")):
        bench.tune("cma", lambda lam: None, LearnLossConfig(budget=1), seed=0)


def test_a_model_that_beats_the_others_everywhere_leaves_no_preference_with_the_centre() -> None:
    """With the Chebyshev centre, a model whose only rival has the same regulariser values and a higher data term
    is the minimiser for every lambda: no preference (no lambda, margin inf), not the centre of the box."""
    selections = list(hull_selections(np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), np.array([0.1, 0.2]), np.array([1.0, 1.0])))
    assert len(selections) == 1
    assert selections[0].lam is None and selections[0].model == 0 and selections[0].margin == np.inf


def test_a_margin_of_exactly_the_tolerance_does_not_count() -> None:
    """A model counts as on the hull only with a margin strictly above ``margin_tol``: with a tolerance of 0, the
    model minimising the loss only at the box's edge (margin 0) is still passed over."""
    features = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    selection = select_loss(features, np.array([0.1, 0.2, 0.3]), np.array([1.0]), centre=False, margin_tol=0.0)
    assert selection.model == 2 and selection.rank == 2


@pytest.mark.parametrize("shift", [0.00995, 0.0102])
def test_a_proposal_repeats_a_tried_lambda_within_repeat_rtol_of_the_larger_of_the_two(shift: float) -> None:
    """The best model's centre (5/6) was tried at ``5/6 * (1 - shift)``. Within 1 % of the larger value (the
    proposal's) it counts as tried and the next model's centre (1/3) is proposed; beyond it, 5/6 itself."""
    config = LearnLossConfig(upper=(1.0,), budget=5)
    lams = [0.0, 1.0, 5 / 6 * (1 - shift)]
    trials = [Trial(np.array([lam]), f, e, "initial", 0.0) for lam, f, e in zip(lams, LINE, LINE_ERRORS)]
    lam, chosen = propose(trials, config, np.random.default_rng(0))
    assert chosen == "lp"
    np.testing.assert_allclose(lam, [1 / 3 if shift <= config.repeat_rtol else 5 / 6], atol=1e-9)


def test_controller_moves_its_weights_the_rate_of_the_way_to_the_lps_answer() -> None:
    """From cross-entropy, one step at rate 1/2 sets Phi's off-diagonal half way to what rate 1 sets it to."""
    confident = np.array([[0.3, 4.0, 4.0], [4.0, 0.3, 4.0], [4.0, 4.0, 0.3]])
    soft = np.array([[0.4, 1.5, 1.5], [1.5, 0.4, 1.5], [1.5, 1.5, 0.4]])
    off = {}
    for rate in (1.0, 0.5):
        controller = LearnLossPhi(LearnLossPhiConfig(rate=rate))
        controller.begin(fake_envs("error"), seed=0)
        controller.prescribe_phi(np.zeros((1, 3, 24)), infos_for(soft, 0.2, 0))
        off[rate] = controller.prescribe_phi(np.zeros((1, 3, 24)), infos_for(confident, 0.3, 5))[0] - np.eye(3)
    assert np.all(off[1.0][~np.eye(3, dtype=bool)] > 0)
    np.testing.assert_allclose(off[0.5], 0.5 * off[1.0], rtol=1e-12)
