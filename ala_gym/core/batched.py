"""Several children trained together: one stacked set of weights, one vmapped forward and backward.

:class:`BatchedTrainer` is the multi-child counterpart of :class:`ala_gym.core.trainer.ChildTrainer`. The N
children share the model architecture and the data, nothing else: each has its own initial weights,
batch sampler, momentum buffers, BatchNorm running statistics, learning-rate position and Phi. Their
weights are stacked along a leading child dimension (``torch.func.stack_module_state``) and one
``torch.func.vmap``-ed ``functional_call`` runs all children per SGD iteration, so a GPU sees one large
launch instead of N small ones. BatchNorm's running statistics are passed as stacked (batched) buffers,
which vmap updates in place per child, so each child keeps its own statistics.

Child ``i`` seeded with ``s`` starts from exactly the weights and batch stream of ``ChildTrainer(data,
config, s)``; the training arithmetic differs only in kernel choice (batched vs single matmuls), so
results agree to floating-point tolerance, not bit for bit. A model that draws random numbers in its
forward pass (dropout) cannot run under vmap's default randomness; the envs train such children
sequentially (``ALAEnv.batchable``). It imports no gymnasium.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from ala_gym.core.data import BatchSampler, ClassBalancedSampler, ClassificationData, Split
from ala_gym.core.losses import ParamLoss
from ala_gym.core.metrics import Evaluation, Evaluator
from ala_gym.core.models import ModelSpec, is_builtin
from ala_gym.core.sgd import Tensors, sgd_step
from ala_gym.core.trainer import ChildRecord, SequentialChildren, TrainConfig, resolve_evaluator, seed_streams

TRAIN_MODES = ("auto", "batched", "sequential")


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
        self.params = {name: value.detach().requires_grad_() for name, value in params.items()}
        self.buffers = buffers
        self.momentum = {name: torch.zeros_like(value) for name, value in self.params.items()}
        # A stateless copy on the meta device: functional_call swaps the stacked tensors in.
        self._base = copy.deepcopy(models[0]).to("meta")
        self.samplers = [self._sampler(seed) for seed in seeds]
        self.iterations = np.zeros(self.num_children, dtype=np.int64)

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
        self.iterations[child] = 0

    @torch.no_grad()
    def copy_child(self, source: int, target: int) -> None:
        """Child ``target`` takes ``source``'s weights, BatchNorm statistics and momentum buffers; its batch
        stream and iteration count stay its own."""
        for tensors in (self.params, self.buffers, self.momentum):
            for value in tensors.values():
                value[target].copy_(value[source])

    def _forward(self, params: dict, buffers: dict, inputs: torch.Tensor) -> torch.Tensor:
        return vmap(lambda p, b, x: functional_call(self._base, (p, b), (x,)))(params, buffers, inputs)

    def train_step(self, loss_params: torch.Tensor, active: np.ndarray, loss: ParamLoss) -> torch.Tensor:
        """One SGD iteration of the ``active`` children, child ``i`` under ``loss.functional`` with ``loss_params[i]``.

        ``loss`` gives the form the children share (for Eq. 6: form, temperature and floor); its own
        parameters are not used.

        Returns the per-child losses ``[N]`` on the device (zero for inactive children).
        """
        active = np.asarray(active, dtype=bool)
        if active.shape != (self.num_children,) or not active.any():
            raise ValueError(f"active must be a boolean mask of {self.num_children} children with one True")
        everyone = bool(active.all())
        batches = {i: self.samplers[i].next() for i in map(int, np.flatnonzero(active))}
        filler = next(iter(batches.values()))  # inactive children compute on any batch; their update is discarded
        inputs = torch.stack([batches.get(i, filler)[0] for i in range(self.num_children)])
        labels = torch.stack([batches.get(i, filler)[1] for i in range(self.num_children)])
        mask = torch.as_tensor(active, device=self.device)
        saved_buffers = None if everyone else {k: v.clone() for k, v in self.buffers.items()}

        self._base.train()
        logits = self._forward(self.params, self.buffers, inputs)
        losses = vmap(loss.functional)(logits, labels, loss_params)
        masked = torch.where(mask, losses, torch.zeros_like(losses))
        grads = torch.autograd.grad(masked.sum(), list(self.params.values()))

        lr = torch.tensor([self.config.lr_at(int(i)) for i in self.iterations], device=self.device)
        cfg = self.config
        with torch.no_grad():
            if saved_buffers is None:  # every child trains
                sgd_step(self.params, grads, self.momentum, lr=lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay, inplace=True)  # fmt: skip
            else:
                new_params, new_momentum = sgd_step(
                    self.params, grads, self.momentum, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
                )
                _masked_copy(self.params, new_params, self.params, mask)
                if new_momentum is not None:  # None without momentum: the buffers stay unused zeros
                    _masked_copy(self.momentum, new_momentum, self.momentum, mask)
                # the forward updated every child's BatchNorm statistics: the inactive ones get theirs back
                _masked_copy(self.buffers, self.buffers, saved_buffers, mask)
        self.iterations[active] += 1
        return masked.detach()

    def train_chunks(
        self, plans: dict[int, list[int]], losses: list[ParamLoss], split: Split, evaluator: Evaluator | str,
        record: ChildRecord,
    ) -> None:  # fmt: skip
        """Every planned child's chunks in lockstep: one vmapped SGD iteration per tick, each child
        evaluated on ``split`` after each of its chunks (``record(child, chunk_index, loss_sum, evaluation)``)
        and dropped from the batch once its plan is done or ``record`` returned False (diverged).

        ``losses`` holds one loss per child (all children's, planned or not); they share the first one's form.
        """
        active = np.zeros(self.num_children, dtype=bool)
        active[list(plans)] = True
        next_chunk = {i: 0 for i in plans}
        due = {i: plans[i][0] for i in plans}  # ticks until the child's next evaluation
        loss_params = torch.stack([loss.params for loss in losses])
        chunk_loss = torch.zeros(self.num_children, device=self.device)
        while active.any():
            chunk_loss += self.train_step(loss_params, active, losses[0])
            ready = []
            for i in map(int, np.flatnonzero(active)):
                due[i] -= 1
                if due[i] == 0:
                    ready.append(i)
            if not ready:
                continue
            evaluations = self.evaluate(split, ready, evaluator)
            loss_sums = chunk_loss[ready].double().cpu().numpy()  # one host copy for all ready children
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
        return [evaluator(child_logits, split.labels) for child_logits in self.logits(split, children)]


def _masked_copy(target: Tensors, active: Tensors, inactive: Tensors, mask: torch.Tensor) -> None:
    """``target[name][i] = active[name][i]`` for children with ``mask[i]``, ``inactive[name][i]`` otherwise."""
    for name, value in target.items():
        shape = (-1,) + (1,) * (value.dim() - 1)
        value.copy_(torch.where(mask.view(shape), active[name], inactive[name]))


def default_train_mode(device: torch.device, model: ModelSpec, num_children: int) -> str:
    """The faster path per device, model and number of children.

    On the CPU, ``benchmarks/throughput.py`` measured both paths (``benchmarks/results/throughput.md`` for
    the convolutional children, ``results/throughput-mlp/`` for the MLP): vmap turns convolutions into
    grouped ones that run slower than N ordinary convolutions, while the MLP gains from fewer, larger
    matmuls, so batched for the MLP only (``tests/test_vector.py`` checks this choice against those
    results). On a GPU, one vmapped launch for all children replaces N small ones: batched, by design
    (not measured here). One child has nothing to batch: sequential. A model of the user's trains
    sequentially unless ``train_mode="batched"`` asks otherwise: vmap refuses what some modules do (random
    draws such as dropout, data-dependent control flow, ``.item()``), and the sequential path runs anything.
    """
    if num_children == 1 or not is_builtin(model):
        return "sequential"
    if device.type == "cuda" or model == "mlp":
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
