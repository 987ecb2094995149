"""Several children trained together: one stacked set of weights, one batched forward and backward.

:class:`BatchedTrainer` is the multi-child counterpart of :class:`ala_gym.core.trainer.ChildTrainer`. The N
children share the model architecture and the data, nothing else: each has its own initial weights,
batch sampler, momentum buffers, BatchNorm running statistics, learning-rate position and Phi. Their
weights are stacked along a leading child dimension (``torch.func.stack_module_state``) and one forward
and backward runs all children per SGD iteration, so a GPU sees one large launch instead of N small ones,
and a CPU pays the per-iteration cost of the Python layer once instead of N times.

How the N children run. The package's MLP and small CNN have a stacked form (:data:`STACKED_FORWARDS`):
batched matrix products (``torch.baddbmm``) over the stacked weights, and for the convolutions one grouped
convolution over the children side by side along the channels; autograd differentiates it like any forward.
Every other model, a user's own included, runs through a ``torch.func.vmap``-ed ``functional_call``;
BatchNorm's running statistics are passed as stacked (batched) buffers, which vmap updates in place per
child, so each child keeps its own statistics. The children's losses are one fused cross-entropy when every
child's loss is a linear :class:`ala_gym.core.losses.PhiLoss` that a single child would compute as one
(:func:`fused_kernel`), and the vmapped ``loss.functional`` otherwise. The batches of uniformly sampled,
unaugmented data are gathered for all children at once, each child's permutation drawn from its own
generator as :class:`ala_gym.core.data.BatchSampler` draws it.

Child ``i`` seeded with ``s`` starts from exactly the weights and batch stream of ``ChildTrainer(data,
config, s)``; the training arithmetic differs only in kernel choice (batched vs single matmuls), so
results agree to floating-point tolerance, not bit for bit. A model that draws random numbers in its
forward pass (dropout) cannot run under vmap's default randomness; the envs train such children
sequentially (``ALAEnv.batchable``). It imports no gymnasium.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from ala_gym.core.data import BatchSampler, ClassBalancedSampler, ClassificationData, Split, training_batch
from ala_gym.core.losses import ParamLoss, PhiLoss
from ala_gym.core.metrics import Evaluation, Evaluator, evaluate_models
from ala_gym.core.models import ModelSpec, is_builtin
from ala_gym.core.sgd import Tensors, sgd_step
from ala_gym.core.trainer import (
    ChildRecord,
    SequentialChildren,
    TrainConfig,
    resolve_evaluator,
    seed_streams,
    trained_gradients,
)

TRAIN_MODES = ("auto", "batched", "sequential")

StackedForward = Callable[[nn.Module, Tensors, torch.Tensor], torch.Tensor]
"""``forward(module, params, inputs)``: the outputs ``[N, B, outputs]`` of N children of ``module``'s
architecture (a template: only its layers' settings are read) with the stacked weights ``params``
(``[N, ...]`` each), child ``i`` on ``inputs[i]`` (``[N, B, *image_shape]``)."""


def _linear(params: Tensors, layer: str, features: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` ``layer`` of every child on features ``[N, in, B]``: ``[N, out, B]``.

    Features come first and samples last, so that the weights ``[N, out, in]`` multiply them as they are
    stored, the ReLU's gradient meets an activation of its own layout, and the logits ``[N, C, B]`` leave
    the classes along a middle dimension, where the CPU's log-softmax runs many times faster than along
    the last dimension of ten classes (:func:`fused_losses`)."""
    return torch.baddbmm(params[f"{layer}.bias"].unsqueeze(2), params[f"{layer}.weight"], features)


def stacked_mlp(module: nn.Module, params: Tensors, inputs: torch.Tensor) -> torch.Tensor:
    """:class:`ala_gym.core.models.MLP`'s forward for N children at once."""
    features = inputs.flatten(2).transpose(1, 2)  # [N, in, B], a view
    # In-place ReLUs: an activation fewer to allocate and fill; the layers' gradients do not need their outputs.
    hidden = _linear(params, "fc2", _linear(params, "fc1", features).relu_()).relu_()
    return _linear(params, "fc3", hidden).transpose(1, 2)


CPU_GROUP_BYTES = 16 * 2**20
"""On a CPU, the most bytes of one convolution output that a group of children computes together.

Larger groups run slower there: their activations fall out of the caches, and past glibc's largest
mmap threshold (32 MiB) every one is mapped and page-faulted anew each iteration. For the small CNN at
batch 128 on CIFAR-sized images (8 MiB a child) this makes groups of two, the fastest of the group sizes
tried when the value was chosen. ``benchmarks/results/throughput-mlp/`` measures the outcome: the small CNN's
batched path against its sequential one, from one to 32 children."""


def stacked_small_cnn(module: nn.Module, params: Tensors, inputs: torch.Tensor) -> torch.Tensor:
    """:class:`ala_gym.core.models.SmallCNN`'s forward for N children at once.

    The convolutions run on groups of children (all of them on a GPU, one launch; :data:`CPU_GROUP_BYTES`
    on a CPU), the fully connected layers on all children at once.
    """
    n, b, _, h, w = inputs.shape
    group = n
    if inputs.device.type == "cpu":
        # The first convolution's output is the largest activation (stride 1, "same" padding).
        child_bytes = b * params["conv1.weight"].shape[1] * h * w * inputs.element_size()
        group = max(1, CPU_GROUP_BYTES // child_bytes)
    features = [
        _small_cnn_features(module, {name: value[start : start + group] for name, value in params.items()},
                            inputs[start : start + group])
        for start in range(0, n, group)
    ]  # fmt: skip
    hidden = _linear(params, "fc1", torch.cat(features) if len(features) > 1 else features[0]).relu_()
    return _linear(params, "fc2", hidden).transpose(1, 2)


def _small_cnn_features(module: nn.Module, params: Tensors, inputs: torch.Tensor) -> torch.Tensor:
    """The flattened output ``[N, features, B]`` of the small CNN's convolutional part, for N children.

    The children's images lie side by side along the channels, ``[B, N * channels, H, W]``, so that each
    convolution is one grouped convolution (``groups=N``) and ReLU and max-pooling, which act per
    channel, run once over all children. The layout is channels-last, where the CPU's convolution and
    max-pool kernels run fastest (the max-pool's several times faster than on the default layout).
    ``F.max_pool2d`` gives the values of ``max_pool_2x2`` bit for bit, in training and evaluation alike.
    """
    n, b, c, h, w = inputs.shape
    images = inputs.transpose(0, 1).reshape(b, n * c, h, w).contiguous(memory_format=torch.channels_last)
    for name in ("conv1", "conv2"):
        conv = getattr(module, name)
        images = F.conv2d(
            images, params[f"{name}.weight"].flatten(0, 1), params[f"{name}.bias"].flatten(), conv.stride,
            conv.padding, conv.dilation, groups=n,
        )  # fmt: skip
        # ReLU after the max-pool: both are monotone, so the values and gradients are the module's
        # (relu of a window's maximum is the maximum of its relus), at a quarter of the ReLU's memory traffic.
        images = F.max_pool2d(images, 2).relu_()
    _, channels, height, width = images.shape
    # Each child's features in its module's flatten order (channel, row, column).
    return images.view(b, n, channels // n, height, width).permute(1, 2, 3, 4, 0).reshape(n, -1, b)


STACKED_FORWARDS: dict[str, StackedForward] = {"mlp": stacked_mlp, "small_cnn": stacked_small_cnn}
"""The package's models with a stacked forward, by name (only the package's own factories: a model that a
user registers, or passes as a factory, runs through ``vmap``). ``tests/test_batched.py`` checks each
against the vmapped module: outputs and gradients to float tolerance."""


def fused_kernel(losses: Sequence[ParamLoss]) -> str | None:
    """``"hard"`` or ``"soft"`` when every loss is a :class:`PhiLoss` that computes by that cross-entropy kernel
    (:meth:`PhiLoss.__call__`: every Phi the identity, or every one computed as cross-entropy against
    ``Phi[y]``); None when any loss needs the general form, or is not a :class:`PhiLoss`."""
    kernels = {loss.kernel if isinstance(loss, PhiLoss) else None for loss in losses}
    if not kernels <= {"hard", "soft"}:
        return None
    return "hard" if kernels == {"hard"} else "soft"


def fused_losses(logits: torch.Tensor, labels: torch.Tensor, phis: torch.Tensor, kernel: str) -> torch.Tensor:
    """Per child ``[N]``: the mean cross-entropy of logits ``[N, B, C]`` against the labels ``[N, B]``
    (``kernel="hard"``) or against the rows ``Phi_i[y]`` of each child's Phi ``phis[i]`` (``"soft"``), as
    :class:`PhiLoss` computes it for one child. The class dimension goes in the middle (``[N, C, B]``, a
    view for the stacked forwards), where ``F.cross_entropy``'s log-softmax is fast on a CPU."""
    class_major = logits.transpose(1, 2)
    if kernel == "hard":
        return F.cross_entropy(class_major, labels, reduction="none").mean(1)
    targets = torch.take_along_dim(phis, labels.unsqueeze(2), dim=1)  # [N, B, C]: row y of the child's Phi
    return F.cross_entropy(class_major, targets.transpose(1, 2), reduction="none").mean(1)


class BatchedTrainer:
    """Trains ``len(seeds)`` children of one architecture at once with per-child momentum SGD.

    ``train_step`` takes a mask of the children that train this iteration; the others keep their
    weights, buffers, momentum, iteration count and batch stream untouched (a child that diverged or
    finished its step early simply sits out).
    """

    def __init__(self, data: ClassificationData, config: TrainConfig, seeds: list[int]) -> None:
        if not seeds:
            raise ValueError("need at least one child seed")
        self.data = data
        self.config = config
        self.num_children = len(seeds)
        models = [self._build(seed) for seed in seeds]
        params, buffers = stack_module_state(models)
        trainable = {name for name, parameter in models[0].named_parameters() if parameter.requires_grad}
        # Every parameter goes into the forward; the trainable ones alone are differentiated and updated (a frozen
        # layer of one's own model keeps its values, as in ChildTrainer).
        self.params = {name: value.detach().requires_grad_(name in trainable) for name, value in params.items()}
        self.trained = {name: value for name, value in self.params.items() if name in trainable}
        self.buffers = buffers
        self.momentum = {name: torch.zeros_like(value) for name, value in self.trained.items()}
        # A stateless copy on the meta device: functional_call swaps the stacked tensors in.
        self._base = copy.deepcopy(models[0]).to("meta")
        self._stacked = (
            STACKED_FORWARDS.get(config.model) if isinstance(config.model, str) and is_builtin(config.model) else None
        )
        self.samplers = [self._sampler(seed) for seed in seeds]
        # Uniform batches: each child's permutation of the training set, drawn from its sampler's generator
        # as BatchSampler.next draws it, and where in it the child's next batch starts; all children's
        # batches then come from one gather. Past the end of a permutation: the next draw takes a new one.
        self._orders = None if config.samples_per_class is not None else torch.empty(
            self.num_children, len(data.train), dtype=torch.int64, device=data.device
        )
        self._positions = np.full(self.num_children, len(data.train), dtype=np.int64)
        # The same positions on the device, kept in step: a batch of every child is gathered without a copy from
        # the host (on a GPU, a copy from pageable host memory would wait for the queued work at every iteration).
        self._device_positions = torch.from_numpy(self._positions).to(data.device, copy=True)
        # Where a uniform batch lies in a child's permutation, from the child's position; a batch larger than
        # the training split is the whole split, as BatchSampler caps it.
        self._batch_offsets = torch.arange(min(config.batch_size, len(data.train)), device=data.device)
        self.iterations = np.zeros(self.num_children, dtype=np.int64)
        # Per-iteration constants, built once: the all-True mask, and the children's learning rates with the
        # milestones each child had passed when they were built (rebuilt only when one passes another).
        self._everyone = torch.ones(self.num_children, dtype=torch.bool, device=data.device)
        self._rates: tuple[bytes, torch.Tensor] | None = None
        self._partial: tuple[bytes, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def _build(self, seed: int) -> torch.nn.Module:
        init_seed, _ = seed_streams(seed, 2)
        return self.config.build_model(self.data, init_seed)

    def _sampler(self, seed: int) -> BatchSampler | ClassBalancedSampler:
        _, batch_seed = seed_streams(seed, 2)
        return self.config.sampler(self.data, batch_seed)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @torch.no_grad()
    def reset_child(self, child: int, seed: int) -> None:
        """Give child ``child`` fresh weights, optimizer state and batch stream from ``seed`` (as ``ChildTrainer``)."""
        model = self._build(seed)
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, value in (self.params | self.buffers).items():
            value[child].copy_(state[name])
        for value in self.momentum.values():
            value[child].zero_()
        self.samplers[child] = self._sampler(seed)
        self._positions[child] = self._device_positions[child] = len(self.data.train)  # a fresh stream: its first draw takes a permutation
        self.iterations[child] = 0

    @torch.no_grad()
    def copy_child(self, source: int, target: int) -> None:
        """Child ``target`` takes ``source``'s weights, BatchNorm statistics and momentum buffers; its batch
        stream and iteration count stay its own."""
        for tensors in (self.params, self.buffers, self.momentum):
            for value in tensors.values():
                value[target].copy_(value[source])

    def _forward(self, params: dict, buffers: dict, inputs: torch.Tensor) -> torch.Tensor:
        if self._stacked is not None:  # the stacked forwards' models hold no buffers
            return self._stacked(self._base, params, inputs)
        return vmap(lambda p, b, x: functional_call(self._base, (p, b), (x,)))(params, buffers, inputs)

    def next_batches(self, active: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[N, B, ...]`` and labels ``[N, B]``: each active child's next batch of its own stream.

        Inactive children draw nothing (their streams stay where they are); they compute on the first active
        child's batch, and their update is discarded. ``active`` is a boolean mask with one True at least.
        """
        children = np.flatnonzero(np.asarray(active, dtype=bool))
        if self._orders is None:  # class-balanced batches: each child's sampler draws its own
            return self._stack({i: self.samplers[i].next() for i in map(int, children)})
        size, total = self.samplers[0].batch_size, self._orders.shape[1]
        # BatchSampler's rule: a child whose permutation has less than a batch left (the ragged tail is
        # dropped) draws a new one from its own generator.
        for i in children[self._positions[children] + size > total]:
            generator = self.samplers[i].generator
            self._orders[i] = torch.randperm(total, generator=generator, device=self.device)
            self._positions[i] = self._device_positions[i] = 0
        if len(children) == self.num_children:  # every child: row i of the orders, from child i's position on
            index = self._orders.gather(1, self._device_positions[:, None] + self._batch_offsets)
            self._device_positions += size
        else:
            # An inactive child computes on the first active one's batch (and its position stays).
            _, rows, trained = self._partial_indices(active)
            index = self._orders[rows[:, None], self._device_positions[rows, None] + self._batch_offsets]
            self._device_positions[trained] += size
        self._positions[children] += size
        if not self.data.augment:  # one gather for every child; the generator draws nothing here
            return training_batch(self.data, index, self.samplers[0].generator)
        # Crops and flips come from each active child's own generator, in its sampler's order.
        return self._stack({i: training_batch(self.data, index[i], self.samplers[i].generator) for i in map(int, children)})

    def _partial_indices(self, active: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a mask ``active`` with some children inactive, on the device: the mask, the child whose batch each
        child computes on (an inactive one: the first active one's) and the active children. Copied from the host
        only when the mask changes (at a chunk's end): on a GPU each copy would wait for the queued work."""
        active = np.asarray(active, dtype=bool)
        key = active.tobytes()
        if self._partial is None or self._partial[0] != key:
            children = np.flatnonzero(active)
            rows = np.where(active, np.arange(self.num_children), children[0])
            mask, rows_on_device, trained = (torch.as_tensor(part, device=self.device) for part in (active, rows, children))
            self._partial = (key, (mask, rows_on_device, trained))
        return self._partial[1]

    def _stack(self, batches: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The active children's batches stacked ``[N, B, ...]``; an inactive child gets the first one's."""
        filler = next(iter(batches.values()))
        return (
            torch.stack([batches.get(i, filler)[0] for i in range(self.num_children)]),
            torch.stack([batches.get(i, filler)[1] for i in range(self.num_children)]),
        )

    def train_step(
        self, loss_params: torch.Tensor, active: np.ndarray, loss: ParamLoss, kernel: str | None = None
    ) -> torch.Tensor:
        """One SGD iteration of the ``active`` children, child ``i`` under ``loss.functional`` with ``loss_params[i]``.

        ``loss`` gives the form the children share (for Eq. 6: form, temperature and floor); its own
        parameters are not used. ``kernel`` (:func:`fused_kernel` of every child's loss) computes the
        children's losses as one cross-entropy instead (``loss_params`` then holds each child's Phi).

        Returns the per-child losses ``[N]`` on the device (zero for inactive children).
        """
        active = np.asarray(active, dtype=bool)
        if active.shape != (self.num_children,) or not active.any():
            raise ValueError(f"active must be a boolean mask of {self.num_children} children with one True")
        everyone = bool(active.all())
        inputs, labels = self.next_batches(active)
        mask = self._everyone if everyone else self._partial_indices(active)[0]
        saved_buffers = None if everyone else {k: v.clone() for k, v in self.buffers.items()}

        masked, grads = self.gradients(inputs, labels, mask, loss_params, loss, kernel)

        lr = self._learning_rates()
        cfg = self.config
        with torch.no_grad():
            if saved_buffers is None:  # every child trains
                sgd_step(self.trained, grads, self.momentum, lr=lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay, inplace=True)  # fmt: skip
            else:
                new_params, new_momentum = sgd_step(
                    self.trained, grads, self.momentum, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
                )
                _masked_copy(self.trained, new_params, self.trained, mask)
                if new_momentum is not None:  # None without momentum: the buffers stay unused zeros
                    _masked_copy(self.momentum, new_momentum, self.momentum, mask)
                # the forward updated every child's BatchNorm statistics: the inactive ones get theirs back
                _masked_copy(self.buffers, self.buffers, saved_buffers, mask)
        self.iterations[active] += 1
        return masked.detach()

    def _learning_rates(self) -> torch.Tensor:
        """Each child's learning rate ``[N]`` at its iteration (:meth:`TrainConfig.lr_at`), rebuilt only when a child
        passed a milestone since the last call (a few times a run, not at every iteration)."""
        passed = np.searchsorted(self.config.milestone_iterations, self.iterations, side="right").tobytes()
        if self._rates is None or self._rates[0] != passed:
            lr = torch.tensor([self.config.lr_at(int(i)) for i in self.iterations], device=self.device)
            self._rates = (passed, lr)
        return self._rates[1]

    def gradients(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, loss_params: torch.Tensor, loss: ParamLoss,
        kernel: str | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:  # fmt: skip
        """The forward and backward of one iteration (:meth:`train_step` without the batches and the update): the
        per-child losses ``[N]`` (zero where ``mask`` is False) and their gradients, one per trainable stacked
        parameter (:attr:`trained`; zero for one the forward leaves out).
        ``kernel`` (``"hard"`` or ``"soft"``) computes the losses with :func:`fused_losses` instead of ``loss``'s
        own per-child function under ``vmap``. ``benchmarks/throughput.py`` times it alone, as the ceiling of the
        batched path's kernels."""
        if not self._base.training:  # only evaluation switches it off: no walk over the modules per iteration
            self._base.train()
        logits = self._forward(self.params, self.buffers, inputs)
        if kernel is None:
            losses = vmap(loss.functional)(logits, labels, loss_params)
        else:
            losses = fused_losses(logits, labels, loss_params, kernel)
        masked = torch.where(mask, losses, torch.zeros_like(losses))
        return masked, trained_gradients(masked.sum(), list(self.trained.values()))

    def train_chunks(
        self, plans: dict[int, list[int]], losses: list[ParamLoss], split: Split, evaluator: Evaluator | str,
        record: ChildRecord,
    ) -> None:  # fmt: skip
        """Every planned child's chunks in lockstep: one batched SGD iteration per tick, each child
        evaluated on ``split`` after each of its chunks (``record(child, chunk_index, loss_sum, evaluation)``)
        and dropped from the batch once its plan is done or ``record`` returned False (diverged).

        ``losses`` holds one loss per child (all children's, planned or not); they share the first one's form.
        """
        active = np.zeros(self.num_children, dtype=bool)
        active[list(plans)] = True
        next_chunk = {i: 0 for i in plans}
        due = np.zeros(self.num_children, dtype=np.int64)  # ticks until each planned child's next evaluation
        due[list(plans)] = [plans[i][0] for i in plans]
        loss_params = torch.stack([loss.params for loss in losses])
        kernel = fused_kernel(losses)  # Phi is set between env steps, never during them
        chunk_loss = torch.zeros(self.num_children, device=self.device)
        while active.any():
            chunk_loss += self.train_step(loss_params, active, losses[0], kernel)
            due[active] -= 1
            ready = np.flatnonzero(active & (due == 0)).tolist()
            if not ready:
                continue
            evaluations = self.evaluate(split, ready, evaluator)
            loss_sums = chunk_loss.double().cpu().numpy()[ready]  # one host copy for all ready children
            for i, evaluation, loss_sum in zip(ready, evaluations, loss_sums):
                keep_going = record(i, next_chunk[i], float(loss_sum), evaluation)
                chunk_loss[i] = 0.0
                next_chunk[i] += 1
                if not keep_going or next_chunk[i] == len(plans[i]):
                    active[i] = False
                else:
                    due[i] = plans[i][next_chunk[i]]

    @torch.no_grad()
    def logits(self, split: Split, children: list[int]) -> torch.Tensor:
        """Outputs ``[len(children), len(split), C]`` of the listed children, in evaluation mode."""
        if list(children) == list(range(self.num_children)):  # every child, in order: no copy of the weights
            params, buffers = {k: v.detach() for k, v in self.params.items()}, self.buffers
        else:
            index = torch.as_tensor(children, device=self.device)
            params = {k: v.detach()[index] for k, v in self.params.items()}
            buffers = {k: v[index] for k, v in self.buffers.items()}
        self._base.eval()
        step = self.config.eval_batch_size
        outputs = []
        for start in range(0, len(split), step):
            inputs = self.data.normalize(split.images[start : start + step])
            outputs.append(self._forward(params, buffers, inputs.expand(len(children), *inputs.shape)))
        return torch.cat(outputs, dim=1)

    def evaluate(self, split: Split, children: list[int], evaluator: Evaluator | str = "error") -> list[Evaluation]:
        """Per listed child: its outputs on ``split`` under ``evaluator`` (a metric name: classification)."""
        evaluator = resolve_evaluator(evaluator, self.data.num_classes)
        return evaluate_models(evaluator, self.logits(split, children), split.labels)


def _masked_copy(target: Tensors, active: Tensors, inactive: Tensors, mask: torch.Tensor) -> None:
    """``target[name][i] = active[name][i]`` for children with ``mask[i]``, ``inactive[name][i]`` otherwise."""
    for name, value in target.items():
        shape = (-1,) + (1,) * (value.dim() - 1)
        value.copy_(torch.where(mask.view(shape), active[name], inactive[name]))


def default_train_mode(device: torch.device, model: ModelSpec, num_children: int) -> str:
    """The faster path per device, model and number of children.

    On the CPU, ``benchmarks/throughput.py`` measured both paths (``benchmarks/results/throughput.md`` for
    the convolutional children, ``results/throughput-mlp/`` for the MLP and the small CNN): the package's
    models with a stacked forward (:data:`STACKED_FORWARDS`, the MLP and the small CNN) gain from fewer, larger
    products, so batched; ResNet-32 runs under vmap, which turns its convolutions into grouped ones slower than
    N ordinary convolutions, so sequential. ``tests/test_vector.py`` checks this choice against the committed
    results. On a GPU, one vmapped launch for all children replaces N small ones: batched, by design (not
    measured here). One child has nothing to batch: sequential. A model of the user's trains sequentially
    unless ``train_mode="batched"`` asks otherwise: vmap refuses what some modules do (random draws such as
    dropout, data-dependent control flow, ``.item()``), and the sequential path runs anything. The two paths
    agree to float tolerance, not bit for bit: ``train_mode="sequential"`` recomputes a result made before a
    model's default changed.
    """
    if num_children == 1 or not is_builtin(model):
        return "sequential"
    if device.type == "cuda" or (isinstance(model, str) and model in STACKED_FORWARDS):
        return "batched"
    return "sequential"


def build_children(
    train_mode: str, data: ClassificationData, config: TrainConfig, seeds: list[int]
) -> BatchedTrainer | SequentialChildren:
    """N children trained together (``"batched"``) or one after another (``"sequential"``), one interface."""
    if train_mode == "batched":
        return BatchedTrainer(data, config, seeds)
    if train_mode == "sequential":
        return SequentialChildren(data, config, seeds)
    raise ValueError(f"train_mode must be 'batched' or 'sequential' here, got {train_mode!r}")
