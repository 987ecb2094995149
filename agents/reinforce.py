"""The bundled ALA controller: REINFORCE over a policy shared by all class pairs (paper, sections 3.2, 5).

Read top to bottom: the config, the policy, the controller (acting, learning, saving), the command line.

* Policy: an MLP ``24 -> 32 -> 32 -> 3`` (ReLU) applied to each class pair's feature row, giving the
  logits of {-beta, 0, +beta} for that pair. It has no input or output sized by the class count, so a
  policy learned on one task drives another with a different number of classes (section 6.3).
* Learning is online (Algorithm 1): every env step, each child's transition ``<s_t, a_t, r_t, s_t+1>`` is
  stored in a replay memory, and the policy takes ``updates_per_step`` REINFORCE steps on the fresh
  transitions of all children together with ``replay_batch`` transitions sampled from the memory ("this
  independent set of episodes, together with replay memory D"). By default episodes are one step long
  (T = 1, ``return_horizon=1``): the return of a decision is its own reward; ``return_horizon`` and
  ``episodic_weight`` credit it with later rewards or with its child's final validation metric instead.
  Replayed transitions were drawn by older policies; like the paper, no importance weights.
* Credit and baseline (where the defaults depart from the paper, see :class:`ReinforceConfig`): each
  pair's decision is credited with the sign of the improvement on its own two classes
  (``pair_credit``), and the baseline of a child is the mean of the other children's rewards at the same
  step (``baseline="loo"``), with a policy learning rate of 1e-2. The paper's configuration is
  :meth:`ReinforceConfig.paper` (one shared reward, moving-average baseline, Adam 1e-3), on the env's
  paper step rules ``PAPER_ENV_KWARGS``: the ``reinforce-paper`` controllers.
* Every update logs the policy's entropy and mean probability of "no change" over the pairs an action can
  move (collapse to a deterministic policy) and, through :func:`ala_gym.agents.base.step_logs`, Phi's drift from
  identity (blow-up at large beta): the failure modes measured here and in the public re-implementation.

``python -m ala_gym.agents.reinforce --env ALA-Digits-v0 --num-envs 10 --save runs/policy.pt`` trains one run;
``--load runs/policy.pt --freeze`` runs a saved policy frozen (Table 5's "policy from 1st run"),
``--load`` alone fine-tunes it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, cast

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ala_gym.agents import checkpoints, cli
from ala_gym.agents.base import Controller, EpisodeRecord, OnStep, require_vector_env
from ala_gym.core.checks import FLOAT32_MAX, check_int, check_real
from ala_gym.wrappers import ChildAttributes

N_ACTIONS = 3  # {-beta, 0, +beta}; beta itself is the env's (``beta=`` env keyword)
NO_CHANGE = 1
BASELINES = ("loo", "ema")


@dataclass
class ReinforceConfig:
    """Hyperparameters of the bundled REINFORCE controller. The defaults are the settings that learned in
    the committed sweep (``benchmarks/results/digits/``); :meth:`paper` gives the paper's."""

    hidden: int = 32
    """Units in each of the policy's two hidden ReLU layers (section 5)."""
    lr: float = 1e-2
    """Adam learning rate of the policy. The paper's 1e-3 barely moves the policy within one training run
    (tens of updates), so an untrained policy's exploration decides the result."""
    baseline: str = "loo"
    """REINFORCE baseline: ``"loo"`` (leave-one-out: a child's baseline is the mean reward of the other
    children of the same step, which removes what all children share, e.g. the learning-rate schedule;
    a single child falls back to ``"ema"``) or ``"ema"`` (the paper's moving average of rewards)."""
    baseline_rate: float = 0.1
    """Rate of the exponential moving average of rewards (the ``"ema"`` baseline)."""
    pair_credit: bool = True
    """Per-pair rewards: the decision on pair ``(i, j)`` is credited with the sign of the improvement of the
    discounted validation metric on the samples of classes ``i`` and ``j`` (the env's
    ``info["row_improvement"]``), not with one reward shared by all pairs. False is the paper."""
    init_no_change: float = 0.0
    """Probability of "no change" for every pair at initialisation (the output layer is scaled by 0.01 and
    its bias set accordingly), so that an untrained policy explores less; 0 keeps PyTorch's default
    initialisation (about 1/3 per action)."""
    start_off_diagonal: float = 0.0
    """Phi every child starts from: identity plus this value on every off-diagonal entry (a
    label-smoothing-like loss, see ``ala_gym.agents.baselines.UniformPhi``); 0 starts from identity (cross-entropy)
    as the paper does. The policy then adapts Phi from there."""
    replay_capacity: int = 1000
    """Transitions kept in the replay memory (oldest dropped first)."""
    replay_batch: int = 8
    """Transitions sampled from the memory for each update, on top of the fresh ones; each transition
    carries all of a child's per-pair decisions."""
    updates_per_step: int = 1
    """Policy gradient steps per env step; each draws its own replay sample beside the fresh transitions."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus against entropy collapse; 0 is the paper's plain REINFORCE."""
    return_horizon: int = 1
    """Controller steps whose rewards credit a decision: 1 credits it with its own step's reward (the paper's
    one-step episodes, which favour what pays at once); ``H > 1`` with the discounted return
    ``sum_{k < H} discount^k r_{t+k}``, cut at the episode's end. Returns are summed as the rewards arrive,
    so a decision enters an update ``H - 1`` steps after it was taken."""
    discount: float = 1.0
    """gamma of the multi-step return (``return_horizon > 1``)."""
    episodic_weight: float = 0.0
    """Weight of episodic credit, in [0, 1]: when the children's run ends, every decision of child ``i`` is
    credited with the sign of its final validation metric against the mean of the other children's
    (leave-one-out; per pair under ``pair_credit``: the summed improvement on the pair's classes), in one
    update over the whole run; the per-step updates are weighted ``1 - episodic_weight``. It rewards what
    pays at the end of training, but reaches the children of later runs only: see ``warmup_runs``."""
    warmup_runs: int = 0
    """Training runs of other children (env seeds ``seed + k * WARMUP_SEED_OFFSET``, ``k = 1 .. warmup_runs``)
    before the recorded run, learning throughout; the recorded run starts from the policy they learned.
    It multiplies the compute of a run by ``1 + warmup_runs``."""

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        check_real("start_off_diagonal", self.start_off_diagonal, 0.0, 1.0)
        check_real("init_no_change", self.init_no_change, 0.0, 1.0, high_open=True)
        check_int("hidden", self.hidden, 1)
        check_real("lr", self.lr, 0.0, FLOAT32_MAX, low_open=True)  # the policy is float32: no larger step applies
        check_int("updates_per_step", self.updates_per_step, 1)
        check_int("return_horizon", self.return_horizon, 1)
        check_int("warmup_runs", self.warmup_runs, 0)
        check_real("discount", self.discount, 0.0, 1.0, low_open=True)
        check_real("episodic_weight", self.episodic_weight, 0.0, 1.0)
        check_real("baseline_rate", self.baseline_rate, 0.0, 1.0)
        check_real("entropy_coef", self.entropy_coef, 0.0)
        check_int("replay_capacity", self.replay_capacity, 0)
        check_int("replay_batch", self.replay_batch, 0)

    @classmethod
    def paper(cls) -> ReinforceConfig:
        """The paper's controller (section 5 and its public re-implementation): Adam 1e-3, moving-average
        baseline, one reward shared by all pairs, default initialisation."""
        return cls(lr=1e-3, baseline="ema", pair_credit=False)


PAPER_ENV_KWARGS = {"fixed_diagonal": False, "step_scaling": "entry"}
"""The env's literal paper behaviour (diagonal free, ``beta`` per entry), used with :meth:`ReinforceConfig.paper`."""
WARMUP_SEED_OFFSET = 1_000_003
"""Env seeds of warm-up runs lie this far apart: beyond any seed (times the child count) a benchmark uses."""


class PairPolicy(nn.Module):
    """One small MLP applied to every class pair: ``[..., n_pairs, n_features] -> [..., n_pairs, 3]`` logits."""

    def __init__(self, n_features: int, hidden: int, generator: torch.Generator, init_no_change: float = 0.0) -> None:
        super().__init__()
        # skip_init builds the layers without drawing from the global RNG; _init_ draws from ``generator``.
        self.net = nn.Sequential(
            nn.utils.skip_init(nn.Linear, n_features, hidden),
            nn.ReLU(),
            nn.utils.skip_init(nn.Linear, hidden, hidden),
            nn.ReLU(),
            nn.utils.skip_init(nn.Linear, hidden, N_ACTIONS),
        )
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / np.sqrt(layer.in_features)  # PyTorch's default Linear initialisation
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        if init_no_change > 0:
            # Near-constant output: P(no change) = p when the bias gives it log(2p / (1 - p)) over the others.
            output = self.net[-1]
            assert isinstance(output, nn.Linear)  # the action head
            with torch.no_grad():
                output.weight.mul_(0.01)
                output.bias.zero_()
                output.bias[NO_CHANGE] = float(np.log(2 * init_no_change / (1 - init_no_change)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations)


class Transition(NamedTuple):
    """One child's ``<s_t, a_t, r_t, s_t+1>``: ``state`` ``[n_pairs, n_features]``, ``action`` ``[n_pairs]``,
    ``reward`` ``[n_pairs]`` (one value per pair's decision: the pair's own credit, or the child's reward
    for every pair) and the ``advantage`` fixed when it was fresh (``"loo"``; None under ``"ema"``, whose
    replayed advantages use the current baseline: the paper's ``b_k`` of Eq. 3 says nothing of replay)."""

    state: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_state: torch.Tensor
    advantage: torch.Tensor | None


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the per-pair action distributions; ln 3 ~ 1.10 is uniform, 0 deterministic."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


def pair_rewards(rewards: np.ndarray, infos: dict, pair_credit: bool, n_pairs: int) -> np.ndarray:
    """``[num_envs, n_pairs]`` rewards per decision: each pair's sign of improvement on its two classes
    (``info["row_improvement"]``) under ``pair_credit``, else the child's reward for every pair. A diverged
    child's pairs all get its (penalty) reward."""
    shared = np.repeat(np.asarray(rewards, dtype=np.float64)[:, None], n_pairs, axis=1)
    if not pair_credit:
        return shared
    own = np.sign(np.asarray(infos["row_improvement"], dtype=np.float64))
    return np.where(np.asarray(infos["diverged"], dtype=bool)[:, None], shared, own)


class PendingReturns:
    """Discounted multi-step returns of each child's recent decisions, summed as the rewards arrive.

    :meth:`add` takes one step's rewards of the children that stepped (a row each, one value per pair) and
    gives back the decisions whose return is complete: taken ``horizon - 1`` steps ago, or any of a child
    whose episode ended, each as ``(child, payload, return)``. With ``horizon=1`` a decision's return is its
    own reward, unchanged.
    """

    def __init__(self, num_envs: int, horizon: int, discount: float) -> None:
        self.horizon, self.discount = horizon, discount
        # Per child: [payload, return so far, weight of the next reward, rewards seen], oldest first.
        self.pending: list[list[list[Any]]] = [[] for _ in range(num_envs)]

    def add(
        self, children: np.ndarray, payloads: list[Any], rewards: np.ndarray, done: np.ndarray
    ) -> list[tuple[int, Any, np.ndarray]]:
        complete = []
        for child, payload, reward, ended in zip(children, payloads, rewards, done):
            queue = self.pending[child]
            for entry in queue:
                entry[1] = entry[1] + entry[2] * reward
                entry[2] *= self.discount
                entry[3] += 1
            queue.append([payload, reward, self.discount, 1])
            while queue and (ended or queue[0][3] >= self.horizon):
                entry = queue.pop(0)
                complete.append((int(child), entry[0], entry[1]))
        return complete


def leave_one_out_mean(values: np.ndarray) -> np.ndarray:
    """Per child (the first dimension, two children at least): the mean of the other children's values."""
    return (values.sum(axis=0, keepdims=True) - values) / (len(values) - 1)


def episodic_signs(scores: np.ndarray, diverged: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-out credit of a run: the sign of each child's score (``[children, ...]``, higher is better)
    against the mean of the other children's. A ``diverged`` child (a boolean per child) first gets a score one
    below every other child's, whatever it summed before it diverged. One child has no others to compare with: 0."""
    if diverged is not None and np.any(diverged):
        diverged = np.asarray(diverged, dtype=bool)
        scores = scores.copy()
        scores[diverged] = scores[~diverged].min(axis=0) - 1.0 if (~diverged).any() else 0.0
    if len(scores) < 2:
        return np.zeros_like(scores)
    return np.sign(scores - leave_one_out_mean(scores))


class ReinforceController(Controller):
    """REINFORCE with a leave-one-out (or moving-average) baseline and a replay memory, learning online while the
    children train.

    Every :meth:`run` starts from the same policy: a fresh one initialised from the run's seed or, when
    the controller was made by :meth:`load`, the loaded weights. After a run the learned policy is in
    ``self.policy`` and :meth:`save` writes it. ``train=False`` runs the policy frozen.

    ``initial_state`` and ``n_features`` are the loaded policy's weights and the observation features per
    class pair it reads (:meth:`load` sets both; an env with other features is refused). ``env_overrides``
    are env keywords the controller imposes (:meth:`env_kwargs`; the paper's rules in
    :func:`paper_controller`). ``multi_child`` (default: more than one child) sets
    :attr:`ala_gym.agents.base.Controller.multi_child`: whether the comparison's
    ``--children`` (rather than ``--baseline-children``) sets the child count.
    """

    name = "reinforce"
    learned = True

    def __init__(
        self,
        config: ReinforceConfig | None = None,
        num_envs: int = 1,
        train: bool = True,
        initial_state: dict[str, torch.Tensor] | None = None,
        n_features: int | None = None,
        env_overrides: dict[str, Any] | None = None,
        multi_child: bool | None = None,
    ) -> None:
        self.config = config or ReinforceConfig()
        self.num_envs = num_envs
        self.multi_child = num_envs > 1 if multi_child is None else multi_child
        self.train = train
        self.initial_state, self.n_features = initial_state, n_features
        self.env_overrides = dict(env_overrides or {})
        self.policy: PairPolicy | None = None

    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.env_overrides)

    def check_envs(self, envs: gym.vector.VectorEnv) -> None:
        super().check_envs(envs)
        self._features(envs)

    def _features(self, envs: gym.vector.VectorEnv) -> int:
        """The env's features per class pair, refused where a loaded policy reads another count."""
        observation_space, action_space = envs.single_observation_space, envs.single_action_space
        # Every ALA env's: n_features per class pair in a Box, one of N_ACTIONS per pair.
        assert isinstance(observation_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.MultiDiscrete)
        n_features = int(observation_space.shape[-1])
        if self.n_features is not None and n_features != self.n_features:
            raise ValueError(
                f"the policy reads {self.n_features} features per class pair but the env gives {n_features} "
                "(its 'history' keyword must match the one the policy was trained with)"
            )
        return n_features

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        self.n_features = n_features = self._features(envs)
        init_generator = torch.Generator().manual_seed(seed)
        self.policy = PairPolicy(n_features, self.config.hidden, init_generator, self.config.init_no_change)
        if self.initial_state is not None:
            self.policy.load_state_dict(self.initial_state)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr)
        self.sampler = torch.Generator().manual_seed(seed + 1)  # actions and replay draws
        self.memory: deque[Transition] = deque(maxlen=self.config.replay_capacity)
        action_space = envs.single_action_space
        assert isinstance(action_space, gym.spaces.MultiDiscrete)  # checked by _features
        n_pairs = int(action_space.shape[0])
        self.baseline = np.zeros(n_pairs)
        # Pairs whose action the env ignores (a held diagonal) carry no information: no gradient from them.
        attributes = cast(ChildAttributes, envs)
        # A copy: an array that came back from a Ray actor is read-only, which torch warns about.
        self.movable = torch.as_tensor(np.array(attributes.get_attr("movable_rows")[0], dtype=bool))
        self.higher_is_better = bool(attributes.get_attr("higher_is_better")[0]) if self.config.episodic_weight else False
        self.begin_episode(envs)  # ready to act and learn at once; run_episode clears it again for each run

    def begin_episode(self, envs: gym.vector.VectorEnv) -> None:
        self.running = np.ones(envs.num_envs, dtype=bool)
        self._started = False
        self.returns = PendingReturns(envs.num_envs, self.config.return_horizon, self.config.discount)
        self.step_index = 0  # which step of the run a decision was taken at: its leave-one-out group
        # Episodic credit: every child's decisions of this run, and its score (higher is better) when it ends.
        self.decisions: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(envs.num_envs)]
        self.scores = np.zeros((envs.num_envs, len(self.baseline)))
        self.diverged = np.zeros(envs.num_envs, dtype=bool)

    def run(self, envs: gym.vector.VectorEnv, seed: int, on_step: OnStep | None = None) -> list[EpisodeRecord]:
        """:meth:`begin`, ``warmup_runs`` runs of other children (learning, not recorded; none for a frozen
        policy, which would learn nothing from them), then the recorded run."""
        require_vector_env(envs)
        self.begin(envs, seed)
        for run in range(1, self.config.warmup_runs + 1 if self.train else 1):
            self.run_episode(envs, seed + run * WARMUP_SEED_OFFSET)
        return self.run_episode(envs, seed, on_step)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray | None:
        """Before the first step only: the children's starting Phi when ``start_off_diagonal`` is set."""
        if self._started or self.config.start_off_diagonal == 0:
            self._started = True
            return None
        self._started = True
        num_classes = np.shape(infos["phi"])[-1]
        start = np.eye(num_classes) + self.config.start_off_diagonal * (1 - np.eye(num_classes))
        return np.repeat(start[None], len(observations), axis=0)

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        assert self.policy is not None, "begin() must be called first"
        with torch.no_grad():
            probs = F.softmax(self.policy(torch.as_tensor(observations, dtype=torch.float32)), dim=-1)
        actions = torch.multinomial(probs.reshape(-1, N_ACTIONS), 1, generator=self.sampler)
        return actions.reshape(probs.shape[:-1]).numpy()

    def learn(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        dones: np.ndarray,
        infos: dict,
    ) -> dict[str, float]:
        """REINFORCE steps on the running children's decisions whose return is complete (this step's, at the
        default ``return_horizon=1``), and, with ``episodic_weight``, one update over the whole run when it ends."""
        assert self.policy is not None, "begin() must be called first"
        # A finished child is reset by the vector env; what it does after is no longer this run.
        valid = np.flatnonzero(self.running)
        self.running &= ~np.asarray(dones, dtype=bool)
        if len(valid) == 0:
            return {}
        with torch.no_grad():
            logits = self.policy(torch.as_tensor(observations[valid], dtype=torch.float32))[:, self.movable]
            logs = {
                "entropy": mean_entropy(logits).item(),
                "p_no_change": F.softmax(logits, dim=-1)[..., NO_CHANGE].mean().item(),
            }
        if not self.train:
            return logs

        per_pair = pair_rewards(rewards, infos, self.config.pair_credit, len(self.baseline))[valid]
        ended = np.asarray(dones, dtype=bool)[valid]
        if self.config.episodic_weight:
            self._track_run(valid, observations, actions, infos, ended)
        payloads = [(observations[i], actions[i], next_observations[i], self.step_index) for i in valid]
        self.step_index += 1
        complete = self.returns.add(valid, payloads, per_pair, ended)
        step_weight = 1.0 - self.config.episodic_weight
        if complete and step_weight > 0:
            logs.update(self._update_on_returns(complete, step_weight))
        if self.config.episodic_weight and not self.running.any():
            logs.update(self._update_on_run())
        return logs

    def _update_on_returns(self, complete: list[tuple[int, Any, np.ndarray]], weight: float) -> dict[str, float]:
        """``updates_per_step`` REINFORCE steps on the decisions whose return is complete, each with its own
        replayed sample; the loss is scaled by ``weight``."""
        returns = np.stack([ret for _, _, ret in complete])
        fresh_advantages = self._fresh_advantages(returns, [payload[3] for _, payload, _ in complete])
        fresh = [
            Transition(
                torch.as_tensor(state),
                torch.as_tensor(action),
                torch.as_tensor(ret),
                torch.as_tensor(next_state),
                None if advantage is None else torch.as_tensor(advantage),
            )
            for (_, (state, action, next_state, _), ret), advantage in zip(complete, fresh_advantages)
        ]
        replays = [self._replay_sample() for _ in range(self.config.updates_per_step)]
        self.memory.extend(fresh)
        losses = []
        for replayed in replays:
            batch = fresh + replayed
            states = torch.stack([t.state for t in batch]).float()
            chosen = torch.stack([t.action for t in batch]).long()
            advantages = torch.stack(
                [t.advantage if t.advantage is not None else t.reward - torch.as_tensor(self.baseline) for t in batch]
            ).float()
            loss = self._policy_loss(states, chosen, advantages)
            if weight != 1.0:
                loss = weight * loss
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        # The moving average follows the fresh returns (after the update: it is this step's baseline).
        self.baseline += self.config.baseline_rate * (returns.mean(axis=0) - self.baseline)
        return {"policy_loss": float(np.mean(losses)), "baseline": float(self.baseline.mean())}

    def _policy_loss(self, states: torch.Tensor, chosen: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
        """REINFORCE's loss over the movable pairs, with the entropy bonus."""
        assert self.policy is not None, "begin() must be called first"
        logits = self.policy(states)
        log_probs = F.log_softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)  # [batch, n_pairs]
        movable = self.movable
        # Mean over pairs, so that the policy-gradient term keeps its scale against entropy_coef's bonus whatever the
        # number of classes (Adam's step itself would not grow with a sum).
        loss = -(advantages[:, movable] * log_probs[:, movable]).mean(-1).mean()
        return loss - self.config.entropy_coef * mean_entropy(logits[:, movable])

    def _track_run(
        self, valid: np.ndarray, observations: np.ndarray, actions: np.ndarray, infos: dict, ended: np.ndarray
    ) -> None:
        """Keep each child's decisions and, for episodic credit, its score: the summed improvement on each
        pair's classes (``pair_credit``), else its final validation metric, signed so that higher is better."""
        for child, done in zip(valid, ended):
            self.decisions[child].append((observations[child], actions[child]))
            if self.config.pair_credit:
                self.scores[child] += np.asarray(infos["row_improvement"][child], dtype=np.float64)
            if done:
                self.diverged[child] = bool(infos["diverged"][child])
                if not self.config.pair_credit:
                    # The full validation set's metric at the end; the subsample's where a run was cut short.
                    measured = infos.get("_final_val_metric")
                    final = infos["final_val_metric" if measured is not None and measured[child] else "val_metric"][child]
                    self.scores[child] = final if self.higher_is_better else -final

    def _update_on_run(self) -> dict[str, float]:
        """Episodic credit: one update (``updates_per_step`` steps) over every decision of the run, each
        credited with its child's leave-one-out sign, weighted ``episodic_weight``."""
        signs = episodic_signs(self.scores, self.diverged)
        states = torch.as_tensor(np.stack([s for child in self.decisions for s, _ in child])).float()
        chosen = torch.as_tensor(np.stack([a for child in self.decisions for _, a in child])).long()
        advantages = torch.as_tensor(
            np.concatenate([np.repeat(signs[i][None], len(child), axis=0) for i, child in enumerate(self.decisions)])
        ).float()
        losses = []
        for _ in range(self.config.updates_per_step):
            loss = self.config.episodic_weight * self._policy_loss(states, chosen, advantages)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return {"episodic_loss": float(np.mean(losses)), "episodic_credit": float(signs.mean())}

    def _fresh_advantages(self, per_pair: np.ndarray, steps: list[int]) -> list[np.ndarray | None]:
        """Leave-one-out advantages (``"loo"``) among the fresh decisions taken at the same step (``steps``), where
        two or more children took one; else None: the advantage is then the return minus the moving average at
        update time. A step's decisions complete together, except at a run's end, where each child's last
        ``return_horizon`` decisions complete at once: grouped by step, a decision's baseline is never its own
        child's later return."""
        advantages: list[np.ndarray | None] = [None] * len(per_pair)
        if self.config.baseline != "loo":
            return advantages
        steps_array = np.asarray(steps)
        for step in np.unique(steps_array):
            members = np.flatnonzero(steps_array == step)
            if len(members) >= 2:
                for index, advantage in zip(members, per_pair[members] - leave_one_out_mean(per_pair[members])):
                    advantages[index] = advantage
        return advantages

    def _replay_sample(self) -> list[Transition]:
        if not self.memory:
            return []
        size = min(self.config.replay_batch, len(self.memory))
        return [self.memory[int(i)] for i in torch.randint(len(self.memory), (size,), generator=self.sampler)]

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | Path) -> None:
        """Write the policy (weights, config, versions); :meth:`load` reads it back."""
        assert self.policy is not None, "nothing to save before a run"
        save_policy(path, self.policy, self.config)

    @classmethod
    def load(
        cls, path: str | Path, train: bool = False, num_envs: int = 1, temperature: float = 1.0
    ) -> ReinforceController:
        """A controller that starts every run from the saved policy: frozen (``train=False``, Table 5's
        "policy from 1st run") or fine-tuned (``train=True``), on ``num_envs`` children: the pair-shared policy
        runs on any number, so the file does not fix it (whatever count it was trained with).

        ``temperature`` divides the loaded policy's logits (its output layer is scaled by ``1 / temperature``).
        A policy that became deterministic has a vanishing REINFORCE gradient (the probability of the action
        it takes is 1), so fine-tuning it at 1 changes nothing, as the shipped digits policy's identical fine-tuned
        and frozen runs on Fashion-MNIST show (``benchmarks/results/fashion-mnist/``). A higher temperature makes
        it explore, and so learn, again.
        """
        check_real("temperature", temperature, 0.0, FLOAT32_MAX, low_open=True)
        checkpoint = checkpoints.load_checkpoint(path, "reinforce")
        saved = dict(checkpoint["config"])
        try:
            n_features = int(saved.pop("n_features"))
            config = ReinforceConfig(**{f.name: saved[f.name] for f in fields(ReinforceConfig) if f.name in saved})
            # Build the policy now, so that weights that do not fit its config fail here, not in run().
            policy = PairPolicy(n_features, config.hidden, torch.Generator())
            policy.load_state_dict(checkpoint["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            message = " ".join(str(exc).split())[:200]
            raise checkpoints.CheckpointError(f"{path} holds a damaged reinforce policy ({type(exc).__name__}: {message})") from None
        with torch.no_grad():
            for parameter in policy.net[-1].parameters():
                parameter.div_(temperature)
        if checkpoints.non_finite_weights(policy.state_dict()):
            raise ValueError(f"temperature {temperature} scales the policy's output layer past float32's range; use a larger one")
        state = policy.state_dict()
        return cls(config, num_envs=num_envs, train=train, initial_state=state, n_features=n_features)


# ---------------------------------------------------------------------- trained policies shipped with the code
POLICY_LIBRARY = Path(__file__).resolve().parent / "policies"
"""Policies learned on a cheap task, to run (frozen or fine-tuned) on a new one; ``policies/README.md``
says how each was trained."""


def save_policy(path: str | Path, policy: PairPolicy, config: ReinforceConfig) -> None:
    """``policy`` as a ``reinforce`` policy file, under ``config`` (its ``hidden`` the policy's), with its input
    size: what :meth:`ReinforceController.load` and ``meta_train --init-policy`` read."""
    first = policy.net[0]
    assert isinstance(first, nn.Linear)  # the input layer
    checkpoints.save_checkpoint(path, "reinforce", {**asdict(config), "n_features": first.in_features}, policy.state_dict())


def shipped_policies() -> list[str]:
    """The names of the policies shipped in :data:`POLICY_LIBRARY`."""
    return sorted(p.stem for p in POLICY_LIBRARY.glob("*.pt"))


def library_policy(name: str) -> Path:
    """The path of the shipped policy ``name`` (e.g. ``"digits"``); a clear error naming those shipped."""
    path = POLICY_LIBRARY / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"no shipped policy {name!r} in {POLICY_LIBRARY}; shipped: {shipped_policies()}")
    return path


def policy_path(name: str) -> Path:
    """A policy file (a name ending in ``.pt``) or a shipped policy's name (:func:`library_policy`), which
    reads the same from any folder and in an installed package."""
    if name.endswith(".pt"):
        return Path(name)
    if Path(name).exists() or "/" in name or "\\" in name:  # a path, not a shipped policy's name
        raise ValueError(f"{name} is not a policy file (those end in .pt, as --save writes them); or name a shipped "
                         f"policy: {shipped_policies()}")  # fmt: skip
    return library_policy(name)


def paper_controller(num_envs: int = 10, train: bool = True) -> ReinforceController:
    """The paper's controller on the paper's env rules (:meth:`ReinforceConfig.paper`, ``PAPER_ENV_KWARGS``)."""
    return ReinforceController(ReinforceConfig.paper(), num_envs=num_envs, train=train, env_overrides=PAPER_ENV_KWARGS)


def transfer_controller(
    policy: str = "digits", train: bool = True, num_envs: int = 10, temperature: float = 1.0
) -> ReinforceController:
    """A controller that starts from ``policy`` (section 6.3's policy transfer), a shipped policy's name or a
    policy file (:func:`policy_path`: one's own meta-trained policy in the benchmark), fine-tuned online
    (``train=True``) or run frozen; ``temperature`` as in :meth:`ReinforceController.load`."""
    return ReinforceController.load(policy_path(policy), train=train, num_envs=num_envs, temperature=temperature)


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = cli.OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    cli.add_run_args(parser, default_num_envs=10)
    cli.add_dataclass_args(parser, ReinforceConfig)
    parser.add_argument("--freeze", action="store_true", help="with --load: run the saved policy without learning")
    parser.add_argument(
        "--temperature", type=float, default=1.0,
        help="with --load: divide the saved policy's logits by this (above 1 a deterministic policy explores again)",
    )
    args = parser.parse_args(argv)
    cli.check_load_args(parser, ReinforceConfig, args)
    if args.temperature != 1.0 and not args.load:
        parser.error("--temperature needs --load (it scales a saved policy's logits)")
    if args.load:
        try:
            controller = ReinforceController.load(
                policy_path(args.load), train=not args.freeze, num_envs=args.num_envs, temperature=args.temperature
            )
        except (checkpoints.CheckpointError, ValueError) as exc:
            cli.fail(str(exc))
    else:
        try:
            controller = ReinforceController(cli.dataclass_from_args(ReinforceConfig, args), num_envs=args.num_envs)
        except ValueError as exc:
            cli.fail(str(exc))
    cli.run_cli(controller, args)


if __name__ == "__main__":
    main()
