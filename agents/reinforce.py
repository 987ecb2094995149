"""The bundled ALA controller: REINFORCE over a policy shared by all class pairs (paper, sections 3.2, 5).

Read top to bottom: the config, the policy, the controller (acting, learning, saving), the command line.

* Policy: an MLP ``24 -> 32 -> 32 -> 3`` (ReLU) applied to each class pair's feature row, giving the
  logits of {-beta, 0, +beta} for that pair. It has no input or output sized by the class count, so a
  policy learned on one task drives another with a different number of classes (section 6.3).
* Learning is online (Algorithm 1): every env step, each child's transition ``<s_t, a_t, r_t, s_t+1>`` is
  stored in a replay memory, and the policy takes one REINFORCE step on the fresh transitions of all
  children together with ``replay_batch`` transitions sampled from the memory ("this independent set of
  episodes, together with replay memory D"). Episodes are one step long (T = 1): the return of a
  transition is its own reward, from which an exponential moving average of rewards is subtracted as the
  baseline. Replayed transitions were drawn by older policies; like the paper, no importance weights.
* Every update logs the policy's entropy (collapse) and, through :func:`agents.base.step_logs`, Phi's
  drift from identity (blow-up at large beta): both failure modes the public re-implementation met.

``python -m agents.reinforce --env ALA-Digits-v0 --num-envs 10 --save runs/policy.pt`` trains one run;
``--load runs/policy.pt --freeze`` runs a saved policy frozen (Table 5's "policy from 1st run"),
``--load`` alone fine-tunes it.
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agents.base import Controller
from agents import runlog

N_ACTIONS = 3  # {-beta, 0, +beta}; beta itself is the env's (``beta=`` env keyword)


@dataclass
class ReinforceConfig:
    """Hyperparameters of the bundled REINFORCE controller (defaults: the paper and its public
    re-implementation)."""

    hidden: int = 32
    """Units in each of the policy's two hidden ReLU layers (section 5)."""
    lr: float = 1e-3
    """Adam learning rate of the policy (section 5)."""
    baseline_rate: float = 0.1
    """Rate of the exponential moving average of rewards used as the REINFORCE baseline."""
    replay_capacity: int = 1000
    """Transitions kept in the replay memory (oldest dropped first)."""
    replay_batch: int = 8
    """Transitions sampled from the memory for each update, on top of the fresh ones; each transition
    carries all of a child's per-pair decisions."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus against entropy collapse; 0 is the paper's plain REINFORCE."""


class PairPolicy(nn.Module):
    """One small MLP applied to every class pair: ``[..., n_pairs, n_features] -> [..., n_pairs, 3]`` logits."""

    def __init__(self, n_features: int, hidden: int, generator: torch.Generator) -> None:
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

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations)


class Transition(NamedTuple):
    """One child's ``<s_t, a_t, r_t, s_t+1>``; ``state`` ``[n_pairs, n_features]``, ``action`` ``[n_pairs]``."""

    state: torch.Tensor
    action: torch.Tensor
    reward: float
    next_state: torch.Tensor


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the per-pair action distributions; ln 3 ~ 1.10 is uniform, 0 deterministic."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


class ReinforceController(Controller):
    """REINFORCE with an EMA baseline and a replay memory, learning online while the children train.

    Every :meth:`run` starts from the same policy: a fresh one initialised from the run's seed or, when
    the controller was made by :meth:`load`, the loaded weights. After a run the learned policy is in
    ``self.policy`` and :meth:`save` writes it. ``train=False`` runs the policy frozen.
    """

    name = "reinforce"

    def __init__(
        self,
        config: ReinforceConfig | None = None,
        num_envs: int = 1,
        train: bool = True,
        initial_state: dict[str, torch.Tensor] | None = None,
        n_features: int | None = None,
    ) -> None:
        self.config = config or ReinforceConfig()
        self.num_envs = num_envs
        self.train = train
        self.initial_state, self.n_features = initial_state, n_features
        self.policy: PairPolicy | None = None

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        n_features = int(envs.single_observation_space.shape[-1])
        if self.n_features is not None and n_features != self.n_features:
            raise ValueError(
                f"the policy reads {self.n_features} features per class pair but the env gives {n_features} "
                "(its 'history' keyword must match the one the policy was trained with)"
            )
        self.n_features = n_features
        init_generator = torch.Generator().manual_seed(seed)
        self.policy = PairPolicy(n_features, self.config.hidden, init_generator)
        if self.initial_state is not None:
            self.policy.load_state_dict(self.initial_state)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr)
        self.sampler = torch.Generator().manual_seed(seed + 1)  # actions and replay draws
        self.memory: deque[Transition] = deque(maxlen=self.config.replay_capacity)
        self.baseline = 0.0
        self.running = np.ones(envs.num_envs, dtype=bool)

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
        """One REINFORCE step on the fresh transitions of the running children plus a replayed sample."""
        assert self.policy is not None, "begin() must be called first"
        # A finished child is reset by the vector env; what it does after is no longer this run.
        valid = self.running.copy()
        self.running &= ~np.asarray(dones, dtype=bool)
        fresh = [
            Transition(torch.as_tensor(observations[i]), torch.as_tensor(actions[i]), float(rewards[i]),
                       torch.as_tensor(next_observations[i]))
            for i in np.flatnonzero(valid)
        ]
        if not fresh:
            return {}
        with torch.no_grad():
            entropy = mean_entropy(self.policy(torch.stack([t.state for t in fresh]))).item()
        if not self.train:
            return {"entropy": entropy}

        replayed = []
        if self.memory:
            size = min(self.config.replay_batch, len(self.memory))
            replayed = [self.memory[int(i)] for i in torch.randint(len(self.memory), (size,), generator=self.sampler)]
        self.memory.extend(fresh)
        batch = fresh + replayed
        states = torch.stack([t.state for t in batch]).float()
        chosen = torch.stack([t.action for t in batch]).long()
        # T = 1: a transition's return is its reward; the baseline is the EMA of past fresh rewards.
        advantages = torch.tensor([t.reward for t in batch]) - self.baseline
        self.baseline += self.config.baseline_rate * (float(np.mean([t.reward for t in fresh])) - self.baseline)

        logits = self.policy(states)
        log_probs = F.log_softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)  # [batch, n_pairs]
        # Mean over pairs, so that the step size does not grow with the number of classes.
        loss = -(advantages * log_probs.mean(dim=-1)).mean() - self.config.entropy_coef * mean_entropy(logits)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"entropy": entropy, "policy_loss": loss.item(), "baseline": self.baseline}

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | Path) -> None:
        """Write the policy (weights, config, versions); :meth:`load` reads it back."""
        assert self.policy is not None, "nothing to save before a run"
        config = {**asdict(self.config), "n_features": self.n_features}
        runlog.save_checkpoint(path, "reinforce", config, self.policy.state_dict())

    @classmethod
    def load(cls, path: str | Path, train: bool = False, num_envs: int = 1) -> ReinforceController:
        """A controller that starts every run from the saved policy: frozen (``train=False``, Table 5's
        "policy from 1st run") or fine-tuned (``train=True``)."""
        checkpoint = runlog.load_checkpoint(path, "reinforce")
        saved = dict(checkpoint["config"])
        try:
            n_features = int(saved.pop("n_features"))
            config = ReinforceConfig(**{f.name: saved[f.name] for f in fields(ReinforceConfig) if f.name in saved})
            # Build the policy now, so that weights that do not fit its config fail here, not in run().
            PairPolicy(n_features, config.hidden, torch.Generator()).load_state_dict(checkpoint["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            message = " ".join(str(exc).split())[:200]
            raise runlog.CheckpointError(f"{path} holds a damaged reinforce policy ({type(exc).__name__}: {message})") from None
        state = checkpoint["state_dict"]
        return cls(config, num_envs=num_envs, train=train, initial_state=state, n_features=n_features)


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=runlog.HelpFormatter)
    runlog.add_run_args(parser, default_num_envs=10)
    runlog.add_dataclass_args(parser, ReinforceConfig)
    parser.add_argument("--freeze", action="store_true", help="with --load: run the saved policy without learning")
    args = parser.parse_args(argv)
    runlog.check_load_args(parser, ReinforceConfig, args)
    if args.load:
        try:
            controller = ReinforceController.load(args.load, train=not args.freeze, num_envs=args.num_envs)
        except runlog.CheckpointError as exc:
            runlog.fail(str(exc))
    else:
        controller = ReinforceController(runlog.dataclass_from_args(ReinforceConfig, args), num_envs=args.num_envs)
    runlog.run_cli(controller, args)


if __name__ == "__main__":
    main()
