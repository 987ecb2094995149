"""Tensors meet on one device: nothing made on the host meets a child's tensors on its device.

On a GPU, an operation that mixes a CUDA tensor with a CPU one (other than a CPU scalar) fails, as does a draw on
one device from a generator of another; the CPU runs both without a word. No GPU is needed to find them: here the
children's device is ``cpu:0``, the CPU named with an index, on which torch computes as on the plain CPU but
which the package passes about as the device it was given (a tensor made on it reports ``cpu``, so a torch
function mode answers ``cpu:0`` for the tensors it knows to be there). The mode follows every tensor made on that
device or moved to it, and what is computed from them, and records each operation that mixes one of them with a
tensor made on the host, as a tensor made without a device would be on a GPU machine. Every workflow below then
runs as on a GPU, whose errors the records stand for. On a machine with CUDA, ``make test-cuda`` runs the same
workflows on the GPU itself (the suite hides GPUs otherwise: see ``conftest.py``).
"""

from __future__ import annotations

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
from ala_gym.benchmarks import adalfl_cost, gpu, overhead, throughput
from ala_gym.core.data import clear_loaded_datasets, resolve_device

DEVICE = torch.device("cpu", 0)
MAY_MIX = {"copy_", "to", "__deepcopy__", "_has_compatible_shallow_copy_type"}
"""Operations that take tensors of two devices: copies, a deep copy (its memo holds every tensor copied so far),
and ``Module.to``'s check of a moved parameter against its old self."""
ALL_TENSORS_COUNT = {"cat", "stack", "hstack", "vstack"}
"""Operations that refuse a CPU scalar tensor beside CUDA ones, which others take as a number."""
INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}
"""A device tensor may be indexed by host indices (torch copies them over), not a host tensor by device ones."""


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


class SecondDevice(TorchFunctionMode):
    """Follows the tensors on :data:`DEVICE` and records each operation that mixes them with host tensors."""

    def __init__(self, registry: WeakIdKeyDictionary, generators: dict[int, bool]) -> None:
        super().__init__()
        self.on_device = registry
        self.generators = generators
        self.mixed: Counter[str] = Counter()

    def knows(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is on the device: made there, or vmap's wrapper of a tensor made there."""
        while True:
            if tensor in self.on_device:
                return True
            if not torch._C._functorch.is_functorch_wrapped_tensor(tensor):
                return False
            tensor = torch._C._functorch.get_unwrapped(tensor)

    def place(self, value: Any) -> None:
        for leaf in tree_flatten(value)[0]:
            if isinstance(leaf, torch.Tensor):
                self.on_device[leaf] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001  (torch's signature)
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        attribute = getattr(getattr(func, "__self__", None), "__name__", "") if name in ("__get__", "__set__") else ""
        if name == "__get__" and attribute == "device" and self.knows(args[0]):
            return DEVICE
        if name == "__set__" and attribute in ("data", "grad"):  # Module.to: param.data = param moved
            if isinstance(args[1], torch.Tensor) and self.knows(args[1]):
                self.on_device[args[0]] = True
            return func(*args, **kwargs)

        inputs = (args[:1], {}) if name == "__deepcopy__" else (args, kwargs)  # its memo holds every tensor copied
        tensors = [leaf for leaf in tree_flatten(inputs)[0] if isinstance(leaf, torch.Tensor)]
        on_device = [tensor for tensor in tensors if self.knows(tensor)]
        named = False if name == "cpu" else _on_device_named(kwargs.get("device"))
        if name == "to":  # to(device), to(other), or to(dtype), which keeps the device
            for arg in (*args[1:], kwargs.get("other")):
                if isinstance(arg, torch.Tensor):
                    named = self.knows(arg)
                elif _on_device_named(arg) is not None:
                    named = _on_device_named(arg)
        self._check(name, args, kwargs, tensors, on_device, named)
        result = func(*args, **kwargs)
        if named or (named is None and on_device):
            self.place(result)
        return result

    def _check(self, name: str, args: tuple, kwargs: dict, tensors: list, on_device: list, named: bool | None) -> None:
        generator = kwargs.get("generator")
        if generator is not None and id(generator) in self.generators:
            draws_on_device = named if named is not None else bool(on_device)
            if self.generators[id(generator)] != draws_on_device:
                where = "device" if draws_on_device else "host"
                self.mixed[f"{name} on the {where} from a generator of the other at {_caller()}"] += 1
        if name in INDEXING:
            indexed, index = args[0], args[1] if len(args) > 1 else None
            index_on_device = any(isinstance(leaf, torch.Tensor) and self.knows(leaf) for leaf in tree_flatten(index)[0])
            if isinstance(indexed, torch.Tensor) and not self.knows(indexed) and index_on_device:
                self.mixed[f"{name} of a host tensor by device indices at {_caller()}"] += 1
            return
        # A CPU scalar passes as a number beside CUDA tensors, but not as the tensor written to.
        written = args[0] if args and (name.endswith("_") or name.startswith("__i")) else kwargs.get("out")
        host = [
            t for t in tensors if not self.knows(t) and (t.dim() > 0 or name in ALL_TENSORS_COUNT or t is written)
        ]
        if on_device and host and name not in MAY_MIX and named is None:
            shapes = ", ".join(f"{'device' if self.knows(t) else 'host'}{list(t.shape)}" for t in tensors)
            self.mixed[f"{name}({shapes}) at {_caller()}"] += 1


ON_DEVICE = WeakIdKeyDictionary()
"""The tensors on the device, known across tests: what a test leaves in a cache is on the device in the next."""
GENERATORS: dict[int, bool] = {}
"""Whether each generator made under the mode is on the device, by id."""
MADE: list[torch.Generator] = []
"""Those generators, kept alive so that their ids stay theirs."""


@pytest.fixture
def second_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecondDevice]:
    """The mode, with the three ways a tensor or generator reaches the device outside its sight followed too:
    generators (their device is not a tensor's), parameters wrapped around a device tensor, and vmap's outputs.
    Datasets are read afresh, under the mode."""
    clear_loaded_datasets()
    mode = SecondDevice(ON_DEVICE, GENERATORS)
    generator_class = torch.Generator
    parameter_new = torch.nn.Parameter.__new__
    flat_vmap = functorch_vmap._flat_vmap

    class FollowedGenerator(generator_class):  # type: ignore[misc, valid-type]
        def __new__(cls, device: Any = "cpu") -> FollowedGenerator:
            generator = super().__new__(cls, device)
            mode.generators[id(generator)] = bool(_on_device_named(device))
            MADE.append(generator)
            return generator

    def new_parameter(cls, data=None, requires_grad=True):  # noqa: ANN001, ANN202
        parameter = parameter_new(cls, data, requires_grad)
        if isinstance(data, torch.Tensor) and mode.knows(data):
            mode.on_device[parameter] = True
        return parameter

    def followed_vmap(func, batch_size, in_dims, flat_args, *args, **kwargs):  # noqa: ANN001, ANN202
        result = flat_vmap(func, batch_size, in_dims, flat_args, *args, **kwargs)
        if any(isinstance(arg, torch.Tensor) and mode.knows(arg) for arg in tree_flatten(flat_args)[0]):
            mode.place(result)
        return result

    monkeypatch.setattr(torch, "Generator", FollowedGenerator)
    monkeypatch.setattr(torch.nn.Parameter, "__new__", new_parameter)
    monkeypatch.setattr(functorch_vmap, "_flat_vmap", followed_vmap)
    with mode:
        yield mode


# -- the mode finds what it is for ------------------------------------------------------------------------------


def test_the_mode_records_a_host_tensor_beside_a_device_one_and_passes_what_a_gpu_takes(second_device) -> None:
    on_device = torch.ones(3, device=DEVICE)
    moved = torch.ones(3).to(DEVICE)
    assert on_device.device == moved.device == DEVICE and (on_device * 2).device == DEVICE
    _ = on_device + moved + torch.tensor(2.0)  # a CPU scalar: a GPU takes it as a number
    _ = on_device[torch.tensor([0, 1])]  # host indices into a device tensor
    on_device.copy_(torch.zeros(3))  # a copy between the two
    assert not second_device.mixed
    _ = on_device + torch.ones(3)
    _ = torch.stack([on_device.sum(), torch.tensor(1.0)])
    _ = torch.ones(3)[on_device.long()]
    _ = torch.randperm(3, generator=torch.Generator().manual_seed(0), device=DEVICE)
    _ = torch.randperm(3, generator=torch.Generator(DEVICE).manual_seed(0))
    total = torch.zeros(())
    total += on_device.sum()
    found = list(second_device.mixed)
    expected = ["add", "stack", "__getitem__", "randperm", "randperm", "add_"]
    assert [entry.split("(")[0].split(" ")[0] for entry in found] == expected
    assert all("test_device_placement.py" in entry for entry in found), found


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
        assert self.mode is None or not self.mode.mixed, dict(self.mode.mixed)


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


def _episode(envs: gym.vector.VectorEnv) -> None:
    """One whole episode of every child, actions sampled from the action space."""
    envs.action_space.seed(0)
    envs.reset(seed=0)
    done = np.zeros(envs.num_envs, dtype=bool)
    while not done.all():
        _, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
        done |= terminated | truncated


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("ALA-Digits-v0", {"train_mode": "sequential"}),
        ("ALA-Digits-v0", {"train_mode": "batched", "loss_form": "sigmoid"}),
        ("ALA-Digits-v0", {"train_mode": "batched", "model": "small_cnn"}),
        ("ALA-Digits-AUCPR-v0", {}),
        ("ALA-FashionMNIST-Margin-v0", METRIC),
        ("ALA-FashionMNIST-Triplet-v0", METRIC),
    ],
)
def test_an_episode_of_two_children_keeps_to_one_device(placement: Placement, env_id: str, kwargs: dict) -> None:
    envs = gym.make_vec(env_id, num_envs=2, **{**TINY, **kwargs, "device": placement.device})
    try:
        _episode(envs)
    finally:
        envs.close()
    placement.check()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("confusion", {}),
        ("online-smoothing", {}),
        ("reinforce-multi", {}),
        ("reinforce-transfer-frozen", {}),
        ("pbt", {"num_envs": 2}),
        ("adalfl", {}),
        ("learnloss", {}),
    ],
)
def test_a_controllers_run_keeps_to_one_device(placement: Placement, name: str, kwargs: dict) -> None:
    controller = CONTROLLERS[name](**kwargs)
    envs = controller.make_envs("ALA-Digits-v0", **TINY, device=placement.device)
    try:
        records = controller.run(envs, seed=0)
    finally:
        envs.close()
    assert records and not any(record.diverged for record in records)
    placement.check()


def test_the_gpu_suites_parts_keep_to_one_device(placement: Placement, tmp_path) -> None:
    """What ``make gpu-check`` measures in its own process, at token budgets: the env step and the plain loop it
    is timed against, AdaLFL's step, N children's steps and their batched kernels alone, a meta-training
    generation, and the device paths."""
    device = torch.device(placement.device)
    assert overhead.measure("digits", device, repeats=1, steps_per_action=2)
    assert adalfl_cost.measure("digits", device, iterations=1, repeats=1, data_root=None)["adalfl_vs_ce"] > 0
    config = dict(
        model="mlp", num_envs=2, mode="native-batched", device=placement.device, threads=1, seed=0, steps=1,
        min_seconds=0.0, iterations=2, batch_size=32, val_subsample=None, dataset=None,
    )  # fmt: skip
    assert throughput.measure(config)["iterations_per_s"] > 0
    throughput.batched_gradients(config)()
    assert gpu.meta_generation(placement.device, "tiny", tmp_path)["children"] > 0
    gpu.device_paths(placement.device, "tiny", tmp_path, datasets=())
    placement.check()


def test_the_suite_computes_on_the_cpu_on_a_machine_with_a_gpu() -> None:
    """conftest.py hides any GPU from the suite (and from the command lines it starts), so that ``"auto"`` is the
    CPU and every recorded float is compared where it was recorded."""
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
