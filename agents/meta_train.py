"""Meta-training of the pair-shared policy by evolution strategies, on the end-of-training objective.

Read top to bottom: the config, the pieces of one generation (perturbations, children, fitness, the ES
step), the loop with its checkpoints, the command line.

The online REINFORCE controller credits each decision with the next step's improvement, which favours
what pays at once (``benchmarks/README.md``). Here the policy of :class:`ala_gym.agents.reinforce.PairPolicy` is
instead trained across many short training runs, each credited with its child's **final validation
metric** (never the test split):

* Every generation draws a task from the family (an env id of ``tasks``) and a horizon (``total_iterations``
  drawn between ``horizon[0]`` and ``horizon[1]``, then rounded down to a multiple of K and at least K, so that
  the policy meets every value of the progress feature),
  and ``population`` perturbations ``epsilon_i`` of the policy's parameters ``theta``. With
  ``tasks_per_generation`` above one it draws that many distinct tasks, each with its own horizon and children,
  all under the same perturbations. The children get
  ``env_kwargs`` and, over them, the task's own ``task_kwargs`` (where its data lies, a budget that suits it).
* Antithetic pairs with common random numbers: children ``2i`` and ``2i + 1`` run ``theta + sigma epsilon_i``
  and ``theta - sigma epsilon_i``, share initial weights and batch order (the same env seed) and the uniforms
  their actions are sampled with, so their difference is the perturbation's.
* Search space: every parameter of the policy, or the action head's alone (``searched="action-head"``), or its
  three biases alone (``"action-bias"``), from a near-constant initial policy (``init_no_change``): fewer
  dimensions, less noise in each step. ``init_policy`` starts the search from a saved policy instead of a new one.
* Fitness: the child's final validation metric (signed so that higher is better), rank-normalised over the
  generation's children of one task (equal values by position, by their mean rank, or by their final validation
  loss: ``rank_ties``); ``theta`` moves along the antithetic estimate of the fitness gradient (averaged over the
  generation's tasks) with Adam.
* Evaluations: the children of ``pairs_per_evaluation`` pairs train together in one vector env (by default the
  whole population, whose children batch on one device). An evaluation depends only on its inputs (the
  perturbed parameters, the task, the env seeds, its pairs' rows of the action uniforms), so with
  ``workers`` they run on as many Ray actors, each on whichever actor is free, and a run computes bit for
  bit what it computes in the process (at one torch thread on the CPU, as every actor runs): ``workers``
  changes where, never what, and a run resumes with any number of them.
* Lost actors: an actor that dies (killed process, lost node) costs the evaluation it was running, not the
  generation. The generation completes with the evaluations that came back; the lost ones' antithetic pairs,
  both children of each, are dropped from the gradient estimate, so that it stays antithetic. A warning line
  says so, and ``lost_pairs`` counts them in the checkpoint's history and on TensorBoard. A replacement actor
  starts in the dead one's place at once, without holding up the others, and takes evaluations still waiting once
  it runs; one that the cluster cannot start within :data:`ACTOR_START_SECONDS` (its CPUs gone with a node, or
  taken) is given up with a warning line, and the next generation starts another. A generation that loses every
  evaluation raises
  :class:`EvaluationsLostError` and leaves ``theta`` and the checkpoint as they were.
* One checkpoint per generation (plain tensors, ``weights_only`` loadable): an interrupted run resumes where
  it stopped, bit for bit, because every draw of a generation comes from ``(seed, generation)`` (on a GPU, as far
  as its kernels are deterministic: see :meth:`ala_gym.envs.base.ALAEnv.get_state`). A progress
  bar on a terminal, a line per generation otherwise; with a log folder, TensorBoard curves of the fitness,
  of the lost and tied pairs (both children of equal fitness) and of the children's mean off-diagonal Phi at the
  end of their runs.

The result is a ``reinforce`` policy file: ``ReinforceController.load(path)`` runs it frozen or fine-tunes it,
and the benchmark's ``reinforce-transfer``-style rows can use it.
``python -m ala_gym.agents.meta_train --tasks ALA-Digits-v0 --generations 20 --save runs/meta.pt``; with
``--workers 4 --pairs-per-evaluation 1`` (and ``--ray-address`` to join a cluster) on Ray actors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import gymnasium as gym
import numpy as np
import scipy.stats
import torch
from torch.func import functional_call
from torch.nn import functional as F

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents import checkpoints, cli
from ala_gym.agents.base import mean_off_diagonal
from ala_gym.agents.reinforce import PairPolicy
from ala_gym.core.checks import FLOAT32_MAX, check_int, check_optional_int, check_real, check_seed
from ala_gym.core.data import DataError, with_data_home
from ala_gym.core.machine import cpu_model, source_digest
from ala_gym.envs.spec import task_spec
from ala_gym.wrappers import ChildAttributes, MissingExtraError, require

CHECKPOINT_KIND = "meta-train-state"
SEARCHED = ("all", "action-head", "action-bias")
"""The values of :attr:`MetaTrainConfig.searched`."""
RANK_TIES = ("position", "average", "loss")
"""The values of :attr:`MetaTrainConfig.rank_ties`."""
ACTION_UNIFORMS = ("own", "perturbations")
"""The values of :attr:`MetaTrainConfig.action_uniforms`."""
PRIOR_DEFAULTS = {"action_uniforms": "perturbations"}
"""Fields whose default computes otherwise than the runs made before they existed, with the value those runs
had: what a checkpoint or a policy's record without the field ran with."""
EXECUTION_FIELDS = ("workers", "ray_address")
"""The config fields that say where a run computes, not what: the checkpoint does not record them."""


@dataclass
class MetaTrainConfig:
    """Evolution strategies over the pair-shared policy's parameters."""

    tasks: tuple[str, ...] = ("ALA-Digits-v0",)
    """The task family: env ids, ``tasks_per_generation`` of them drawn per generation."""
    horizon: tuple[int, int] = (200, 600)
    """Range of the children's ``total_iterations``, drawn per generation, then rounded down to a multiple of K
    (at least K): a ``horizon[0]`` that is no multiple of K can give a horizon below it."""
    steps_per_action: int = 20
    """K of every child."""
    population: int = 4
    """Antithetic pairs per generation: ``2 * population`` children."""
    sigma: float = 0.05
    """Standard deviation of the parameter perturbations."""
    lr: float = 0.02
    """Adam's learning rate on the fitness gradient estimate."""
    generations: int = 10
    """Generations to run (a resumed run stops at the same count)."""
    hidden: int = 32
    """Units in each of the policy's hidden layers (as :class:`ala_gym.agents.reinforce.ReinforceConfig.hidden`)."""
    init_no_change: float = 0.0
    """The initial policy's probability of "no change" in every state (as
    :class:`ala_gym.agents.reinforce.ReinforceConfig.init_no_change`); 0: PyTorch's default initialisation, whose
    random logits differ from pair to pair and drift Phi one way or the other."""
    init_policy: str | None = None
    """Where the search starts: a ``reinforce`` policy file, or the name of a policy shipped in
    ``ala_gym.agents.policies`` (``agents/policies/`` in a clone; its ``hidden`` must match); None: a new policy (``seed``, ``init_no_change``)."""
    searched: str = "all"
    """The parameters that evolve, fewer for a less noisy estimate (its variance grows with the dimensions
    searched): ``"all"`` of the policy's; ``"action-head"``, the last layer's, which reads the initial (random)
    hidden features of the pair's state, progress among them; or ``"action-bias"``, that layer's three biases
    alone, which set which way and how fast Phi moves. With ``init_no_change`` the initial policy barely depends
    on the state, so a bias-only policy drifts Phi at one rate all run: it cannot smooth early and stop (see
    ``phi-ramp`` in ``benchmarks/README.md``)."""
    rank_ties: str = "position"
    """How children of equal fitness rank (:func:`centered_ranks`). ``"position"``: by their place in the
    generation, as the argsort of common ES implementations ranks them; ``"average"``: they share their mean
    rank. The two children of a pair share weights, batches and action uniforms, so on a validation split of a
    few hundred images they often end with the same error; by position such a pair still adds
    ``-eps_i / (2P - 1)`` to the estimate (noise along its own perturbation), with average ranks nothing.
    ``"loss"``: children of equal metric rank by their final validation loss (``final_val_loss``: the NLL in
    classification; lower ranks higher), and those equal in both share their mean rank. The fitness stays the
    metric; the loss only orders what the metric cannot tell apart, so that a tied pair still says which of its
    two perturbations trained the better-calibrated child. The default computes what the shipped policies'
    commands computed."""
    seed: int = 0
    """Seeds the policy's initial weights and every draw of every generation."""
    action_uniforms: str = "own"
    """Where the uniforms the children sample their actions with come from: ``"own"``, a stream of their own;
    ``"perturbations"``, the perturbations' stream, as before this setting existed. There the first pairs'
    perturbations are made of the very uniforms the children act with (``torch.randn`` transforms the stream's
    uniforms), so the fitness differences correlate with the perturbations through the actions and bias the
    gradient estimate; kept so that the shipped policies' commands compute what they computed."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further env keywords of every child (``device``, ``val_subsample``, ...)."""
    task_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keywords of one task's children over ``env_kwargs``, by env id of ``tasks`` (where its data lies, a
    ``train_size`` that suits it). A relative ``data_root`` is a dataset's name, resolved under
    :func:`ala_gym.core.data.data_home` where the children train, so that no record holds a machine's path."""
    pairs_per_evaluation: int | None = None
    """Antithetic pairs whose children train together in one vector env; None: the whole population. Batched
    children may run in another float order beside other companions (vmap over more children can pick other
    kernels), so this grouping is part of what a run computes (recorded in the checkpoint), unlike ``workers``."""
    tasks_per_generation: int = 1
    """Distinct tasks of the family that each generation runs, each with its own horizon, env seeds and children,
    under the same perturbations; the ES step averages their gradient estimates, each ranked among its own
    children, so that the update does not swing with the one task drawn (``len(set(tasks))``: every task, every
    generation). Each task costs a population's children."""
    workers: int = 0
    """Ray actors that run a generation's evaluations in parallel (one CPU each); 0: in the process."""
    ray_address: str | None = None
    """With ``workers``: the Ray cluster to join when Ray is not initialised yet; None: a local one."""

    def __post_init__(self) -> None:
        if not self.tasks or not all(isinstance(task, str) for task in self.tasks):
            raise ValueError(f"tasks must name at least one env id, got {self.tasks!r}")
        if len(self.horizon) != 2:
            raise ValueError(f"horizon must be (low, high), got {self.horizon}")
        low, high = (check_int(f"horizon[{i}]", value, 1) for i, value in enumerate(self.horizon))
        if low > high:
            raise ValueError(f"horizon must be (low, high) with 1 <= low <= high, got {self.horizon}")
        for name in ("population", "generations", "hidden", "steps_per_action"):
            check_int(name, getattr(self, name), 1)
        # theta is float32: no larger value applies (an infinite one would make it NaN).
        check_real("sigma", self.sigma, 0.0, FLOAT32_MAX, low_open=True)
        check_real("lr", self.lr, 0.0, FLOAT32_MAX, low_open=True)
        check_real("init_no_change", self.init_no_change, 0.0, 1.0, high_open=True)
        if self.init_policy is not None and self.init_no_change > 0:
            raise ValueError("init_policy and init_no_change both set the initial policy; pass one of them")
        if self.searched not in SEARCHED:
            raise ValueError(f"searched must be one of {', '.join(SEARCHED)}, got {self.searched!r}")
        if self.rank_ties not in RANK_TIES:
            raise ValueError(f"rank_ties must be one of {', '.join(RANK_TIES)}, got {self.rank_ties!r}")
        if self.action_uniforms not in ACTION_UNIFORMS:
            raise ValueError(f"action_uniforms must be one of {', '.join(ACTION_UNIFORMS)}, got {self.action_uniforms!r}")
        check_seed("seed", self.seed)
        check_int("workers", self.workers, 0)
        check_optional_int("pairs_per_evaluation", self.pairs_per_evaluation, 1)
        if not 1 <= check_int("tasks_per_generation", self.tasks_per_generation) <= len(set(self.tasks)):
            raise ValueError(
                f"tasks_per_generation must be between 1 and the {len(set(self.tasks))} distinct tasks, got {self.tasks_per_generation}"
            )
        unknown = sorted(set(self.task_kwargs) - set(self.tasks))
        if unknown or not all(isinstance(kwargs, dict) for kwargs in self.task_kwargs.values()):
            raise ValueError(
                f"task_kwargs must map env ids of tasks {list(self.tasks)} to dicts of keywords, got {self.task_kwargs!r}"
            )
        for where, kwargs in (("env_kwargs", self.env_kwargs), *((f"task_kwargs[{t!r}]", k) for t, k in self.task_kwargs.items())):
            if set_here := sorted(OWN_ENV_KEYWORDS & set(kwargs)):
                raise ValueError(f"{where} sets {', '.join(set_here)}, which horizon and steps_per_action set here; "
                                 "set those instead")  # fmt: skip
        if self.workers and self.pairs_per_evaluation is None:
            raise ValueError(
                "workers spread a generation's evaluations over Ray actors, but without pairs_per_evaluation the "
                "population is one evaluation: set it (1: an evaluation per antithetic pair)"
            )
        if self.ray_address is not None and not self.workers:
            raise ValueError("ray_address names a Ray cluster for the workers, but workers is 0 (in the process): set workers")


# ---------------------------------------------------------------------- one generation
def centered_ranks(values: np.ndarray, ties: str = "position", losses: np.ndarray | None = None) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5]: ES's fitness shaping, blind to the scale. Equal values rank by their position
    (``ties="position"``), share their mean rank (``"average"``), or rank by ``losses`` (``"loss"``: lower
    higher; NaN, no loss, ties with NaN), sharing the mean rank where those are equal too; see
    :attr:`MetaTrainConfig.rank_ties`."""
    if ties == "loss":
        if losses is None or len(losses) != len(values):
            raise ValueError("ties='loss' ranks equal values by their losses: pass one loss per value")
        # Dense ranks of the (value, -loss) pairs, in lexicographic order: the metric first, the loss among equals.
        pairs = np.column_stack([values, -np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=np.inf)])
        _, tiers = np.unique(pairs, axis=0, return_inverse=True)
        values, ties = tiers.ravel(), "average"
    if ties == "average":
        ranks = scipy.stats.rankdata(values, method="average") - 1.0
    else:
        ranks = np.empty(len(values))
        ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1) - 0.5


def es_gradient(
    fitness: np.ndarray, noise: torch.Tensor, sigma: float, ties: str = "position", losses: np.ndarray | None = None
) -> torch.Tensor:
    """The antithetic estimate of the gradient of the expected (rank-shaped) fitness: ``fitness`` holds the
    ``2P`` children's values, ``theta + sigma eps_i`` at ``2i`` and ``theta - sigma eps_i`` at ``2i + 1``;
    ``noise`` is ``[P, dims]``; ``ties`` and ``losses`` (the children's, in the same order) as
    :func:`centered_ranks`."""
    shaped = torch.as_tensor(centered_ranks(np.asarray(fitness, dtype=np.float64), ties, losses), dtype=noise.dtype)
    difference = shaped[0::2] - shaped[1::2]
    return (difference[:, None] * noise).sum(dim=0) / (2 * len(noise) * sigma)


def generation_plan(config: MetaTrainConfig, generation: int) -> dict[str, Any]:
    """Every draw of one generation's (first) task, from ``(seed, generation)`` alone: task, horizon, env seeds."""
    return _draw_plan(np.random.default_rng([config.seed, generation]), config)


def generation_plans(config: MetaTrainConfig, generation: int) -> list[dict[str, Any]]:
    """The plans of a generation's ``tasks_per_generation`` distinct tasks: :func:`generation_plan`'s first, the
    others drawn from a stream of their own, so that one task per generation draws what it always drew."""
    first = generation_plan(config, generation)
    if config.tasks_per_generation == 1:
        return [first]
    rng = np.random.default_rng([config.seed, generation, 1])
    others = sorted(set(config.tasks) - {first["task"]})
    chosen = rng.choice(len(others), size=config.tasks_per_generation - 1, replace=False)
    return [first] + [_draw_plan(rng, config, others[int(i)]) for i in chosen]


def _draw_plan(rng: np.random.Generator, config: MetaTrainConfig, task: str | None = None) -> dict[str, Any]:
    """A task's horizon, env seeds and action-uniform seed from ``rng``; the task too unless given."""
    k = config.steps_per_action
    low, high = config.horizon
    iterations = int(rng.integers(low, high + 1))
    iterations = max(k, iterations // k * k)
    pair_seeds = rng.integers(0, 2**31 - 1, size=config.population)
    return {
        "task": config.tasks[int(rng.integers(len(config.tasks)))] if task is None else task,
        "total_iterations": iterations,
        "env_seeds": [int(s) for s in np.repeat(pair_seeds, 2)],  # the two children of a pair: one seed
        "noise_seed": int(rng.integers(2**63 - 1)),
    }


def evaluation_groups(config: MetaTrainConfig) -> list[range]:
    """The antithetic pairs of each evaluation of a generation, in order."""
    size = config.pairs_per_evaluation or config.population
    return [range(start, min(start + size, config.population)) for start in range(0, config.population, size)]


def perturbations(policy: PairPolicy, population: int, seed: int, searched: str = "all") -> torch.Tensor:
    """``[population, dims]`` standard normal perturbations of the flattened parameters, zero outside the
    ``searched`` ones (drawn for every parameter all the same, so that the searched ones get what they would
    get under ``"all"``)."""
    dims = sum(p.numel() for p in policy.parameters())
    noise = torch.randn(population, dims, generator=torch.Generator().manual_seed(seed))
    return noise if searched == "all" else noise * searched_mask(policy, searched)


def action_uniform_generator(noise_seed: int, source: str = "own") -> torch.Generator:
    """The generator of the children's action uniforms of a task whose perturbations are drawn from
    ``noise_seed`` (:func:`perturbations`): a stream of its own (``source="own"``: seeded from
    ``[noise_seed, 1]`` through numpy's ``SeedSequence``), or the perturbations' own (``"perturbations"``; see
    :attr:`MetaTrainConfig.action_uniforms`)."""
    if source == "perturbations":
        return torch.Generator().manual_seed(noise_seed)
    (seed,) = np.random.SeedSequence([noise_seed, 1]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(seed))


def inverse_cdf_actions(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """``[pairs]``: for each row of ``logits`` (``[pairs, actions]``), the first action whose cumulative probability
    exceeds that row's uniform in ``[0, 1)``, so that an action of probability 0 is never taken, even at a
    uniform of exactly 0. Two children that share the uniforms take the same action wherever their
    distributions agree, which is what pairs their outcomes (common random numbers)."""
    probabilities = F.softmax(logits, dim=-1)
    cumulative = probabilities.cumsum(dim=-1)
    # Rounding can leave the last cumulative probability below 1 and a uniform above it: that is the last action of
    # positive probability (argmax takes the first index where the count of positive ones reaches its total).
    last_possible = (probabilities > 0).long().cumsum(dim=-1).argmax(dim=-1)
    return (uniforms[:, None] >= cumulative).sum(dim=-1).minimum(last_possible)


def searched_mask(policy: PairPolicy, searched: str) -> torch.Tensor:
    """``[dims]``: 1 at the flattened parameters that ``searched`` names, 0 elsewhere."""
    head = f"net.{len(policy.net) - 1}."  # the action head's parameters: weight, bias
    names = {"all": None, "action-head": (head + "weight", head + "bias"), "action-bias": (head + "bias",)}[searched]
    return torch.cat([
        torch.full((parameter.numel(),), float(names is None or name in names))
        for name, parameter in policy.named_parameters()
    ])  # fmt: skip


def unflatten(policy: PairPolicy, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat parameter vector as ``policy``'s named parameters."""
    params, start = {}, 0
    for name, parameter in policy.named_parameters():
        params[name] = vector[start : start + parameter.numel()].view_as(parameter)
        start += parameter.numel()
    return params


class ChildOutcomes(NamedTuple):
    """The end of one evaluation's children (:func:`run_children`), one entry each, in their vectors' order."""

    fitness: np.ndarray
    """The final validation metric, signed so that higher is better: the metric's worst value for a diverged
    child (the env scores it so), ``-inf`` for one whose run ended unmeasured."""
    phi_off_diagonal: np.ndarray
    """The mean off-diagonal entry of the final Phi (where Phi is a matrix; NaN otherwise)."""
    val_loss: np.ndarray
    """The final validation loss (the env's ``final_val_loss``); ``inf`` for a diverged child."""
    diverged: np.ndarray
    """Whether the child's training diverged (the env's ``diverged`` at the end of its run)."""


def check_tasks(config: MetaTrainConfig) -> None:
    """Every task's id and keywords as its children would get them (an unknown id or keyword, a value out of
    range), checked on the task's spec before any child trains; its data is read when its children are made."""
    for task in config.tasks:
        task_spec(task, **task_kwargs(config, task, config.horizon[1]))


OWN_ENV_KEYWORDS = frozenset({"total_iterations", "steps_per_action"})
"""Env keywords that meta-training and cloning set from their own settings (the horizon, K): refused in the env
keywords a user gives them, which would otherwise be replaced without a word."""


def task_kwargs(config: MetaTrainConfig, task: str, total_iterations: int) -> dict[str, Any]:
    """The keywords of ``task``'s children at horizon ``total_iterations``: ``env_kwargs``, then the task's own
    ``task_kwargs`` over them, its data roots resolved against the data home."""
    kwargs = {
        **config.env_kwargs, **config.task_kwargs.get(task, {}),
        "total_iterations": total_iterations, "steps_per_action": config.steps_per_action,
    }  # fmt: skip
    return with_data_home(kwargs)


def run_children(
    policy: PairPolicy, vectors: list[torch.Tensor], plan: dict[str, Any], config: MetaTrainConfig,
    pairs: range | None = None,
) -> ChildOutcomes:
    """One evaluation: train the children of the generation's antithetic ``pairs`` (default: all) once, the
    ``c``-th under the policy with parameters ``vectors[c]``."""
    num_pairs = len(plan["env_seeds"]) // 2
    pairs = range(num_pairs) if pairs is None else pairs
    num_children = len(vectors)
    envs = gym.make_vec(plan["task"], num_envs=num_children, **task_kwargs(config, plan["task"], plan["total_iterations"]))
    try:
        higher_is_better = bool(cast(ChildAttributes, envs).get_attr("higher_is_better")[0])
        observations, _ = envs.reset(seed=plan["env_seeds"][2 * pairs.start : 2 * pairs.stop])
        uniforms = action_uniform_generator(plan["noise_seed"], config.action_uniforms)
        params = [unflatten(policy, vector) for vector in vectors]
        fitness = np.full(num_children, np.nan)
        phi_off_diagonal = np.full(num_children, np.nan)
        val_loss = np.full(num_children, np.inf)
        diverged = np.zeros(num_children, dtype=bool)
        # Each child's first episode alone counts: one that ends unmeasured keeps NaN, never the value of the episode
        # the vector env starts for it next (other seeds, and no longer its antithetic twin's batches).
        ended = np.zeros(num_children, dtype=bool)
        while not ended.all():
            # One uniform per pair of classes and pair of children: both children of a pair sample with it. Every
            # evaluation draws the whole generation's and keeps its pairs' rows, so that a pair's uniforms do not
            # depend on how the pairs are grouped.
            every_pair = torch.rand(num_pairs, *observations.shape[1:2], generator=uniforms)
            shared = every_pair[pairs.start : pairs.stop].repeat_interleave(2, 0)
            with torch.no_grad():
                actions = []
                for child in range(num_children):
                    logits = functional_call(policy, params[child], (torch.as_tensor(observations[child]),))
                    actions.append(inverse_cdf_actions(logits, shared[child]))
            observations, _, terminations, truncations, infos = envs.step(torch.stack(actions).numpy())
            measured = infos.get("_final_val_metric", np.zeros(num_children, dtype=bool))
            for child in map(int, np.flatnonzero((terminations | truncations) & ~ended)):
                ended[child] = True
                final = float(infos["final_val_metric"][child]) if measured[child] else float("nan")
                fitness[child] = final if higher_is_better else -final
                if measured[child]:
                    val_loss[child] = float(infos["final_val_loss"][child])
                diverged[child] = bool(infos["diverged"][child])
                phi = np.asarray(infos["phi"][child])
                if phi.ndim == 2 and len(phi) > 1:
                    phi_off_diagonal[child] = mean_off_diagonal(phi)
    finally:
        envs.close()
    # NaN (unmeasured) to -inf; a diverged child's worst value stays what it is (-inf itself under the NLL).
    return ChildOutcomes(np.where(np.isnan(fitness), -np.inf, fitness), phi_off_diagonal, val_loss, diverged)


# ---------------------------------------------------------------------- evaluations on Ray actors
class EvaluationsLostError(RuntimeError):
    """Every evaluation of a generation was lost with its Ray actor: there is nothing to update on."""


ACTOR_START_SECONDS = 300.0
"""How long a Ray actor may take to start (be placed on a CPU, import the package) before the cluster counts as
having no room for it. Ray leaves an actor it cannot place pending for ever: a replacement on a cluster that lost
a node, or whose CPUs other work took, would hang the run."""


class EvaluationActor:
    """The process of one Ray actor: evaluations (:func:`run_children` calls) one after another."""

    def __init__(self) -> None:
        torch.set_num_threads(1)  # the one CPU Ray reserved for the actor

    def ready(self) -> bool:
        """Answers once the actor runs: what :class:`RayEvaluators` waits on, with a time limit, after starting one."""
        return True

    def run(
        self, policy: PairPolicy, vectors: list[torch.Tensor], plan: dict[str, Any], config: MetaTrainConfig, pairs: range
    ) -> ChildOutcomes:
        return run_children(policy, vectors, plan, config, pairs)


class RayEvaluators:
    """``workers`` Ray actors (:class:`EvaluationActor`, one CPU each) that run a generation's evaluations.

    Uses the Ray session the caller initialised (``ray.init(address=..., runtime_env=...)``, the way to give the
    actors env vars such as ``ALA_GYM_DATA``), else joins the cluster at ``address``, else starts a local one of
    ``workers`` CPUs; :meth:`close` kills the actors and shuts Ray down only if it started it. The actors reserve
    no GPU, and Ray leaves a node's GPUs visible to them: on GPU nodes give the children ``device="cpu"``
    (``env_kwargs``), or ``"auto"`` children would share the GPUs unreserved. An actor that dies loses the
    evaluation it was running; :meth:`map` starts a replacement in its place at once, which takes calls once it runs
    (one that does not run within :data:`ACTOR_START_SECONDS` is given up, and the next :meth:`map` starts another).
    """

    def __init__(self, workers: int, address: str | None = None) -> None:
        require("ray")  # before importing it: without the extra, one line saying which to install
        import ray

        from ala_gym.wrappers.ray import start_ray

        self.actors: list[Any] = []  # None: a slot whose replacement did not start
        # The slots whose actor is starting: the ref its ready() answers, and by when it must (time.monotonic()).
        self.starting: dict[int, tuple[Any, float]] = {}
        self.started_ray = start_ray(address, workers)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if workers > cpus:  # Ray would leave the extra actors pending forever
            self.close()
            raise ValueError(f"{workers} workers need {workers} CPUs but the Ray cluster has {cpus:g}: lower workers")
        self._actor = ray.remote(EvaluationActor).options(num_cpus=1, max_restarts=0)
        # Actor handles: Ray types their methods as the class's plain functions, without their .remote.
        self.actors = [self._actor.remote() for _ in range(workers)]
        ready, _ = ray.wait([actor.ready.remote() for actor in self.actors], num_returns=workers, timeout=ACTOR_START_SECONDS)
        if len(ready) < workers:  # the cluster's CPUs are there but taken: the rest would stay pending
            self.close()
            raise ValueError(
                f"only {len(ready)} of {workers} Ray actors started within {ACTOR_START_SECONDS:g} s (the cluster's CPUs "
                "are taken by other work): lower workers, or free the CPUs"
            )

    def _start(self, slot: int) -> None:
        """Start a new actor in ``slot``, without waiting for it: :meth:`map` gives it calls once it runs, and gives it
        up if it does not run within :data:`ACTOR_START_SECONDS`."""
        self.actors[slot] = self._actor.remote()
        self.starting[slot] = (self.actors[slot].ready.remote(), time.monotonic() + ACTOR_START_SECONDS)

    def _give_up(self, slot: int) -> None:
        """Drop the actor of ``slot`` that did not start in time (the cluster has no CPU free for it)."""
        import ray

        ray.kill(self.actors[slot])
        self.actors[slot] = None
        del self.starting[slot]
        print(f"warning: a replacement Ray actor did not start within {ACTOR_START_SECONDS:g} s (no free CPU in the "
              "cluster); the evaluations go on without it, and the next generation starts another", file=sys.stderr,
              flush=True)  # fmt: skip

    def map(self, calls: list[tuple[Any, ...]]) -> list[ChildOutcomes | None]:
        """Each call's result (``run_children(*call)``), in the calls' order, or None where its actor died (or, with no
        actor left to run it, where it never ran). A call goes to whichever actor is free; a dead actor's
        replacement starts at once and takes the calls still waiting once it runs, while the others go on."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        results: list[ChildOutcomes | None] = [None] * len(calls)
        waiting = deque(range(len(calls)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (actor slot, call)

        def submit(slot: int) -> None:
            """The next waiting call to the actor in ``slot``, if it runs and is free."""
            busy = {busy_slot for busy_slot, _ in running.values()}
            if waiting and self.actors[slot] is not None and slot not in self.starting and slot not in busy:
                index = waiting.popleft()
                running[self._submit(slot, calls[index])] = (slot, index)

        def started(timeout: float) -> None:
            """Promote the starting actors that now run (waiting up to ``timeout`` s for one), give up the late."""
            refs = {ref: slot for slot, (ref, _) in self.starting.items()}
            if not refs:
                return
            if timeout > 0:
                ray.wait(list(refs), num_returns=1, timeout=timeout)
            for ref in ray.wait(list(refs), num_returns=len(refs), timeout=0)[0]:  # every one that runs by now
                del self.starting[refs[ref]]
                submit(refs[ref])
            for slot, (_, deadline) in list(self.starting.items()):
                if deadline <= time.monotonic():
                    self._give_up(slot)

        started(0.0)
        for slot, actor in enumerate(self.actors):
            if actor is None:  # its replacement did not start in an earlier generation: another try
                self._start(slot)
        for slot in range(len(self.actors)):
            submit(slot)
        # Until every call ran, or none is left to run on an actor that runs or may still start.
        while running or (waiting and self.starting):
            if not running:  # only starting actors can take the waiting calls: wait for one, up to its deadline
                started(min(deadline for _, deadline in self.starting.values()) - time.monotonic())
                continue
            starting_refs = [ref for ref, _ in self.starting.values()]
            [ref], _ = ray.wait([*running, *starting_refs], num_returns=1)
            if ref not in running:  # a replacement runs now
                started(0.0)
                continue
            slot, index = running.pop(ref)
            try:
                results[index] = ray.get(ref)
            except (RayActorError, WorkerCrashedError):  # its call stays None
                ray.kill(self.actors[slot])  # dead, or unreachable: killed so that it never comes back
                self._start(slot)
            except RayTaskError as error:  # the evaluation's own error (missing data, say): what the user reads
                raise error.cause from error
            submit(slot)
            started(0.0)  # late starts are given up as the calls come back
        return results

    def _submit(self, slot: int, call: tuple[Any, ...]) -> Any:
        """The one place a call leaves the driver: ``call`` on the actor in ``slot``; its object ref."""
        return self.actors[slot].run.remote(*call)

    def close(self) -> None:
        import ray

        from ala_gym.wrappers.ray import stop_ray

        for actor in self.actors:
            if actor is not None:
                ray.kill(actor)
        self.actors, self.starting = [], {}
        stop_ray(self.started_ray)


# ---------------------------------------------------------------------- the loop
def initial_policy_state(name: str, n_features: int, hidden: int) -> dict[str, torch.Tensor]:
    """The weights of ``name`` (a policy file, or a shipped policy's name) for a policy of ``n_features`` and
    ``hidden``; a one-line error when it is no policy or another size."""
    from ala_gym.agents.reinforce import policy_path

    path = policy_path(name)
    checkpoint = checkpoints.load_checkpoint(path, "reinforce")
    saved = checkpoint["config"]
    if (saved.get("n_features"), saved.get("hidden")) != (n_features, hidden):
        raise ValueError(
            f"{name}: a policy of {saved.get('n_features')} features and {saved.get('hidden')} hidden units, not "
            f"{n_features} and {hidden}; pass --hidden {saved.get('hidden')}"
        )
    return checkpoint["state_dict"]


def config_record(config: MetaTrainConfig) -> dict[str, Any]:
    """``config`` as a checkpoint holds it (lists for tuples, no :data:`EXECUTION_FIELDS`), to compare on resume."""
    record = {**asdict(config), "tasks": list(config.tasks), "horizon": list(config.horizon)}
    return {key: value for key, value in record.items() if key not in EXECUTION_FIELDS}


class MetaTrainer:
    """Evolution strategies over :class:`ala_gym.agents.reinforce.PairPolicy`'s parameters; see the module docstring.

    With ``config.workers`` the trainer starts its :class:`RayEvaluators` at once; :meth:`close` stops them (later
    generations then run in the process, with the same results at one torch thread on the CPU).
    """

    def __init__(self, config: MetaTrainConfig, n_features: int = 24, *, read_init_policy: bool = True) -> None:
        check_tasks(config)
        self.config, self.n_features = config, n_features
        self.policy = PairPolicy(n_features, config.hidden, torch.Generator().manual_seed(config.seed), config.init_no_change)
        # A resumed run takes theta from its checkpoint: the starting policy's file need not be there any more.
        if config.init_policy is not None and read_init_policy:
            self.policy.load_state_dict(initial_policy_state(config.init_policy, n_features, config.hidden))
        self.theta = torch.nn.utils.parameters_to_vector(self.policy.parameters()).detach().clone().requires_grad_()
        self.optimizer = torch.optim.Adam([self.theta], lr=config.lr)
        self.generation = 0
        self.history: list[dict[str, float]] = []
        self.wall_seconds = 0.0  # summed over the generations run, across resumes: the run's cost
        self.evaluators = RayEvaluators(config.workers, config.ray_address) if config.workers else None

    def close(self) -> None:
        if self.evaluators is not None:
            self.evaluators.close()
            self.evaluators = None

    def step(self) -> list[dict[str, Any]]:
        """One generation: draw, run the children of each of its tasks, move ``theta``; returns what it logs, an
        entry per task."""
        config = self.config
        start = time.perf_counter()
        plans = generation_plans(config, self.generation)
        # The first task's seed draws the perturbations: with one task per generation, what it always drew.
        noise = perturbations(self.policy, config.population, plans[0]["noise_seed"], config.searched)
        with torch.no_grad():
            vectors = [self.theta + sign * config.sigma * eps for eps in noise for sign in (1.0, -1.0)]
        groups = evaluation_groups(config)
        calls = [(self.policy, vectors[2 * group.start : 2 * group.stop], plan, config, group) for plan in plans for group in groups]
        results = self.evaluators.map(calls) if self.evaluators is not None else [run_children(*call) for call in calls]
        returned = [
            self._task_outcome(plan, list(zip(groups, results[t * len(groups) : (t + 1) * len(groups)])), noise)
            for t, plan in enumerate(plans)
        ]
        outcomes = [outcome for outcome in returned if outcome is not None]  # a task that lost all: dropped
        if not outcomes:
            raise EvaluationsLostError(
                f"generation {self.generation + 1}: every evaluation was lost with its Ray actor; check the cluster's "
                "logs (memory, nodes) and run again (the checkpoint holds the previous generation)"
            )
        gradient = torch.stack([g for g, _ in outcomes]).mean(dim=0)
        self.optimizer.zero_grad()
        self.theta.grad = -gradient  # Adam descends: ascend the fitness
        self.optimizer.step()
        self.generation += 1
        entries = [{"generation": self.generation, **entry} for _, entry in outcomes]
        self.history.extend(entries)
        self.wall_seconds += time.perf_counter() - start
        return entries

    def _task_outcome(
        self, plan: dict[str, Any], evaluations: list[tuple[range, ChildOutcomes | None]], noise: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """One task's gradient estimate from the evaluations that came back, and its log entry; None when none came
        back."""
        config = self.config
        kept = [(group, result) for group, result in evaluations if result is not None]
        if not kept:
            print(f"warning: generation {self.generation + 1}: every evaluation of {plan['task']} lost with its Ray "
                  "actor, the task dropped from the generation", file=sys.stderr, flush=True)  # fmt: skip
            return None
        pairs = [pair for group, _ in kept for pair in group]
        fitness = np.concatenate([result.fitness for _, result in kept])
        phi_off_diagonal = np.concatenate([result.phi_off_diagonal for _, result in kept])
        val_loss = np.concatenate([result.val_loss for _, result in kept])
        diverged = np.concatenate([result.diverged for _, result in kept])
        lost_pairs = config.population - len(pairs)
        if lost_pairs:
            print(f"warning: generation {self.generation + 1}: {lost_pairs} of {config.population} antithetic pairs "
                  "lost with their Ray actor, dropped from the gradient estimate", file=sys.stderr, flush=True)  # fmt: skip
        # both children of every pair that came back
        gradient = es_gradient(fitness, noise[pairs], config.sigma, config.rank_ties, val_loss)
        # Unmeasured children (-inf, not diverged) are left out of the mean; a diverged one counts at its worst value
        # (-inf under the NLL: the mean is -inf then, never NaN), as a diverged one under the error rate counts -1.
        measured = fitness[np.isfinite(fitness) | diverged]
        entry = {
            "task": plan["task"], "total_iterations": plan["total_iterations"],
            "fitness_mean": float(measured.mean()) if len(measured) else -np.inf,
            "fitness_best": float(measured.max()) if len(measured) else -np.inf,
            "diverged": int(diverged.sum()), "lost_pairs": lost_pairs,
            "tied_pairs": int((fitness[0::2] == fitness[1::2]).sum()),
            "phi_off_diagonal_mean": float(np.nanmean(phi_off_diagonal)) if np.isfinite(phi_off_diagonal).any() else float("nan"),
        }  # fmt: skip
        return gradient, entry

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "theta": self.theta.detach().clone(), "optimizer": self.optimizer.state_dict(),
            "generation": self.generation, "history": json.dumps(self.history), "n_features": self.n_features,
            "wall_seconds": self.wall_seconds,
        }  # fmt: skip

    def save_state(self, path: str | Path) -> None:
        """Everything a resumed run needs (plain tensors and primitives), written atomically: an interruption
        while writing leaves the previous generation's file."""
        checkpoints.save_checkpoint(path, CHECKPOINT_KIND, config_record(self.config), {}, trainer=self.state())

    @classmethod
    def resume(cls, path: str | Path, config: MetaTrainConfig) -> MetaTrainer:
        """The trainer saved in ``path``; ``config`` must be the one it was saved with."""
        checkpoint = checkpoints.load_checkpoint(
            path, CHECKPOINT_KIND, "it is no meta-training state: pass the --state file a meta-training run wrote (a path that does not exist yet starts a new search)"
        )
        # A field added since the checkpoint was written takes its default, which computes what that version did,
        # or, where the default computes otherwise, the value that version ran with (PRIOR_DEFAULTS).
        recorded = {**config_record(MetaTrainConfig()), **PRIOR_DEFAULTS, **checkpoint["config"]}
        # Only the number of generations may differ: a finished run can be extended.
        given = {**config_record(config), "generations": recorded["generations"]}
        changed = [f"{key} {recorded[key]!r} -> {given[key]!r}" for key in recorded if recorded[key] != given.get(key)]
        if changed:
            raise checkpoints.CheckpointError(
                f"{path} holds a run of another configuration ({'; '.join(changed)}); give its settings to resume it, "
                "or pass another --state"
            )
        state = checkpoint["trainer"]
        if int(state["generation"]) > config.generations:
            raise checkpoints.CheckpointError(
                f"{path} has run {int(state['generation'])} generations, more than --generations {config.generations}: "
                f"pass at least {int(state['generation'])} to resume it, or another --state"
            )
        trainer = cls(config, int(state["n_features"]), read_init_policy=False)
        with torch.no_grad():
            trainer.theta.copy_(state["theta"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.generation, trainer.history = int(state["generation"]), json.loads(state["history"])
        trainer.wall_seconds = float(state.get("wall_seconds", float("nan")))  # NaN: written before it was kept
        return trainer

    def save_policy(self, path: str | Path) -> None:
        """The current ``theta`` as a ``reinforce`` policy file (``ReinforceController.load`` reads it)."""
        torch.nn.utils.vector_to_parameters(self.theta.detach(), self.policy.parameters())
        from ala_gym.agents.reinforce import ReinforceConfig, save_policy

        save_policy(path, self.policy, ReinforceConfig(hidden=self.config.hidden, init_no_change=self.config.init_no_change))


def meta_train(config: MetaTrainConfig, state_path: str | Path | None = None, log_dir: str | None = None) -> MetaTrainer:
    """Run (or resume from ``state_path``) until ``config.generations``; a checkpoint after every generation.
    ``log_dir`` takes TensorBoard curves of the fitness and the mean off-diagonal Phi (none by default). The
    trainer comes back closed (its Ray actors stopped)."""
    from tqdm.auto import tqdm

    if state_path is not None and Path(state_path).is_file():
        trainer = MetaTrainer.resume(state_path, config)
    else:
        trainer = MetaTrainer(config)
    writer = None
    try:
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir)
        # A bar on a terminal; otherwise (a log file) a line per generation. Both on stdout, so that whether it is a
        # terminal decides (a bar on stderr would be drawn while stdout goes to a file, and no line written there).
        with tqdm(total=config.generations, initial=trainer.generation, unit="gen", file=sys.stdout, disable=None) as bar:
            while trainer.generation < config.generations:
                entries = trainer.step()
                if state_path is not None:
                    trainer.save_state(state_path)
                for entry in entries:
                    if writer is not None:
                        # One curve per task when a generation runs several (also in one that lost all but one).
                        prefix = "meta" if config.tasks_per_generation == 1 else f"meta/{entry['task']}"
                        for key in ("fitness_mean", "fitness_best", "phi_off_diagonal_mean", "lost_pairs", "tied_pairs"):
                            writer.add_scalar(f"{prefix}/{key}", entry[key], entry["generation"])
                    if bar.disable:
                        print(json.dumps(entry), flush=True)
                bar.update(1)
    finally:
        trainer.close()
        if writer is not None:
            writer.close()
    return trainer


def provenance(trainer: MetaTrainer, argv: list[str]) -> dict[str, Any]:
    """What produced a meta-trained policy, written beside it: the command, the configuration (the task family,
    budgets and seeds), every generation's entry (the fitness curve), the cost in child-iterations and in wall
    seconds (the generations' own, summed across resumes; None where a checkpoint predates that count), and
    the versions, code (:func:`ala_gym.core.machine.source_digest`), machine, threads and Ray workers (0: in the
    process) of the run that finished it."""
    pairs = trainer.config.population
    child_iterations = sum(2 * (pairs - entry.get("lost_pairs", 0)) * entry["total_iterations"] for entry in trainer.history)
    return {
        "command": cli.recorded_command("ala_gym.agents.meta_train", argv),  # pastes into a shell as it is
        "config": config_record(trainer.config),
        "generations": trainer.generation,
        "child_iterations": child_iterations,
        "wall_seconds": trainer.wall_seconds if np.isfinite(trainer.wall_seconds) else None,
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "workers": trainer.config.workers,
        "versions": {"ala_gym": ala_gym.__version__, "torch": torch.__version__},
        "source": source_digest(),
        "history": trainer.history,
    }


# ---------------------------------------------------------------------- command line
def argument_parser() -> argparse.ArgumentParser:
    """The command line: one option per :class:`MetaTrainConfig` field, and where the run writes."""
    parser = cli.OneLineParser(description=__doc__.split("\n\n")[0])
    cli.add_dataclass_args(parser, MetaTrainConfig, title="MetaTrainConfig (the search)",
                           choices={"searched": SEARCHED, "rank_ties": RANK_TIES})  # fmt: skip
    parser.add_argument("--state", type=cli.path_option,
                        help="checkpoint written after every generation; an existing one is resumed")  # fmt: skip
    parser.add_argument("--log-dir", type=cli.path_option, help="TensorBoard folder for the fitness curves")
    parser.add_argument("--save", type=cli.path_option, required=True, help="write the meta-trained policy here (a reinforce policy file), "
                        "and what produced it beside it (the same name, .json)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        config = cli.dataclass_from_args(MetaTrainConfig, args)
        # Where the run writes, before the search, not after it.
        cli.check_save_file(args.save, beside=(cli.PROVENANCE_SUFFIX,))
        if args.state is not None:
            cli.check_output_file("--state", args.state)
            written = {Path(args.save).resolve(), Path(args.save).with_suffix(cli.PROVENANCE_SUFFIX).resolve()}
            if Path(args.state).resolve() in written:  # the policy or its record would overwrite the checkpoint
                raise ValueError(f"--state {args.state} is a file --save writes (the policy and its "
                                 f"{cli.PROVENANCE_SUFFIX} record): give the checkpoint a name of its own")  # fmt: skip
        if args.log_dir is not None:
            cli.check_output_folder("--log-dir", args.log_dir)
        trainer = meta_train(config, args.state, args.log_dir)
    except (ValueError, TypeError, gym.error.Error, DataError, checkpoints.CheckpointError, MissingExtraError, EvaluationsLostError) as exc:  # JSONDecodeError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        cli.interrupted(parser.prog, "the same command resumes from the last finished generation in --state"
                        if args.state else "without --state the search starts over")  # fmt: skip
    try:
        trainer.save_policy(args.save)
    except checkpoints.CheckpointError as exc:  # weights gone non-finite; --state keeps the search itself
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    record = provenance(trainer, argv)
    cli.write_provenance(args.save, record)
    print(f"meta-trained policy after {trainer.generation} generations written to {args.save}", file=sys.stderr)


if __name__ == "__main__":
    main()
