"""Meta-training by evolution strategies: the ES step climbs, antithetic children share everything but their
actions, a run resumes bit for bit, the command line writes a policy the REINFORCE controller loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ala_gym.agents.meta_train import (
    MetaTrainConfig,
    MetaTrainer,
    centered_ranks,
    es_gradient,
    generation_plan,
    main,
    meta_train,
    perturbations,
    run_children,
)
from ala_gym.agents.reinforce import ReinforceController

TINY_ENV = dict(device="cpu", batch_size=32, eval_points=2, eval_stride=5, val_subsample=200)


def tiny(**overrides) -> MetaTrainConfig:
    return MetaTrainConfig(**{"horizon": (40, 60), "population": 2, "generations": 2, "hidden": 8,
                              "env_kwargs": TINY_ENV, **overrides})  # fmt: skip


def test_the_es_step_climbs_a_known_quadratic() -> None:
    """Maximise -|theta - target|^2 with antithetic ES and Adam: theta ends near the target."""
    generator = torch.Generator().manual_seed(0)
    target = torch.tensor([1.0, -2.0, 0.5])
    theta = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=0.05)
    sigma = 0.1
    for _ in range(300):
        noise = torch.randn(8, 3, generator=generator)
        candidates = [theta.detach() + sign * sigma * eps for eps in noise for sign in (1.0, -1.0)]
        fitness = np.array([-float(((c - target) ** 2).sum()) for c in candidates])
        optimizer.zero_grad()
        theta.grad = -es_gradient(fitness, noise, sigma)
        optimizer.step()
    assert float((theta.detach() - target).norm()) < 0.15


def test_centered_ranks_ignore_the_scale() -> None:
    np.testing.assert_allclose(centered_ranks(np.array([3.0, -1e9, 10.0])), [0.0, -0.5, 0.5])
    np.testing.assert_allclose(centered_ranks(np.array([-np.inf, 1.0])), [-0.5, 0.5])  # a diverged child ranks last


def test_antithetic_children_differ_only_by_their_actions() -> None:
    """With no perturbation the two children of a pair are the same run, bit for bit (same weights, batches and
    action uniforms); different pairs differ; with a perturbation the pair's children differ."""
    config = tiny(population=2)
    trainer = MetaTrainer(config)
    plan = generation_plan(config, 0)
    assert plan["env_seeds"][0] == plan["env_seeds"][1] != plan["env_seeds"][2] == plan["env_seeds"][3]
    theta = trainer.theta.detach()
    same, phi = run_children(trainer.policy, [theta] * 4, plan, config)
    assert phi[0] == phi[1] and np.isfinite(phi).all()
    assert same[0] == same[1] and same[2] == same[3] and same[0] != same[2]
    noise = perturbations(trainer.policy, 1, 0)[0]
    apart, _ = run_children(trainer.policy, [theta + 3.0 * noise, theta - 3.0 * noise] * 2, plan, config)
    assert apart[0] != apart[1]


def test_a_generation_draws_from_the_seed_alone() -> None:
    config = tiny(tasks=("ALA-Digits-v0", "ALA-Digits-AUCPR-v0"), horizon=(40, 400))
    plans = [generation_plan(config, g) for g in range(6)]
    assert plans == [generation_plan(config, g) for g in range(6)]
    assert all(p["total_iterations"] % config.steps_per_action == 0 and 40 <= p["total_iterations"] <= 400 for p in plans)
    assert {p["task"] for p in plans} == set(config.tasks)


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path, global_rng_unchanged) -> None:
    config = tiny()
    with global_rng_unchanged():
        straight = meta_train(config)
    meta_train(tiny(generations=1), tmp_path / "state.pt")  # stopped after one generation
    resumed = meta_train(config, tmp_path / "state.pt", log_dir=str(tmp_path / "logs"))
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    assert resumed.generation == 2 and torch.equal(resumed.theta, straight.theta)
    assert [entry["fitness_mean"] for entry in resumed.history] == [entry["fitness_mean"] for entry in straight.history]


def test_the_command_line_writes_a_policy_the_controller_loads(tmp_path, capsys) -> None:
    import json

    main(["--generations", "1", "--population", "1", "--hidden", "8", "--horizon", "40,40",
          "--env-kwargs", json.dumps(TINY_ENV), "--save", str(tmp_path / "meta.pt")])  # fmt: skip
    controller = ReinforceController.load(tmp_path / "meta.pt", train=False, num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", total_iterations=40, steps_per_action=20, **TINY_ENV)
    records = controller.run(envs, seed=0)
    envs.close()
    assert len(records) == 2 and all(np.isfinite(r.test_metric) for r in records)
    with pytest.raises(SystemExit) as caught:
        main(["--tasks", "ALA-Nothing-v0", "--save", str(tmp_path / "x.pt")])
    assert caught.value.code == 2 and "Traceback" not in capsys.readouterr().err
