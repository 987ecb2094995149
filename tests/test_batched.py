"""The batched trainer's fast paths against the general ones: the stacked forwards against the vmapped
modules, the fused cross-entropy against the vmapped loss, and the batches gathered for all children against
each child's own :class:`BatchSampler`. Float tolerance where the kernels differ, equality where they do not."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from ala_gym.core import batched, models
from ala_gym.core.batched import STACKED_FORWARDS, BatchedTrainer, fused_kernel, fused_losses
from ala_gym.core.data import load_dataset
from ala_gym.core.losses import PhiLoss
from ala_gym.core.metric_learning import triplet_margin_loss
from ala_gym.core.models import build_model
from ala_gym.core.trainer import ChildTrainer, TrainConfig

ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def stacked_children(name: str, shape: tuple[int, ...], count: int) -> tuple[torch.nn.Module, dict, dict]:
    models = [build_model(name, shape, 10, torch.Generator().manual_seed(seed)) for seed in range(count)]
    params, buffers = stack_module_state(models)
    return copy.deepcopy(models[0]).to("meta"), {k: v.detach().requires_grad_() for k, v in params.items()}, buffers


@pytest.mark.parametrize(
    "name, shape, group_bytes",
    [("mlp", (1, 8, 8), None), ("small_cnn", (3, 32, 32), None), ("small_cnn", (3, 32, 32), 1),
     ("small_cnn", (1, 28, 28), "two children")],
)  # fmt: skip
def test_stacked_forward_matches_the_vmapped_module(name, shape, group_bytes, monkeypatch) -> None:
    """Outputs in training and evaluation mode and the gradients of every weight, the small CNN's children
    also in groups of one and two (``CPU_GROUP_BYTES``), against ``vmap(functional_call)`` of the module."""
    children, samples = 3, 5
    if group_bytes == "two children":  # the first convolution's output of two children, 16 channels each
        group_bytes = 2 * samples * 16 * shape[1] * shape[2] * 4
    if group_bytes is not None:
        monkeypatch.setattr(batched, "CPU_GROUP_BYTES", group_bytes)
    base, params, buffers = stacked_children(name, shape, children)
    inputs = torch.randn(children, samples, *shape, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(children, samples, 10, generator=torch.Generator().manual_seed(2))

    def vmapped(mode: str) -> torch.Tensor:
        getattr(base, mode)()
        return vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))(params, buffers, inputs)

    stacked = STACKED_FORWARDS[name](base, params, inputs)
    expected = vmapped("train")
    torch.testing.assert_close(stacked, expected, rtol=0, atol=ATOL)
    got_grads = torch.autograd.grad((stacked * weights).sum(), list(params.values()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(params.values()))
    for param, got, want in zip(params, got_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=param)
    with torch.no_grad():
        torch.testing.assert_close(STACKED_FORWARDS[name](base, params, inputs), vmapped("eval"), rtol=0, atol=ATOL)


def test_only_the_packages_models_take_the_stacked_forward(digits, monkeypatch) -> None:
    """A model registered by a user, or given as a factory, keeps the vmap path; so does a package model
    without a stacked form."""
    def factory(shape: tuple[int, ...], outputs: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, outputs))

    monkeypatch.setitem(models.MODELS, "mlp_of_mine", factory)
    for model, forward in (("mlp", batched.stacked_mlp), ("mlp_of_mine", None), (factory, None), ("resnet20", None)):
        config = TrainConfig(model=model, total_iterations=10, batch_size=8)
        assert BatchedTrainer(digits, config, [0])._stacked is forward, model


def test_fused_cross_entropy_matches_the_vmapped_eq6() -> None:
    """``fused_kernel`` picks the cross-entropy kernel PhiLoss itself would use; ``fused_losses`` then gives
    the vmapped Eq. 6's per-child losses and gradients. A Phi with a floored negative entry, or a loss of
    another kind, keeps the vmapped form."""
    children, samples, classes = 3, 6, 10
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(children, samples, classes, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (children, samples), generator=generator)
    soft = torch.rand(classes, classes, generator=generator)
    soft = (soft + soft.T) / 2
    cases = {"hard": [torch.eye(classes)] * children, "soft": [torch.eye(classes), soft, 0.5 * soft]}
    for kernel, phis in cases.items():
        losses = [PhiLoss(phi.clone()) for phi in phis]
        assert fused_kernel(losses) == kernel
        params = torch.stack([loss.params for loss in losses])
        got = fused_losses(logits, labels, params, kernel)
        want = vmap(losses[0].functional)(logits, labels, params)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
        weights = torch.arange(1.0, children + 1)
        torch.testing.assert_close(
            torch.autograd.grad((got * weights).sum(), logits)[0], torch.autograd.grad((want * weights).sum(), logits)[0],
            rtol=0, atol=ATOL,
        )  # fmt: skip
    negative = soft - 0.5 * torch.eye(classes)
    assert fused_kernel([PhiLoss(torch.eye(classes)), PhiLoss(negative)]) is None
    assert fused_kernel([PhiLoss(torch.eye(classes), form="sigmoid")]) is None
    assert fused_kernel([triplet_margin_loss()]) is None



def test_the_fused_soft_loss_weights_by_row_y_of_a_phi_that_is_not_symmetric() -> None:
    """Eq. 6 weights the log-probabilities by row ``Phi[y]`` of the label's class, as ``PhiLoss`` computes it. The
    envs keep Phi symmetric, but a loss of one's own need not: the fused cross-entropy must read the row, not the
    column. Logits (0, log 3) give the probabilities (1/4, 3/4)."""
    phi = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # row 0: (1, 0); row 1: (1, 1); columns differ
    logits = torch.tensor([0.0, math.log(3.0)]).expand(2, 1, 2)  # [N=2 children, B=1, C=2]
    labels = torch.tensor([[0], [1]])  # child 0 sees class 0, child 1 class 1
    assert fused_kernel([PhiLoss(phi.clone()), PhiLoss(phi.clone())]) == "soft"
    got = fused_losses(logits, labels, torch.stack([phi, phi]), "soft")
    # -(1 log 1/4 + 0 log 3/4) = log 4; -(1 log 1/4 + 1 log 3/4) = log 4 + log 4/3.
    want = torch.tensor([math.log(4.0), math.log(4.0) + math.log(4.0 / 3.0)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(PhiLoss(phi.clone())(logits[1], labels[1]), want[1], rtol=0, atol=1e-6)

@pytest.mark.parametrize(
    "augment, batch_size, samples_per_class",
    [(False, 500, None), (False, 359, None), (False, 2000, None), (True, 24, None), (True, 100, None), (False, 20, 4)],
)
def test_batches_follow_each_childs_batch_sampler(
    digits, tiny_cifar_dir, augment: bool, batch_size: int, samples_per_class: int | None
) -> None:
    """Over several epochs, with children sitting out and one reset midway, child i's batches are those of
    ``ChildTrainer``'s sampler for its seed, bit for bit; a child that sits out draws nothing. Batch 359 divides
    digits' 1,077 training images exactly: the epoch's last batch is taken, not dropped; a batch larger than the
    training split (2,000 of 1,077 digits, 100 of 80 CIFAR images) is the whole split, reshuffled. Class-balanced batches
    (P classes of K samples, as metric learning draws them) come from each child's own sampler too."""
    # Two or three batches an epoch: child 0, always active, goes through four epochs or more.
    if augment:
        data = load_dataset("cifar10", data_root=tiny_cifar_dir, download=False, val_size=20)
        config = TrainConfig(model="small_cnn", total_iterations=10, batch_size=batch_size)
    else:
        data = digits
        config = TrainConfig(
            model="mlp", total_iterations=10, batch_size=batch_size, samples_per_class=samples_per_class
        )
    seeds = [3, 4, 5]
    trainer = BatchedTrainer(data, config, seeds)
    samplers = [ChildTrainer(data, config, seed).sampler for seed in seeds]
    plan = np.random.default_rng(0).random((12, len(seeds))) < 0.7
    plan[:, 0] = True
    for tick, active in enumerate(plan):
        if tick == 6:  # a reset restarts the child's stream from its new seed
            trainer.reset_child(2, 9)
            samplers[2] = ChildTrainer(data, config, 9).sampler
        inputs, labels = trainer.next_batches(active)
        for child in np.flatnonzero(active):
            expected_inputs, expected_labels = samplers[child].next()
            assert torch.equal(inputs[child], expected_inputs) and torch.equal(labels[child], expected_labels)
        for child in np.flatnonzero(~active):  # computed on the first active child's batch, drawn by nobody
            assert torch.equal(inputs[child], inputs[0]) and torch.equal(labels[child], labels[0])


@pytest.mark.parametrize("train_mode", ["auto", "vmap"])
def test_build_children_takes_a_resolved_train_mode_only(digits, train_mode: str) -> None:
    """The vector env resolves ``"auto"`` first; a mode that is not ``"batched"`` or ``"sequential"`` is named."""
    config = TrainConfig(model="mlp", total_iterations=2, batch_size=8)
    with pytest.raises(ValueError, match=rf"^train_mode must be 'batched' or 'sequential' here, got '{train_mode}'$"):
        batched.build_children(train_mode, digits, config, [0, 1])


def test_batched_mlp_children_follow_single_children_over_an_epoch(digits) -> None:
    """The whole fast path (stacked forward, fused loss, gathered batches, per-child momentum and learning
    rate across a milestone) against N single children, to float tolerance."""
    config = TrainConfig(model="mlp", total_iterations=8, batch_size=256, lr_milestones=(0.5,))
    seeds = [1, 2]
    phis = [torch.eye(10), torch.full((10, 10), 0.05) + 0.5 * torch.eye(10)]
    losses = [PhiLoss(phi) for phi in phis]
    trainer = BatchedTrainer(digits, config, seeds)
    singles = [ChildTrainer(digits, config, seed) for seed in seeds]
    params = torch.stack([loss.params for loss in losses])
    for _ in range(config.total_iterations):
        got = trainer.train_step(params, np.array([True, True]), losses[0], fused_kernel(losses))
        for child, single in enumerate(singles):
            torch.testing.assert_close(got[child], single.train_step(losses[child]), rtol=0, atol=1e-4)
    for child, single in enumerate(singles):
        for name, value in single.model.named_parameters():
            torch.testing.assert_close(trainer.params[name][child].detach(), value.detach(), rtol=0, atol=1e-4)


class NormedMLP(torch.nn.Module):
    """A user's model with BatchNorm: running statistics as buffers, which the vmapped path carries per child."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), 16),
                                        torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, num_outputs))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_an_inactive_child_keeps_its_weights_momentum_and_batchnorm_statistics(digits) -> None:
    """A child that sits out an iteration computes on another's batch: its update is discarded, and so are the
    running statistics that batch moved; the active child's move."""
    trainer = BatchedTrainer(digits, TrainConfig(model=NormedMLP, total_iterations=4, batch_size=32), [1, 2])
    loss = PhiLoss(torch.eye(10))
    params = torch.stack([loss.params] * 2)
    trainer.train_step(params, np.array([True, True]), loss)  # momentum buffers no longer zero
    state = {"weights": trainer.params, "statistics": trainer.buffers, "momentum": trainer.momentum}
    before = {(kind, name): value.detach().clone() for kind, tensors in state.items() for name, value in tensors.items()}
    assert any("running_mean" in name for name in trainer.buffers)
    trainer.train_step(params, np.array([True, False]), loss)
    for (kind, name), old in before.items():
        new = state[kind][name].detach()
        assert torch.equal(new[1], old[1]), f"the inactive child's {kind} {name} changed"
        assert not torch.equal(new[0], old[0]), f"the active child's {kind} {name} did not move"
    assert trainer.iterations.tolist() == [2, 1]


def test_a_copied_sequential_child_owns_its_momentum(digits) -> None:
    """After ``copy_child`` the target's momentum buffers equal the source's but are its own: training the source
    on leaves them as they were."""
    from ala_gym.core.trainer import SequentialChildren

    children = SequentialChildren(digits, TrainConfig(model="mlp", total_iterations=4, batch_size=32), [1, 2])
    loss = PhiLoss(torch.eye(10))
    children.trainers[0].train_step(loss)
    children.copy_child(0, 1)
    copied = {name: value.clone() for name, value in children.trainers[1].velocity.items()}
    source = children.trainers[0].velocity
    assert copied.keys() == source.keys() and all(torch.equal(copied[name], source[name]) for name in copied)
    children.trainers[0].train_step(loss)
    for name, value in children.trainers[1].velocity.items():
        assert torch.equal(value, copied[name]), name


def test_a_reset_child_starts_again_at_the_first_learning_rate(digits) -> None:
    """Each child's learning rate follows its own iteration count: a child reset after the other passed a
    milestone takes its first step at the initial rate, as a fresh single child does."""
    config = TrainConfig(model="mlp", total_iterations=8, batch_size=64, lr_milestones=(0.5,), lr_decay=0.1)
    loss = PhiLoss(torch.eye(10))
    params = torch.stack([loss.params] * 2)
    trainer = BatchedTrainer(digits, config, [1, 2])
    for _ in range(5):  # both past the milestone at iteration 4
        trainer.train_step(params, np.array([True, True]), loss)
    trainer.reset_child(1, seed=3)
    trainer.train_step(params, np.array([True, True]), loss)
    single = ChildTrainer(digits, config, 3)
    single.train_step(loss)
    for name, value in single.model.named_parameters():
        torch.testing.assert_close(trainer.params[name][1].detach(), value.detach(), rtol=0, atol=1e-5)
    assert trainer.iterations.tolist() == [6, 1]



def test_a_reset_batched_child_starts_from_a_fresh_models_batchnorm_statistics(digits) -> None:
    """``reset_child`` gives the child the weights *and* the running statistics of a fresh model of its new seed
    (BatchNorm's initial mean 0, variance 1, no batch tracked) and zero momentum; the other child keeps what its
    training gave it."""
    config = TrainConfig(model=NormedMLP, total_iterations=4, batch_size=32)
    trainer = BatchedTrainer(digits, config, [1, 2])
    loss = PhiLoss(torch.eye(10))
    trainer.train_step(torch.stack([loss.params] * 2), np.array([True, True]), loss)
    kept = {name: value[0].clone() for name, value in trainer.buffers.items()}
    trainer.reset_child(1, seed=3)
    fresh = ChildTrainer(digits, config, 3).model.state_dict()
    assert torch.equal(trainer.buffers["body.2.running_mean"][1], torch.zeros(16))
    assert torch.equal(trainer.buffers["body.2.running_var"][1], torch.ones(16))
    assert int(trainer.buffers["body.2.num_batches_tracked"][1]) == 0
    for name, value in (trainer.params | trainer.buffers).items():
        assert torch.equal(value[1].detach(), fresh[name]), f"the reset child's {name} is not its fresh model's"
    for name, value in trainer.buffers.items():
        assert torch.equal(value[0], kept[name]), f"the other child's {name} changed"
    assert int(kept["body.2.num_batches_tracked"]) == 1
    assert all(not value[1].any() for value in trainer.momentum.values())

def test_a_copied_batched_child_takes_weights_statistics_and_momentum_not_its_stream(digits) -> None:
    """``copy_child`` gives the target the source's weights, BatchNorm statistics and momentum (its own copies);
    the target keeps its iteration count and batch stream."""
    trainer = BatchedTrainer(digits, TrainConfig(model=NormedMLP, total_iterations=6, batch_size=32), [1, 2])
    loss = PhiLoss(torch.eye(10))
    params = torch.stack([loss.params] * 2)
    trainer.train_step(params, np.array([True, False]), loss)
    trainer.copy_child(0, 1)
    assert trainer.iterations.tolist() == [1, 0]
    for kind, tensors in {"weights": trainer.params, "statistics": trainer.buffers, "momentum": trainer.momentum}.items():
        for name, value in tensors.items():
            assert torch.equal(value[1], value[0]), f"{kind} {name} not copied"
    inputs, _ = trainer.next_batches(np.array([True, True]))
    assert not torch.equal(inputs[0], inputs[1])  # each child still draws its own batches


def test_a_batched_trainer_refuses_no_children_and_a_step_with_none_active(digits) -> None:
    config = TrainConfig(model="mlp", total_iterations=4, batch_size=32)
    with pytest.raises(ValueError, match="need at least one child seed"):
        BatchedTrainer(digits, config, [])
    trainer = BatchedTrainer(digits, config, [1, 2])
    loss = PhiLoss(torch.eye(10))
    for active in (np.array([False, False]), np.array([True])):
        with pytest.raises(ValueError, match="a boolean mask of 2 children with one True"):
            trainer.train_step(torch.stack([loss.params] * 2), active, loss)
    assert trainer.iterations.tolist() == [0, 0]
