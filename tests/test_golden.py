"""Fixed seeds and fixed actions give fixed trajectories: recorded values, compared to float32 rounding.

``tests/golden_trajectories.json`` holds three steps of fixed actions per case (observations, rewards,
validation and test metrics, losses), recorded from the single env on one CPU thread. A change of the
training arithmetic (optimizer, loss, evaluation order, schedule) shows up here.

The comparison is not bit for bit: torch dispatches other SIMD kernels on other CPUs (AVX-512, AVX2 or
none; ``ATEN_CPU_CAPABILITY`` forces one), which sum in another order, so the same seed gives values that
differ in their last bits at reset and a little more after each step of training. Every float is compared
with a room of ``ulps`` float32 ulps (``2**-23``), relative to its magnitude and absolute near zero;
booleans exactly. Each case's room is about 4x (ResNet-20) to 80x (the others) the largest drift measured
between the AVX-512, AVX2 and default kernels (the ResNet's batch norm over 8 images amplifies the rounding
most), and what a 1% change of the learning rate moves lies beyond it: 400x beyond on digits, 2-9x on the
ResNet (``test_a_small_change_of_the_arithmetic_is_caught``).
Bit-for-bit equality is kept where it is a real property, within one process: two runs of one seed
(``tests/test_env.py``), a single env against the vector env (``tests/test_vector.py``).
``tests/test_portability.py`` runs these files under each forced dispatch level.

When a change of the arithmetic is intended, re-record with
``ALA_GYM_RECORD_GOLDEN=1 OMP_NUM_THREADS=1 python -m pytest tests/test_golden.py`` and say so in the change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import ala_gym  # noqa: F401  (registers the ids)

GOLDEN = Path(__file__).with_name("golden_trajectories.json")
CASES = {
    # name: (env id, keywords, room in float32 ulps). Largest drift measured across the dispatch levels,
    # absolute on values of order 1: digits 1.4e-6, Fashion-MNIST 4e-7, ResNet-20 2.0e-3 (default kernels).
    "digits-mlp": (
        "ALA-Digits-v0",
        dict(total_iterations=60, steps_per_action=20, batch_size=32, eval_points=2, eval_stride=5, val_subsample=200),
        2**10,
    ),
    "fashion-mnist-small-cnn": (
        "ALA-FashionMNIST-v0",
        dict(model="small_cnn", val_size=40, total_iterations=9, steps_per_action=3, batch_size=16, eval_points=2,
             eval_stride=1, val_subsample=None),
        2**10,
    ),
    "cifar10-resnet20": (
        "ALA-CIFAR10-v0",
        dict(model="resnet20", val_size=20, total_iterations=6, steps_per_action=2, batch_size=8, eval_points=2,
             eval_stride=1, val_subsample=None, lr=0.05),
        2**16,
    ),
}
ACTION_SHIFTS = (0, 2, 1)  # step k moves pair p by action (p + shift_k) % 3: every action value, every step
ULP = float(np.finfo(np.float32).eps)


def _trajectory(env_id: str, kwargs: dict) -> dict:
    env = gym.make(env_id, disable_env_checker=True, device="cpu", **kwargs)
    observation, info = env.reset(seed=7)
    trace = {"observation": observation.ravel().tolist(), "val_metric": info["val_metric"], "steps": []}
    n_pairs = env.action_space.shape[0]
    for shift in ACTION_SHIFTS:
        observation, reward, terminated, truncated, info = env.step((np.arange(n_pairs) + shift) % 3)
        trace["steps"].append({
            "observation": observation.ravel().tolist(),
            "reward": reward,
            "terminated": terminated,
            "val_metric": info["val_metric"],
            "val_loss": info["val_loss"],
            "train_loss": info["train_loss"],
            "test_metric": info.get("test_metric"),
        })
    return trace


def _case_trace(case: str, roots: dict[str, Path], **overrides: Any) -> dict:
    env_id, kwargs, _ = CASES[case]
    if env_id in roots:
        kwargs = dict(kwargs, data_root=str(roots[env_id]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recorded values come from one thread; more may reorder reductions
    try:
        return _trajectory(env_id, {**kwargs, **overrides})
    finally:
        torch.set_num_threads(threads)


def deviations(got: Any, expected: Any, tolerance: float, path: str = "") -> list[str]:
    """Where ``got`` differs from ``expected``: floats beyond ``tolerance`` (relative, and absolute near
    zero), everything else at all."""
    if isinstance(expected, dict):
        if not isinstance(got, dict) or got.keys() != expected.keys():
            return [f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(expected)}"]
        return [line for key in expected for line in deviations(got[key], expected[key], tolerance, f"{path}.{key}")]
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return [f"{path}: length {len(got) if isinstance(got, list) else got!r} != {len(expected)}"]
        if expected and all(isinstance(v, float) for v in expected):  # an observation: one vectorised check
            got_array, expected_array = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
            bad = ~np.isclose(got_array, expected_array, rtol=tolerance, atol=tolerance)
            return [f"{path}[{i}]: {float(got_array[i])!r} != {float(expected_array[i])!r}" for i in np.flatnonzero(bad)]
        return [line for i, (g, e) in enumerate(zip(got, expected)) for line in deviations(g, e, tolerance, f"{path}[{i}]")]
    if isinstance(expected, bool) or expected is None or isinstance(got, bool):
        return [] if got is expected else [f"{path}: {got!r} != {expected!r}"]
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        close = np.isclose(got, expected, rtol=tolerance, atol=tolerance) or (got == expected)  # inf == inf
        return [] if close else [f"{path}: {got!r} != {expected!r}"]
    return [] if got == expected else [f"{path}: {got!r} != {expected!r}"]


@pytest.fixture
def roots(tiny_cifar_dir: Path, tiny_fashion_mnist_dir: Path) -> dict[str, Path]:
    return {"ALA-CIFAR10-v0": tiny_cifar_dir, "ALA-FashionMNIST-v0": tiny_fashion_mnist_dir}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_trajectory(case: str, roots: dict[str, Path]) -> None:
    trace = _case_trace(case, roots)
    if os.environ.get("ALA_GYM_RECORD_GOLDEN"):
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps(recorded | {case: trace}, sort_keys=True) + "\n")
        pytest.skip("recorded")
    expected = json.loads(GOLDEN.read_text())[case]
    assert trace["steps"][-1]["terminated"], "the case must reach the end of training (test_metric)"
    differences = deviations(trace, expected, CASES[case][2] * ULP)
    assert not differences, f"{len(differences)} values differ from {GOLDEN.name}, first: {differences[:10]}"


@pytest.mark.parametrize("case", ["digits-mlp", "cifar10-resnet20"])
def test_a_small_change_of_the_arithmetic_is_caught(case: str, roots: dict[str, Path]) -> None:
    """Each case's room holds kernels' rounding only: a learning rate 1% off lies outside it."""
    expected = json.loads(GOLDEN.read_text())[case]
    env_id, kwargs, ulps = CASES[case]
    lr = kwargs.get("lr") or gym.make(env_id, disable_env_checker=True).unwrapped.train_config.lr
    changed = _case_trace(case, roots, lr=lr * 1.01)
    assert deviations(changed, expected, ulps * ULP), "a 1% change of lr must lie beyond the room"


def test_deviations_compare_floats_to_the_tolerance_and_the_rest_exactly() -> None:
    base = {"a": [1.0, 2.0], "b": True, "c": 0.5, "d": None}
    room = 1e-4
    assert deviations(base, base, room) == []
    assert deviations({**base, "a": [1.0, 2.0 * (1 + room / 2)]}, base, room) == []
    assert deviations({**base, "a": [1.0, 2.5]}, base, room) == [".a[1]: 2.5 != 2.0"]
    assert deviations({**base, "b": False}, base, room) == [".b: False != True"]
    assert deviations({**base, "c": 0.5 + 4 * room}, base, room) == [f".c: {0.5 + 4 * room!r} != 0.5"]
    assert deviations({**base, "d": 0.0}, base, room) == [".d: 0.0 != None"]
    assert deviations({**base, "a": [1.0]}, base, room) == [".a: length 1 != 2"]
