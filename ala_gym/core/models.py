"""Child models, chosen by name, built from an input shape and an output size, initialised from an
explicit ``torch.Generator``.

The output size is the number of classes for a classifier and the embedding width for metric learning:
an embedding head is the same network with another output size.

Modules are built on the ``meta`` device and then given storage and weights here, so that building a
model never draws from (or advances) PyTorch's global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class ShortcutA(nn.Module):
    """He et al.'s CIFAR "option A" shortcut: subsample by the stride and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = ShortcutA(in_channels, out_channels, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-6n+2 for 32x32 inputs (He et al. 2016, section 4.2): three stages of n basic blocks, 16/32/64 channels."""

    def __init__(self, blocks_per_stage: int, output_size: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


class SmallCNN(nn.Module):
    """Two 3x3 conv + max-pool stages (16, 32 channels) and a 128-unit hidden layer; no BatchNorm."""

    def __init__(self, image_shape: tuple[int, int, int], output_size: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * (height // 4) * (width // 4), 128)
        self.fc2 = nn.Linear(128, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool_2x2(F.relu(self.conv1(x)))
        x = max_pool_2x2(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``, value for value; without autograd as two element-wise maxima of strided views.

    On one CPU thread torch's max-pool kernel took two thirds of the small CNN's forward pass: the strided
    form evaluates 128 Fashion-MNIST images 3x faster (26 against 8.5 ms), which is what the validation
    passes of every env step pay. Its backward is slower than the max-pool kernel's, so training keeps the
    kernel. A maximum is exact, so both give the same values bit for bit.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MLP(nn.Module):
    """Flatten, then two hidden ReLU layers."""

    def __init__(self, image_shape: tuple[int, int, int], output_size: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(image_shape), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "resnet32": lambda shape, outputs: CifarResNet(5, outputs, in_channels=shape[0]),
    "resnet20": lambda shape, outputs: CifarResNet(3, outputs, in_channels=shape[0]),
    "small_cnn": SmallCNN,
    "mlp": MLP,
}


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions, PyTorch-default-style uniform linears, unit BatchNorm; all from ``generator``."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)
            module.weight.uniform_(-bound, bound, generator=generator)
            module.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.reset_running_stats()


def build_model(
    name: str,
    image_shape: tuple[int, int, int],
    output_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build child model ``name`` (a key of ``MODELS``) for inputs ``[B, *image_shape]`` and outputs
    ``[B, output_size]`` (class logits or an embedding), with weights drawn from ``generator``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    with torch.device("meta"):
        model = MODELS[name](image_shape, output_size)
    # Initialise on the generator's device, then move: the same seed gives the same weights on any device.
    model = model.to_empty(device=generator.device)
    init_weights(model, generator)
    return model.to(device)
