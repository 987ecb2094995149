"""Stable-Baselines3 controllers (PPO, A2C) over the ALA vector env, learning online within one run.

SB3 owns its training loop, so :class:`SB3Controller` overrides :meth:`Controller.run`: it wraps the
native vector env in the SB3 adapter (:class:`ala_gym.wrappers.sb3.SB3VecEnv`, which needs the env built
with ``autoreset_mode=SAME_STEP``: :meth:`SB3Controller.env_kwargs` asks for it), calls ``model.learn``
and records each child's first episode from a callback, stopping SB3 once every child has finished.

Two policies:

* ``"pair"`` (default), :class:`PairSharedPolicy`: like the bundled REINFORCE policy, one small MLP
  applied to every class pair's feature row gives that pair's 3 logits; the critic applies another
  per-pair MLP and averages over pairs. No weight depends on the class count, so a saved policy runs on
  a task with another number of classes.
* ``"mlp"``: SB3's default ``MlpPolicy`` over the flattened ``n_pairs x 24`` observation (tied to the
  class count it was trained on).

An env step costs seconds (K SGD iterations of every child), so the rollout is short: ``n_steps = 8``
steps per child between updates (an episode of ``ALA-Digits-v0`` has 40).

``python -m ala_gym.agents.sb3 --algo ppo --env ALA-Digits-v0 --num-envs 10 --save runs/ppo.pt``
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn

from ala_gym.agents import checkpoints, cli
from ala_gym.core.global_rng import python_random_kept

cli.require("sb3", __name__)  # before importing it: without the extra, one line saying which to install
with python_random_kept():  # its first import draws from Python's random
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.distributions import MultiCategoricalDistribution
    from stable_baselines3.common.logger import Logger, configure
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.policies import ActorCriticPolicy

from ala_gym.agents.base import Controller, EpisodeRecord, EpisodeRecorder, OnStep, require_vector_env, step_logs
from ala_gym.core.checks import FLOAT32_MAX, check_int, check_real
from ala_gym.core.data import resolve_device
from ala_gym.core.files import atomic_file
from ala_gym.wrappers.sb3 import SB3VecEnv

ALGORITHMS: dict[str, type[OnPolicyAlgorithm]] = {"ppo": PPO, "a2c": A2C}
N_ACTIONS = 3
MODEL_SUFFIX = ".zip"
"""Suffix of Stable-Baselines3's own file of the model, written beside the policy file (:meth:`SB3Controller.save`)."""


# ---------------------------------------------------------------------- the pair-shared policy
def pair_mlp(n_features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())


class PairExtractor(nn.Module):
    """SB3's ``mlp_extractor`` slot: actor latents per pair ``[B, n_pairs, hidden]``, critic latents pooled
    over pairs ``[B, hidden]``; both from MLPs shared by all pairs."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.n_features = n_features
        self.latent_dim_pi = self.latent_dim_vf = hidden
        self.policy_net = pair_mlp(n_features, hidden)
        self.value_net = pair_mlp(n_features, hidden)

    def _rows(self, features: torch.Tensor) -> torch.Tensor:
        return features.reshape(len(features), -1, self.n_features)  # undo SB3's FlattenExtractor

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.policy_net(self._rows(features))

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(self._rows(features)).mean(dim=1)


class PairSharedPolicy(ActorCriticPolicy):
    """Actor-critic policy whose action head applies one ``hidden -> 3`` layer to every pair's latent.

    The logits come out pair by pair (``[B, n_pairs * 3]``, pair ``k`` at ``3k:3k+3``), the layout of
    SB3's ``MultiCategoricalDistribution`` for ``MultiDiscrete([3] * n_pairs)``.
    """

    def __init__(self, *args: Any, hidden: int = 32, **kwargs: Any) -> None:
        self.hidden = hidden  # read by _build_mlp_extractor, which the parent constructor calls
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        assert isinstance(self.observation_space, gym.spaces.Box)  # the ALA env's [n_pairs, n_features] rows
        # SB3 annotates the slot with its own MlpExtractor, yet reads only what PairExtractor has too (the
        # latent sizes, forward_actor and forward_critic): its documented way to plug in another network.
        self.mlp_extractor = PairExtractor(int(self.observation_space.shape[-1]), self.hidden)  # type: ignore[assignment]

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        # Replace SB3's head (sized by n_pairs) with a per-pair one, then rebuild the optimizer over it.
        self.action_net = nn.Sequential(nn.Linear(self.hidden, N_ACTIONS), nn.Flatten(start_dim=-2))
        if self.ortho_init:
            self.action_net.apply(partial(self.init_weights, gain=0.01))
        # SB3 types optimizer_class as torch's Optimizer base, whose constructor takes no lr; every optimizer it
        # passes (Adam, RMSprop) does, and SB3's own _build makes this same call.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]


# ---------------------------------------------------------------------- the controller
@dataclass
class SB3Config:
    """Settings of the Stable-Baselines3 controllers."""

    policy: str = "pair"
    """"pair" (PairSharedPolicy, transfers across class counts) or "mlp" (SB3's MlpPolicy)."""
    hidden: int = 32
    """Units in each of the two hidden layers of the pair policy's per-pair MLPs."""
    lr: float = 3e-4
    """Learning rate of the policy optimizer (Adam for PPO, RMSprop for A2C)."""
    n_steps: int = 8
    """Env steps per child between updates; small because an env step costs seconds."""
    n_epochs: int = 4
    """PPO only: passes over each rollout."""
    batch_size: int = 0
    """PPO only: minibatch size; 0 means the whole rollout (n_steps x num_envs)."""
    gamma: float = 0.9
    """Discount over controller steps (the paper's one-step REINFORCE ignores it)."""
    gae_lambda: float = 0.95
    """GAE lambda (1.0 is A2C's plain n-step return)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    policy_device: str = "cpu"
    """Device of the (small) policy network; the children's is the env's ``device`` keyword."""

    def __post_init__(self) -> None:
        if self.policy not in ("pair", "mlp"):
            raise ValueError(f"policy must be 'pair' or 'mlp', got {self.policy!r}")
        for name in ("hidden", "n_steps", "n_epochs"):
            check_int(name, getattr(self, name), 1)
        check_int("batch_size", self.batch_size, 0)
        check_real("lr", self.lr, 0.0, FLOAT32_MAX, low_open=True)  # the policy is float32: no larger step applies
        check_real("gamma", self.gamma, 0.0, 1.0)
        check_real("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_real("ent_coef", self.ent_coef, 0.0)
        try:
            device_type = torch.device(self.policy_device).type
        except RuntimeError:
            device_type = None
        if device_type not in ("cpu", "cuda"):  # SB3 and the envs run on these
            raise ValueError(f"policy_device must be 'cpu', 'cuda' or 'cuda:N', got {self.policy_device!r}")


class _RecordingCallback(BaseCallback):
    """Records every child's first episode from SB3's per-step infos; stops learning once all are done."""

    def __init__(
        self, recorder: EpisodeRecorder, model_entropy: Callable[[np.ndarray], float], on_step: OnStep | None
    ) -> None:
        super().__init__()
        self.recorder, self.model_entropy, self.on_step_fn = recorder, model_entropy, on_step

    def _on_step(self) -> bool:
        record_step(self.recorder, self.n_calls, self.locals["obs_tensor"].cpu().numpy(), self.locals["rewards"],
                    self.locals["dones"], self.locals["infos"], self.model_entropy, self.on_step_fn)
        return not self.recorder.done


def record_step(recorder: EpisodeRecorder, step: int, observations: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
                infos: list[dict], entropy: Callable[[np.ndarray], float], on_step: OnStep | None) -> None:
    """Feed one SB3 vector step to ``recorder`` and ``on_step`` (the logs of :meth:`Controller.run`)."""
    running = ~recorder.finished
    for child, info in enumerate(infos):
        recorder.add_child(child, float(rewards[child]), bool(dones[child]), info)
    if on_step is not None:
        phi = np.stack([infos[i]["phi"] for i in np.flatnonzero(running)])
        val_metric = np.array([infos[i]["val_metric"] for i in np.flatnonzero(running)])
        on_step(step, {**step_logs(rewards[running], phi, val_metric), "entropy": entropy(observations[running])})


def train_on_the_last_rollout(model: OnPolicyAlgorithm, last_step: dict[str, Any]) -> None:
    """One update on the rollout that the end of the children's runs cut short, as SB3 updates on a full one.

    The callback that stops SB3 at that step (the step every child's run ended at, with its final rewards) makes
    SB3 return before it stores the step and without training on its part-filled buffer, so without this the last
    ``n_steps`` or fewer steps of every run, the end of training among them, would never be learned from (and a
    run shorter than ``n_steps`` would learn nothing). ``last_step``: SB3's locals at that step (its callback's)."""
    buffer, dones, infos = model.rollout_buffer, last_step["dones"], last_step["infos"]
    rewards = np.array(last_step["rewards"], dtype=np.float32)
    for child, done in enumerate(dones):  # a run cut by a time limit bootstraps from its last value, as SB3 does
        if done and infos[child].get("terminal_observation") is not None and infos[child].get("TimeLimit.truncated", False):
            terminal = model.policy.obs_to_tensor(infos[child]["terminal_observation"])[0]
            with torch.no_grad():
                rewards[child] += model.gamma * float(model.policy.predict_values(terminal)[0])
    last_obs, episode_starts = model._last_obs, model._last_episode_starts  # the step's, which SB3 set before it
    assert isinstance(last_obs, np.ndarray) and isinstance(episode_starts, np.ndarray)  # Box observations: one array
    buffer.add(last_obs, last_step["actions"], rewards, episode_starts, last_step["values"], last_step["log_probs"])
    size = buffer.buffer_size if buffer.full else buffer.pos
    # The buffer cut to the steps it holds (its returns run over all of its rows).
    for name in ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages"):
        setattr(buffer, name, getattr(buffer, name)[:size])
    buffer.buffer_size, buffer.full = size, True
    with torch.no_grad():
        last_values = model.policy.predict_values(model.policy.obs_to_tensor(last_step["new_obs"])[0])
    buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
    model.train()


@contextmanager
def isolated_global_rngs() -> Iterator[None]:
    """SB3 seeds and draws from the global RNGs of torch, numpy and ``random``; restore the caller's after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SB3Controller(Controller):
    """PPO or A2C from Stable-Baselines3, learning online while the children train (one run).

    Like :class:`ala_gym.agents.reinforce.ReinforceController`, every run starts from the same policy (fresh
    from the run's seed, or the loaded weights); the trained SB3 model is left in ``self.model``.

    ``policy`` (``"pair"`` or ``"mlp"``) replaces ``config.policy``; ``initial_state`` is the loaded policy's
    weights (:meth:`load`); ``log_dir`` takes SB3's TensorBoard curves (none by default).
    """

    learned = True
    multi_child = True
    acts_in_any_state = False  # the model that acts is built inside run()

    def __init__(
        self,
        algo: str = "ppo",
        config: SB3Config | None = None,
        num_envs: int = 10,
        train: bool = True,
        initial_state: dict[str, torch.Tensor] | None = None,
        policy: str | None = None,
        log_dir: str | Path | None = None,
    ) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {algo!r}; choose one of {sorted(ALGORITHMS)}")
        self.algo, self.name = algo, algo
        config = config or SB3Config()
        self.config = config if policy is None else replace(config, policy=policy)  # the caller's config unchanged
        self.num_envs, self.train, self.initial_state = num_envs, train, initial_state
        self.check_settings()
        self.log_dir = log_dir  # where SB3's own train/* scalars go (TensorBoard), if anywhere
        self.model: OnPolicyAlgorithm | None = None

    def check_settings(self) -> None:
        if self.algo != "ppo":  # set for another algorithm, they would be ignored without a word
            defaults = SB3Config()
            ppo_only = [f"{name}={getattr(self.config, name)}" for name in ("n_epochs", "batch_size")
                        if getattr(self.config, name) != getattr(defaults, name)]  # fmt: skip
            if ppo_only:
                raise ValueError(f"{' and '.join(ppo_only)} set PPO's minibatch updates, which {self.algo} does not make; leave them out")
        if self.initial_state is None:  # a new policy: SB3 would fall back to the CPU without a word for an absent GPU
            try:
                resolve_device(self.config.policy_device)
            except ValueError:
                gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
                raise ValueError(f"policy_device={self.config.policy_device!r}, but this machine has {gpus} CUDA GPU(s) "
                                 "visible to torch; use policy_device='cpu'") from None  # fmt: skip
        minibatch = self.config.batch_size or self.config.n_steps * self.num_envs
        if self.algo == "ppo" and minibatch < 2:  # PPO normalises the advantages over each minibatch
            # A loaded policy keeps its saved settings, which passed here on more children (so batch_size 0, n_steps 1).
            fix = "num_envs >= 2" if self.initial_state is not None else "batch_size >= 2, or n_steps x num_envs >= 2 with batch_size 0"
            raise ValueError(
                f"PPO needs minibatches of at least 2 transitions, got {minibatch} (batch_size {self.config.batch_size}, "
                f"n_steps {self.config.n_steps}, num_envs {self.num_envs}): set {fix}"
            )

    def env_kwargs(self) -> dict[str, Any]:
        return {"autoreset_mode": AutoresetMode.SAME_STEP}  # what SB3's VecEnv semantics need

    def check_envs(self, envs: gym.vector.VectorEnv) -> None:
        """SB3's vector env needs ``SAME_STEP`` autoresets (:meth:`env_kwargs`), not the other controllers' mode;
        :class:`ala_gym.wrappers.sb3.SB3VecEnv` refuses any other."""

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        assert self.model is not None, "run() builds the model"
        return self.model.predict(observations, deterministic=False)[0]

    def _make_model(self, venv: SB3VecEnv, seed: int) -> OnPolicyAlgorithm:
        c = self.config
        kwargs: dict[str, Any] = dict(
            learning_rate=c.lr, n_steps=c.n_steps, gamma=c.gamma, gae_lambda=c.gae_lambda, ent_coef=c.ent_coef,
            seed=seed, device=c.policy_device, verbose=0,
        )
        if self.algo == "ppo":
            kwargs.update(n_epochs=c.n_epochs, batch_size=c.batch_size or c.n_steps * venv.num_envs)
        if c.policy == "pair":
            model = ALGORITHMS[self.algo](PairSharedPolicy, venv, policy_kwargs={"hidden": c.hidden}, **kwargs)
        else:
            model = ALGORITHMS[self.algo]("MlpPolicy", venv, **kwargs)
        if self.initial_state is not None:
            try:
                model.policy.load_state_dict(self.initial_state)
            except (RuntimeError, KeyError) as exc:  # weights of another shape: another policy or class count
                message = " ".join(str(exc).split())[:200]
                raise checkpoints.CheckpointError(
                    f"the loaded {self.algo} policy does not fit this env ({message}); run it on an env like the one it was "
                    "saved from (the same number of classes and observation features)"
                ) from None
        # Without a logger of its own, SB3's learn() makes an empty folder in the temp dir on every run.
        quiet = Logger(folder=None, output_formats=[])
        model.set_logger(quiet if self.log_dir is None else configure(str(self.log_dir), ["tensorboard"]))
        return model

    def _entropy(self, observations: np.ndarray) -> float:
        """Mean per-pair entropy (nats) of the policy at ``observations``, comparable with REINFORCE's."""
        assert self.model is not None
        with torch.no_grad():
            obs = torch.as_tensor(observations, device=self.model.device)
            distribution = self.model.policy.get_distribution(obs)
            assert isinstance(distribution, MultiCategoricalDistribution)  # one categorical per class pair
            distributions = distribution.distribution
            return float(torch.stack([d.entropy() for d in distributions], dim=-1).mean())

    def run(
        self,
        envs: gym.vector.VectorEnv,
        seed: int,
        on_step: OnStep | None = None,
    ) -> list[EpisodeRecord]:
        require_vector_env(envs)
        venv = SB3VecEnv(envs.unwrapped)
        venv.seed(seed)
        recorder = EpisodeRecorder(venv.num_envs)
        with isolated_global_rngs():
            self.model = self._make_model(venv, seed)
            try:
                if self.train:
                    # Large budget: the callback stops SB3 once every child's training run has ended.
                    callback = _RecordingCallback(recorder, self._entropy, on_step)
                    self.model.learn(total_timesteps=2**62, callback=callback, log_interval=1)
                    train_on_the_last_rollout(self.model, callback.locals)
                else:
                    observations, step = venv.reset(), 0
                    while not recorder.done:
                        next_observations, rewards, dones, infos = venv.step(self.act(observations, {}))
                        step += 1
                        record_step(recorder, step, observations, rewards, dones, infos, self._entropy, on_step)
                        observations = next_observations
            finally:
                self.model.logger.close()  # its TensorBoard writer's thread, which would outlive the run
        return recorder.records

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | Path) -> None:
        """Write the policy's weights and config (same format as the bundled agent's) and, beside it with the
        suffix ``.zip``, Stable-Baselines3's own file of the whole model (``PPO.load`` / ``A2C.load`` read it)."""
        assert self.model is not None, "nothing to save before a run"
        checkpoints.save_checkpoint(path, f"sb3-{self.algo}", asdict(self.config), self.model.policy.state_dict())
        # Whole or not at all, as the checkpoint: SB3 writes the temporary file by its name (ending in .zip, else it
        # would add the suffix), which is then moved onto the model's file.
        with atomic_file(Path(path).with_suffix(MODEL_SUFFIX), suffix=MODEL_SUFFIX) as file:
            self.model.save(file.name)

    @classmethod
    def load(cls, path: str | Path, algo: str = "ppo", train: bool = False, num_envs: int = 10) -> SB3Controller:
        """A controller that starts every run from the saved policy, frozen or (``train=True``) fine-tuned."""
        checkpoint = checkpoints.load_checkpoint(path, f"sb3-{algo}")
        saved = checkpoint["config"]
        try:
            config = SB3Config(**{f.name: saved[f.name] for f in fields(SB3Config) if f.name in saved})
        except (TypeError, ValueError) as exc:  # a value its config refuses
            raise checkpoints.CheckpointError(f"{path} holds a damaged {algo} policy config ({exc})") from None
        return cls(algo, config, num_envs=num_envs, train=train, initial_state=checkpoint["state_dict"])


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = cli.OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default="ppo", help="Stable-Baselines3 algorithm")
    cli.add_run_args(parser, default_num_envs=10)
    cli.add_dataclass_args(parser, SB3Config)
    parser.add_argument("--freeze", action="store_true", help="with --load: run the saved policy without learning")
    args = parser.parse_args(argv)
    cli.check_load_args(parser, SB3Config, args)
    if args.load:
        try:
            controller = SB3Controller.load(args.load, args.algo, train=not args.freeze, num_envs=args.num_envs)
        except ValueError as exc:  # a damaged file (CheckpointError), or a child count its saved settings cannot use
            cli.fail(str(exc))
    else:
        try:
            controller = SB3Controller(args.algo, cli.dataclass_from_args(SB3Config, args), num_envs=args.num_envs)
        except ValueError as exc:
            cli.fail(str(exc))
    if not args.no_tensorboard:
        controller.log_dir = args.log_dir or cli.default_log_dir(controller.name, args)
    cli.run_cli(controller, args, beside=(MODEL_SUFFIX,))


if __name__ == "__main__":
    # Run as the package's module, not as __main__: SB3 pickles the policy class into its .zip, by reference only
    # where the class is importable by that name (from __main__ it pickles it whole, with this file's path).
    from ala_gym.agents import sb3

    sb3.main()
