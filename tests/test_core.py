"""The torch-only core: the pure SGD step and the functional child (the dependency rule: test_architecture.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ala_gym.core.functional import FunctionalChild
from ala_gym.core.models import BasicBlock, ShortcutA, build_model, max_pool_2x2
from ala_gym.core.sgd import sgd_step


def tiny_regression(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=dtype))
    inputs = torch.randn(8, 3, generator=generator, dtype=dtype)
    targets = torch.randn(8, 2, generator=generator, dtype=dtype)
    return model, inputs, targets


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_step_follows_torch_optim_sgd(nesterov: bool) -> None:
    """Same trajectory as ``torch.optim.SGD`` over steps with a changing learning rate."""
    model, inputs, targets = tiny_regression()
    settings = dict(momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    child = FunctionalChild(model)
    params = {name: p.clone() for name, p in child.params.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **settings)
    velocity = None
    for step, lr in enumerate([0.1, 0.1, 0.05, 0.05, 0.01, 0.01]):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        F.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        params = {k: v.requires_grad_() for k, v in params.items()}
        loss = F.mse_loss(child(inputs, params), targets)
        grads = torch.autograd.grad(loss, list(params.values()))
        params, velocity = sgd_step(params, grads, velocity, lr=lr, **settings)
        params = {k: v.detach() for k, v in params.items()}
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name], p.detach(), rtol=1e-5, atol=1e-6, msg=f"step {step}: {name}")


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_step_in_place_is_torch_optim_sgd_bit_for_bit(nesterov: bool) -> None:
    """The trainers' in-place path: the very numbers of ``torch.optim.SGD``, and those of the pure path."""
    model, inputs, targets = tiny_regression(torch.float32)
    settings = dict(momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **settings)
    velocity = pure_velocity = None
    for lr in [0.1, 0.1, 0.05, 0.01]:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        F.mse_loss(model(inputs), targets).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        pure, pure_velocity = sgd_step(params, grads, pure_velocity, lr=lr, **settings)
        with torch.no_grad():
            _, velocity = sgd_step(params, grads, velocity, lr=lr, inplace=True, **settings)
        for name, p in model.named_parameters():
            assert torch.equal(params[name], p.detach()) and torch.equal(pure[name], p.detach()), name


def test_sgd_step_per_child_learning_rates() -> None:
    """A learning-rate tensor ``[N]`` scales the leading (child) dimension of every parameter."""
    params = {"w": torch.ones(2, 3), "b": torch.ones(2)}
    grads = {"w": torch.ones(2, 3), "b": torch.ones(2)}
    new, _ = sgd_step(params, grads, None, lr=torch.tensor([0.1, 0.5]))
    assert torch.equal(new["w"], torch.tensor([[0.9] * 3, [0.5] * 3])) and torch.equal(new["b"], torch.tensor([0.9, 0.5]))
    # In place, with momentum and weight decay: the pure path's numbers, step after step.
    generator = torch.Generator().manual_seed(0)
    stacked = {"w": torch.randn(2, 4, 3, generator=generator), "b": torch.randn(2, 4, generator=generator)}
    pure, pure_velocity, velocity = dict(stacked), None, None
    settings = dict(lr=torch.tensor([0.1, 0.02]), momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        grads = {name: torch.randn(value.shape, generator=generator) for name, value in stacked.items()}
        pure, pure_velocity = sgd_step(pure, grads, pure_velocity, **settings)
        _, velocity = sgd_step(stacked, grads, velocity, inplace=True, **settings)
        assert all(torch.equal(stacked[name], pure[name]) and torch.equal(velocity[name], pure_velocity[name]) for name in pure)


def test_sgd_step_without_momentum_is_plain_gradient_descent() -> None:
    params = {"w": torch.tensor([1.0, -2.0])}
    new, velocity = sgd_step(params, [torch.tensor([0.5, 0.5])], None, lr=0.1, weight_decay=0.1)
    torch.testing.assert_close(new["w"], torch.tensor([1.0 - 0.1 * 0.6, -2.0 - 0.1 * 0.3]))
    assert velocity is None and torch.equal(params["w"], torch.tensor([1.0, -2.0]))  # input untouched


@pytest.mark.parametrize(
    ("grads", "settings", "message"),
    [
        ([torch.zeros(1), torch.zeros(1)], dict(momentum=0.9), "^got 2 gradients for 1 parameters$"),
        ([torch.zeros(1)], dict(nesterov=True), r"^Nesterov momentum needs momentum > 0$"),  # as in torch.optim.SGD
    ],
    ids=["mismatched-gradients", "nesterov-without-momentum"],
)
def test_sgd_step_rejects_what_it_cannot_compute(grads: list[torch.Tensor], settings: dict, message: str) -> None:
    """A ValueError that names the mismatch, before any tensor changes."""
    params = {"w": torch.ones(1)}
    with pytest.raises(ValueError, match=message):
        sgd_step(params, grads, None, lr=0.1, inplace=True, **settings)
    assert torch.equal(params["w"], torch.ones(1))


def test_sgd_step_is_differentiable() -> None:
    """d(loss after two unrolled steps)/d(a loss hyperparameter) matches finite differences (``gradcheck``)."""
    model, inputs, targets = tiny_regression(torch.float64)
    child = FunctionalChild(model)
    initial = {name: p.clone() for name, p in child.params.items()}

    def after_steps(scale: torch.Tensor) -> torch.Tensor:
        params, velocity = {k: v.clone().requires_grad_() for k, v in initial.items()}, None
        for lr in (0.1, 0.05):
            outputs = child(inputs, params)
            # A loss with a parameter, like a learned loss: weights on the two outputs' squared errors.
            loss = ((outputs - targets) ** 2 * scale).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params, velocity = sgd_step(params, grads, velocity, lr=lr, momentum=0.9, weight_decay=1e-2, nesterov=True)
        return F.mse_loss(child(inputs, params), targets)

    scale = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(after_steps, (scale,))


def small_bn_model() -> nn.Module:
    return build_model("resnet20", (3, 8, 8), 4, torch.Generator().manual_seed(0))


def test_functional_child_matches_module_and_writes_back() -> None:
    model = small_bn_model().eval()
    child = FunctionalChild(model)
    inputs = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(child(inputs), model(inputs))
    child.set_params({k: v * 0.5 for k, v in child.params.items()})
    child.write_back()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), child.params[name])


def test_functional_child_batchnorm_statistics() -> None:
    """Train mode normalises with the batch's statistics; ``update_stats`` alone decides whether the
    running statistics (what evaluation uses) move."""
    model = small_bn_model().train()
    child = FunctionalChild(model)
    inputs = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 3 + 1
    before = {k: v.clone() for k, v in child.buffers.items()}

    measured = child(inputs, update_stats=False)
    for name, value in child.buffers.items():
        assert torch.equal(value, before[name]), f"{name} changed by a forward with update_stats=False"
    reference = model(inputs)  # the module's own train-mode forward: batch statistics, updates running stats
    torch.testing.assert_close(measured, reference)
    after_module = {k: v.clone() for k, v in model.named_buffers()}
    assert not torch.equal(after_module["bn.running_mean"], before["bn.running_mean"])

    for name, value in model.named_buffers():  # rewind, then the same update through the child
        value.copy_(before[name])
    child(inputs, update_stats=True)
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, after_module[name])


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9)])
def test_max_pool_without_autograd_equals_the_kernel(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).relu()
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), torch.nn.functional.max_pool2d(x, 2))


def test_the_option_a_shortcut_subsamples_and_pads_the_new_channels_with_zeros() -> None:
    x = torch.arange(16 * 8 * 8, dtype=torch.float32).view(1, 16, 8, 8)
    out = ShortcutA(16, 32, stride=2)(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # the 16 new channels split evenly around the old ones
    assert not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize("name, blocks", [("resnet20", 3), ("resnet32", 5)])
def test_cifar_resnets_have_6n_plus_2_layers_in_three_stages_of_16_32_64_channels(name: str, blocks: int) -> None:
    """He et al.'s CIFAR ResNets: n blocks a stage, 32x32 -> 16x16 -> 8x8 maps of 16, 32 and 64 channels, then
    global average pooling into the linear layer."""
    model = build_model(name, (3, 32, 32), 10, torch.Generator().manual_seed(0)).eval()
    stacked = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(model.layers) == 3 * blocks and len(stacked) == 6 * blocks + 2
    shapes, pooled = [], []
    for block in model.layers:
        block.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape[1:])))
    model.fc.register_forward_hook(lambda module, args, out: pooled.append(args[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert shapes == [(16, 32, 32)] * blocks + [(32, 16, 16)] * blocks + [(64, 8, 8)] * blocks
    last = model.layers(F.relu(model.bn(model.conv(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))))))
    torch.testing.assert_close(pooled[0], last.mean(dim=(2, 3)))


def test_a_basic_block_adds_its_input_back_before_the_last_relu() -> None:
    """With its second convolution silenced, a block of unchanged size passes ``relu(x)`` on: the identity path."""
    block = BasicBlock(16, 16, stride=1).eval()
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(block(x), F.relu(x))
        # Downsampling, the shortcut's subsampled and padded input takes its place.
        down = BasicBlock(16, 32, stride=2).eval()
        nn.init.zeros_(down.conv2.weight)
        assert torch.equal(down(x), F.relu(ShortcutA(16, 32, 2)(x)))
