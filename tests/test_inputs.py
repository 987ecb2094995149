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
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env

import ala_gym  # noqa: F401  (registers the ids)
from ala_gym.core.data import DataError, data_home, load_cifar10, load_fashion_mnist, resolve_device

TINY = dict(total_iterations=6, steps_per_action=3, batch_size=16, eval_points=2, eval_stride=1, device="cpu")
KEEP = np.ones(55, dtype=np.int64)


# ---------------------------------------------------------------------- env arguments
NAN, INF = float("nan"), float("inf")
BAD_ARGUMENTS = [
    (dict(beta=NAN), "beta must be a finite number"),
    (dict(beta=INF), "beta must be a finite number"),
    (dict(beta=True), "beta must be a finite number"),
    (dict(beta=0), "beta must be a finite number in \\(0, inf\\)"),  # a step of 0: no action would move Phi
    (dict(lr=NAN), "lr must be a finite number"),
    (dict(lr=INF), "lr must be a finite number"),
    (dict(lr=3.5e38), "lr must be a finite number in"),  # finite, but beyond float32: children train in float32
    (dict(lr=1e308), "lr must be a finite number in"),
    (dict(lr=True), "lr must be a finite number"),
    (dict(divergence_penalty=NAN), "divergence_penalty must be a finite number"),
    (dict(divergence_penalty=-INF), "divergence_penalty must be a finite number"),
    (dict(val_subsample=0), "val_subsample must be an integer >= 1"),
    (dict(val_subsample=-1), "val_subsample must be an integer >= 1"),
    (dict(val_subsample=2.5), "val_subsample must be an integer"),
    (dict(render_mode="video"), "render_mode must be one of"),
    # A string's truth value is not its meaning: "False" would have kept the diagonal fixed, or downloaded.
    (dict(fixed_diagonal="False"), "fixed_diagonal must be True or False"),
    (dict(fixed_diagonal=0), "fixed_diagonal must be True or False"),
    (dict(download="False"), "download must be True or False"),
    # A fractional or non-finite step count never brought a step's countdown to zero (a hang).
    (dict(steps_per_action=10.5), "steps_per_action must be an integer"),
    (dict(steps_per_action=NAN), "steps_per_action must be an integer"),
    (dict(steps_per_action=True), "steps_per_action must be an integer"),
    (dict(total_iterations=NAN), "total_iterations must be an integer"),
    (dict(total_iterations=INF), "total_iterations must be an integer"),
    (dict(total_iterations=40.5), "total_iterations must be an integer"),
    (dict(total_iterations="40"), "total_iterations must be an integer"),
    (dict(lr_decay=0), "lr_decay must be a finite number in \\(0, 1\\]"),
    (dict(lr_decay=-1), "lr_decay must be a finite number"),  # ascended the gradient after the first milestone
    (dict(lr_decay=NAN), "lr_decay must be a finite number"),
    (dict(lr_decay=INF), "lr_decay must be a finite number"),
    (dict(lr_decay=1e8), "lr_decay must be a finite number"),
    (dict(lr_milestones=(0.5, NAN)), "lr_milestones must be a finite number"),
    (dict(lr_milestones=0.5), "lr_milestones must be a sequence"),
    (dict(weight_decay=NAN), "weight_decay must be a finite number"),
    (dict(weight_decay=INF), "weight_decay must be a finite number"),
    (dict(momentum=1.0), "momentum must be a finite number in \\[0, 1\\)"),
    (dict(batch_size=INF), "batch_size must be an integer"),
    (dict(batch_size=2.5), "batch_size must be an integer"),
    (dict(batch_size=True), "batch_size must be an integer"),
    (dict(eval_points=2.5), "eval_points must be an integer"),
    (dict(eval_stride=0), "eval_stride must be an integer >= 1"),
    (dict(history=1.5), "history must be an integer"),
    (dict(gamma=0), "gamma must be a finite number in \\(0, 1\\]"),
    (dict(gamma=NAN), "gamma must be a finite number"),
    (dict(split_seed=1.5), "split_seed must be an integer"),
    (dict(split_seed=-1), "split_seed must be an integer >= 0"),
    (dict(val_size=2.5), "val_size must be an integer"),
    (dict(num_threads=0), "num_threads must be an integer >= 1"),
    (dict(sigmoid_temperature=0), "sigmoid_temperature must be a finite number"),
    (dict(negative_floor=1.0), "negative_floor must be a finite number in \\(0, 1\\)"),
    (dict(device="gpu"), "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (dict(device="mps"), "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'"),  # a device torch knows
    (dict(device="cuda:999"), "use device='cpu'"),  # more GPUs than any machine has: named, not the driver's words
    (dict(reward="best"), "reward must be one of"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS)
@pytest.mark.filterwarnings("ignore:.*not in the possible render_modes:UserWarning")  # gymnasium's, before the refusal
def test_bad_env_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make("ALA-Digits-v0", **{**TINY, **kwargs})


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(steps_per_action=10.5), "steps_per_action"), (dict(total_iterations=NAN), "total_iterations"),
     (dict(lr_decay=-1), "lr_decay"), (dict(num_envs=2.5), "num_envs"), (dict(max_episode_steps=0), "max_episode_steps"),
     (dict(num_envs=0), "num_envs")],
)
def test_the_vector_env_refuses_them_too(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"{message} must be"):
        gym.make_vec("ALA-Digits-v0", **{"num_envs": 2, **TINY, **kwargs})


def test_a_learning_rate_beyond_float32_is_refused_on_every_backend(make_vec) -> None:
    with pytest.raises(ValueError, match="lr must be a finite number in"):
        make_vec("ALA-Digits-v0", 2, **{**TINY, "lr": 3.5e38}).reset(seed=0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=True), dict(recall_k=1.5), dict(recall_k=0), dict(beta=0), dict(embedding_size=0), dict(samples_per_class=2.5)],
)
def test_the_metric_learning_env_refuses_them_too(kwargs: dict, tiny_fashion_mnist_dir: Path) -> None:
    name = next(iter(kwargs))  # by the keyword's own name (embedding_size is the training's output_size)
    with pytest.raises(ValueError, match=f"^{name} must be"):
        gym.make("ALA-FashionMNIST-Triplet-v0", data_root=str(tiny_fashion_mnist_dir), **{**TINY, **kwargs})


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_a_gpu_index_beyond_the_machines_gpus_is_refused_by_name(gpus: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the GPUs torch sees (faked here: this check must hold on a machine with some, not only with none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for index in range(gpus):
        assert resolve_device(f"cuda:{index}") == torch.device("cuda", index)
    if gpus:
        assert resolve_device("cuda") == torch.device("cuda")
    for device in (f"cuda:{gpus}", "cuda") if not gpus else (f"cuda:{gpus}",):
        with pytest.raises(ValueError, match=rf"device='{device}' but this machine has {gpus} CUDA GPU\(s\)"):
            resolve_device(device)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_cuda_in_a_worker_forked_after_its_parent_used_cuda_is_refused_by_name(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What gymnasium's async vector env does on a GPU machine (faked here): the fix named, not torch's error later."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(ValueError, match=r"forked after its parent used CUDA.*vector_kwargs=\{'context': 'spawn'\}"):
        resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers() -> None:
    env = gym.make("ALA-Digits-v0", **{**TINY, "total_iterations": np.int64(6), "lr": np.float32(0.05)}).unwrapped
    assert type(env.train_config.total_iterations) is int and type(env.settings.total_iterations) is int
    assert type(env.train_config.lr) is float


def test_seeds_of_numpy_integer_types_work_in_single_and_vector_env() -> None:
    env = gym.make("ALA-Digits-v0", **TINY)
    first, _ = env.reset(seed=np.int64(3))
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="seed must be an integer"):
        env.reset(seed=1.5)
    envs = gym.make_vec("ALA-Digits-v0", num_envs=2, **TINY)
    zero_d, _ = envs.reset(seed=np.array(3))
    plain, _ = envs.reset(seed=3)
    np.testing.assert_array_equal(zero_d, plain)


def test_step_after_close_raises_instead_of_training(make_vec) -> None:
    env = gym.make("ALA-Digits-v0", **TINY)
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(KEEP)
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(seed=0)
    envs = make_vec("ALA-Digits-v0", num_envs=2, **TINY)
    envs.reset(seed=0)
    envs.close()
    with pytest.raises(RuntimeError, match="closed"):
        envs.step(np.ones((2, 55), dtype=np.int64))
    with pytest.raises(RuntimeError, match="closed"):  # a Phi set on closed children would set nothing
        envs.set_attr("phi", np.eye(10))


def test_a_learning_rate_near_float32s_limit_diverges_with_the_penalty_in_every_path() -> None:
    """The largest float32 learning rate is accepted; it ends the episode with the divergence penalty,
    in the single env and in both vector paths, never with an exception."""
    lr = float(np.finfo(np.float32).max)
    env = gym.make("ALA-Digits-v0", **{**TINY, "lr": lr})
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(KEEP)
    assert terminated and info["diverged"] and reward == -10.0
    for mode in ("sequential", "batched"):
        envs = gym.make_vec("ALA-Digits-v0", num_envs=2, train_mode=mode, **{**TINY, "lr": lr})
        envs.reset(seed=0)
        _, rewards, terminations, _, infos = envs.step(np.ones((2, 55), dtype=np.int64))
        assert terminations.all() and infos["diverged"].all() and (rewards == -10.0).all(), mode


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
    with pytest.raises(ValueError, match=r"must lie in \{0, 1, 2\} \(-step, 0, \+step\), got 7"):
        env.step(np.array([1] * 54 + [7]))  # the value named, not the dtype, which is fine
    env.step(np.ones(55, dtype=np.int32))  # any integer dtype is fine
    env.step([1] * 55)  # so is a list of Python ints


def test_vector_reset_takes_numpy_integer_seeds() -> None:
    envs = gym.make_vec("ALA-Digits-v0", num_envs=2, **TINY)
    first, _ = envs.reset(seed=np.int64(3))
    again, _ = envs.reset(seed=3)
    listed, _ = envs.reset(seed=[np.int32(3), np.int64(4)])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, listed)
    with pytest.raises(ValueError, match="seed must be an int"):
        envs.reset(seed="3")
    for listed, message in (([1.7, 2], r"seed\[0\] must be an int or None, got 1.7"), ([True, 1], r"seed\[0\] must be an int"),
                            (np.array([1.5, 2.5]), r"seed\[0\] must be an int")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            envs.reset(seed=listed)
    # None in a list, as in Gymnasium's vector envs: that child's generator goes on, the others are seeded.
    seeded, _ = envs.reset(seed=[3, 4])
    go_on, _ = envs.reset(seed=[None, 4])
    np.testing.assert_array_equal(go_on[1], seeded[1])
    assert not np.array_equal(go_on[0], seeded[0])  # child 0 drew its next child from its generator, not seed 3's first
    again, _ = envs.reset(seed=[3, 4])
    np.testing.assert_array_equal(again, seeded)
    for negative, message in ((-1, "seed must be an integer >= 0"), ([1, -2], r"seed\[1\] must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):  # as the single env refuses a negative seed
            envs.reset(seed=negative)


@pytest.mark.parametrize("vector", [False, True], ids=["single", "vector"])
def test_reset_refuses_options_it_would_ignore(vector: bool) -> None:
    # gymnasium's vector API names partial resets reset_mask; ignoring it would still reset every child.
    env = gym.make_vec("ALA-Digits-v0", num_envs=2, **TINY) if vector else gym.make("ALA-Digits-v0", **TINY)
    env.reset(seed=0, options={})  # none given: fine
    option = {"reset_mask": np.array([True, False])} if vector else {"foo": 1}
    with pytest.raises(ValueError, match=f"reset takes no options, got \\['{next(iter(option))}'\\]"):
        env.reset(seed=0, options=option)


def test_a_reset_without_a_seed_goes_on_from_the_last_seed_as_the_single_env_does() -> None:
    def two_resets(env):
        first, _ = env.reset(seed=5)
        second, _ = env.reset()
        return first, second

    first, second = two_resets(gym.make_vec("ALA-Digits-v0", num_envs=2, train_mode="sequential", **TINY))
    again = two_resets(gym.make_vec("ALA-Digits-v0", num_envs=2, train_mode="sequential", **TINY))
    np.testing.assert_array_equal(second, again[1])  # reproducible from the one seed
    assert not np.array_equal(first, second)  # a new draw, not the seeded start again
    for child in range(2):  # child i: the single env seeded 5 + i, then reset without a seed
        single = gym.make("ALA-Digits-v0", **TINY)
        single.reset(seed=5 + child)
        np.testing.assert_array_equal(single.reset()[0], second[child])


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
    assert info["test_metric"] == worst and info["final_val_metric"] == worst and info["final_val_loss"] == float("inf")


def test_truncation_reports_no_final_metrics_in_the_single_and_the_vector_env() -> None:
    env = gym.make("ALA-Digits-v0", max_episode_steps=1, **{**TINY, "total_iterations": 30})
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(KEEP)
    assert truncated and not terminated and not {"test_metric", "final_val_metric", "final_val_loss"} & info.keys()
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


def test_the_ansi_frame_is_the_steps_metric_phi_and_the_confusion_as_probabilities() -> None:
    """The text picture holds the step's info: the iteration of the budget, the validation metric, Phi and the
    validation confusion read as ``exp(-C_ij)`` (Eq. 7's geometric-mean probability), each grid to two decimals."""
    env = gym.make("ALA-Digits-v0", render_mode="ansi", **TINY)
    env.reset(seed=0)
    *_, info = env.step(np.full(55, 2))

    def grid(matrix: np.ndarray) -> str:
        return "\n".join(" ".join(f"{value:+.2f}" for value in row) for row in matrix)

    probabilities = np.exp(-np.asarray(info["confusion"]))
    assert np.all((probabilities > 0) & (probabilities <= 1))
    assert env.render() == (
        f"iteration 3/6, validation error {info['val_metric']:.4f}\nPhi:\n{grid(info['phi'])}\n"
        f"validation confusion exp(-C_ij) (row i: true class):\n{grid(probabilities)}\n"
    )


@pytest.mark.parametrize("render_mode", ["rgb_array", "ansi"])
def test_check_env_passes_with_rendering(render_mode: str) -> None:
    env = gym.make("ALA-Digits-v0", render_mode=render_mode, **TINY)
    gym_check_env(env.unwrapped)


@pytest.mark.parametrize("method, verb", [("get_state", "save"), ("render", "render")])
def test_saving_or_rendering_before_the_first_reset_names_the_missing_call(method: str, verb: str) -> None:
    """The env itself (a spec's ``make_env()``, ``.unwrapped``: no order-enforcing wrapper) has no child to save or
    picture before ``reset()``, and says so; after it, both work."""
    env = gym.make("ALA-Digits-v0", render_mode="ansi", **TINY).unwrapped
    with pytest.raises(RuntimeError, match=rf"^nothing to {verb} before reset\(\): call reset\(\) first$"):
        getattr(env, method)()
    env.reset(seed=0)
    assert getattr(env, method)()


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
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "ala_gym"  # the user's data folder, never the package's location
    monkeypatch.delenv("XDG_DATA_HOME")
    assert data_home() == Path.home() / ".local" / "share" / "ala_gym"
