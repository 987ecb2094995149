"""Batches stay on the device: an SGD iteration of a child asks nothing of the host.

On a GPU, reading a value back (``.item()``, ``bool(t)``, ``bincount``'s range, a boolean-mask index) or
building a tensor from host values waits for the queued work, so one such call per iteration would stall
every iteration. No GPU is needed to see the calls: a torch function mode records them on the CPU while a
trainer's ``train_step`` runs, or an evaluation, which brings its statistics back in one copy. (The margin
framework's distance-weighted miner, ``loss_form="mixture"`` or ``"fixed"``, is pytorch-metric-learning's,
which reads back by design, as do torchmetrics' AUCPR and the fixed triplet loss; not tested here.)
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import ala_gym  # noqa: F401  (registers the ids)
from ala_gym.core.batched import BatchedTrainer, fused_kernel
from ala_gym.core.data import load_dataset
from ala_gym.core.losses import PhiLoss
from ala_gym.core.metric_learning import RetrievalEvaluator
from ala_gym.core.metrics import ClassificationEvaluator
from ala_gym.core.trainer import ChildTrainer, TrainConfig

READS_BACK = {
    "item", "tolist", "cpu", "numpy", "__array__", "__bool__", "__float__", "__int__", "__index__", "__contains__",
    "__format__", "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount", "equal",
    "allclose", "one_hot", "repeat_interleave",
}  # fmt: skip
FROM_HOST = {"tensor", "as_tensor", "from_numpy", "asarray", "new_tensor"}
MOVES = {"to"}
"""``.to(device)``: to the host, or from it (on the CPU the two cannot be told apart, and neither belongs in an
iteration)."""


def _host_index(index: Any) -> bool:
    """An index that is a boolean mask (its True count is read back) or host values (copied to the device)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(
        (isinstance(part, torch.Tensor) and part.dtype == torch.bool) or isinstance(part, (list, np.ndarray))
        for part in parts
    )


class HostCalls(TorchFunctionMode):
    """The torch calls that would read from or copy from the host, made while :attr:`recording` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.recording = False
        self.calls: list[str] = []
        self.iterations = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        if self.recording:
            name = getattr(func, "__name__", "")
            indexed = name in ("__getitem__", "__setitem__") and len(args) > 1 and _host_index(args[1])
            moved = name in MOVES and any(isinstance(arg, (str, torch.device)) for arg in (*args[1:], kwargs.get("device")))
            if name in READS_BACK or name in FROM_HOST or moved or indexed or (name == "where" and len(args) == 1):
                self.calls.append(f"{name} at {_caller()}")
        return func(*args, **kwargs)


def _caller() -> str:
    """The innermost frame of the package's own code."""
    for frame in reversed(traceback.extract_stack()[:-2]):  # without this function and the mode's
        if "/ala_gym/" in frame.filename and "site-packages/torch" not in frame.filename:
            return f"{frame.filename.rsplit('/ala_gym/', 1)[-1]}:{frame.lineno}"
    return "outside the package"


@pytest.fixture
def host_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostCalls]:
    """Records within every ``train_step`` of both trainers."""
    mode = HostCalls()
    for trainer in (ChildTrainer, BatchedTrainer):
        step = trainer.train_step

        def recorded(*args: Any, step: Any = step, **kwargs: Any) -> Any:
            mode.recording, mode.iterations = True, mode.iterations + 1
            try:
                return step(*args, **kwargs)
            finally:
                mode.recording = False

        monkeypatch.setattr(trainer, "train_step", recorded)
    with mode:
        yield mode


TINY = dict(total_iterations=20, steps_per_action=5, eval_points=1, device="cpu")


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("ALA-Digits-v0", {}),
        ("ALA-Digits-v0", {"loss_form": "sigmoid"}),
        ("ALA-FashionMNIST-Margin-v0", {"dataset": "digits", "batch_size": 20, "samples_per_class": 4}),
        ("ALA-FashionMNIST-Triplet-v0", {"dataset": "digits", "batch_size": 20, "samples_per_class": 4}),
    ],
)
def test_a_single_childs_iterations_ask_nothing_of_the_host(host_calls: HostCalls, env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, disable_env_checker=True, **{**TINY, **kwargs})
    env.reset(seed=0)
    for _ in range(2):
        env.step(env.action_space.sample())
    env.close()
    assert host_calls.iterations == 10 and host_calls.calls == []


@pytest.mark.parametrize("fused", [True, False])
def test_batched_childrens_iterations_ask_nothing_of_the_host_while_who_trains_stays_the_same(
    host_calls: HostCalls, fused: bool
) -> None:
    """Every child training, and some not (one diverged, or awaits its reset): the mask of who trains is copied
    to the device when it changes, not at every iteration (as the learning rates are when a child passes a
    milestone, a few times a run: none here)."""
    data = load_dataset("digits")
    trainer = BatchedTrainer(data, TrainConfig(model="mlp", total_iterations=1000, batch_size=400), [0, 1, 2])
    losses = [PhiLoss(torch.eye(10)), PhiLoss(torch.full((10, 10), 0.05)), PhiLoss(torch.eye(10))]
    params, kernel = torch.stack([loss.params for loss in losses]), fused_kernel(losses) if fused else None
    for active in ([True, True, True], [True, False, True]):
        trainer.train_step(params, np.array(active), losses[0], kernel)  # a new mask: copied once
        host_calls.calls.clear()
        for _ in range(3):  # 3 x 400 > 1,077 training images: a child's permutation is drawn anew on the way
            trainer.train_step(params, np.array(active), losses[0], kernel)
        assert host_calls.calls == [], active
    assert host_calls.iterations == 8


def test_an_evaluation_reads_back_once(host_calls: HostCalls) -> None:
    """Every statistic of an evaluation (and of N models' evaluations) comes back in one copy."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 10
    logits, embeddings = torch.randn(3, 60, 10, generator=generator), torch.randn(60, 8, generator=generator)
    host_calls.recording = True
    ClassificationEvaluator(10).evaluate_many(logits, labels)
    classification, host_calls.calls = host_calls.calls, []
    RetrievalEvaluator(10, block=16)(embeddings, labels)
    host_calls.recording = False
    assert [call.split()[0] for call in classification] == ["cpu", "numpy"], classification
    assert [call.split()[0] for call in host_calls.calls] == ["cpu", "numpy"], host_calls.calls
