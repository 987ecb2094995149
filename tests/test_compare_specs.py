"""Controller specs of the benchmark: config keywords in parentheses, env keywords after ``@``, child counts
from what each controller declares, and seed strides that keep the children of different seeds apart."""

from __future__ import annotations

import pytest

from ala_gym.agents.baselines import UniformPhi
from ala_gym.agents.reinforce import ReinforceController
from ala_gym.benchmarks.compare import ComparisonError, build_controller, parse_config, parse_controller
from ala_gym.benchmarks.compare.run import run_one
from ala_gym.benchmarks.compare.specs import check_row, split_controllers

TINY = dict(total_iterations=4, steps_per_action=2, eval_points=1, device="cpu")


def test_specs_split_into_controller_config_and_env_keywords():
    name, env_kwargs = parse_controller("reinforce-multi(lr=0.03;pair_credit=false)@beta=0.3;step_scaling=entry")
    assert env_kwargs == {"beta": 0.3, "step_scaling": "entry"}
    assert parse_config(name) == ("reinforce-multi", {"lr": 0.03, "pair_credit": False})
    with pytest.raises(ComparisonError, match="key=value"):
        parse_config("reinforce(lr)")
    with pytest.raises(ComparisonError, match=r"controller 'reinforce\(lr=0.1': write config keywords as name\(key=value"):
        parse_config("reinforce(lr=0.1")  # the closing parenthesis left out
    # Spaces around names, keys and values are the writer's layout, not part of them.
    assert parse_config(" reinforce-multi( lr = 0.03; pair_credit=false )") == ("reinforce-multi", {"lr": 0.03, "pair_credit": False})
    assert split_controllers("ce, random ,phi-uniform(off_diagonal=0.03)") == ["ce", "random", "phi-uniform(off_diagonal=0.03)"]
    # An "@" inside the parentheses belongs to a value (a policy path), not to the env keywords.
    name, env_kwargs = parse_controller("reinforce-transfer(policy=runs/a@b.pt)@beta=0.3")
    assert parse_config(name) == ("reinforce-transfer", {"policy": "runs/a@b.pt"}) and env_kwargs == {"beta": 0.3}


def test_build_controller_applies_keywords_and_child_counts():
    learned = build_controller("reinforce-multi(lr=0.03)", children=3, baseline_children=5)
    assert isinstance(learned, ReinforceController) and learned.num_envs == 3 and learned.config.lr == 0.03
    single = build_controller("reinforce", children=3, baseline_children=5)
    assert single.num_envs == 1  # one child by definition: neither count applies
    fixed = build_controller("phi-uniform(off_diagonal=0.03)", children=3, baseline_children=5)
    assert isinstance(fixed, UniformPhi) and fixed.num_envs == 5 and fixed.off_diagonal == 0.03
    assert build_controller("ce").num_envs == 1
    for bad, message in [("nonsense", "unknown controller 'nonsense'"),
                         ("reinforce(no_such_field=1)", "no setting no_such_field; it takes \\["),
                         ("ce(", r"controller 'ce\(': write config keywords as name\(key=value;key=value\)"),
                         ("phi-uniform(off_diagonal=3)", r"off_diagonal must be a finite number in \[-1, 1\], got 3")]:  # fmt: skip
        with pytest.raises(ComparisonError, match=message):
            build_controller(bad)
    # The settings listed are those a row's text can set: not the config object or a saved state code passes.
    with pytest.raises(ComparisonError, match=r"it takes \['baseline',") as caught:
        build_controller("reinforce(no_such_field=1)")
    assert "'config'" not in str(caught.value) and "'initial_state'" not in str(caught.value)
    assert "'lr'" in str(caught.value)


def test_seed_stride_gives_each_run_its_own_children():
    record = run_one("ALA-Digits-v0", "ce", 2, TINY, None, baseline_children=2, seed_stride=10)
    assert record["env_seed"] == 20 and record["num_children"] == 2
    # Child 0 of run 2 is the single env seeded 20, child 1 the one seeded 21.
    alone = run_one("ALA-Digits-v0", "ce", 20, TINY, None)
    assert record["children"][0]["test_metric"] == alone["test_metric"]
    assert record["test_metric"] == pytest.approx(
        (record["children"][0]["test_metric"] + record["children"][1]["test_metric"]) / 2
    )


def test_spec_keywords_go_to_the_config_or_to_the_factory():
    from ala_gym.benchmarks.compare import build_controller

    tuned = build_controller("reinforce-transfer(temperature=10;lr=0.03)", children=2)
    assert tuned.config.lr == 0.03 and tuned.train and len(tuned.initial_state) > 0
    assert build_controller("phi-uniform(off_diagonal=-0.1;num_envs=2)").off_diagonal == -0.1


def test_a_bad_env_keyword_after_at_fails_before_any_run(tmp_path, monkeypatch):
    from ala_gym.benchmarks.compare import run

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "run_one", lambda *args, **kwargs: pytest.fail("a run started"))
    wrongs = {
        "label-smoothing@bta=0.3": "ALAClassificationEnv takes no keyword 'bta'; did you mean 'beta'\\?",
        "ce@beta=-1": "beta must be a finite number",
        "ce@train_mode=sequental": "train_mode must be one of",
    }
    for spec, message in wrongs.items():
        with pytest.raises(ComparisonError, match=message):
            run.compare("ALA-Digits-v0", ["ce", spec], [0], {"total_iterations": 20, "steps_per_action": 10}, "x",
                    baseline_children=1)
    assert not list(tmp_path.iterdir())  # no folder made, nothing claimed
    check_row("ce@train_mode=sequential;beta=0.05", "ALA-Digits-v0", {})  # good keywords pass


def test_every_preset_row_passes_the_early_env_keyword_check():
    # The check must not refuse what a row's run accepts: a controller's own keywords after @ (AdaLFL's
    # offline_steps) and the vector env's (train_mode) included.
    from ala_gym.benchmarks.compare.presets import PRESETS
    from ala_gym.benchmarks.oracle import is_oracle

    for preset in PRESETS.values():
        # The keywords are checked, not the machine: a GPU preset's on the CPU (the suite hides any GPU).
        env_kwargs = preset.get("env_kwargs", {})
        env_kwargs = {**env_kwargs, "device": "cpu"} if "device" in env_kwargs else env_kwargs
        for spec in preset["controllers"].split(","):
            if not is_oracle(spec):
                # Built as the comparison builds it: a row's own child count agrees with the preset's.
                built = build_controller(spec, preset.get("children"), preset.get("baseline_children"))
                check_row(spec, preset["env"], env_kwargs, built)


def test_keyword_values_are_typed_as_their_settings():
    # Python's spelling of a bool must not reach a flag as the text "False", which is true.
    assert build_controller("phi-ramp(follow=False)").follow is False
    assert build_controller("phi-ramp(follow=false)").follow is False
    assert build_controller("learnloss(centre=True;window=None)").config.centre is True
    assert build_controller("pbt(initial_range=[-0.05,0.05])").config.initial_range == (-0.05, 0.05)  # a tuple field
    assert split_controllers("ce,pbt(initial_range=[-0.05,0.05]),phi-ramp(start=0.1;end=0.0)") == [
        "ce", "pbt(initial_range=[-0.05,0.05])", "phi-ramp(start=0.1;end=0.0)"]  # fmt: skip
    assert split_controllers("ce@x=[1,2],ppo") == ["ce@x=[1,2]", "ppo"]  # brackets alone hold commas too
    for spec, message in {
        "adalfl(offline_steps=0.5)": "offline_steps must be int, got 0.5",
        "pbt(interval=1.5)": "interval must be int, got 1.5",
        "random(noise=\"x\")": "noise must be float, got 'x'",
        "phi-ramp(follow=\"yes\")": "follow must be bool, got 'yes'",
        "pbt(interval=True)": "interval must be int, got True",  # a bool is an int to Python, not to a setting
        "random(noise=True)": "noise must be float, got True",
    }.items():
        with pytest.raises(ComparisonError, match=message):
            build_controller(spec)


@pytest.mark.parametrize("spec, message", [
    ("learnloss(rate=-1)", "0 < rate <= 1"),
    ("learnloss(window=0)", "window must be None"),
    ("random(noise=-1)", r"noise must be a finite number in \[0, inf\)"),
    ("ppo(policy=\"foo\")", "policy must be 'pair' or 'mlp'"),
    ("ppo(batch_size=1)", "PPO needs minibatches of at least 2 transitions"),
    ("adalfl(init_path=\"/no/such/loss.pt\")", "init_path /no/such/loss.pt: no such file"),
    ("adalfl@offline_steps=-1", "offline_steps must be an integer >= 0, got -1"),  # a controller's own keyword after @
    ("fixed-loss", "unknown loss_form 'fixed'"),  # a metric-learning loss on a classification task
    ("ce@metric=accuracy", "scored by 'accuracy' and the comparison by 'error'"),  # one metric column per table
    ("reinforce-transfer(policy=3)", "policy must be str, got 3"),  # a factory function's own parameters
    ("a2c(n_epochs=8)", "n_epochs=8 set PPO's minibatch updates, which a2c does not make"),
    ("ppo(policy_device=\"cuda:99\")", "policy_device='cuda:99', but this machine has"),
    ("ce(num_envs=0)", "num_envs must be an integer >= 1, got 0"),
    ("ce(num_envs=2)", "num_envs=2 but the comparison runs such rows with 1 children \\(--baseline-children\\)"),
    ("ce@loss_form=sigmoid", "ce trains its children with loss_form='cross_entropy', but the env keywords ask loss_form='sigmoid'"),
], ids=["learnloss-rate", "learnloss-window", "random-noise", "ppo-policy", "ppo-minibatch", "adalfl-init-path",
        "adalfl-own-keyword", "controller-does-not-fit", "another-metric", "transfer-policy-type", "a2c-ppo-only",
        "absent-gpu", "no-children", "children-conflict", "row-against-controller"])  # fmt: skip
def test_a_bad_row_fails_before_any_run(spec, message, tmp_path, monkeypatch):
    from ala_gym.benchmarks.compare import run

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "run_one", lambda *args, **kwargs: pytest.fail("a run started"))
    with pytest.raises(ComparisonError, match=message):
        run.compare("ALA-Digits-v0", ["ce", spec], [0], {"total_iterations": 20, "steps_per_action": 10}, "x",
                    baseline_children=1)
    assert not list(tmp_path.iterdir())


def test_a_policy_given_beside_a_config_leaves_the_callers_config_alone():
    from ala_gym.agents.sb3 import SB3Config, SB3Controller

    config = SB3Config()
    assert SB3Controller("ppo", config, num_envs=2, policy="mlp").config.policy == "mlp" and config.policy == "pair"


def test_a_controller_refuses_a_task_it_cannot_drive_before_any_run():
    # Checked on the task's spec, which reads no data: AdaLFL's loss network scores class probabilities.
    with pytest.raises(ComparisonError, match="AdaLFL learns a loss of class probabilities"):
        check_row("adalfl", "ALA-FashionMNIST-Triplet-v0", {})
    with pytest.raises(ComparisonError, match="loss_form must be one of"):  # a Phi controller on a metric task
        check_row("pbt", "ALA-FashionMNIST-Triplet-v0", {})
    check_row("adalfl", "ALA-Digits-AUCPR-v0", {})  # a classification task scored by AUCPR: fine
