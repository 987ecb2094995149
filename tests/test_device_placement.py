"""Tensors meet on one device: nothing made on the host meets a child's tensors on its device.

On a GPU, an operation that mixes a CUDA tensor with a CPU one (other than a CPU scalar in an element-wise
operation) fails, as do a draw on one device from a generator of another and ``.numpy()`` of a CUDA tensor; the
CPU runs them all without a word. No GPU is needed to find them: here the
children's device is ``cpu:0``, the CPU named with an index, on which torch computes as on the plain CPU but
which the package passes about as the device it was given (a tensor made on it reports ``cpu``, so a torch
function mode answers ``cpu:0`` for the tensors it knows to be there). The mode follows every tensor made on that
device or moved to it, and what is computed from them, and records each operation that mixes one of them with a
tensor made on the host, as a tensor made without a device would be on a GPU machine. Every workflow below then
runs as on a GPU, whose errors the records stand for. On a machine with CUDA, ``make test-cuda`` runs the same
workflows on the GPU itself (the suite hides GPUs otherwise: see ``conftest.py``). What only a GPU shows: code
that compares devices (``torch.device("cuda") != torch.device("cuda", 0)``; here every device is ``cpu:0``), and
CUDA's own branches (its generators' seeding, synchronisation).
"""

from __future__ import annotations

import copy
import os
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch._functorch.vmap as functorch_vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

import ala_gym  # noqa: F401  (registers the ids)
from ala_gym.agents import CONTROLLERS
from ala_gym.agents.adalfl import AdaLFLConfig, LossNetwork, save_loss_network
from ala_gym.agents.pbt import PBTConfig
from ala_gym.benchmarks import adalfl_cost, gpu, overhead, throughput
from ala_gym.core.batched import BatchedTrainer, fused_kernel
from ala_gym.core.data import clear_loaded_datasets, load_dataset, resolve_device
from ala_gym.core.losses import PhiLoss
from ala_gym.core.trainer import TrainConfig

DEVICE = torch.device("cpu", 0)
MAY_MIX = {"copy_", "to", "__deepcopy__", "_has_compatible_shallow_copy_type"}
"""Operations that take tensors of two devices: copies, a deep copy (its memo holds every tensor copied so far),
and ``Module.to``'s check of a moved parameter against its old self."""
TAKES_CPU_SCALARS = {
    "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow", "where", "lerp",
    "addcmul", "addcdiv", "maximum", "minimum", "fmax", "fmin", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "and", "or", "xor", "masked_fill",
    "copysign", "atan2", "hypot", "truediv", "floordiv", "mod",
}  # fmt: skip
"""Element-wise operations that take a CPU scalar tensor beside CUDA tensors as a number (``device_check: NoCheck``
in ATen's ``native_functions.yaml``), by their names without underscores (``__radd__``, ``add_``: ``add``), and
``fill_``. Others (``clamp_min``, ``gather``, ``cat``, ``index_add_``, a loss) refuse it like any CPU tensor."""
HOST_FROM_VALUES = {"tensor", "as_tensor", "asarray"}
"""Factories that make a tensor from values: on the host unless given a device, even from device scalars (their
values are read back), but ``as_tensor`` and ``asarray`` of a tensor keep its device."""
TO_NUMPY = {"numpy", "__array__"}
"""Reading a tensor as an array, which a CUDA tensor refuses: it is copied to the host (``.cpu()``) first."""


def _on_device_named(value: Any) -> bool | None:
    """Whether ``value`` names the children's device (True), the host (False), or is no device (None)."""
    if isinstance(value, str):
        try:
            value = torch.device(value)
        except RuntimeError:
            return None
    return value == DEVICE if isinstance(value, torch.device) else None


def _caller() -> str:
    """The two innermost frames of the package's code (or the caller's own, when the package has none)."""
    frames = [frame for frame in traceback.extract_stack()[:-3] if "site-packages" not in frame.filename]
    package = [f for f in frames if "/ala_gym/" in f.filename or "/agents/" in f.filename or "/benchmarks/" in f.filename]
    chosen = (package or frames)[-2:]
    return " < ".join(f"{Path(frame.filename).name}:{frame.lineno}" for frame in reversed(chosen))


def _writes_first(name: str) -> bool:
    """Whether the operation ``name`` writes into its first argument: ``add_``, ``__iadd__`` (not ``__add__``)."""
    if name.startswith("__"):
        return name.startswith("__i") and name.strip("_")[1:] in (*TAKES_CPU_SCALARS, "matmul", "lshift", "rshift")
    return name.endswith("_")


def _base_name(name: str) -> str:
    """``add`` for ``add``, ``add_``, ``__add__``, ``__radd__`` and ``__iadd__``."""
    bare = name.strip("_")
    return bare[1:] if name.startswith("__") and bare[:1] in ("r", "i") and bare[1:] in TAKES_CPU_SCALARS else bare


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]


class SecondDevice(TorchFunctionMode):
    """Follows the tensors on :data:`DEVICE` and records each operation that mixes them with host tensors."""

    def __init__(self, registry: WeakIdKeyDictionary, generators: dict[int, bool]) -> None:
        super().__init__()
        self.on_device = registry
        self.generators = generators
        self.mixed: Counter[str] = Counter()
        self.device_operations = 0
        """How many operations took a tensor on the device: none means nothing ran there."""

    def knows(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is on the device: made there, or vmap's wrapper of a tensor made there."""
        while True:
            if tensor in self.on_device:
                return True
            if not torch._C._functorch.is_functorch_wrapped_tensor(tensor):
                return False
            tensor = torch._C._functorch.get_unwrapped(tensor)

    def place(self, value: Any) -> None:
        for tensor in _tensors(value):
            self.on_device[tensor] = True

    def record(self, what: str) -> None:
        self.mixed[f"{what} at {_caller()}"] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001  (torch's signature)
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        attribute = getattr(getattr(func, "__self__", None), "__name__", "") if name in ("__get__", "__set__") else ""
        if name == "__get__" and attribute == "device" and self.knows(args[0]):
            return DEVICE
        if name == "__set__" and attribute in ("data", "grad"):
            value = args[1]
            if attribute == "grad" and isinstance(value, torch.Tensor) and self.knows(value) != self.knows(args[0]):
                self.record("a gradient of the other device")
            elif attribute == "data" and isinstance(value, torch.Tensor) and self.knows(value):
                self.on_device[args[0]] = True  # Module.to: param.data = param moved
            return func(*args, **kwargs)

        inputs = (args[:1], {}) if name == "__deepcopy__" else (args, kwargs)  # its memo holds every tensor copied
        tensors = _tensors(inputs)
        on_device = [tensor for tensor in tensors if self.knows(tensor)]
        named = _on_device_named(kwargs.get("device"))
        made_from_values = name in HOST_FROM_VALUES and not (args and isinstance(args[0], torch.Tensor))
        if name == "cpu" or (made_from_values and named is None):
            named = False
        if name == "to":  # to(device), to(other), or to(dtype), which keeps the device
            for arg in (*args[1:], kwargs.get("other")):
                if isinstance(arg, torch.Tensor):
                    named = self.knows(arg)
                elif _on_device_named(arg) is not None:
                    named = _on_device_named(arg)
        self.device_operations += bool(on_device)
        self._check(name, args, kwargs, tensors, on_device, named)
        result = func(*args, **kwargs)
        if named is False and any(result is tensor for tensor in on_device):
            result = result.clone()  # a copy to the host, as on a GPU: the CPU gives back the same tensor
        if named or (named is None and on_device and not _writes_first(name)):  # a tensor written to stays put
            self.place(result)
        return result

    def _check(self, name: str, args: tuple, kwargs: dict, tensors: list, on_device: list, named: bool | None) -> None:
        generator = kwargs.get("generator")
        if generator is not None and id(generator) in self.generators:
            draws_on_device = named if named is not None else bool(on_device)
            if self.generators[id(generator)] != draws_on_device:
                self.record(f"{name} on the {'device' if draws_on_device else 'host'} from a generator of the other")
        if name in TO_NUMPY and on_device:
            self.record(f"{name} of a device tensor")
        if not on_device or name in MAY_MIX or named is not None:
            return
        if name == "__getitem__":  # host indices are copied over; a host tensor refuses device indices
            if not self.knows(args[0]) and args[0].dim() > 0:
                self.record("__getitem__ of a host tensor by device indices")
            return
        if name in ("__setitem__", "index_put_", "index_put"):  # the indices follow the indexed tensor, not the values
            target, values = args[0], args[2] if len(args) > 2 else None
            if isinstance(values, torch.Tensor) and values.dim() > 0 and self.knows(values) != self.knows(target):
                self.record(f"{name} of {'device' if self.knows(values) else 'host'} values into the other")
            return
        # A CPU scalar passes as a number in element-wise operations, never as the tensor written to.
        written = args[0] if args and _writes_first(name) else kwargs.get("out")
        takes_scalars = _base_name(name) in TAKES_CPU_SCALARS or name == "fill_"
        host = [t for t in tensors if not self.knows(t) and (t.dim() > 0 or not takes_scalars or t is written)]
        if host:
            shapes = ", ".join(f"{'device' if self.knows(t) else 'host'}{list(t.shape)}" for t in tensors)
            self.record(f"{name}({shapes})")


ON_DEVICE = WeakIdKeyDictionary()
"""The tensors on the device, known across tests: what a test leaves in a cache is on the device in the next."""


@pytest.fixture
def second_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecondDevice]:
    """The mode, with the three ways a tensor or generator reaches the device outside its sight followed too:
    generators (their device is not a tensor's), parameters wrapped around a device tensor, and vmap's outputs.
    Datasets are read afresh, under the mode."""
    clear_loaded_datasets()
    mode = SecondDevice(ON_DEVICE, {})
    generator_class = torch.Generator
    parameter_new = torch.nn.Parameter.__new__
    flat_vmap = functorch_vmap._flat_vmap
    made: list[torch.Generator] = []  # kept alive, so that their ids stay theirs

    class FollowedGenerator(generator_class):  # type: ignore[misc, valid-type]
        def __new__(cls, device: Any = "cpu") -> FollowedGenerator:
            generator = super().__new__(cls, device)
            mode.generators[id(generator)] = bool(_on_device_named(device))
            made.append(generator)
            return generator

        @property
        def device(self) -> torch.device:
            return DEVICE if mode.generators.get(id(self)) else super().device

        def __deepcopy__(self, memo: dict) -> FollowedGenerator:  # an env's state is deep-copied with its generators
            copy = FollowedGenerator(DEVICE if mode.generators.get(id(self)) else "cpu")
            return copy.set_state(self.get_state())

    def new_parameter(cls: type, data: torch.Tensor | None = None, requires_grad: bool = True) -> torch.nn.Parameter:
        parameter = parameter_new(cls, data, requires_grad)
        if isinstance(data, torch.Tensor) and mode.knows(data):
            mode.on_device[parameter] = True
        return parameter

    def followed_vmap(func: Any, batch_size: int, in_dims: Any, flat_args: list, *args: Any, **kwargs: Any) -> Any:
        result = flat_vmap(func, batch_size, in_dims, flat_args, *args, **kwargs)
        if any(mode.knows(arg) for arg in _tensors(flat_args)):
            mode.place(result)
        return result

    monkeypatch.setattr(torch, "Generator", FollowedGenerator)
    monkeypatch.setattr(torch.nn.Parameter, "__new__", new_parameter)
    monkeypatch.setattr(functorch_vmap, "_flat_vmap", followed_vmap)
    with mode:
        yield mode
    clear_loaded_datasets()  # the datasets on the device go with the test


# -- the mode finds what it is for ------------------------------------------------------------------------------


def test_the_mode_records_a_host_tensor_beside_a_device_one_and_passes_what_a_gpu_takes(second_device) -> None:
    on_device = torch.ones(3, device=DEVICE)
    moved = torch.ones(3).to(DEVICE)
    assert on_device.device == moved.device == DEVICE and (on_device * 2).device == DEVICE
    _ = on_device + moved + torch.tensor(2.0)  # a CPU scalar: a GPU takes it as a number
    _ = on_device[torch.tensor([0, 1])]  # host indices into a device tensor
    on_device[torch.tensor([0])] = torch.tensor(1.0)  # a host scalar written into it
    torch.zeros(3)[on_device.long()] = 1.0  # device indices into a host tensor: index_put moves them over
    on_device.copy_(torch.zeros(3))  # a copy between the two
    host = on_device.cpu()  # a copy to the host, beside host tensors
    total = torch.zeros(())
    total += on_device.sum().cpu()
    _ = host + torch.ones(3) + torch.ones(3)[on_device.cpu().long()]
    _ = np.asarray(on_device.cpu())
    _ = on_device / torch.tensor(2.0) + on_device // torch.tensor(2.0) + torch.tensor(1.0) * on_device
    buffer = torch.empty(3)
    buffer.copy_(on_device)  # a host buffer filled from the device stays on the host
    _ = buffer + torch.ones(3)
    assert host.device == torch.device("cpu") and copy.deepcopy(torch.Generator(DEVICE)).device == DEVICE
    assert not second_device.mixed, dict(second_device.mixed)
    wrong = [
        lambda: on_device + torch.ones(3),
        lambda: on_device.clamp_min(torch.tensor(0.0)),  # not element-wise in the NoCheck sense: refuses a CPU scalar
        lambda: torch.stack([on_device.sum(), torch.tensor(1.0)]),
        lambda: torch.ones(3)[on_device.long()],
        lambda: on_device.__setitem__(torch.tensor([0, 1]), torch.ones(2)),
        lambda: torch.zeros(()).add_(on_device.sum()),
        lambda: on_device + on_device.cpu(),
        lambda: on_device * torch.tensor([on_device.sum(), on_device.sum(), 1.0]),  # values read back to the host
        lambda: on_device.numpy(),
        lambda: on_device + buffer,
        lambda: setattr(torch.nn.Parameter(on_device.clone()), "grad", torch.ones(3)),
        lambda: torch.randperm(3, generator=torch.Generator().manual_seed(0), device=DEVICE),
        lambda: torch.randperm(3, generator=torch.Generator(DEVICE).manual_seed(0)),
    ]
    for index, operation in enumerate(wrong):
        before = sum(second_device.mixed.values())
        operation()
        assert sum(second_device.mixed.values()) == before + 1, index
    assert all("test_device_placement.py" in entry for entry in second_device.mixed), dict(second_device.mixed)


def test_a_module_moved_and_a_vmapped_output_are_on_the_device(second_device) -> None:
    layer = torch.nn.Linear(3, 2).to(DEVICE)
    stacked = torch.ones(4, 3, device=DEVICE)
    assert layer.weight.device == DEVICE and layer(stacked).device == DEVICE
    assert torch.func.vmap(lambda row: row * 2)(stacked).device == DEVICE
    assert not second_device.mixed


# -- every workflow keeps to one device ----------------------------------------------------------------------------


class Placement:
    """Where a workflow runs: the second device under the mode, or a CUDA GPU, whose own errors are the check."""

    def __init__(self, device: str, mode: SecondDevice | None) -> None:
        self.device, self.mode = device, mode

    def check(self) -> None:
        if self.mode is not None:
            assert self.mode.device_operations > 0, "nothing ran on the device"
            assert not self.mode.mixed, dict(self.mode.mixed)


DEVICES = [str(DEVICE), *([pytest.param("cuda", marks=pytest.mark.cuda)] if os.environ.get("ALA_GYM_TEST_CUDA") == "1" else [])]
"""The second device always; CUDA under ``make test-cuda`` (``-m cuda`` then leaves the second device out)."""


@pytest.fixture(params=DEVICES)
def placement(request: pytest.FixtureRequest) -> Iterator[Placement]:
    if request.param == "cuda":
        yield Placement("cuda", None)
    else:
        yield Placement(request.param, request.getfixturevalue("second_device"))


TINY = dict(total_iterations=20, steps_per_action=5, eval_points=1)
METRIC = dict(dataset="digits", batch_size=20, samples_per_class=4)


def _steps(envs: gym.vector.VectorEnv, steps: int = 9) -> None:
    """``steps`` steps of every child, actions sampled from the action space: past a TINY episode's 4 steps, so
    that each child is reset (autoreset) and trains on."""
    envs.action_space.seed(0)
    envs.reset(seed=0)
    for _ in range(steps):
        envs.step(envs.action_space.sample())


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("ALA-Digits-v0", {"train_mode": "sequential"}),
        ("ALA-Digits-v0", {"train_mode": "batched", "loss_form": "sigmoid"}),
        ("ALA-Digits-v0", {"train_mode": "batched", "model": "small_cnn", "train_size": 200}),
        ("ALA-CIFAR10-v0", {"model": "small_cnn", "batch_size": 8, "download": False}),  # augmented batches
        ("ALA-Digits-AUCPR-v0", {}),
        ("ALA-FashionMNIST-Margin-v0", METRIC),
        ("ALA-FashionMNIST-Triplet-v0", METRIC),
    ],
)
def test_two_childrens_episodes_and_resets_keep_to_one_device(
    placement: Placement, env_id: str, kwargs: dict, tiny_cifar_dir: Path
) -> None:
    data = {"data_root": str(tiny_cifar_dir)} if env_id == "ALA-CIFAR10-v0" else {}
    envs = gym.make_vec(env_id, num_envs=2, **{**TINY, **kwargs, **data, "device": placement.device})
    try:
        _steps(envs)
    finally:
        envs.close()
    placement.check()


class OwnNet(torch.nn.Module):
    """A model of one's own, with dropout: its forward passes draw under generators the package seeds per child
    (CUDA's own on a GPU)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_shape[0], 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
            torch.nn.Linear(16, num_outputs),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_data_and_a_model_of_ones_own_keep_to_one_device(placement: Placement) -> None:
    generator = np.random.default_rng(0)
    features, labels = generator.normal(size=(200, 5)), np.arange(200) % 3
    dataset = (features[:160], labels[:160], features[160:], labels[160:])
    envs = gym.make_vec(
        "ALA-Classification-v0", num_envs=2, dataset=dataset, model=OwnNet, val_size=40, batch_size=16,
        **TINY, device=placement.device,
    )  # fmt: skip
    try:
        _steps(envs)
    finally:
        envs.close()
    placement.check()


def test_a_restored_env_state_keeps_to_one_device(placement: Placement) -> None:
    """``get_state`` deep-copies the child, its generators among it; ``set_state`` trains on from the copy."""
    env = gym.make("ALA-Digits-v0", **TINY, device=placement.device).unwrapped
    env.reset(seed=0)
    state = env.get_state()
    env.step(env.action_space.sample())
    env.set_state(state)
    env.step(env.action_space.sample())
    env.close()
    placement.check()


def test_batched_children_some_not_training_and_one_copied_keep_to_one_device(placement: Placement) -> None:
    """A diverged child, or one awaiting its reset, sits out its children's iterations; PBT copies one child
    over another."""
    data = load_dataset("digits", device=placement.device)
    trainer = BatchedTrainer(data, TrainConfig(model="mlp", total_iterations=20, batch_size=32), [0, 1, 2])
    losses = [PhiLoss(torch.eye(10, device=data.device)) for _ in range(3)]
    params = torch.stack([loss.params for loss in losses])
    for active in ([True, True, True], [True, False, True], [False, True, True]):
        trainer.train_step(params, np.array(active), losses[0], fused_kernel(losses))
    trainer.copy_child(0, 2)
    trainer.reset_child(1, 7)
    trainer.train_step(params, np.ones(3, dtype=bool), losses[0], None)
    placement.check()


@pytest.mark.parametrize(
    ("name", "kwargs", "env_id", "env_kwargs"),
    [
        ("confusion", {}, "ALA-Digits-v0", {}),
        ("reinforce", {}, "ALA-Digits-v0", {}),
        ("reinforce-paper-multi", {}, "ALA-Digits-v0", {}),
        ("ppo", {}, "ALA-Digits-v0", {}),
        ("online-smoothing", {}, "ALA-Digits-v0", {}),
        ("reinforce-multi", {}, "ALA-Digits-v0", {}),
        ("reinforce-transfer-frozen", {}, "ALA-Digits-v0", {}),
        ("pbt", {"num_envs": 2, "config": PBTConfig(interval=1)}, "ALA-Digits-v0", {}),  # an exploit every step
        ("adalfl", {}, "ALA-Digits-v0", {}),
        ("learnloss", {}, "ALA-Digits-v0", {}),
        ("auc-pairwise", {}, "ALA-Digits-AUCPR-v0", {}),
        ("fixed-loss", {}, "ALA-FashionMNIST-Margin-v0", METRIC),
        ("fixed-loss", {}, "ALA-FashionMNIST-Triplet-v0", METRIC),
    ],
)
def test_a_controllers_run_keeps_to_one_device(
    placement: Placement, name: str, kwargs: dict, env_id: str, env_kwargs: dict
) -> None:
    controller = CONTROLLERS[name](**kwargs)
    envs = controller.make_envs(env_id, **TINY, **env_kwargs, device=placement.device)
    try:
        records = controller.run(envs, seed=0)
    finally:
        envs.close()
    assert records and not any(record.diverged for record in records)
    placement.check()


def test_adalfl_from_a_saved_loss_network_keeps_to_one_device(placement: Placement, tmp_path: Path) -> None:
    path = tmp_path / "loss.pt"
    save_loss_network(LossNetwork(AdaLFLConfig(), torch.Generator().manual_seed(0)), path)
    controller = CONTROLLERS["adalfl"](config=AdaLFLConfig(init_path=str(path)))
    envs = controller.make_envs("ALA-Digits-v0", **TINY, device=placement.device)
    try:
        (record,) = controller.run(envs, seed=0)
    finally:
        envs.close()
    assert not record.diverged
    placement.check()


def test_the_gpu_suites_parts_keep_to_one_device(placement: Placement, tmp_path: Path) -> None:
    """What ``make gpu-check`` measures in its own process, at token budgets: the env step and the plain loop it
    is timed against, AdaLFL's step, N children's steps, their batched kernels and their products alone, a meta-training
    generation, and the device paths (batched ResNet children, whose BatchNorm runs under vmap; a
    metric-learning env on Fashion-MNIST)."""
    device = torch.device(placement.device)
    assert overhead.measure("digits", device, repeats=1, steps_per_action=2)
    assert adalfl_cost.measure("digits", device, iterations=1, repeats=1, data_root=None)["adalfl_vs_ce"] > 0
    config = dict(
        model="mlp", num_envs=2, mode="native-batched", device=placement.device, threads=1, seed=0, steps=1,
        min_seconds=0.0, iterations=2, batch_size=32, val_subsample=None, dataset=None,
    )  # fmt: skip
    assert throughput.measure(config)["iterations_per_s"] > 0
    throughput.batched_gradients(config)()
    assert throughput.product_rate({**config, "seconds": 0.01})["flops"] > 0  # the products replayed on the device
    assert gpu.meta_generation(placement.device, "tiny", tmp_path)["children"] > 0
    paths = gpu.device_paths(placement.device, "tiny", tmp_path, datasets=("digits", "fashion-mnist"))
    assert [path["env"] for path in paths] == ["ALA-Digits-v0", "ALA-FashionMNIST-Margin-v0"]
    placement.check()


def test_the_suite_computes_on_the_cpu_on_a_machine_with_a_gpu() -> None:
    """conftest.py hides any GPU from the suite (and from the command lines it starts), so that ``"auto"`` is the
    CPU and every recorded float is compared where it was recorded (``make test-cuda`` shows it)."""
    if os.environ.get("ALA_GYM_TEST_CUDA") == "1":
        pytest.skip("make test-cuda shows the GPU")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
