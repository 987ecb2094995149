"""Child models, chosen by name or given as a factory, built from an input shape and an output size,
initialised from an explicit ``torch.Generator``.

The output size is the number of classes for a classifier and the embedding width for metric learning:
an embedding head is the same network with another output size.

The package's own models (:data:`MODELS` as shipped) are built on the ``meta`` device and then given
storage and weights here (:func:`init_weights`), so that building one never draws from (or advances)
PyTorch's global random state. A model of one's own (a factory ``(input_shape, num_outputs) -> nn.Module``,
passed as ``model=`` or named by :func:`register_model`) may hold any layer, parameter or buffer, initialised
by its own constructor: it is built on the CPU, with real storage, under :func:`seeded_global_rng` seeded from
the generator, so its constructor's draws are deterministic per seed and the global state is unchanged after.
Re-initialising it here instead would override an initialisation its author chose, and leave the layers this
module does not know (LayerNorm, BatchNorm1d, a bare ``nn.Parameter``) as uninitialised memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ala_gym.core.checks import worker_registration_hint


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

    def __init__(self, image_shape: tuple[int, ...], output_size: int) -> None:
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

    On a CPU torch's max-pool kernel dominates the small CNN's forward pass, and the strided form
    evaluates faster, which is what the validation passes of every env step pay (measured on the
    documentation's "What a step costs" page, ``docs/overhead.md``). Its backward is slower than the max-pool
    kernel's, so training keeps the kernel. A maximum is exact, so both give the same values bit for bit.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MLP(nn.Module):
    """Flatten, then two hidden ReLU layers."""

    def __init__(self, image_shape: tuple[int, ...], output_size: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(image_shape), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
"""``factory(input_shape, num_outputs)``: a fresh module for inputs ``[B, *input_shape]`` and outputs
``[B, num_outputs]``."""
ModelSpec = str | ModelFactory
"""A model name (a key of :data:`MODELS`) or a factory."""

MODELS: dict[str, ModelFactory] = {
    "resnet32": lambda shape, outputs: CifarResNet(5, outputs, in_channels=shape[0]),
    "resnet20": lambda shape, outputs: CifarResNet(3, outputs, in_channels=shape[0]),
    "small_cnn": SmallCNN,
    "mlp": MLP,
}
"""Model names and their factories; :func:`register_model` adds names."""
_BUILTIN_MODELS = dict(MODELS)  # the factories whose every layer init_weights initialises


class ModelError(ValueError):
    """A model that cannot serve as a child (an unknown name, not a factory, a factory that returns no usable
    module); the message says why."""


STOCHASTIC_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU,
)  # fmt: skip
"""Layers that draw random numbers in training mode."""


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``name`` a model name (``model=name`` in every env); registering it again replaces the factory.
    The package's own names cannot be replaced: their initialisation is :func:`init_weights`'."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")
    if name in _BUILTIN_MODELS:
        raise ValueError(f"{name!r} is one of the package's models ({sorted(_BUILTIN_MODELS)}); choose another name")
    check_model_spec(factory)
    MODELS[name] = factory


def check_model_spec(model: ModelSpec) -> ModelSpec:
    """``model`` itself if it is a known name or a factory; a ``ValueError`` that says what to pass otherwise."""
    if isinstance(model, str):
        if model not in MODELS:
            hint = worker_registration_hint()
            raise ModelError(f"unknown model {model!r}; choose one of {sorted(MODELS)} or pass a factory{hint}")
    elif isinstance(model, nn.Module):  # callable too, but one instance cannot give every child its own weights
        raise ModelError(
            f"model is an instance of {type(model).__name__}; pass a factory that builds a fresh one per child, "
            f"such as `lambda input_shape, num_outputs: {type(model).__name__}(...)`"
        )
    elif not callable(model):
        raise ModelError(
            f"model must be a model name or a factory (input_shape, num_outputs) -> nn.Module, got {model!r}"
        )
    return model


def model_name(model: ModelSpec) -> str:
    """How messages name ``model``: its name, or its factory's qualified name."""
    return repr(model) if isinstance(model, str) else getattr(model, "__qualname__", repr(model))


def is_builtin(model: ModelSpec) -> bool:
    """Whether ``model`` names one of the package's own models: initialised by :func:`init_weights`, and
    drawing no random numbers in its forward pass."""
    return isinstance(model, str) and model in _BUILTIN_MODELS and MODELS.get(model) is _BUILTIN_MODELS[model]


def draws_randomness(model: nn.Module) -> bool:
    """Whether ``model`` holds a layer of :data:`STOCHASTIC_MODULES`; randomness a forward draws otherwise
    (a functional ``F.dropout``, noise of its own) is not detected."""
    return any(isinstance(module, STOCHASTIC_MODULES) for module in model.modules())


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's global generators of the CPU and ``device`` seeded with ``seed``, and
    restored afterwards: code that draws from them (a module's constructor, dropout) is deterministic per
    seed, and code outside sees no draw. Only those generators are forked and seeded (``torch.manual_seed``
    would reseed every GPU)."""
    device = torch.device(device)
    cuda_indices: list[int] = []  # the one GPU of a CUDA device, none otherwise
    if device.type == "cuda":
        cuda_indices.append(device.index if device.index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=cuda_indices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for index in cuda_indices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def draw_seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from ``generator``."""
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))


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
    model: ModelSpec,
    image_shape: tuple[int, ...],
    output_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build child model ``model`` (a key of ``MODELS`` or a factory) for inputs ``[B, *image_shape]`` and
    outputs ``[B, output_size]`` (class logits or an embedding), with weights drawn from ``generator``.

    The package's models are initialised by :func:`init_weights`; any other by its own constructor, run on
    the CPU under :func:`seeded_global_rng` seeded from ``generator`` (see the module's docstring).
    """
    check_model_spec(model)
    factory = MODELS[model] if isinstance(model, str) else model
    if is_builtin(model):
        with torch.device("meta"):
            built = factory(image_shape, output_size)
        # Initialise on the generator's device, then move: the same seed gives the same weights on any device.
        built = built.to_empty(device=generator.device)
        init_weights(built, generator)
        return built.to(device)
    with seeded_global_rng(draw_seed(generator)), torch.device("cpu"):
        built = factory(tuple(image_shape), output_size)
    if not isinstance(built, nn.Module):
        raise ModelError(f"model {model_name(model)} returned a {type(built).__name__}, not an nn.Module")
    for name, tensor in [*built.named_parameters(), *built.named_buffers()]:
        if tensor.is_meta:
            raise ModelError(f"model {model_name(model)} has {name} on the meta device; build its tensors with storage")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(
                f"model {model_name(model)} has non-finite values in {name} after construction (left uninitialised?)"
            )
    return built.to(device)
