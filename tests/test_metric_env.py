"""The metric-learning envs beyond the registry-wide contract: loss forms, Phi, divergence, the vector env."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import ala_gym  # noqa: F401  (registers the ids)
from ala_gym.core.metric_learning import DistanceMixtureLoss, FocalDistanceLoss, PMLLoss
from ala_gym.envs.metric_learning import ALAMetricLearningEnv, EmbeddingLossTask, values_of_phi

TINY = dict(total_iterations=6, steps_per_action=3, batch_size=16, samples_per_class=4, eval_points=1, device="cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make(tiny_fashion_mnist_dir: Path):
    def factory(env_id: str = "ALA-FashionMNIST-Margin-v0", **overrides) -> gym.Env:
        kwargs = dict(data_root=str(tiny_fashion_mnist_dir), val_size=40, **TINY)
        return gym.make(env_id, disable_env_checker=True, **{**kwargs, **overrides}).unwrapped

    return factory


@pytest.mark.parametrize(
    ("env_id", "loss_form", "loss_type", "rows"),
    [
        ("ALA-FashionMNIST-Triplet-v0", None, DistanceMixtureLoss, 10),
        ("ALA-FashionMNIST-Margin-v0", None, FocalDistanceLoss, 2),
        ("ALA-FashionMNIST-Margin-v0", "mixture", DistanceMixtureLoss, 10),
        ("ALA-FashionMNIST-Triplet-v0", "fixed", PMLLoss, 10),
        ("ALA-FashionMNIST-Margin-v0", "fixed", PMLLoss, 2),
    ],
)
def test_loss_forms_and_frameworks(make, env_id: str, loss_form: str | None, loss_type: type, rows: int) -> None:
    env = make(env_id, **({} if loss_form is None else {"loss_form": loss_form}))
    task = env.episode.task
    assert isinstance(task.loss, loss_type) and env.action_space.shape == (rows,)
    mined = env_id.endswith("Margin-v0") and loss_form != "focal" and loss_type is not FocalDistanceLoss
    assert (getattr(task.loss, "miner", None) is not None) == mined  # the margin framework samples by distance
    _, info = env.reset(seed=0)
    assert {"recall@1", "recall@2", "recall@4", "recall@8", "terms"} <= info.keys()
    assert info["terms"].shape == (rows, 2) and np.isfinite(info["val_loss"])


def test_focal_phi_moves_on_a_log_scale_and_is_prescribable(make) -> None:
    env = make()
    _, info = env.reset(seed=0)
    np.testing.assert_allclose(info["phi"], [4.0, 4.0])
    _, _, _, _, info = env.step(np.array([2, 0]))
    np.testing.assert_allclose(info["phi"], [4.0 * 16**0.1, 4.0 / 16**0.1])
    np.testing.assert_allclose(env.episode.task.adaptive.phi, info["phi"], rtol=1e-6)  # the loss reads it
    env.phi = np.array([2.0, 8.0])
    np.testing.assert_allclose(env.episode.task.values, [0.25, 0.75])
    with pytest.raises(ValueError, match="focal loss parameters must be 2 finite values"):
        env.phi = np.array([0.0, 8.0])
    mixture = make("ALA-FashionMNIST-Triplet-v0", phi_init=np.full(10, 0.5))
    _, info = mixture.reset(seed=0)
    np.testing.assert_allclose(info["phi"], np.full(10, 0.5))
    np.testing.assert_array_equal(mixture.phi_init, np.full(10, 0.5))  # the attribute tools read, as given
    with pytest.raises(ValueError, match="10 finite values in"):
        make("ALA-FashionMNIST-Triplet-v0", phi_init=np.full(10, 2.0))


@pytest.mark.parametrize("env_id", ["ALA-FashionMNIST-Triplet-v0", "ALA-FashionMNIST-Margin-v0"])
def test_divergence_terminates_with_penalty_and_scores_zero(make, env_id: str) -> None:
    env = make(env_id, lr=1e6, total_iterations=60, steps_per_action=10, divergence_penalty=-7.0)
    env.reset(seed=0)
    terminated, steps = False, 0
    while not terminated:
        _, reward, terminated, _, info = env.step(np.ones(env.action_space.shape, dtype=np.int64))
        steps += 1
    assert info["diverged"] and reward == -7.0 and steps < 6
    assert info["test_metric"] == 0.0 and info["final_val_metric"] == 0.0


@pytest.mark.parametrize("loss_form", ["fixed", "mixture"])
def test_a_margin_child_that_diverges_within_a_step_ends_with_the_penalty(loss_form: str) -> None:
    """Weights that turn NaN partway through a step reach the distance-weighted miner as NaN embeddings at the next
    iteration; it mines nothing there (its own reductions fail on them), and the step ends with the penalty."""
    env = gym.make("ALA-FashionMNIST-Margin-v0", dataset="digits", model="mlp", loss_form=loss_form, lr=1e4,
                   total_iterations=100, steps_per_action=50, batch_size=20, samples_per_class=4, device="cpu")  # fmt: skip
    env.reset(seed=0)
    observation, reward, terminated, _, info = env.step(np.ones(env.action_space.shape, dtype=np.int64))
    assert info["diverged"] and terminated and reward == env.unwrapped.settings.divergence_penalty
    assert np.isfinite(observation).all() and info["test_metric"] == 0.0


def test_render_without_a_render_mode_is_none_and_a_closed_env_says_it_is_closed() -> None:
    """Gymnasium's rule for ``render_mode=None``: no render, None (the metric-learning env has no render mode)."""
    env = gym.make("ALA-FashionMNIST-Triplet-v0", dataset="digits", model="mlp", **TINY)
    env.reset(seed=0)
    assert env.render() is None
    pictures = gym.make("ALA-Digits-v0", render_mode="ansi", total_iterations=6, steps_per_action=3, device="cpu")
    pictures.reset(seed=0)
    pictures.close()
    with pytest.raises(RuntimeError, match="this env is closed"):
        pictures.render()


def test_bad_arguments_raise_one_clear_error(make) -> None:
    with pytest.raises(ValueError, match="framework must be one of"):
        ALAMetricLearningEnv(dataset="fashion-mnist", framework="contrastive")
    with pytest.raises(ValueError, match="loss_form must be one of"):
        make(loss_form="softmax")
    with pytest.raises(ValueError, match="samples_per_class"):
        make(samples_per_class=16)  # one class a batch: no negatives
    with pytest.raises(ValueError, match="samples_per_class must divide batch_size .* use batch_size=15 or 20"):
        make(samples_per_class=5)  # 3 classes of 5 would have made a batch of 15, not the 16 asked for
    with pytest.raises(ValueError, match="class-disjoint"):
        make(train_classes=[0, 1, 5], test_classes=[5, 6])
    # The validation classes' 20 items, 2 in the smallest class: past 18 neighbours every query finds its class.
    with pytest.raises(ValueError, match=r"recall_k=19 .* validation subsample \(20 items, 18 outside the smallest class's\)"):
        make(recall_k=19, val_subsample=None)
    make(recall_k=18, val_subsample=None)


def test_mining_is_seeded_by_the_child_and_leaves_the_global_rng_alone(make, global_rng_unchanged) -> None:
    def rollout(seed: int) -> list[float]:
        env = make("ALA-FashionMNIST-Margin-v0", loss_form="mixture")
        env.reset(seed=seed)
        return [env.step(np.ones(10, dtype=np.int64))[4]["train_loss"] for _ in range(2)]

    with global_rng_unchanged():
        first, again, other = rollout(1), rollout(1), rollout(2)
    assert first == again and first != other
    # One env reset with the same seed again: the miner starts over with the child, not where the last episode left it.
    env = make("ALA-FashionMNIST-Margin-v0", loss_form="mixture")
    episodes = []
    for _ in range(2):
        env.reset(seed=1)
        episodes.append([env.step(np.ones(10, dtype=np.int64))[4]["train_loss"] for _ in range(2)])
    assert episodes[0] == episodes[1] == first


def test_vector_env_trains_children_one_after_another(make, tiny_fashion_mnist_dir: Path) -> None:
    kwargs = dict(data_root=str(tiny_fashion_mnist_dir), val_size=40, **TINY)
    envs = gym.make_vec("ALA-FashionMNIST-Margin-v0", num_envs=2, loss_form="mixture", **kwargs)
    assert envs.train_mode == "sequential"
    observations, _ = envs.reset(seed=[3, 4])
    actions = np.ones((2, 10), dtype=np.int64)
    _, _, _, _, infos = envs.step(actions)
    # Child i is the single env seeded alike: same model, batches and mined triplets.
    single = make(loss_form="mixture")
    single_obs, _ = single.reset(seed=4)
    np.testing.assert_array_equal(observations[1], single_obs)
    assert single.step(actions[1])[4]["train_loss"] == infos["train_loss"][1]
    with pytest.raises(ValueError, match="one after another"):
        gym.make_vec("ALA-FashionMNIST-Margin-v0", num_envs=2, train_mode="batched", **kwargs)


def test_an_autoreset_child_mines_as_the_single_env_after_a_reset_without_seed(make, tiny_fashion_mnist_dir: Path) -> None:
    """The miner of an autoreset child restarts from the child's new trainer seed, as the single env's ``reset()``
    without a seed restarts it: the second episode's first step is the single env's, mined triplets and all."""
    kwargs = dict(data_root=str(tiny_fashion_mnist_dir), val_size=40, **TINY)
    envs = gym.make_vec("ALA-FashionMNIST-Margin-v0", num_envs=1, loss_form="mixture", **kwargs)
    single = make(loss_form="mixture")
    envs.reset(seed=[4])
    single.reset(seed=4)
    actions = np.ones((1, 10), dtype=np.int64)
    for _ in range(2):  # 6 iterations, 3 a step: the episode ends
        envs.step(actions)
        single.step(actions[0])
    envs.step(actions)  # NEXT_STEP: the child starts its second episode
    single.reset()
    _, _, _, _, infos = envs.step(actions)
    assert infos["train_loss"][0] == single.step(actions[0])[4]["train_loss"]


def test_fixed_loss_controller_records_test_recalls_and_the_table_shows_them(make, tiny_fashion_mnist_dir: Path) -> None:
    from ala_gym.agents import CONTROLLERS
    from ala_gym.benchmarks.compare import retrieval_table

    controller = CONTROLLERS["fixed-loss"]()
    envs = controller.make_envs("ALA-FashionMNIST-Triplet-v0", data_root=str(tiny_fashion_mnist_dir), val_size=40, **TINY)
    assert envs.episodes[0].task.loss.__class__ is PMLLoss
    (record,) = controller.run(envs, seed=0)
    assert set(record.test_statistics) == {"test_recall@1", "test_recall@2", "test_recall@4", "test_recall@8"}
    assert record.test_statistics["test_recall@1"] == record.test_metric <= record.test_statistics["test_recall@8"]
    runs = [{"children": [vars(record)]}, {"children": [vars(record)]}]
    table = "\n".join(retrieval_table({"fixed-loss": runs}))
    assert f"| fixed-loss | {100 * record.test_metric:.2f} +- 0.00 |" in table and "Margin + ALA (focal weighting)" in table
    assert retrieval_table({"ce": [{"children": [{"test_statistics": {}}]}]}) == []  # classification: no section


def test_env_rewards_recall_at_a_k_outside_the_default_levels(make) -> None:
    env = make(recall_k=3)
    _, info = env.reset(seed=0)
    assert "recall@3" in info and info["val_metric"] == info["recall@3"]


def test_focal_phi_above_the_range_is_refused_and_changes_nothing(make) -> None:
    message = "focal loss parameters must be 2 finite values"
    for bad in ([4.0, 17.0], [1 / 32, 4.0]):
        with pytest.raises(ValueError, match=message):
            values_of_phi(np.array(bad), "focal")
    np.testing.assert_allclose(values_of_phi(np.array([1 / 16, 16.0]), "focal"), [-1.0, 1.0])
    with pytest.raises(ValueError, match=message):
        make(phi_init=np.array([4.0, 20.0]))
    env = make()
    with pytest.raises(ValueError, match=message):
        env.phi = np.array([2.0, 20.0])
    np.testing.assert_allclose(env.phi, [4.0, 4.0])  # a refused Phi leaves the loss as it was


def test_vector_env_refuses_a_focal_phi_above_the_range_before_any_child_changes(tiny_fashion_mnist_dir: Path) -> None:
    kwargs = dict(data_root=str(tiny_fashion_mnist_dir), val_size=40, **TINY)
    envs = gym.make_vec("ALA-FashionMNIST-Margin-v0", num_envs=2, **kwargs)
    with pytest.raises(ValueError, match="focal loss parameters must be 2 finite values"):
        envs.set_attr("phi", [np.array([2.0, 8.0]), np.array([4.0, 20.0])])
    np.testing.assert_allclose(np.array(envs.get_attr("phi")), [[4.0, 4.0], [4.0, 4.0]])
    envs.close()


def test_rows_move_by_beta_and_stop_at_their_bounds() -> None:
    """An action moves each row by ``beta`` (0.25 here) within the row's bounds: a mixture weight within [0, 1];
    a focal value ``v = log16(Phi)`` within [-1, 1], so that one step multiplies ``Phi`` by ``16^beta`` = 2 and
    ``Phi`` stays within [1/16, 16]. The loss reads every move."""
    cpu = torch.device("cpu")
    mixture = EmbeddingLossTask("mixture", "mixture", "triplet", 0.25, np.array([0.0, 0.1, 0.5, 0.9, 1.0] * 2), cpu)
    mixture.apply_action(np.array([0, 2, 2, 2, 2, 0, 0, 0, 0, 1]))
    expected = [0.0, 0.35, 0.75, 1.0, 1.0, 0.0, 0.0, 0.25, 0.65, 1.0]
    np.testing.assert_allclose(mixture.phi, expected)
    np.testing.assert_allclose(mixture.adaptive.phi, expected, rtol=1e-6)
    focal = EmbeddingLossTask("focal", "focal", "margin", 0.25, np.array([1.0, 1 / 16]), cpu)
    focal.apply_action(np.array([0, 0]))
    np.testing.assert_allclose(focal.values, [-0.25, -1.0])
    np.testing.assert_allclose(focal.phi, [0.5, 1 / 16])
    focal.phi = np.array([16.0, 4.0])
    focal.apply_action(np.array([2, 2]))
    np.testing.assert_allclose(focal.phi, [16.0, 8.0])
    np.testing.assert_allclose(focal.adaptive.phi, [16.0, 8.0], rtol=1e-6)


def test_a_refused_mixture_phi_changes_no_child(make, tiny_fashion_mnist_dir: Path) -> None:
    """A mixture Phi outside [0, 1] is refused by the env's own check, before the loss or the row values change;
    on a vector env, before any child changes."""
    message = r"the loss parameters must be 10 finite values in \[0.0, 1.0\]"
    env = make("ALA-FashionMNIST-Triplet-v0")
    initial = env.phi.copy()
    with pytest.raises(ValueError, match=message):
        env.phi = np.full(10, 1.5)
    np.testing.assert_array_equal(env.phi, initial)
    np.testing.assert_array_equal(env.episode.task.values, initial)
    kwargs = dict(data_root=str(tiny_fashion_mnist_dir), val_size=40, **TINY)
    envs = gym.make_vec("ALA-FashionMNIST-Triplet-v0", num_envs=2, **kwargs)
    with pytest.raises(ValueError, match=message):
        envs.set_attr("phi", [np.full(10, 0.5), np.full(10, 1.5)])
    np.testing.assert_array_equal(np.array(envs.get_attr("phi")), [initial, initial])
    envs.close()


@pytest.mark.parametrize("bad", [[4.0], [4.0, 4.0, 4.0], [np.nan, 4.0], [4.0, np.inf]], ids=["one", "three", "nan", "inf"])
def test_focal_phi_of_another_length_or_not_finite_is_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"^the focal loss parameters must be 2 finite values in \[0.0625, 16.0\]"):
        values_of_phi(np.array(bad), "focal")


def test_each_split_holds_the_classes_asked_for_it(make) -> None:
    """``train_classes``, ``val_classes`` and ``test_classes`` each pick their own split's classes (labels kept); the
    reward's subsample is drawn from the validation classes."""
    env = make("ALA-FashionMNIST-Triplet-v0", train_classes=[0, 1, 2], val_classes=[3, 4, 5], test_classes=[6, 7, 8, 9],
               val_subsample=None)  # fmt: skip
    assert set(env.data.train.labels.tolist()) == {0, 1, 2}
    assert set(env.data.val.labels.tolist()) == set(env.val_eval.labels.tolist()) == {3, 4, 5}
    assert set(env.data.test.labels.tolist()) == {6, 7, 8, 9}
    default = make("ALA-FashionMNIST-Triplet-v0")
    assert set(default.data.train.labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(default.data.val.labels.tolist()) == set(default.data.test.labels.tolist()) == {5, 6, 7, 8, 9}


def test_a_recall_k_that_every_test_query_meets_is_refused_too(make) -> None:
    """The test split's 25 items (classes 5-9, 5 each): past 20 neighbours every query finds its class, so a
    ``recall_k`` that the larger validation split allows is still refused, naming the test split."""
    with pytest.raises(ValueError, match=r"recall_k=21 .* test split \(25 items, 20 outside the smallest class's\)"):
        make(recall_k=21, val_size=100, val_subsample=None)
    make(recall_k=20, val_size=100, val_subsample=None)


class EmbeddingWithDropout(torch.nn.Module):
    """A model of one's own that draws random numbers in its forward pass."""

    def __init__(self, image_shape: tuple[int, ...], output_size: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(int(np.prod(image_shape)), output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_mining_and_a_models_own_draws_come_from_streams_of_their_own(make) -> None:
    """The env seeds its task (the miner) with the trainer's seed: the miner and the forward passes of a model that
    draws (dropout) must not start from the same seed, or their draws would repeat each other's."""
    env = make("ALA-FashionMNIST-Margin-v0", model=EmbeddingWithDropout)
    env.reset(seed=0)
    miner_seed = env.episode.task._miner_generator.initial_seed()
    forward_seed = env.trainer.forward_rng.generator.initial_seed()
    assert len({miner_seed, forward_seed}) == 2
    # Seeds a child's weights and batches were drawn from stay what they were.
    assert env.trainer.sampler.generator.initial_seed() not in (miner_seed, forward_seed)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(val_size=3), r"^the validation subsample holds \d item\(s\) of 1 class\(es\), and Recall@k needs items of 2"),
        (dict(dataset="digits", data_root=None, model="mlp", val_size=3),
         r"^the validation subsample holds 0 item\(s\) of 0 class\(es\)"),
        (dict(val_subsample=1), r"^the validation subsample holds 1 item\(s\) of 1 class\(es\)"),
        (dict(train_classes=5), r"^train_classes must be a list of at least 2 distinct classes in \[0, 10\), got 5$"),
        (dict(val_classes="56"), r"^val_classes must be a list of at least 2 distinct classes"),
        (dict(samples_per_class=1), r"^samples_per_class must be at least 2 for metric learning .* got 1$"),
    ],
    ids=["one class", "no item", "one item", "classes not a list", "classes as text", "one per class"],
)  # fmt: skip
def test_splits_and_batches_that_cannot_measure_or_train_are_refused_in_one_line(make, overrides, message) -> None:
    """A validation split with no item (or one class) of the evaluated classes measures nothing, classes given as a
    number or text are no list of classes, and one item per class leaves no positive pair in a batch (every triplet
    loss 0): each is a ValueError of one line naming its fix, not torch's error on an empty tensor or a silent run."""
    with pytest.raises(ValueError, match=message) as caught:
        make(**overrides)
    assert "\n" not in str(caught.value)
