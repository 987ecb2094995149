"""ALA on data and a model of one's own: ``ALA-Classification-v0`` with arrays, Datasets and model factories.

The data is scikit-learn's bundled wine table (178 samples, 13 float features, 3 classes; no download);
the model holds the layers the package does not initialise itself (LayerNorm, BatchNorm1d, a bare
``nn.Parameter``) and dropout, whose random draws must follow the env's seed.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import FlattenObservation
from sklearn.datasets import load_digits, load_wine
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

import ala_gym  # noqa: F401  (registers the ids)
from ala_gym.core.data import LOADERS, ClassificationData, from_user_data, load_dataset, register_dataset
from ala_gym.core.models import MODELS, build_model, check_model_spec, draws_randomness, is_builtin, register_model
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.vector import ALAVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV_ID = "ALA-Classification-v0"
TINY = dict(total_iterations=6, steps_per_action=3, batch_size=16, eval_points=2, eval_stride=1, val_subsample=None,
            val_size=40, device="cpu")  # fmt: skip


class OwnNet(nn.Module):
    """A tabular classifier built of layers the package leaves to the module's own initialisation."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.hidden = nn.Linear(input_shape[0], 32)
        self.norm = nn.LayerNorm(32)
        self.batch_norm = nn.BatchNorm1d(32)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(32, num_outputs)
        self.temperature = nn.Parameter(torch.randn(num_outputs).abs() + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(torch.relu(self.batch_norm(self.norm(self.hidden(x)))))
        return self.head(hidden) * self.temperature


def own_net_without_dropout(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return OwnNet(input_shape, num_outputs, dropout=0.0)


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: 138 training and 40 test samples, float64 features."""
    features, labels = load_wine(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:40], order[40:]
    return features[train], labels[train], features[test], labels[test]


def make(dataset, model=OwnNet, **overrides) -> gym.Env:
    return gym.make(ENV_ID, dataset=dataset, model=model, disable_env_checker=True, **{**TINY, **overrides})


def rollout(env: gym.Env, seed: int) -> list:
    obs, info = env.reset(seed=seed)
    env.action_space.seed(0)
    trace, terminated = [obs, info["val_loss"]], False
    while not terminated:
        obs, reward, terminated, _, info = env.step(env.action_space.sample())
        trace += [obs, reward, info["train_loss"], info["val_loss"]]
    return trace + [info["test_metric"]]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_both_env_checkers_pass(wine) -> None:
    env = make(wine)
    assert isinstance(env.unwrapped, ALAClassificationEnv)
    assert env.action_space.shape == (6,) and env.observation_space.shape == (6, 24)  # 3 classes: 6 class pairs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(FlattenObservation(make(wine)), warn=True)
        # The (pairs, features) Box draws SB3's flattening advice, as for every id.
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")
        sb3_check_env(make(wine).unwrapped, warn=True)


def test_episodes_follow_the_seed_alone_and_leave_the_global_rng_alone(wine, global_rng_unchanged) -> None:
    # Dropout draws in every training forward: the same seed must give the same run whatever the global
    # generator holds, and the global generator must not move.
    with global_rng_unchanged():
        first = rollout(make(wine), seed=3)
    torch.manual_seed(12345)
    second = rollout(make(wine), seed=3)
    other = rollout(make(wine), seed=4)
    assert same(first, second) and not same(first, other)
    assert 0.0 <= first[-1] <= 1.0


class NoisyNet(OwnNet):
    """Draws from torch's global generator in every forward, evaluation included (input noise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + 0.01 * torch.randn_like(x))


def test_a_model_that_draws_in_every_forward_leaves_the_global_rng_alone(wine, global_rng_unchanged) -> None:
    with global_rng_unchanged():  # the model's check at gym.make included, which runs it in evaluation mode
        first = rollout(make(wine, model=NoisyNet), seed=3)
    assert same(first, rollout(make(wine, model=NoisyNet), seed=3))


def test_native_vector_env_reproduces_the_single_envs(wine) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=2, dataset=wine, model=OwnNet, **TINY)
    assert isinstance(envs, ALAVectorEnv) and envs.train_mode == "sequential"  # a factory's model: sequential
    observations, _ = envs.reset(seed=7)
    actions = np.random.default_rng(0).integers(0, 3, size=(2, *envs.single_action_space.shape))
    vector_step = envs.step(actions)
    for child in range(2):
        single = make(wine)
        obs, _ = single.reset(seed=7 + child)
        np.testing.assert_array_equal(obs, observations[child])
        single_step = single.step(actions[child])
        np.testing.assert_array_equal(single_step[0], vector_step[0][child])
        assert single_step[1] == vector_step[1][child]
    envs.close()


class PartlyFrozenNet(nn.Module):
    """A fixed feature layer (requires_grad False), a trained head, and a parameter the forward never uses."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.features = nn.Linear(input_shape[0], 16).requires_grad_(False)
        self.head = nn.Linear(16, num_outputs)
        self.spare = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def _adalfl_run(wine, model, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], dict[str, torch.Tensor]]:
    """AdaLFL's validation metrics over a run on the wine table, and its child's weights before and after."""
    from ala_gym.agents import adalfl

    weights: dict[str, torch.Tensor] = {}
    original = adalfl.OnlineTrainer.__init__

    def spy(self, trainer, *args, **kwargs) -> None:
        weights.update({f"before:{k}": v.detach().clone() for k, v in trainer.model.named_parameters()})
        weights["module"] = trainer.model
        original(self, trainer, *args, **kwargs)

    monkeypatch.setattr(adalfl.OnlineTrainer, "__init__", spy)
    controller = adalfl.AdaLFLController(adalfl.AdaLFLConfig(offline_steps=2))
    envs = controller.make_envs(ENV_ID, dataset=wine, model=model, **TINY)
    try:
        (record,) = controller.run(envs, seed=seed)
    finally:
        envs.close()
    module = weights.pop("module")
    weights.update({f"after:{k}": v.detach().clone() for k, v in module.named_parameters()})
    return record.val_metric + [record.test_metric], weights


def test_adalfl_keeps_a_frozen_layer_as_the_trainer_does(wine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its unrolled step changes the trainable parameters only; a parameter the forward leaves out gets a zero
    gradient (weight decay alone), not autograd's error."""
    _, weights = _adalfl_run(wine, PartlyFrozenNet, 0, monkeypatch)
    assert torch.equal(weights["before:features.weight"], weights["after:features.weight"])
    assert not torch.equal(weights["before:head.weight"], weights["after:head.weight"])
    assert torch.allclose(weights["after:spare"], torch.ones(3), atol=0.01)


def test_adalfl_with_dropout_follows_its_seed_and_leaves_the_global_rng_alone(wine, monkeypatch, global_rng_unchanged) -> None:
    with global_rng_unchanged():
        first, _ = _adalfl_run(wine, OwnNet, 3, monkeypatch)
    torch.manual_seed(12345)
    second, _ = _adalfl_run(wine, OwnNet, 3, monkeypatch)
    other, _ = _adalfl_run(wine, OwnNet, 4, monkeypatch)
    assert first == second and first != other


@pytest.mark.parametrize("train_mode", ["sequential", "batched"])
def test_a_frozen_layer_keeps_its_weights_and_an_unused_parameter_trains_nothing(wine, train_mode: str) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=2, dataset=wine, model=PartlyFrozenNet, train_mode=train_mode, **TINY)
    envs.reset(seed=0)

    def weights(name: str) -> list[torch.Tensor]:
        children = envs.unwrapped._children
        if train_mode == "batched":
            return [children.params[name][i].detach().clone() for i in range(2)]
        return [trainer.model.get_parameter(name).detach().clone() for trainer in children.trainers]

    before = {name: weights(name) for name in ("features.weight", "head.weight", "spare")}
    envs.step(np.ones((2, *envs.single_action_space.shape), dtype=np.int64))
    after = {name: weights(name) for name in before}
    assert all(torch.equal(a, b) for a, b in zip(before["features.weight"], after["features.weight"]))
    assert not any(torch.equal(a, b) for a, b in zip(before["head.weight"], after["head.weight"]))
    assert all(torch.allclose(value, torch.ones(3), atol=0.01) for value in after["spare"])  # weight decay alone
    envs.close()


def test_batched_training_runs_a_model_without_dropout_and_refuses_one_with_it(wine) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=2, dataset=wine, model=own_net_without_dropout, train_mode="batched", **TINY)
    envs.reset(seed=0)
    observations, rewards, *_ = envs.step(np.ones((2, 6), dtype=np.int64))
    assert np.all(np.isfinite(observations)) and rewards.shape == (2,)
    envs.close()
    with pytest.raises(ValueError, match="train_mode='sequential'"):
        gym.make_vec(ENV_ID, num_envs=2, dataset=wine, model=OwnNet, train_mode="batched", **TINY)


def test_every_parameter_is_initialised_from_the_seed(global_rng_unchanged) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        model = build_model(OwnNet, (13,), 3, torch.Generator().manual_seed(seed))
        return {name: tensor.clone() for name, tensor in model.state_dict().items()}

    with global_rng_unchanged():
        first, again, other = build(1), build(1), build(2)
    for name, tensor in first.items():
        assert torch.equal(tensor, again[name]), name
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
    random = ["hidden.weight", "hidden.bias", "head.weight", "head.bias", "temperature"]
    for name in random:
        assert first[name].abs().sum() > 0 and not torch.equal(first[name], other[name]), name
    # The constructors' own values, not leftover memory.
    for name in ("norm.weight", "batch_norm.weight", "batch_norm.running_var"):
        assert torch.equal(first[name], torch.ones(32)), name
    for name in ("norm.bias", "batch_norm.bias", "batch_norm.running_mean"):
        assert torch.equal(first[name], torch.zeros(32)), name
    assert torch.all(first["temperature"] >= 0.5)


def test_a_model_with_dropout_nested_in_a_container_draws_randomness() -> None:
    """Dropout inside a Sequential (or any submodule) counts like dropout at the top: the model draws random numbers."""
    assert draws_randomness(nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Dropout(0.2)), nn.Linear(4, 2)))
    assert not draws_randomness(nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU()), nn.Linear(4, 2)))


def test_a_package_model_name_given_another_factory_is_built_by_that_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MODELS`` is a plain dict: a package name whose entry was replaced there (not through register_model) is no
    longer one of the package's models, and is built like any factory, its own layers initialised by itself."""
    assert is_builtin("mlp")
    monkeypatch.setitem(MODELS, "mlp", OwnNet)
    assert not is_builtin("mlp")
    named = build_model("mlp", (13,), 3, torch.Generator().manual_seed(4)).state_dict()
    factory = build_model(OwnNet, (13,), 3, torch.Generator().manual_seed(4)).state_dict()
    assert named.keys() == factory.keys() and all(torch.equal(named[k], factory[k]) for k in named)


@pytest.mark.parametrize("as_tensors", [False, True], ids=["arrays", "tensors"])
def test_uint8_inputs_are_copies_too(as_tensors: bool) -> None:
    """Images given as uint8 are kept as uint8 but copied like any other inputs: zeroing the caller's arrays or
    tensors afterwards changes none of the splits."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(1, 256, (20, 1, 4, 4), dtype=np.uint8)
    x_test = rng.integers(1, 256, (6, 1, 4, 4), dtype=np.uint8)
    expected_test = torch.from_numpy(x_test.copy())
    if as_tensors:
        x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    data = from_user_data((x_train, np.arange(20) % 2, x_test, np.arange(6) % 2), val_size=4)
    x_train[:] = 0
    x_test[:] = 0
    assert torch.equal(data.test.images, expected_test)
    assert all(int(split.images.min()) > 0 for split in (data.train, data.val))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_labels_of_every_width_are_class_indices(wine, dtype) -> None:
    """Labels in any unsigned integer type give what int64 labels give (torch has no min or max for uint16 to
    uint64); one beyond int64 is named, not wrapped to a negative label."""
    x_train, y_train, x_test, y_test = wine
    data = from_user_data((x_train, y_train.astype(dtype), x_test, y_test.astype(dtype)))
    reference = from_user_data(wine)
    assert torch.equal(data.train.labels, reference.train.labels) and data.train.labels.dtype == torch.int64
    if dtype is np.uint64:
        y_huge = y_train.astype(dtype)
        y_huge[7] = 2**63
        with pytest.raises(ValueError, match=rf"holds label {2**63} at position 7; labels must be class indices 0..C-1"):
            from_user_data((x_train, y_huge, x_test, y_test.astype(dtype)))


def test_a_fraction_for_val_size_is_named(wine) -> None:
    with pytest.raises(ValueError, match=r"^val_size must be an integer >= 1, got 0.2 \(float\)$"):
        from_user_data(wine, val_size=0.2)


def test_the_users_arrays_and_tensors_are_never_written(wine) -> None:
    as_tensors = tuple(torch.as_tensor(a, dtype=torch.float32 if a.dtype.kind == "f" else torch.int64) for a in wine)
    for data in (wine, as_tensors):
        before = [torch.as_tensor(a).clone() for a in data]
        env = make(data, total_iterations=12)
        rollout(env, seed=0)
        stored = env.unwrapped.data
        for split in (stored.train, stored.val, stored.test):  # normalising, again and again, writes nothing
            kept = split.images.clone()
            stored.normalize(split.images)
            assert torch.equal(split.images, kept)
        for original, now in zip(before, data):
            assert torch.equal(torch.as_tensor(now), original)
    assert stored.test.images.data_ptr() != as_tensors[2].data_ptr()  # a copy, not the caller's tensor


def test_float_inputs_are_standardised_per_feature_with_training_statistics(wine) -> None:
    data = make(wine).unwrapped.data
    assert data.image_shape == (13,) and data.num_classes == 3 and not data.augment
    assert (len(data.train), len(data.val), len(data.test)) == (98, 40, 40)
    inputs = data.normalize(data.train.images)
    torch.testing.assert_close(inputs.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs.std(0), torch.ones(13), atol=1e-5, rtol=0)


def test_signals_are_standardised_per_channel() -> None:
    rng = np.random.default_rng(0)
    signals = rng.normal(loc=[[5.0], [-3.0]], scale=[[2.0], [0.5]], size=(60, 2, 16)).astype(np.float32)
    labels = np.arange(60) % 3
    data = from_user_data((signals[:48], labels[:48], signals[48:], labels[48:]), val_size=12)
    assert data.image_shape == (2, 16) and data.mean.shape == (2,)
    inputs = data.normalize(data.train.images)
    torch.testing.assert_close(inputs.mean(dim=(0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs.std(dim=(0, 2)), torch.ones(2), atol=1e-4, rtol=0)


def test_uint8_images_take_the_registered_image_path_bit_for_bit() -> None:
    # The digits loader's own arrays (8x8 images in uint8, its seeded test split), given as user data.
    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    test, rest = order[:360], order[360:]
    own = from_user_data((images[rest], labels[rest], images[test], labels[test]), val_size=360)
    registered = load_dataset("digits")
    for name in ("mean", "std"):
        assert torch.equal(getattr(own, name), getattr(registered, name)), name
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(own, split).images, getattr(registered, split).images), split
        assert torch.equal(getattr(own, split).labels, getattr(registered, split).labels), split
    assert own.train.images.dtype == torch.uint8
    assert torch.equal(own.normalized_train, registered.normalized_train)


def test_a_pair_of_datasets_gives_the_data_the_arrays_give(wine) -> None:
    x_train, y_train, x_test, y_test = (torch.as_tensor(a) for a in wine)
    pair = (TensorDataset(x_train, y_train), TensorDataset(x_test, y_test))
    from_pair, from_arrays = make(pair).unwrapped.data, make(wine).unwrapped.data
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(from_pair, split).images, getattr(from_arrays, split).images)
        assert torch.equal(getattr(from_pair, split).labels, getattr(from_arrays, split).labels)
    assert torch.equal(from_pair.mean, from_arrays.mean) and torch.equal(from_pair.std, from_arrays.std)
    rollout(make(pair), seed=0)


def test_registered_names_serve_every_env(wine) -> None:
    try:
        register_dataset("wine-test", lambda: wine)
        register_model("own-net-test", OwnNet)
        named = make("wine-test", model="own-net-test")
        assert torch.equal(named.unwrapped.data.train.images, make(wine).unwrapped.data.train.images)
        assert same(rollout(named, seed=1), rollout(make(wine), seed=1))
        with pytest.raises(ValueError, match="one of the package's datasets"):
            register_dataset("digits", lambda: wine)
        with pytest.raises(ValueError, match="one of the package's models"):
            register_model("mlp", OwnNet)
    finally:
        LOADERS.pop("wine-test", None)
        MODELS.pop("own-net-test", None)


def _shifted(wine, index: int, change) -> tuple:
    arrays = list(wine)
    arrays[index] = change(arrays[index])
    return tuple(arrays)


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[5, 2] = np.nan
    return x


def _uint8_images(wine, shape: tuple[int, ...]) -> tuple:
    """Wine's labels with random uint8 images of ``shape`` each."""
    rng = np.random.default_rng(0)
    _, y_train, _, y_test = wine
    return (rng.integers(0, 256, (len(y_train), *shape), dtype=np.uint8), y_train,
            rng.integers(0, 256, (len(y_test), *shape), dtype=np.uint8), y_test)  # fmt: skip


def _channels_last_images(wine) -> tuple:
    """8 x 8 RGB images laid out [N, H, W, C], as many image libraries give them."""
    return _uint8_images(wine, (8, 8, 3))


class _Items(Dataset):
    """A map-style Dataset of the given items, whatever they are."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> object:
        return self.items[index]


class _Stream(IterableDataset):
    """An iterable-style Dataset: no len(), no [i]."""

    def __iter__(self):
        return iter([(torch.zeros(13), 0), (torch.zeros(13), 1)])


def _uninitialised(shape: tuple[int, ...], outputs: int) -> nn.Module:
    """A factory that leaves a weight as torch.empty might: NaN."""
    layer = nn.Linear(shape[0], outputs)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    return layer


def _infinite_buffer(shape: tuple[int, ...], outputs: int) -> nn.Module:
    """A factory whose buffer holds an infinity (which is not NaN): as unusable as an uninitialised weight."""
    layer = nn.Linear(shape[0], outputs)
    layer.register_buffer("scale", torch.tensor([1.0, float("inf")]))
    return layer


class Squeezed(nn.Linear):
    """Drops the batch dimension of a single input: fine for two, wrong for evaluation's last batch of one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze()


class TrainingExtra(nn.Linear):
    """One more output in training mode than in evaluation mode."""

    def __init__(self, features: int, outputs: int) -> None:
        super().__init__(features, outputs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.training else out[:, :-1]


class TrainingOverflow(nn.Linear):
    """Finite outputs in evaluation mode, infinite ones in training mode (a factor applied only while training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * 1e60 if self.training else out


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: dict(dataset=_shifted(w, 1, lambda y: y[:-1])), "x_train holds 138 samples but y_train 137 labels"),
        (lambda w: dict(dataset=_shifted(w, 1, lambda y: y[:, None])), "labels must be 1-D"),
        (lambda w: dict(dataset=_shifted(w, 3, lambda y: y.astype(np.float64))),
         r"y_test is torch.float64; labels must be integer class indices 0..C-1 \(convert them first: y.astype\(int\)"),
        (lambda w: dict(dataset=_shifted(w, 1, lambda y: y - 1)), "holds label -1 at position"),
        (lambda w: dict(dataset=_shifted(w, 3, lambda y: np.where(y == 2, 6, y))),
         r"y_test holds label 6 at position \d+ \(\d+ such label\(s\)\), which is no class of y_train's 0..2"),
        # One stray label far beyond the others is named before anything is sized by it (a billion classes).
        (lambda w: dict(dataset=_shifted(w, 1, lambda y: np.where(np.arange(len(y)) == 7, 10**9, y))),
         r"y_train's labels are not the consecutive classes 0..1000000000: its largest, 1000000000 \(at position 7\), "
         r"leaves 999999997 class\(es\) without a sample \(the first: \[3, 4, 5, 6, 7, 8, 9, 10, 11, 12\]\)"),
        (lambda w: dict(dataset=w, val_size=1), r"no sample in the validation split"),
        (lambda w: dict(dataset=w, val_subsample=2), r"validation subsample of 2 samples .* has no sample of class"),
        (lambda w: dict(dataset=_shifted(w, 0, _with_nan)), "x_train holds NaN or infinite values.*first in sample 5"),
        (lambda w: dict(dataset=_shifted(w, 2, lambda x: np.where(np.arange(len(x))[:, None] == 3, 1e300, x))),
         "x_test holds NaN or infinite values, or values beyond float32's range.*first in sample 3"),
        (lambda w: dict(dataset=_shifted(w, 2, lambda x: x[:, :5])), "both need one input shape"),
        (lambda w: dict(dataset=w[:2]), "dataset must be a registered name"),
        (lambda w: dict(dataset="no-such-data"), "unknown dataset 'no-such-data'"),
        (lambda w: dict(dataset=w, model=lambda shape, n: nn.Linear(shape[0], n + 2)),
         r"returns \(2, 5\) for a batch of 2 inputs of shape \(13,\) in evaluation mode; expected a tensor of shape \(2, 3\)"),
        (lambda w: dict(dataset=w, model=lambda shape, n: Squeezed(shape[0], n)),
         r"returns \(3,\) for a batch of 1 input of shape \(13,\) in evaluation mode; expected .* \(1, 3\)"),
        (lambda w: dict(dataset=w, model=lambda shape, n: TrainingExtra(shape[0], n)),
         r"returns \(2, 4\) for a batch of 2 inputs of shape \(13,\) in training mode; expected .* \(2, 3\)"),
        (lambda w: dict(dataset=w, model=lambda shape, n: "a network"), "returned a str, not an nn.Module"),
        (lambda w: dict(dataset=w, model=OwnNet((13,), 3)), "model is an instance of OwnNet; pass a factory"),
        (lambda w: dict(dataset=w, model="small_cnn"), r"model 'small_cnn' fails on inputs of shape \(13,\)"),
        (lambda w: dict(dataset=w, model="no-such-model"), "unknown model 'no-such-model'"),
        (lambda w: dict(dataset=w, model=lambda shape, n: nn.Linear(shape[0], n).requires_grad_(False)),
         r"model .* has no trainable parameter \(none, or all with requires_grad=False\): give it one that SGD can"),
        (lambda w: dict(dataset=w, model=lambda shape, n: nn.Sequential(nn.Linear(shape[0], n), Scale(1e60))),
         "returns non-finite outputs .inf or NaN. at initialisation"),  # beyond float32: inf
        (lambda w: dict(dataset=w, model=lambda shape, n: TrainingOverflow(shape[0], n)),
         "returns non-finite outputs .inf or NaN. at initialisation"),  # finite in evaluation mode only
        (lambda w: dict(dataset=tuple(part[:4] for part in w), val_size=None), "4 training samples leave none for validation"),
        (lambda w: dict(dataset=w, val_size=137), r"val_size must be in \(0, 137\) for 138 training samples"),
        (lambda w: dict(dataset=_channels_last_images(w), model="small_cnn"),
         r"images go channels first, \[N, C, H, W\]"),
        (lambda w: dict(dataset=(w[0], 0 * w[1], w[2], 0 * w[3])),
         "the labels hold only class 0; classification needs at least two classes"),
        (lambda w: dict(dataset=([[0.0, 1.0], [2.0]], *w[1:])),
         r"x_train is not an array of numbers \(setting an array element with a sequence"),
        (lambda w: dict(dataset=_shifted(w, 2, lambda x: x.astype(str))),
         "x_test must hold numbers, got numpy dtype <U"),
        (lambda w: dict(dataset=_shifted(w, 0, lambda x: x + 0j)),
         "x_train must hold real numbers, got torch.complex128"),
        (lambda w: dict(dataset=_shifted(w, 2, lambda x: torch.from_numpy(x).to(torch.complex64))),
         "x_test must hold real numbers, got torch.complex64"),
        (lambda w: dict(dataset=_shifted(w, 0, lambda x: x[:, 0])),
         r"x_train has shape \(138,\); inputs must be \[N, ...\] with N > 0, .*\(a single feature is \[N, 1\]\)"),
        (lambda w: dict(dataset=(_Stream(), _Stream())),
         r"the train Dataset must be map-style, with len\(\) and \[i\]"),
        (lambda w: dict(dataset=(TensorDataset(torch.zeros(0, 13), torch.zeros(0, dtype=torch.int64)),) * 2),
         "the train Dataset is empty"),
        (lambda w: dict(dataset=(TensorDataset(torch.zeros(4, 13)),) * 2),
         r"item 0 of the train Dataset is a tuple, not an \(x, y\) pair"),
        (lambda w: dict(dataset=(_Items([(torch.zeros(13), 0), (torch.zeros(12), 1)]),) * 2),
         r"the train Dataset's x come in several shapes \(\[\(12,\), \(13,\)\]\); they need one"),
        (lambda w: dict(dataset=w, model=42),
         r"model must be a model name or a factory \(input_shape, num_outputs\) -> nn.Module, got 42"),
        (lambda w: dict(dataset=w, model=lambda shape, n: nn.Linear(shape[0], n, device="meta")),
         "model <lambda>.* has weight on the meta device; build its tensors with storage"),
        (lambda w: dict(dataset=w, model=_uninitialised),
         r"model _uninitialised has non-finite values in weight after construction \(left uninitialised\?\)"),
        (lambda w: dict(dataset=w, model=_infinite_buffer),
         r"model _infinite_buffer has non-finite values in scale after construction"),
        (lambda w: dict(dataset=_shifted(w, 2, lambda x: np.clip(x, 0, 255).astype(np.uint8))),
         r"x_train is torch.float32 \(138, 13\) but x_test is torch.uint8 \(40, 13\); .*both uint8 or neither"),
        (lambda w: dict(dataset=_shifted(w, 1, lambda y: y > 0)), "y_train is torch.bool; labels must be integer"),
    ],
    ids=["lengths", "y-2d", "float-labels", "negative-label", "test-label-not-a-training-class", "stray-huge-training-label", "class-missing-from-validation",
         "class-missing-from-the-subsample", "nan", "beyond-float32",
         "feature-count", "not-four-arrays", "unknown-name", "output-size", "squeezed-single-input",
         "other-width-in-training", "not-a-module", "module-instance",
         "model-does-not-fit", "unknown-model", "nothing-to-train", "non-finite-outputs", "non-finite-in-training", "too-few-samples", "no-training-spread",
         "channels-last-images", "one-class", "ragged", "strings", "complex-array", "complex-tensor", "one-dimensional",
         "iterable-dataset", "empty-dataset", "items-not-pairs", "items-of-several-shapes", "model-not-callable",
         "meta-tensors", "uninitialised-weight", "infinite-buffer", "uint8-test-inputs-for-float-training-inputs",
         "boolean-labels"],  # fmt: skip
)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op:UserWarning")  # a CNN on [N, H, W, C]
def test_bad_input_gets_one_clear_line(wine, change, message: str) -> None:
    kwargs = {**TINY, **change(wine)}
    dataset = kwargs.pop("dataset")
    with pytest.raises(ValueError, match=message) as raised:
        gym.make(ENV_ID, dataset=dataset, disable_env_checker=True, **{"model": OwnNet, **kwargs})
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("shape", "hint"),
    [((8, 8), "; images go [N, C, H, W] (x[:, None] for grey [N, H, W])"),
     ((8, 8, 3), "; images go channels first, [N, C, H, W] (x.transpose(0, 3, 1, 2) for [N, H, W, C])"),
     ((3, 8, 8), ""), ((3, 8, 4), "")],
    ids=["grey", "channels-last", "channels-first", "channels-first-four-wide"],
)  # fmt: skip
def test_a_model_failing_on_uint8_images_is_told_their_layout_only_where_it_looks_wrong(
    wine, shape: tuple[int, ...], hint: str
) -> None:
    """After the model's own error: how the package lays images out, for grey images without a channel axis and
    for channels last; nothing for images already [N, C, H, W], whose model fails for another reason (also where
    their width happens to be 1, 3 or 4, as a channel count would be)."""
    with pytest.raises(ValueError, match=rf"fails on inputs of shape \({shape[0]}, 8") as raised:
        make(_uint8_images(wine, shape), model=lambda input_shape, n: nn.Linear(5, n))
    assert str(raised.value).partition(" and 5x3)")[2] == hint  # torch's words on the mismatch, then the hint


@pytest.mark.parametrize(
    ("register", "name", "value", "message"),
    [(register_dataset, "", lambda: None, "^a dataset name must be a non-empty string, got ''$"),
     (register_dataset, 7, lambda: None, "^a dataset name must be a non-empty string, got 7$"),
     (register_dataset, "wine-test", "wine.csv", "^loader must be a callable returning the data, got str$"),
     (register_model, "", OwnNet, "^a model name must be a non-empty string, got ''$"),
     (register_model, None, OwnNet, "^a model name must be a non-empty string, got None$"),
     (register_model, "own-net-test", 42, r"^model must be a model name or a factory .*got 42$")],
    ids=["empty-dataset-name", "dataset-name-not-a-string", "loader-not-callable", "empty-model-name",
         "model-name-not-a-string", "model-not-a-factory"],
)  # fmt: skip
def test_registering_a_bad_name_or_loader_is_refused_and_registers_nothing(
    register: Callable[[object, object], None], name: object, value: object, message: str
) -> None:
    """An env's dataset= and model= names are strings, and a loader is called: anything else is refused at once,
    not at the first gym.make."""
    registered = (dict(LOADERS), dict(MODELS))
    with pytest.raises(ValueError, match=message):
        register(name, value)
    assert (LOADERS, MODELS) == registered


def test_registering_a_name_again_drops_what_was_loaded_under_it(wine) -> None:
    """The data loaded under a name is cached until the name is registered again; the next load then runs the new
    loader. A name this process never registered (or no longer has) is named with the choices and the fix."""
    try:
        register_dataset("wine-test", lambda: wine)
        first = load_dataset("wine-test", val_size=30)
        assert load_dataset("wine-test", val_size=30) is first and len(first.train) + len(first.val) == 138
        register_dataset("wine-test", lambda: (wine[0][:100], wine[1][:100], wine[2], wine[3]))
        assert len(load_dataset("wine-test", val_size=30).train) == 70
    finally:
        LOADERS.pop("wine-test", None)
    unknown = r"^unknown dataset 'wine-test'; choose one of \[.*'digits'.*\], or register_dataset it in this process$"
    with pytest.raises(ValueError, match=unknown):
        load_dataset("wine-test", val_size=30)


def test_an_unknown_name_in_a_worker_process_says_where_workers_find_names(monkeypatch) -> None:
    """In a multiprocessing worker (an async vector env's child; spawned on macOS and Windows), a name registered
    under the parent's ``if __name__ == "__main__":`` does not exist: the error says where to register it."""
    import multiprocessing

    hint = "; this worker process knows only the names its modules register when imported"
    with pytest.raises(ValueError, match=r"register_dataset it in this process$"):
        load_dataset("no-such-data")
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    with pytest.raises(ValueError, match=re.escape("register_dataset it in this process" + hint)):
        load_dataset("no-such-data")
    with pytest.raises(ValueError, match=re.escape("or pass a factory" + hint)):
        check_model_spec("no-such-model")


def test_a_dataset_with_items_that_are_not_tensors_is_refused() -> None:
    class Pictures(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> tuple[object, int]:
            return object(), index % 2

    with pytest.raises(ValueError, match="items must hold tensors or arrays") as raised:
        from_user_data((Pictures(), Pictures()))
    assert "\n" not in str(raised.value)


def test_registered_ids_keep_their_models_and_data() -> None:
    # The package's own models stay on init_weights' path (no forward fork), and the data are ClassificationData.
    env = gym.make("ALA-Digits-v0", disable_env_checker=True, **TINY).unwrapped
    env.reset(seed=0)
    assert env.trainer.forward_rng.generator is None and env.batchable
    assert isinstance(env.data, ClassificationData) and env.data.train.images.dtype == torch.uint8


def test_every_dataset_id_takes_data_of_ones_own_too(wine) -> None:
    """``dataset=`` overrides the id's own data (its other defaults, such as the model, stay the id's)."""
    env = gym.make("ALA-Digits-v0", dataset=wine, disable_env_checker=True, **TINY).unwrapped
    assert env.num_classes == 3 and env.data.train.images.shape[1:] == (13,)
    assert env.train_config.model == "mlp" and env.train_config.weight_decay == 5e-4  # the digits id's defaults
