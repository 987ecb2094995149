"""The child-training core: one model, its momentum SGD, its batches, and evaluation.

Controllers of every kind use it: the ALA environments (which add actions, rewards and observations
on top) only call :meth:`ChildTrainer.train_chunks` (or :class:`SequentialChildren`, its N-child
form), and non-RL loss learners use the model, the batches and a loss hook. The SGD update is
:func:`ala_gym.core.sgd.sgd_step`, the one the batched trainer and AdaLFL use too. It imports no gymnasium.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import torch
from torch import nn

from ala_gym.core.checks import FLOAT32_MAX, check_int, check_optional_int, check_real
from ala_gym.core.data import BatchSampler, ClassBalancedSampler, ClassificationData, Split
from ala_gym.core.losses import LossFn
from ala_gym.core.metrics import ClassificationEvaluator, Evaluation, Evaluator
from ala_gym.core.models import (
    ModelError,
    ModelSpec,
    build_model,
    check_model_spec,
    draw_seed,
    is_builtin,
    model_name,
    seeded_global_rng,
)
from ala_gym.core.sgd import Tensors, sgd_step

Record = Callable[[int, float, Evaluation], bool]
"""``record(chunk_index, loss_sum, evaluation)`` after each chunk of :meth:`ChildTrainer.train_chunks`;
False stops training (a diverged child)."""
ChildRecord = Callable[[int, int, float, Evaluation], bool]
"""``record(child, chunk_index, loss_sum, evaluation)``: :data:`Record` of N children trained together."""


@dataclass(frozen=True)
class TrainConfig:
    """How a child is trained: model, momentum SGD and its step schedule."""

    model: ModelSpec = "mlp"
    """Child model: a name (a key of ``ala_gym.core.models.MODELS``) or a factory
    ``(input_shape, num_outputs) -> nn.Module`` (``ala_gym.core.models.build_model``)."""
    total_iterations: int = 2000
    """SGD iterations of one full training run (the episode's budget)."""
    batch_size: int = 128
    lr: float = 0.1
    """Initial learning rate."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    """Fractions of ``total_iterations`` at which the learning rate is multiplied by ``lr_decay``."""
    lr_decay: float = 0.1
    """Factor in (0, 1] applied at each milestone."""
    eval_batch_size: int = 128
    """Batch size of evaluation passes (results do not depend on it). On a CPU, 128 keeps a convolutional
    child's activations in the caches, which larger batches overflow: the per-image cost of evaluation at
    128, 256, 512 and 1000 is measured in ``benchmarks/results/overhead.md`` (``benchmarks/overhead.py``)."""
    samples_per_class: int | None = None
    """K of class-balanced batches (metric learning): ``batch_size / K`` classes of K samples each (K must divide
    ``batch_size``; :class:`ala_gym.core.data.ClassBalancedSampler`); None draws uniform batches."""
    output_size: int | None = None
    """Width of the model's output: None for one logit per class, an embedding width for metric learning."""

    def __post_init__(self) -> None:
        # Normalise numpy scalars to Python numbers while checking, so that configs compare and print plainly.
        checked: dict[str, object] = {
            "model": check_model_spec(self.model),
            "total_iterations": check_int("total_iterations", self.total_iterations, 1),
            "batch_size": check_int("batch_size", self.batch_size, 1),
            "lr": check_real("lr", self.lr, 0.0, FLOAT32_MAX, low_open=True),
            "momentum": check_real("momentum", self.momentum, 0.0, 1.0, high_open=True),
            "weight_decay": check_real("weight_decay", self.weight_decay, 0.0),
            "lr_decay": check_real("lr_decay", self.lr_decay, 0.0, 1.0, low_open=True),
            "eval_batch_size": check_int("eval_batch_size", self.eval_batch_size, 1),
            "samples_per_class": check_optional_int("samples_per_class", self.samples_per_class, 1),
            "output_size": check_optional_int("output_size", self.output_size, 1),
        }
        try:
            milestones = tuple(self.lr_milestones)
        except TypeError:
            raise ValueError(f"lr_milestones must be a sequence of fractions in (0, 1), got {self.lr_milestones!r}") from None
        checked["lr_milestones"] = lr_milestones = tuple(
            check_real("lr_milestones", m, 0.0, 1.0, low_open=True, high_open=True) for m in milestones
        )
        if list(lr_milestones) != sorted(lr_milestones):
            raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got {self.lr_milestones}")
        if self.samples_per_class is not None and self.samples_per_class > self.batch_size // 2:
            raise ValueError(
                f"samples_per_class must be in [1, batch_size / 2] (at least 2 classes a batch), got {self.samples_per_class}"
            )
        if self.samples_per_class is not None and self.batch_size % self.samples_per_class:
            k, p = self.samples_per_class, self.batch_size // self.samples_per_class
            raise ValueError(
                f"samples_per_class must divide batch_size (P classes of K samples a batch), got batch_size="
                f"{self.batch_size} and samples_per_class={k}: use batch_size={p * k} or {(p + 1) * k}"
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @cached_property
    def milestone_iterations(self) -> list[int]:
        """The first iteration at or past each of :attr:`lr_milestones`: where :meth:`lr_at` decays the rate."""
        # Rounded first: 0.55 * 100 is 55.00000000000001 in floating point, whose ceiling would decay the rate one
        # iteration after the 55th.
        return [math.ceil(round(m * self.total_iterations, 9)) for m in self.lr_milestones]

    def outputs(self, data: ClassificationData) -> int:
        """The model's output width on ``data``: one logit per class, or the embedding width."""
        return data.num_classes if self.output_size is None else self.output_size

    def build_model(self, data: ClassificationData, seed: int) -> nn.Module:
        """This config's model for ``data``, its weights drawn from ``seed`` on the CPU."""
        generator = torch.Generator().manual_seed(seed)
        return build_model(self.model, data.image_shape, self.outputs(data), generator, data.device)

    def probe_model(self, data: ClassificationData) -> nn.Module:
        """This config's model for ``data`` (seed 0), run on two training inputs and on one in evaluation mode
        (evaluation's last batch may hold one), and on two in training mode.

        A model that cannot be built or run on ``data``'s inputs, or whose outputs are not ``[batch, outputs]``
        of finite numbers, is refused here with one ``ValueError`` line, not at the first reset, SGD step or
        evaluation (a ``squeeze`` in the forward passes a batch of two and fails on one, after the training).
        """
        name, shape = model_name(self.model), data.image_shape
        probes = (("evaluation", 2), ("evaluation", 1), ("training", 2))
        try:
            model = self.build_model(data, 0)
            outputs = []
            # Forked: a forward that draws random numbers (noise, dropout) leaves the global state alone.
            with torch.no_grad(), seeded_global_rng(0, data.device):
                for mode, count in probes:
                    model.train(mode == "training")
                    outputs.append(model(data.normalize(data.train.images[:count])))
            model.eval()
        except ModelError:  # build_model's own checks say what is wrong already
            raise
        except Exception as exc:  # whatever a model does with inputs it was not made for
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"model {name} fails on inputs of shape {shape} with {self.outputs(data)} outputs: "
                f"{type(exc).__name__}: {reason}{_image_layout_hint(data)}"
            ) from exc
        for (mode, count), output in zip(probes, outputs):
            expected = (count, self.outputs(data))
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            if got != expected:
                raise ValueError(
                    f"model {name} returns {got} for a batch of {count} input{'s' if count > 1 else ''} of shape "
                    f"{shape} in {mode} mode; expected a tensor of shape {expected} (one output per "
                    f"{'class' if self.output_size is None else 'embedding dimension'} and input)"
                )
        if not all(bool(torch.isfinite(output).all()) for output in outputs):  # the first observation would hold NaN
            raise ValueError(
                f"model {name} returns non-finite outputs (inf or NaN) at initialisation for two training inputs of "
                f"shape {shape}; check its initial weights and any scaling in its forward"
            )
        if not any(parameter.requires_grad for parameter in model.parameters()):  # SGD would have nothing to train
            raise ValueError(f"model {name} has no trainable parameter (none, or all with requires_grad=False): "
                             "give it one that SGD can train")  # fmt: skip
        return model

    def sampler(self, data: ClassificationData, seed: int) -> BatchSampler | ClassBalancedSampler:
        """This config's batch sampler for ``data``, drawing on the data's device from ``seed``."""
        generator = torch.Generator(data.device).manual_seed(seed)
        if self.samples_per_class is None:
            return BatchSampler(data, self.batch_size, generator)
        return ClassBalancedSampler(data, self.batch_size // self.samples_per_class, self.samples_per_class, generator)

    def lr_at(self, iteration: int) -> float:
        """Step schedule: ``lr * lr_decay ** (number of milestones passed)``."""
        return self.lr * self.lr_decay ** bisect.bisect_right(self.milestone_iterations, iteration)


def _image_layout_hint(data: ClassificationData) -> str:
    """For uint8 images that a model fails on: how the package lays images out, where theirs looks otherwise."""
    shape = data.image_shape
    if data.train.images.dtype != torch.uint8:
        return ""
    if len(shape) == 2:
        return "; images go [N, C, H, W] (x[:, None] for grey [N, H, W])"
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return "; images go channels first, [N, C, H, W] (x.transpose(0, 3, 1, 2) for [N, H, W, C])"
    return ""


def seed_streams(seed: int, count: int) -> list[int]:
    """``count`` independent 63-bit seeds derived from one integer seed; those of a smaller ``count`` are the first
    of a larger one's. A child's seed gives, in this order: its initial weights, its batches, its task's own draws
    (the metric-learning miner's) and the forward passes of a model of the user's that draws random numbers."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64) >> np.uint64(1)]


def trained_gradients(
    loss: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool = False
) -> tuple[torch.Tensor, ...]:
    """``loss``'s gradients with respect to ``params``, zero for one the loss does not depend on (a layer of one's
    own model that this forward leaves out), where ``torch.autograd.grad`` would fail. ``create_graph`` keeps them
    differentiable (a step to differentiate through, as AdaLFL's)."""
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))


class ForwardRng:
    """Where a child's forward passes run: as is for the package's models (they draw nothing there), under torch's
    global generators forked and seeded afresh for each pass (:func:`ala_gym.core.models.seeded_global_rng`, the
    seed drawn from a generator of its own) for a model of the user's, whose dropout draws from them. So a seed
    gives the same run, and the global random state is left alone. ``with forward_rng(): ...`` runs one pass."""

    def __init__(self, model: ModelSpec, seed: int, device: torch.device) -> None:
        self.generator = None if is_builtin(model) else torch.Generator().manual_seed(seed)
        self.device = device

    def __call__(self) -> contextlib.AbstractContextManager[None]:
        if self.generator is None:
            return contextlib.nullcontext()
        return seeded_global_rng(draw_seed(self.generator), self.device)


class ChildTrainer:
    """Trains one child model with momentum SGD under a loss given per call.

    All randomness comes from ``seed``: one generator initialises the weights (on the CPU, so a seed
    gives the same initial model on any device), one on the data's device draws batches and
    augmentation. A model of the user's (not one of the package's, which draw nothing in their forward
    pass) may draw random numbers there: dropout, ``F.dropout``, noise of its own. Its forward passes run
    under torch's global generators forked and seeded with a seed drawn from a third, per-child generator
    (:func:`ala_gym.core.models.seeded_global_rng`), so a seed gives the same run, and the global random
    state is left alone.
    """

    def __init__(self, data: ClassificationData, config: TrainConfig, seed: int) -> None:
        self.data = data
        self.config = config
        # The first two streams are those of seed_streams(seed, 2): the package's models train as before. The third
        # is the task's (the env seeds its task with the trainer's seed), so that mining and dropout draw apart.
        init_seed, batch_seed, _, forward_seed = seed_streams(seed, 4)
        self.model: nn.Module = config.build_model(data, init_seed)
        self.forward_rng = ForwardRng(config.model, forward_seed, data.device)
        # The trainable parameters as a dict of the module's own tensors: sgd_step updates them in place. A frozen
        # one (requires_grad False: a fixed feature extractor of one's own model) keeps its values.
        self.params: Tensors = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        self._param_list = list(self.params.values())
        self.velocity: Tensors | None = None  # momentum buffers; None before the first step (as torch.optim.SGD)
        self.lr = config.lr
        """The learning rate of the last iteration (the schedule's value there)."""
        self.sampler = config.sampler(data, batch_seed)
        self.iteration = 0

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def done(self) -> bool:
        return self.iteration >= self.config.total_iterations

    def train_step(self, loss_fn: LossFn) -> torch.Tensor:
        """One SGD iteration on the next batch under ``loss_fn(logits, labels)``; returns the loss (on device)."""
        if not self.model.training:  # only evaluation switches it off: no walk over the modules per iteration
            self.model.train()
        config = self.config
        self.lr = config.lr_at(self.iteration)
        inputs, labels = self.sampler.next()
        with self.forward_rng():
            outputs = self.model(inputs)
        loss = loss_fn(outputs, labels)
        grads = trained_gradients(loss, self._param_list)
        with torch.no_grad():
            _, self.velocity = sgd_step(
                self.params, grads, self.velocity, lr=self.lr, momentum=config.momentum,
                weight_decay=config.weight_decay, inplace=True,
            )  # fmt: skip
        self.iteration += 1
        return loss.detach()

    def train(self, iterations: int, loss_fn: LossFn) -> float:
        """Run ``iterations`` SGD iterations; return their mean loss (NaN/inf if training diverged).

        The loss stays on the device until the end, so the loop never waits on the host.
        """
        return float(self._loss_total(iterations, loss_fn)) / iterations

    def _loss_total(self, iterations: int, loss_fn: LossFn) -> torch.Tensor:
        """Run ``iterations`` SGD iterations; the sum of their losses, on the device."""
        if iterations < 1:
            raise ValueError(f"iterations must be positive, got {iterations}")
        total = torch.zeros((), device=self.device)
        for _ in range(iterations):
            total += self.train_step(loss_fn)
        return total

    def train_chunks(
        self, chunks: Sequence[int], loss_fn: LossFn, split: Split, evaluator: Evaluator | str, record: Record
    ) -> None:
        """Train ``chunks[0]`` iterations, evaluate on ``split``, ``record`` it; then the next chunk.

        Stops early when ``record`` returns False (no compute spent on a diverged child).
        """
        evaluator = resolve_evaluator(evaluator, self.data.num_classes)
        for index, chunk in enumerate(chunks):
            total = self._loss_total(chunk, loss_fn)
            evaluation = self.evaluate(split, evaluator)  # its one copy to the host waits for the chunk's work
            # Read after that copy, with nothing left queued to wait for; the mean times the chunk, as train() gives it.
            if not record(index, float(total) / chunk * chunk, evaluation):
                break

    @torch.no_grad()
    def logits(self, split: Split) -> torch.Tensor:
        """Model outputs for every image of ``split``, in evaluation mode."""
        self.model.eval()
        step = self.config.eval_batch_size
        with self.forward_rng():  # a user's model may draw even in evaluation mode (Monte Carlo dropout)
            outputs = [self.model(self.data.normalize(split.images[i : i + step])) for i in range(0, len(split), step)]
        return torch.cat(outputs)

    def evaluate(self, split: Split, evaluator: Evaluator | str = "error") -> Evaluation:
        """The current model on ``split`` under ``evaluator`` (a metric name: :class:`ClassificationEvaluator`)."""
        return resolve_evaluator(evaluator, self.data.num_classes)(self.logits(split), split.labels)


def resolve_evaluator(evaluator: Evaluator | str, num_classes: int) -> Evaluator:
    """``evaluator`` itself, or for a metric name the :class:`ClassificationEvaluator` of ``num_classes`` classes."""
    return ClassificationEvaluator(num_classes, evaluator) if isinstance(evaluator, str) else evaluator


class SequentialChildren:
    """N children, one :class:`ChildTrainer` after another: the interface of
    :class:`ala_gym.core.batched.BatchedTrainer`, and bit for bit N single children."""

    def __init__(self, data: ClassificationData, config: TrainConfig, seeds: list[int]) -> None:
        self.data, self.config = data, config
        self.trainers = [ChildTrainer(data, config, seed) for seed in seeds]

    @property
    def iterations(self) -> np.ndarray:
        return np.array([trainer.iteration for trainer in self.trainers], dtype=np.int64)

    def reset_child(self, child: int, seed: int) -> None:
        self.trainers[child] = ChildTrainer(self.data, self.config, seed)

    @torch.no_grad()
    def copy_child(self, source: int, target: int) -> None:
        """Child ``target`` takes ``source``'s weights, BatchNorm statistics and momentum buffers (copied, not
        shared); its batch stream and iteration count stay its own."""
        donor, taker = self.trainers[source], self.trainers[target]
        taken = taker.model.state_dict()
        for name, value in donor.model.state_dict().items():
            taken[name].copy_(value)
        taker.velocity = None if donor.velocity is None else {k: v.clone() for k, v in donor.velocity.items()}

    def evaluate(self, split: Split, children: list[int], evaluator: Evaluator | str = "error") -> list[Evaluation]:
        return [self.trainers[i].evaluate(split, evaluator) for i in children]

    def train_chunks(
        self, plans: dict[int, list[int]], losses: Sequence[LossFn], split: Split, evaluator: Evaluator | str,
        record: ChildRecord,
    ) -> None:  # fmt: skip
        """Child after child: ``plans[i]``'s chunks under ``losses[i]`` (see :meth:`ChildTrainer.train_chunks`)."""
        for i, chunks in plans.items():
            self.trainers[i].train_chunks(chunks, losses[i], split, evaluator, partial(record, i))
