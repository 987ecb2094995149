"""The bundled ALA controller: REINFORCE over a policy shared by all class pairs (paper, sections 3.2, 5).

Read top to bottom: the config, the policy, the controller (acting, learning, saving), the command line.

* Policy: an MLP ``24 -> 32 -> 32 -> 3`` (ReLU) applied to each class pair's feature row, giving the
  logits of {-beta, 0, +beta} for that pair. It has no input or output sized by the class count, so a
  policy learned on one task drives another with a different number of classes (section 6.3).
* Learning is online (Algorithm 1): every env step, each child's transition ``<s_t, a_t, r_t, s_t+1>`` is
  stored in a replay memory, and the policy takes ``updates_per_step`` REINFORCE steps on the fresh
  transitions of all children together with ``replay_batch`` transitions sampled from the memory ("this
  independent set of episodes, together with replay memory D"). Episodes are one step long (T = 1): the
  return of a decision is its own reward. Replayed transitions were drawn by older policies; like the
  paper, no importance weights.
* Credit and baseline (where the defaults depart from the paper, see :class:`ReinforceConfig`): each
  pair's decision is credited with the sign of the improvement on its own two classes
  (``pair_credit``), and the baseline of a child is the mean of the other children's rewards at the same
  step (``baseline="loo"``), with a policy learning rate of 1e-2. The paper's configuration is
  :meth:`ReinforceConfig.paper` (one shared reward, moving-average baseline, Adam 1e-3), on the env's
  paper step rules ``PAPER_ENV_KWARGS``: the ``reinforce-paper`` controllers.
* Every update logs the policy's entropy and mean probability of "no change" over the pairs an action can
  move (collapse to a deterministic policy) and, through :func:`agents.base.step_logs`, Phi's drift from
  identity (blow-up at large beta): the failure modes measured here and in the public re-implementation.

``python -m agents.reinforce --env ALA-Digits-v0 --num-envs 10 --save runs/policy.pt`` trains one run;
``--load runs/policy.pt --freeze`` runs a saved policy frozen (Table 5's "policy from 1st run"),
``--load`` alone fine-tunes it.
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agents.base import Controller
from agents import checkpoints, cli

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
    label-smoothing-like loss, see ``agents.baselines.UniformPhi``); 0 starts from identity (cross-entropy)
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

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if not 0 <= self.start_off_diagonal <= 1:
            raise ValueError(f"start_off_diagonal must be in [0, 1], got {self.start_off_diagonal}")
        if not 0 <= self.init_no_change < 1:
            raise ValueError(f"init_no_change must be in [0, 1), got {self.init_no_change}")
        if self.updates_per_step < 1 or self.hidden < 1 or self.lr <= 0:
            raise ValueError("hidden, lr and updates_per_step must be positive")

    @classmethod
    def paper(cls) -> ReinforceConfig:
        """The paper's controller (section 5 and its public re-implementation): Adam 1e-3, moving-average
        baseline, one reward shared by all pairs, default initialisation."""
        return cls(lr=1e-3, baseline="ema", pair_credit=False)


PAPER_ENV_KWARGS = {"fixed_diagonal": False, "step_scaling": "entry"}
"""The env's literal paper behaviour (diagonal free, ``beta`` per entry), used with :meth:`ReinforceConfig.paper`."""


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
    replayed advantages use the current baseline, as in the paper)."""

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


class ReinforceController(Controller):
    """REINFORCE with an EMA baseline and a replay memory, learning online while the children train.

    Every :meth:`run` starts from the same policy: a fresh one initialised from the run's seed or, when
    the controller was made by :meth:`load`, the loaded weights. After a run the learned policy is in
    ``self.policy`` and :meth:`save` writes it. ``train=False`` runs the policy frozen.
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

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        n_features = int(envs.single_observation_space.shape[-1])
        if self.n_features is not None and n_features != self.n_features:
            raise ValueError(
                f"the policy reads {self.n_features} features per class pair but the env gives {n_features} "
                "(its 'history' keyword must match the one the policy was trained with)"
            )
        self.n_features = n_features
        init_generator = torch.Generator().manual_seed(seed)
        self.policy = PairPolicy(n_features, self.config.hidden, init_generator, self.config.init_no_change)
        if self.initial_state is not None:
            self.policy.load_state_dict(self.initial_state)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr)
        self.sampler = torch.Generator().manual_seed(seed + 1)  # actions and replay draws
        self.memory: deque[Transition] = deque(maxlen=self.config.replay_capacity)
        n_pairs = int(envs.single_action_space.shape[0])
        self.baseline = np.zeros(n_pairs)
        # Pairs whose action the env ignores (a held diagonal) carry no information: no gradient from them.
        self.movable = torch.as_tensor(np.asarray(envs.get_attr("movable_rows")[0], dtype=bool))
        self.running = np.ones(envs.num_envs, dtype=bool)
        self._started = False

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
        """``updates_per_step`` REINFORCE steps on the fresh transitions of the running children, each
        with its own replayed sample."""
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
        fresh_advantages = self._fresh_advantages(per_pair)
        fresh = [
            Transition(
                torch.as_tensor(observations[i]),
                torch.as_tensor(actions[i]),
                torch.as_tensor(reward),
                torch.as_tensor(next_observations[i]),
                None if advantage is None else torch.as_tensor(advantage),
            )
            for i, reward, advantage in zip(valid, per_pair, fresh_advantages)
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
            logits = self.policy(states)
            log_probs = F.log_softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)  # [batch, n_pairs]
            movable = self.movable
            # Mean over pairs, so that the step size does not grow with the number of classes.
            loss = -(advantages[:, movable] * log_probs[:, movable]).mean(-1).mean()
            loss = loss - self.config.entropy_coef * mean_entropy(logits[:, movable])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        # The moving average follows the fresh rewards (after the update: it is this step's baseline).
        self.baseline += self.config.baseline_rate * (per_pair.mean(axis=0) - self.baseline)
        return {**logs, "policy_loss": float(np.mean(losses)), "baseline": float(self.baseline.mean())}

    def _fresh_advantages(self, per_pair: np.ndarray) -> list[np.ndarray | None]:
        """Leave-one-out advantages over the fresh children (``"loo"`` with two or more), else None:
        the advantage is then the reward minus the moving average at update time."""
        count = len(per_pair)
        if self.config.baseline != "loo" or count < 2:
            return [None] * count
        others = (per_pair.sum(axis=0, keepdims=True) - per_pair) / (count - 1)
        return list(per_pair - others)

    def _replay_sample(self) -> list[Transition]:
        if not self.memory:
            return []
        size = min(self.config.replay_batch, len(self.memory))
        return [self.memory[int(i)] for i in torch.randint(len(self.memory), (size,), generator=self.sampler)]

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | Path) -> None:
        """Write the policy (weights, config, versions); :meth:`load` reads it back."""
        assert self.policy is not None, "nothing to save before a run"
        config = {**asdict(self.config), "n_features": self.n_features}
        checkpoints.save_checkpoint(path, "reinforce", config, self.policy.state_dict())

    @classmethod
    def load(cls, path: str | Path, train: bool = False, num_envs: int = 1) -> ReinforceController:
        """A controller that starts every run from the saved policy: frozen (``train=False``, Table 5's
        "policy from 1st run") or fine-tuned (``train=True``)."""
        checkpoint = checkpoints.load_checkpoint(path, "reinforce")
        saved = dict(checkpoint["config"])
        try:
            n_features = int(saved.pop("n_features"))
            config = ReinforceConfig(**{f.name: saved[f.name] for f in fields(ReinforceConfig) if f.name in saved})
            # Build the policy now, so that weights that do not fit its config fail here, not in run().
            PairPolicy(n_features, config.hidden, torch.Generator()).load_state_dict(checkpoint["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            message = " ".join(str(exc).split())[:200]
            raise checkpoints.CheckpointError(f"{path} holds a damaged reinforce policy ({type(exc).__name__}: {message})") from None
        state = checkpoint["state_dict"]
        return cls(config, num_envs=num_envs, train=train, initial_state=state, n_features=n_features)


# ---------------------------------------------------------------------- trained policies shipped with the code
POLICY_LIBRARY = Path(__file__).resolve().parent / "policies"
"""Policies learned on a cheap task, to run (frozen or fine-tuned) on a new one; ``policies/README.md``
says how each was trained."""


def library_policy(name: str) -> Path:
    """The path of the shipped policy ``name`` (e.g. ``"digits"``); a clear error naming those shipped."""
    path = POLICY_LIBRARY / f"{name}.pt"
    if not path.is_file():
        shipped = sorted(p.stem for p in POLICY_LIBRARY.glob("*.pt"))
        raise ValueError(f"no shipped policy {name!r} in {POLICY_LIBRARY}; shipped: {shipped}")
    return path


def paper_controller(num_envs: int = 10, train: bool = True) -> ReinforceController:
    """The paper's controller on the paper's env rules (:meth:`ReinforceConfig.paper`, ``PAPER_ENV_KWARGS``)."""
    return ReinforceController(ReinforceConfig.paper(), num_envs=num_envs, train=train, env_overrides=PAPER_ENV_KWARGS)


def transfer_controller(policy: str = "digits", train: bool = True, num_envs: int = 10) -> ReinforceController:
    """A controller that starts from the shipped ``policy`` (section 6.3's policy transfer): fine-tuned
    online (``train=True``) or run frozen."""
    return ReinforceController.load(library_policy(policy), train=train, num_envs=num_envs)


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    cli.add_run_args(parser, default_num_envs=10)
    cli.add_dataclass_args(parser, ReinforceConfig)
    parser.add_argument("--freeze", action="store_true", help="with --load: run the saved policy without learning")
    args = parser.parse_args(argv)
    cli.check_load_args(parser, ReinforceConfig, args)
    if args.load:
        try:
            controller = ReinforceController.load(args.load, train=not args.freeze, num_envs=args.num_envs)
        except checkpoints.CheckpointError as exc:
            cli.fail(str(exc))
    else:
        controller = ReinforceController(cli.dataclass_from_args(ReinforceConfig, args), num_envs=args.num_envs)
    cli.run_cli(controller, args)


if __name__ == "__main__":
    main()
