"""AdaLFL: a loss network learned online, after every SGD step of the child it trains.

Raymond, Chen, Xue, Zhang, "Meta-Learning Adaptive Loss Functions" (TMLR 2025; arXiv 2301.13247,
"Online Loss Function Learning"). The loss is a small network ``M_phi``. It is first initialised
offline (Algorithm 1, ML3-style: many one-step unrolls from fresh child weights), then adapted online
(Algorithm 2): every iteration the child takes one SGD step under ``M_phi``, and ``phi`` takes one
Adam step on the cross-entropy of the *updated* child on a validation batch, differentiated through
that SGD step. No reinforcement learning: the controller trains the child itself, on the task an ALA
env describes (data, model, optimiser, schedule, budget, child seed), so its final test metric
compares one to one with the other controllers' (``ce`` above all).

How the pieces fit:

* :class:`LossNetwork` is ``M_phi``: the per-class network ``l_phi`` on (one-hot target, softmax
  probability) pairs, averaged over classes and the batch.
* :func:`meta_step` is one unrolled step of both algorithms: base step on a training batch through the
  core's differentiable :func:`ala_gym.core.sgd.sgd_step` on a :class:`ala_gym.core.functional.FunctionalChild`,
  meta-objective on a meta batch, Adam step on ``phi``. Gradients come from
  ``torch.autograd.grad(..., create_graph=True)``; no model copy, no ``higher``.
* :func:`initialise_offline` is Algorithm 1; :class:`OnlineTrainer` is Algorithm 2.
* :class:`AdaLFLController` runs both for the benchmark (``python -m ala_gym.benchmarks.compare --controllers
  ce,adalfl``).

BatchNorm (ResNets): the base forward runs in training mode and updates the running statistics, as
an ordinary training step does. The meta forward on the validation batch also runs in training mode
(it normalises with that batch's statistics, as the authors' ``higher`` code does) but does not update
the running statistics (this implementation's choice), so the statistics evaluation uses come from training batches
only, exactly as for a cross-entropy child.

Divergence: a non-finite training or meta loss is noted on the device (no host sync in the loop) and
read back at each evaluation, every K iterations; the run then stops, is recorded as diverged, and is
scored as the envs score a diverged child: the metric's worst value on test and validation, a validation
loss of ``inf``.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ala_gym.agents.base import Controller, EpisodeRecord, OnStep, require_vector_env
from ala_gym.agents.checkpoints import non_finite_weights
from ala_gym.core.checks import FLOAT32_MAX, check_bool, check_int, check_real
from ala_gym.core.data import BatchSampler, ClassificationData
from ala_gym.core.functional import FunctionalChild
from ala_gym.core.metrics import METRICS, finite_or
from ala_gym.core.models import build_model
from ala_gym.core.sgd import Tensors, sgd_step
from ala_gym.core.trainer import ChildTrainer, ForwardRng, TrainConfig, seed_streams, trained_gradients


@dataclass(frozen=True)
class AdaLFLConfig:
    """AdaLFL's own settings. The child's optimiser, schedule, batch size and budget are the env's."""

    hidden: int = 40
    """Units of each of the two hidden layers of ``l_phi`` (paper: 2 x 40)."""
    smoothness: float = 2.0
    """``beta`` of the smooth leaky ReLU ``(1 - gamma) softplus_beta(x) + gamma x``. The paper names the
    function but not its constants; 2 is the value of the same author's later loss network (NPBML)."""
    leak: float = 0.25
    """``gamma`` of the smooth leaky ReLU (same author's later repositories, NPBML: 0.25)."""
    bias: bool = False
    """Biases in ``l_phi``'s layers (the same author's loss networks, EvoMAL and NPBML, have none)."""
    offline_steps: int = 50
    """``S_init``, meta steps of the offline initialisation. The paper uses 2,500; the default here is 50, because
    under the envs' child optimiser (lr 0.05, momentum 0.9) long offline phases hurt: the one-step objective
    grows the loss's scale, which the momentum steps of real training then amplify into a collapsed child
    (measured on digits for 0 to 2,500 steps in ``benchmarks/results/digits-adalfl-offline-steps``, and on
    Fashion-MNIST at 300 steps in ``benchmarks/results/fashion-mnist-adalfl-init300``). 0 skips the phase
    (``phi`` stays at its random initialisation unless ``init_path`` is given)."""
    meta_lr: float = 1e-3
    """Adam learning rate on ``phi``, offline and online (the same author's EvoMAL configurations)."""
    meta_batch: str = "val"
    """Where the meta-objective's batches come from: ``"val"`` (Algorithm 2) or ``"train"`` (the text's
    alternative: a second, independently drawn training batch)."""
    nesterov: bool = False
    """Nesterov momentum in the child's SGD steps. Off by default, as in the envs' children (plain
    ``torch.optim.SGD``), so that ``adalfl`` and ``ce`` differ only in the loss."""
    init_path: str | None = None
    """A loss network saved by :func:`save_loss_network`; when given, it replaces the offline phase."""
    shape_points: int = 99
    """Points of the recorded loss shape (loss against the true class's predicted probability)."""

    def __post_init__(self) -> None:
        check_int("hidden", self.hidden, 1)
        check_real("smoothness", self.smoothness, 0.0, low_open=True)
        check_real("leak", self.leak, 0.0, 1.0, high_open=True)
        check_bool("bias", self.bias)
        check_int("offline_steps", self.offline_steps, 0)
        check_real("meta_lr", self.meta_lr, 0.0, FLOAT32_MAX, low_open=True)  # phi is float32: no larger step applies
        check_bool("nesterov", self.nesterov)
        check_int("shape_points", self.shape_points, 1)
        if self.meta_batch not in ("val", "train"):
            raise ValueError(f"meta_batch must be 'val' or 'train', got {self.meta_batch!r}")
        if self.init_path is not None and not Path(self.init_path).is_file():
            raise ValueError(f"init_path {self.init_path}: no such file; write one with save_loss_network")
        if self.init_path is not None:
            load_loss_network(self.init_path)  # a file that holds no loss network is named now, not mid-run


# ---------------------------------------------------------------------------------------------- M_phi
class SmoothLeakyReLU(nn.Module):
    """``(1 - leak) * softplus_beta(x) + leak * x``. ``F.softplus`` is the numerically stable form of
    ``log(exp(beta x) + 1) / beta`` (it switches to ``x`` where ``beta x`` is large)."""

    def __init__(self, smoothness: float, leak: float) -> None:
        super().__init__()
        self.smoothness, self.leak = smoothness, leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leak * x + (1 - self.leak) * F.softplus(x, beta=self.smoothness)


class LossNetwork(nn.Module):
    """``M_phi(y, f(x)) = (1/C) sum_i l_phi(y_i, f(x)_i)``, averaged over the batch.

    ``l_phi`` maps one (one-hot target, softmax probability) pair to a scalar: Linear(2, h), smooth leaky
    ReLU, Linear(h, h), smooth leaky ReLU, Linear(h, 1), no output activation (same author's NPBML
    network; an unbounded output avoids the flat losses the paper reports for ML3's softplus output).
    Weights are Kaiming-normal (the same author's EvoMAL), drawn from ``generator``.
    """

    def __init__(self, config: AdaLFLConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.hyper = {"hidden": config.hidden, "smoothness": config.smoothness, "leak": config.leak, "bias": config.bias}
        with torch.device("meta"):  # no draw from the global RNG: the weights come from ``generator`` below
            self.net = nn.Sequential(
                nn.Linear(2, config.hidden, bias=config.bias),
                SmoothLeakyReLU(config.smoothness, config.leak),
                nn.Linear(config.hidden, config.hidden, bias=config.bias),
                SmoothLeakyReLU(config.smoothness, config.leak),
                nn.Linear(config.hidden, 1, bias=config.bias),
            )
        self.net.to_empty(device=generator.device)
        with torch.no_grad():
            for module in self.net:
                if isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(module.weight, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()

    def per_sample(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` probabilities and one-hot targets -> ``[B]`` losses (mean of ``l_phi`` over classes)."""
        return self.net(torch.stack([targets, probabilities], dim=-1)).squeeze(-1).mean(dim=1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probabilities = F.softmax(logits, dim=1)
        # scatter_ rather than F.one_hot, whose range check synchronises with a CUDA device.
        targets = torch.zeros_like(probabilities).scatter_(1, labels[:, None], 1.0)
        return self.per_sample(probabilities, targets).mean()


@torch.no_grad()
def loss_shape(network: LossNetwork, num_classes: int, points: int) -> dict[str, list[float]]:
    """``M_phi`` along predictions with probability ``p`` on the true class and ``(1 - p) / (C - 1)`` on
    each other class, for ``p`` on an even grid in (0, 1): the curve the paper plots, JSON-ready."""
    device = next(network.parameters()).device
    p = torch.linspace(0, 1, points + 2, device=device)[1:-1]
    probabilities = ((1 - p) / (num_classes - 1))[:, None].repeat(1, num_classes)
    probabilities[:, 0] = p
    targets = torch.zeros_like(probabilities)
    targets[:, 0] = 1.0
    return {"p_true": p.tolist(), "loss": network.per_sample(probabilities, targets).tolist()}


def save_loss_network(network: LossNetwork, path: str | Path) -> None:
    """Its hyperparameters and weights, as plain types and tensors (loadable with ``weights_only=True``); a network
    whose weights are not finite is refused (``ValueError``), and nothing is written."""
    if non_finite := non_finite_weights(network.state_dict()):
        raise ValueError(f"{path} not written: the loss network's weights are not finite (NaN or inf in {', '.join(non_finite)})")
    torch.save({"hyper": network.hyper, "state_dict": network.state_dict()}, path)


def load_loss_network(path: str | Path, device: torch.device | str = "cpu") -> LossNetwork:
    """A network written by :func:`save_loss_network`, read with ``torch.load(..., weights_only=True)``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no loss network at {path}; write one with ala_gym.agents.adalfl.save_loss_network")
    # Read on the CPU, whatever device it was saved from, and built there as a new network is (load_state_dict
    # overwrites its initial weights); then moved to the device.
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"hyper", "state_dict"} <= saved.keys():
            raise KeyError("no 'hyper' and 'state_dict'")
        network = LossNetwork(AdaLFLConfig(**saved["hyper"]), torch.Generator())
        network.load_state_dict(saved["state_dict"])
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # the cause under a header
        raise ValueError(
            f"{path} holds no loss network ({type(error).__name__}: {reason}); pass a file save_loss_network wrote"
        ) from None
    return network.to(device)


# ---------------------------------------------------------------------------------------------- one unrolled step
@dataclass
class StepResult:
    params: Tensors
    velocity: Tensors | None
    loss: torch.Tensor
    meta_loss: torch.Tensor


def meta_step(
    network: LossNetwork,
    optimizer: torch.optim.Optimizer,
    child: FunctionalChild,
    velocity: Tensors | None,
    batch: tuple[torch.Tensor, torch.Tensor],
    meta_batch: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    train: TrainConfig,
    nesterov: bool,
    forward_rng: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> StepResult:
    """One step of Algorithms 1 and 2: the child's SGD step under ``M_phi`` on ``batch`` (kept in the
    graph), then one ``optimizer`` step on ``phi`` from the cross-entropy of the stepped child on
    ``meta_batch``. Returns the child's new parameters and momentum (detached) and both losses (on device).

    Only the child's trainable parameters step (a frozen one keeps its values, as under a cross-entropy
    child's trainer); a forward pass runs under ``forward_rng()`` (:class:`ala_gym.core.trainer.ForwardRng`: the
    seeded draws of a user's model with dropout)."""
    trainable = {name: p.detach().requires_grad_() for name, p in child.params.items() if name in child.trainable}
    frozen = {name: p for name, p in child.params.items() if name not in child.trainable}
    inputs, labels = batch
    with forward_rng():
        loss = network(child(inputs, {**frozen, **trainable}), labels)
    grads = trained_gradients(loss, list(trainable.values()), create_graph=True)
    new_params, new_velocity = sgd_step(
        trainable, grads, velocity, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=nesterov
    )
    meta_inputs, meta_labels = meta_batch
    with forward_rng():
        meta_loss = F.cross_entropy(child(meta_inputs, {**frozen, **new_params}, update_stats=False), meta_labels)
    optimizer.zero_grad(set_to_none=True)
    meta_loss.backward(inputs=list(network.parameters()))
    optimizer.step()
    detach = lambda tensors: {k: v.detach() for k, v in tensors.items()}  # noqa: E731
    return StepResult({**frozen, **detach(new_params)}, None if new_velocity is None else detach(new_velocity),
                      loss.detach(), meta_loss.detach())  # fmt: skip


def meta_sampler(data: ClassificationData, source: str, batch_size: int, generator: torch.Generator) -> BatchSampler:
    """Batches of the meta-objective: the validation split (never augmented), or the training split."""
    split = dataclasses.replace(data, train=data.val, augment=False) if source == "val" else data
    return BatchSampler(split, batch_size, generator)


# ---------------------------------------------------------------------------------------------- Algorithm 1
def initialise_offline(
    network: LossNetwork,
    data: ClassificationData,
    train: TrainConfig,
    config: AdaLFLConfig,
    seed: int,
) -> torch.Tensor:
    """Algorithm 1: ``config.offline_steps`` meta steps, each from freshly initialised child weights (one
    SGD step at the schedule's initial learning rate). Batches and initial weights come from ``seed``
    alone, never from the online child's streams. Returns the mean meta loss (on device)."""
    init_seed, batch_seed, meta_seed, forward_seed = seed_streams(seed, 4)
    init_generator = torch.Generator().manual_seed(init_seed)
    forward_rng = ForwardRng(train.model, forward_seed, data.device)
    batches = BatchSampler(data, train.batch_size, torch.Generator(data.device).manual_seed(batch_seed))
    meta_batches = meta_sampler(data, config.meta_batch, train.batch_size, torch.Generator(data.device).manual_seed(meta_seed))
    optimizer = torch.optim.Adam(network.parameters(), lr=config.meta_lr)
    total = torch.zeros((), device=data.device)
    for _ in range(config.offline_steps):
        child = FunctionalChild(build_model(train.model, data.image_shape, data.num_classes, init_generator, data.device))
        result = meta_step(network, optimizer, child, None, batches.next(), meta_batches.next(), train.lr, train,
                           config.nesterov, forward_rng)  # fmt: skip
        total += result.meta_loss
    return total / max(config.offline_steps, 1)


# ---------------------------------------------------------------------------------------------- Algorithm 2
class OnlineTrainer:
    """Algorithm 2 on one child: each iteration one SGD step under ``M_phi`` and one Adam step on ``phi``.

    ``trainer`` supplies the child (its initial weights), its batches and the learning-rate schedule, so a
    ``ChildTrainer`` built from the same seed gives the same start and batch order as a cross-entropy run;
    its own optimiser is not used. ``meta_seed`` seeds the meta batches. The online phase starts its own
    Adam (a saved loss network carries no optimiser state, so a run from a saved network and one right
    after the offline phase start alike).
    """

    def __init__(self, trainer: ChildTrainer, network: LossNetwork, config: AdaLFLConfig, meta_seed: int) -> None:
        self.trainer, self.network, self.config = trainer, network, config
        self.child = FunctionalChild(trainer.model)
        self.velocity: Tensors | None = None
        self.optimizer = torch.optim.Adam(network.parameters(), lr=config.meta_lr)
        data = trainer.data
        generator = torch.Generator(data.device).manual_seed(meta_seed)
        self.meta_batches = meta_sampler(data, config.meta_batch, trainer.config.batch_size, generator)
        self.finite = torch.ones((), dtype=torch.bool, device=data.device)

    def train(self, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``iterations`` iterations; return the sums of the learned and the meta loss (on device).

        The child's weights are written back into its module at the end, for evaluation.
        """
        trainer = self.trainer
        trainer.model.train()
        loss_sum = torch.zeros((), device=trainer.device)
        meta_sum = torch.zeros((), device=trainer.device)
        for _ in range(iterations):
            lr = trainer.config.lr_at(trainer.iteration)
            result = meta_step(
                self.network, self.optimizer, self.child, self.velocity, trainer.sampler.next(),
                self.meta_batches.next(), lr, trainer.config, self.config.nesterov, trainer.forward_rng,
            )  # fmt: skip
            self.child.set_params(result.params)
            self.velocity = result.velocity
            loss_sum += result.loss
            meta_sum += result.meta_loss
            trainer.iteration += 1
        self.finite &= torch.isfinite(loss_sum) & torch.isfinite(meta_sum)
        self.child.write_back()
        return loss_sum, meta_sum


# ---------------------------------------------------------------------------------------------- the controller
@dataclass
class AdaLFLRecord(EpisodeRecord):
    """:class:`EpisodeRecord` (``phi`` and ``rewards`` stay empty: there is no Phi and no reward) plus
    what AdaLFL adds."""

    offline_s: float = 0.0
    """Wall time of the offline initialisation (included in the run's wall time)."""
    offline_meta_loss: float = float("nan")
    """Mean meta-objective over the offline phase (nan when it did not run, inf when it diverged)."""
    meta_loss: list[float] = field(default_factory=list)
    """Mean meta-objective (cross-entropy of the stepped child on meta batches) over each K iterations (inf over
    those where the child diverged)."""
    loss_shape_start: dict[str, list[float]] = field(default_factory=dict)
    """:func:`loss_shape` after the offline phase, before the first online step."""
    loss_shape_end: dict[str, list[float]] = field(default_factory=dict)
    """:func:`loss_shape` at the end of training."""


class AdaLFLController(Controller):
    """Runs AdaLFL on the task of an ALA env: ``make_envs`` builds the env as for any controller; ``run``
    reads its data, child configuration, validation subsample, metric and K from it and trains the child
    itself (one child, whatever ``num_envs``), evaluating every K iterations like the env does."""

    name = "adalfl"
    learned = True
    acts_in_any_state = False  # it sets no Phi: run() trains the child itself
    own_keywords = frozenset(field.name for field in dataclasses.fields(AdaLFLConfig))

    def __init__(self, config: AdaLFLConfig | None = None) -> None:
        self.config = config or AdaLFLConfig()
        self.loss_network: LossNetwork | None = None
        """The loss network at the end of the last :meth:`run`."""

    def make_envs(self, env_id: str, **env_kwargs: Any) -> gym.vector.VectorEnv:
        """The env of the task. Keywords naming :class:`AdaLFLConfig` fields set this controller's config
        instead (so the benchmark's ``adalfl@offline_steps=300`` works, and records them with the run)."""
        mine = {key: value for key, value in env_kwargs.items() if key in self.own_keywords}
        self.config = dataclasses.replace(self.config, **mine)
        return super().make_envs(env_id, **{key: value for key, value in env_kwargs.items() if key not in self.own_keywords})

    def check_task(self, spec: Any) -> None:
        if spec.metric not in METRICS:
            raise ValueError(
                f"AdaLFL learns a loss of class probabilities: it trains classification children, not a task scored "
                f"by {spec.metric!r}"
            )

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        raise TypeError("AdaLFL sets no Phi: it trains the child itself in run()")

    def run(self, envs: gym.vector.VectorEnv, seed: int, on_step: OnStep | None = None) -> list[EpisodeRecord]:
        require_vector_env(envs)
        spec = getattr(envs.unwrapped, "task_spec", None)
        if spec is None:
            raise TypeError(
                f"AdaLFL needs the native ALA vector env that make_envs builds (gym.make_vec of an ALA env id), not a "
                f"{type(envs.unwrapped).__name__}"
            )
        self.check_task(spec)
        # A single env of the vector env's task: its own reset builds the child, with the same initial weights
        # and batch order as child 0 of any other controller's run with this seed. Further draws from its generator seed AdaLFL's streams.
        env = spec.make_env()
        try:
            record, self.loss_network = self._train(env, seed, on_step)
        finally:
            env.close()
        return [record]

    def _train(self, env: Any, seed: int, on_step: OnStep | None) -> tuple[AdaLFLRecord, LossNetwork]:
        """The run on ``env``'s child (reset here with ``seed``): its record and the loss network it ends with."""
        env.reset(seed=seed)
        trainer: ChildTrainer = env.trainer
        network_seed, offline_seed, meta_seed = seed_streams(int(env.np_random.integers(2**63 - 1)), 3)
        record = AdaLFLRecord()

        start = time.perf_counter()
        worst = env.evaluator.worst
        if self.config.init_path is not None:
            network = load_loss_network(self.config.init_path, trainer.device)
        else:
            network = LossNetwork(self.config, torch.Generator().manual_seed(network_seed)).to(trainer.device)
            if self.config.offline_steps > 0:
                initial = {name: value.clone() for name, value in network.state_dict().items()}
                offline_loss = initialise_offline(network, trainer.data, trainer.config, self.config, offline_seed)
                record.offline_meta_loss = finite_or(float(offline_loss), float("inf"))
                if not np.isfinite(record.offline_meta_loss) or non_finite_weights(network.state_dict()):
                    # Diverged before the child trained: the run ends as a diverged step ends it, and keeps the
                    # last finite network, the initial one.
                    network.load_state_dict(initial)
                    record.diverged = True
                    record.val_metric.append(worst)
                    record.meta_loss.append(float("inf"))
                    if on_step is not None:
                        on_step(1, {"val_metric": worst, "meta_loss": float("inf"), "loss": float("inf")})
        record.offline_s = time.perf_counter() - start
        record.loss_shape_start = loss_shape(network, trainer.data.num_classes, self.config.shape_points)

        online = OnlineTrainer(trainer, network, self.config, meta_seed)
        total, k = trainer.config.total_iterations, env.steps_per_action
        step = 0
        while not trainer.done and not record.diverged:
            iterations = min(k, total - trainer.iteration)
            # The network as it was: a divergence can reach it through the unrolled step, and the run keeps the
            # last finite one.
            network_before = {name: value.clone() for name, value in network.state_dict().items()}
            loss_sum, meta_sum = online.train(iterations)
            evaluation = trainer.evaluate(env.val_eval, env.metric)
            # The network too: a step's last meta-update can break it while the step's losses stayed finite.
            finite = bool(online.finite) and evaluation.finite and not non_finite_weights(network.state_dict())
            # As the envs report a diverged step: the metric's worst value and losses of inf, never NaN.
            record.val_metric.append(evaluation.metric if finite else finite_or(evaluation.metric, worst))
            record.meta_loss.append(finite_or(float(meta_sum) / iterations, float("inf")))
            record.iterations = trainer.iteration
            step += 1
            if on_step is not None:
                loss = finite_or(float(loss_sum) / iterations, float("inf"))
                on_step(step, {"val_metric": record.val_metric[-1], "meta_loss": record.meta_loss[-1], "loss": loss})
            if not finite:
                record.diverged = True
                network.load_state_dict(network_before)
                break
        record.loss_shape_end = loss_shape(network, trainer.data.num_classes, self.config.shape_points)
        env.episode.diverged = record.diverged  # scored as the envs score a diverged child, without evaluating it
        final = env.episode.final_metrics(env.evaluate_split)
        record.test_metric, record.final_val_metric = final["test_metric"], final["final_val_metric"]
        record.final_val_loss = final["final_val_loss"]
        return record, network
