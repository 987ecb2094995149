"""Bad input gets one clear error naming what was wrong and the fix; Gymnasium conventions hold at the edges
(rendering, seeds of numpy types, the final metrics of diverged and truncated children)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import ala_gym  # noqa: F401  (registers the ids)
from ala_gym.core.data import DataError, data_home, load_cifar10, load_fashion_mnist

TINY = dict(total_iterations=6, steps_per_action=3, batch_size=16, eval_points=2, eval_stride=1, device="cpu")
KEEP = np.ones(55, dtype=np.int64)


# ---------------------------------------------------------------------- env arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta=float("nan")), "beta must be a finite number"),
        (dict(beta=float("inf")), "beta must be a finite number"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(lr=float("inf")), "lr must be a finite number"),
        (dict(divergence_penalty=float("nan")), "divergence_penalty must be a finite number"),
        (dict(divergence_penalty=-float("inf")), "divergence_penalty must be a finite number"),
        (dict(val_subsample=0), "val_subsample must be a positive number"),
        (dict(val_subsample=-1), "val_subsample must be a positive number"),
        (dict(render_mode="video"), "render_mode must be one of"),
    ],
)
def test_bad_env_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make("ALA-Digits-v0", **TINY, **kwargs)


@pytest.mark.parametrize(
    "action",
    [np.full(55, 1.0), np.full(55, 2.0, dtype=np.float32), np.full(55, 1 + 0j), np.full(55, True)],
    ids=["float64-integral", "float32-integral", "complex", "bool"],
)
def test_actions_must_have_an_integer_dtype(action: np.ndarray) -> None:
    env = gym.make("ALA-Digits-v0", **TINY)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"integers \(an integer dtype"):
        env.step(action)
    env.step(np.ones(55, dtype=np.int32))  # any integer dtype is fine
    env.step([1] * 55)  # so is a list of Python ints


def test_vector_reset_takes_numpy_integer_seeds() -> None:
    envs = gym.make_vec("ALA-Digits-v0", num_envs=2, **TINY)
    first, _ = envs.reset(seed=np.int64(3))
    again, _ = envs.reset(seed=3)
    listed, _ = envs.reset(seed=[np.int32(3), np.int64(4)])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, listed)
    with pytest.raises(TypeError, match="seed must be an int"):
        envs.reset(seed="3")


# ---------------------------------------------------------------------- final metrics
def _diverging_env(metric: str, **kwargs):
    phi = np.where(np.eye(10) > 0, 1.0, -1.0)  # rewards pushing wrong classes to -inf: diverges at lr=1e4
    return gym.make(
        "ALA-Digits-v0", phi_init=phi, lr=1e4, metric=metric, negative_floor=None,
        **{**TINY, "total_iterations": 300, "steps_per_action": 50}, **kwargs,
    )


@pytest.mark.parametrize("metric, worst", [("error", 1.0), ("nll", float("inf"))])
def test_a_diverged_child_scores_the_metrics_worst_value(metric: str, worst: float) -> None:
    env = _diverging_env(metric)
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(KEEP)
    assert info["diverged"]
    assert info["test_metric"] == worst and info["final_val_metric"] == worst


def test_truncation_reports_no_final_metrics_in_the_single_and_the_vector_env() -> None:
    env = gym.make("ALA-Digits-v0", max_episode_steps=1, **{**TINY, "total_iterations": 30})
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(KEEP)
    assert truncated and not terminated and "test_metric" not in info and "final_val_metric" not in info
    envs = gym.make_vec("ALA-Digits-v0", num_envs=1, max_episode_steps=1, **{**TINY, "total_iterations": 30})
    envs.reset(seed=0)
    *_, vector_truncated, vector_info = envs.step(KEEP[None])
    assert vector_truncated[0] and "test_metric" not in vector_info and "final_val_metric" not in vector_info


# ---------------------------------------------------------------------- rendering
def test_render_rgb_array_and_ansi_through_gym_make() -> None:
    pictures = gym.make("ALA-Digits-v0", render_mode="rgb_array", **TINY)
    pictures.reset(seed=0)
    first = pictures.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3 and first.shape[1] > first.shape[0]
    pictures.step(np.full(55, 2))  # every Phi entry moves: the picture changes
    assert not np.array_equal(pictures.render(), first)

    text = gym.make("ALA-Digits-v0", render_mode="ansi", **TINY)
    text.reset(seed=0)
    text.step(np.full(55, 0))
    frame = text.render()
    first_row = " ".join(f"{value:+.2f}" for value in text.unwrapped.phi[0])
    assert frame.splitlines()[1:3] == ["Phi:", first_row] and "validation confusion" in frame
    plain = gym.make("ALA-Digits-v0", **TINY)
    plain.reset(seed=0)
    assert plain.render() is None


@pytest.mark.parametrize("render_mode", ["rgb_array", "ansi"])
def test_check_env_passes_with_rendering(render_mode: str) -> None:
    env = gym.make("ALA-Digits-v0", render_mode=render_mode, **TINY)
    gym_check_env(env.unwrapped)


# ---------------------------------------------------------------------- data files
def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cifar"
    shutil.copytree(folder, target)
    return target


def _rewrite_md5sums(folder: Path) -> None:
    names = ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    lines = [f"{hashlib.md5((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "MD5SUMS").write_text("\n".join(lines) + "\n")


def test_malformed_md5sums_line_names_the_file_and_line(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_cifar_dir, tmp_path)
    (folder / "MD5SUMS").write_text((folder / "MD5SUMS").read_text() + "garbage\n")
    with pytest.raises(DataError, match=r"MD5SUMS, line 8, is not '<md5>  <file name>'.*md5sum"):
        load_cifar10(data_root=folder, download=False)


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])
def test_truncated_cifar_file_with_regenerated_checksums_is_named(tiny_cifar_dir: Path, tmp_path: Path, name: str) -> None:
    folder = _copy(tiny_cifar_dir, tmp_path)
    (folder / name).write_bytes((folder / name).read_bytes()[:100])
    _rewrite_md5sums(folder)
    with pytest.raises(DataError, match=rf"{name} is truncated or not a CIFAR-10 python batch.*restore the folder"):
        load_cifar10(data_root=folder, download=False)


def test_corrupt_cifar_file_message_says_how_to_fix_it(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_cifar_dir, tmp_path)
    (folder / "test_batch").write_bytes(b"x" + (folder / "test_batch").read_bytes()[1:])
    with pytest.raises(DataError, match=r"test_batch is corrupt.*restore the folder"):
        load_cifar10(data_root=folder, download=False)


def test_truncated_fashion_mnist_cache_is_unpacked_again(tiny_fashion_mnist_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_fashion_mnist(data_root=tiny_fashion_mnist_dir, cache_dir=cache, val_size=40)
    (cached,) = cache.glob("*/FashionMNIST/raw/train-images-idx3-ubyte")
    cached.write_bytes(cached.read_bytes()[:-784])  # one image short, as after a full disk
    again = load_fashion_mnist(data_root=tiny_fashion_mnist_dir, cache_dir=cache, val_size=40)
    assert len(again.train) == len(first.train)


def test_fashion_mnist_labels_shorter_than_images_are_refused(tiny_fashion_mnist_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fmnist"
    shutil.copytree(tiny_fashion_mnist_dir, folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    count = int.from_bytes(raw[4:8], "big") - 10
    labels.write_bytes(gzip.compress(raw[:4] + count.to_bytes(4, "big") + raw[8 : 8 + count]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz and .*train-labels-idx1-ubyte.gz disagree.*reinstall"):
        load_fashion_mnist(data_root=folder, cache_dir=tmp_path / "cache", val_size=40)


def test_data_home_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.delenv("ALA_GYM_DATA")
    repository = Path(ala_gym.__file__).resolve().parents[1]
    assert data_home() == repository.parent / "shared" / "data"
