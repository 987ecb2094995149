"""Behaviour cloning: fit the pair-shared policy to another controller's actions.

Evolution strategies (:mod:`ala_gym.agents.meta_train`) search the policy's parameters from wherever they
start; from a random or near-constant policy the search has not found a policy that uses the progress
feature (``benchmarks/README.md``). A schedule written by hand can: ``phi-ramp(follow=true)`` steps every
off-diagonal entry towards a ramp from the entry's value and progress alone, which is what the pair-shared
policy sees. This module turns such a controller into a policy file, so that the search can start from it
(``meta_train --init-policy``) or the benchmark can run it frozen (``reinforce-transfer-frozen(policy=...)``).
The teacher is a declared prior, not something learned: its provenance, written beside the policy, names it.

Read top to bottom: the config, the rollouts that gather the teacher's labels, the fit, the command line.

* Rollouts: ``num_envs`` children of ``env`` train once at each horizon of ``horizons`` (so that the policy
  meets progress at several rates), the teacher choosing the actions. With ``explore`` a fraction of the
  executed actions is drawn uniformly instead, while the teacher's label is kept for every state, so that the
  data covers the states a clone's own mistakes lead to (the idea of DAgger, in one round). Only the rows an
  action can move are kept (``movable_rows``; the env ignores the others).
* Fit: full-batch cross-entropy of :class:`ala_gym.agents.reinforce.PairPolicy`'s logits on the labels, with
  Adam; the agreement (the fraction of rows whose most likely action is the teacher's) is reported.
* Draws: the env seeds, the exploration and the policy's initial weights all come from ``seed`` through
  their own generators.

``python -m ala_gym.agents.imitate --teacher phi-ramp --teacher-kwargs '{"start": 0.1, "end": 0.0, "follow":
true}' --env ALA-Digits-v0 --save runs/ramp.pt``
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents import cli, factory_target, resolve_controller
from ala_gym.agents.meta_train import OWN_ENV_KEYWORDS
from ala_gym.agents.reinforce import N_ACTIONS, PairPolicy, ReinforceConfig, save_policy
from ala_gym.core.checks import FLOAT32_MAX, check_int, check_real, check_seed
from ala_gym.core.data import DataError, with_data_home
from ala_gym.core.machine import cpu_model
from ala_gym.envs.spec import spec_keywords
from ala_gym.wrappers import ChildAttributes

RUN_ONLY_TEACHERS = ("ppo", "a2c", "adalfl")
"""The registered controllers that act only inside their own ``run`` (their classes set
:attr:`ala_gym.agents.base.Controller.acts_in_any_state` False: Stable-Baselines3 builds its model there, AdaLFL
trains the child itself), whereas :func:`teacher_rows` steps the children itself: no teachers. Named here so that
the config refuses them before anything is imported or built; a controller of one's own is asked its attribute
once it is built, before any rollout."""


@dataclass(frozen=True)
class ImitateConfig:
    """What to clone, on which children, and how to fit."""

    teacher: str = "phi-ramp"
    """The controller to clone, as :func:`ala_gym.agents.resolve_controller` names it (registered, or
    ``package.module:Factory``), whose :meth:`ala_gym.agents.base.Controller.act` chooses the actions. One that
    imposes Phi has no actions to clone; one that acts only inside its own run (``acts_in_any_state`` False:
    ppo, a2c and adalfl, :data:`RUN_ONLY_TEACHERS`) cannot be cloned either."""
    teacher_kwargs: dict[str, Any] = field(default_factory=lambda: {"start": 0.1, "end": 0.0, "follow": True})
    """Keywords of the teacher's factory (these are the default teacher's; on the command line, another
    ``--teacher`` without ``--teacher-kwargs`` gets none)."""
    env: str = "ALA-Digits-v0"
    """The env id whose children the teacher drives."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further env keywords of every child (``model``, ``train_size``, ...; a relative ``data_root`` lies under
    :func:`ala_gym.core.data.data_home`)."""
    horizons: tuple[int, ...] = (400, 1200)
    """The children's ``total_iterations``: one run of every child at each."""
    steps_per_action: int = 20
    """K of every child."""
    num_envs: int = 2
    """Children per run."""
    explore: float = 0.2
    """Fraction of the executed actions drawn uniformly instead of the teacher's (its label is kept)."""
    hidden: int = 32
    """Units in each of the policy's hidden layers (as :class:`ala_gym.agents.reinforce.ReinforceConfig.hidden`)."""
    epochs: int = 2000
    """Full-batch Adam steps of the fit."""
    lr: float = 0.01
    """Adam's learning rate."""
    seed: int = 0
    """Seeds the env seeds, the exploration and the policy's initial weights."""

    def __post_init__(self) -> None:
        if not self.horizons:
            raise ValueError(f"horizons must list at least one run length, got {self.horizons!r}")
        for i, horizon in enumerate(self.horizons):
            check_int(f"horizons[{i}]", horizon, 1)
        check_int("steps_per_action", self.steps_per_action, 1)
        if set_here := sorted(OWN_ENV_KEYWORDS & set(self.env_kwargs)):
            raise ValueError(f"env_kwargs sets {', '.join(set_here)}, which horizons and steps_per_action set here; "
                             "set those instead")  # fmt: skip
        check_int("num_envs", self.num_envs, 1)
        check_seed("seed", self.seed)
        check_real("explore", self.explore, 0.0, 1.0, high_open=True)
        check_int("hidden", self.hidden, 1)
        check_int("epochs", self.epochs, 1)
        check_real("lr", self.lr, 0.0, FLOAT32_MAX, low_open=True)  # the policy is float32: no larger step applies
        if self.teacher in RUN_ONLY_TEACHERS:
            raise ValueError(run_only_refusal(self.teacher))


def run_only_refusal(teacher: str) -> str:
    """Why ``teacher``, a controller that acts only inside its own run, cannot be cloned."""
    return (
        f"{teacher} chooses its actions only inside its own run, which cloning does not call; clone a controller "
        "that acts in any state it is shown, such as phi-ramp"
    )


# ---------------------------------------------------------------------- rollouts
def teacher_rows(config: ImitateConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The observation rows ``[rows, n_features]`` of the movable pairs of every child at every step of every
    run, and the teacher's action for each ``[rows]``."""
    factory = resolve_controller(config.teacher)
    try:
        parameters = list(inspect.signature(factory_target(factory)).parameters.values())
    except (TypeError, ValueError):  # unreadable: given the count, as it takes it or says so
        parameters = [inspect.Parameter("num_envs", inspect.Parameter.KEYWORD_ONLY)]
    # A teacher of a fixed child count (LearnLoss's Phi) is built without one, as its own command line builds it.
    counted = any(p.name == "num_envs" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    teacher = factory(**config.teacher_kwargs, **({"num_envs": config.num_envs} if counted else {}))
    if not teacher.acts_in_any_state:
        raise ValueError(run_only_refusal(config.teacher))
    asked = teacher.env_kwargs()  # what the teacher needs of the env (a loss form) goes over env_kwargs: not unseen
    if clashes := sorted(key for key in asked if key in config.env_kwargs and config.env_kwargs[key] != asked[key]):
        raise ValueError(f"env_kwargs sets {', '.join(f'{k}={config.env_kwargs[k]!r}' for k in clashes)}, but the teacher "
                         f"{config.teacher} trains its children with {', '.join(f'{k}={asked[k]!r}' for k in clashes)}")  # fmt: skip
    rng = np.random.default_rng(config.seed)
    states, labels = [], []
    for horizon in config.horizons:
        kwargs = {**config.env_kwargs, "total_iterations": horizon, "steps_per_action": config.steps_per_action}
        envs = gym.make_vec(config.env, num_envs=config.num_envs, **with_data_home({**kwargs, **teacher.env_kwargs()}))
        try:
            movable = np.asarray(cast(ChildAttributes, envs).get_attr("movable_rows")[0], dtype=bool)
            seed = int(rng.integers(2**31))
            teacher.begin(envs, seed)
            teacher.begin_episode(envs)  # as a run of its own starts each run (what it tracks per run)
            observations, infos = envs.reset(seed=seed)
            running = np.ones(config.num_envs, dtype=bool)  # children in their first run (the vector env autoresets)
            while running.any():
                if teacher.prescribe_phi(observations, infos) is not None:
                    raise ValueError(f"{config.teacher} imposes Phi instead of acting; clone a controller that acts")
                chosen = np.asarray(teacher.act(observations, infos))
                states.append(np.asarray(observations)[running][:, movable])
                labels.append(chosen[running][:, movable])
                random = rng.random(chosen.shape) < config.explore
                executed = np.where(random, rng.integers(N_ACTIONS, size=chosen.shape), chosen)
                observations, _, terminations, truncations, infos = envs.step(executed)
                running &= ~(terminations | truncations)
        finally:
            envs.close()
    rows = torch.as_tensor(np.concatenate(states), dtype=torch.float32)
    return rows.reshape(-1, rows.shape[-1]), torch.as_tensor(np.concatenate(labels)).reshape(-1).long()


# ---------------------------------------------------------------------- the fit
def fit_policy(states: torch.Tensor, labels: torch.Tensor, config: ImitateConfig) -> tuple[PairPolicy, float]:
    """A :class:`PairPolicy` fitted to ``labels`` on ``states``, and its agreement with them."""
    policy = PairPolicy(states.shape[-1], config.hidden, torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        optimizer.zero_grad()
        F.cross_entropy(policy(states), labels).backward()
        optimizer.step()
    with torch.no_grad():
        agreement = float((policy(states).argmax(-1) == labels).float().mean())
    return policy, agreement


def imitate(config: ImitateConfig) -> tuple[PairPolicy, dict[str, Any]]:
    """Gather the teacher's actions and fit the policy to them; the policy and what the fit gave."""
    start = time.perf_counter()
    states, labels = teacher_rows(config)
    policy, agreement = fit_policy(states, labels, config)
    counts = torch.bincount(labels, minlength=N_ACTIONS).tolist()
    return policy, {"rows": len(labels), "label_counts": counts, "agreement": agreement, "wall_seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------- command line
def argument_parser() -> argparse.ArgumentParser:
    """The command line: one option per :class:`ImitateConfig` field, and where the policy goes."""
    parser = cli.OneLineParser(description=__doc__.split("\n\n")[0])
    cli.add_dataclass_args(parser, ImitateConfig, title="ImitateConfig (what to clone, and how)")
    parser.add_argument("--save", type=cli.path_option, required=True, help="write the policy here (a reinforce policy file), and what "
                        "produced it beside it (the same name, .json)")  # fmt: skip
    return parser


def config_from_args(args: argparse.Namespace) -> ImitateConfig:
    """The config the parsed options give: a ``--teacher`` other than the default's without ``--teacher-kwargs``
    gets no keywords (the default ones are phi-ramp's)."""
    if hasattr(args, "teacher") and not hasattr(args, "teacher_kwargs"):
        args.teacher_kwargs = {}
    return cast(ImitateConfig, cli.dataclass_from_args(ImitateConfig, args))


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        cli.check_save_file(args.save, beside=(cli.PROVENANCE_SUFFIX,))
        spec_keywords(config.env)  # an unknown id, or one of no ALA env, named with the package's ids
        policy, outcome = imitate(config)
        save_policy(args.save, policy, ReinforceConfig(hidden=config.hidden))
    except (ValueError, TypeError, gym.error.Error, DataError) as exc:  # JSONDecodeError and CheckpointError are ValueErrors
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        cli.interrupted(parser.prog, "nothing was saved; the same command starts again")
    record = {
        "command": cli.recorded_command("ala_gym.agents.imitate", argv),
        "config": {**asdict(config), "horizons": list(config.horizons)},
        **outcome,
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"ala_gym": ala_gym.__version__, "torch": torch.__version__},
    }
    cli.write_provenance(args.save, record)
    print(f"policy cloned from {config.teacher} (agreement {outcome['agreement']:.3f}) written to {args.save}", file=sys.stderr)


if __name__ == "__main__":
    main()
