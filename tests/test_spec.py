"""One task spec behind every env: every id is a registration of one of two env classes with keywords, its spec
is made without data, checks itself part by part, and builds the single env, the vector env and another env of
the same task alike."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import re
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import ala_gym
from ala_gym.envs import spec as spec_module
from ala_gym.envs.classification import ALAClassificationEnv, ClassificationLoss
from ala_gym.envs.metric_learning import ALAMetricLearningEnv, RetrievalLoss
from ala_gym.envs.spec import DataSpec, TaskSpec, assemble, task_spec

TINY = dict(total_iterations=8, steps_per_action=4, batch_size=16, eval_points=1, val_subsample=100, device="cpu")
ENV_CLASSES = {ALAClassificationEnv, ALAMetricLearningEnv}


@pytest.mark.parametrize("env_id", sorted(ala_gym.ENV_IDS))
def test_every_id_is_a_registration_of_an_env_class_whose_spec_needs_no_data(env_id: str, monkeypatch) -> None:
    def no_data(*args, **kwargs):
        raise AssertionError("making a spec must not read data")

    monkeypatch.setattr(spec_module, "load_dataset", no_data)
    registered = gym.spec(env_id)
    assert registered.entry_point in {f"{cls.__module__}:{cls.__qualname__}" for cls in ENV_CLASSES}
    assert dict(registered.kwargs) == ala_gym.ENV_IDS[env_id].kwargs  # variants are keywords, not subclasses
    spec = task_spec(env_id, **{"beta": 0.3, "device": "cpu"})
    assert isinstance(spec, TaskSpec) and spec.loss.beta == 0.3
    assert spec.train.total_iterations == spec.episode.total_iterations
    assert spec.metric in ("error", "aucpr") or spec.metric.startswith("recall@")
    assert spec.higher_is_better is (spec.metric != "error")  # which way a comparison ranks: AUCPR, Recall@k rise
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train = spec.train  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(spec)).env_class == spec.env_class


def test_the_spec_of_an_id_is_the_one_its_env_and_vector_env_train() -> None:
    env = gym.make("ALA-Digits-v0", **TINY, lr=0.02)
    expected = task_spec("ALA-Digits-v0", **TINY, lr=0.02)
    built = env.unwrapped.task_spec
    assert built.train == expected.train and built.episode == expected.episode and built.data == expected.data
    assert repr(built.loss) == repr(expected.loss) and repr(built) == repr(expected)  # every field's value
    envs = gym.make_vec("ALA-Digits-v0", num_envs=2, **TINY, lr=0.02)
    assert not hasattr(envs.unwrapped, "template")  # the vector env builds its children from the spec alone
    assert repr(envs.unwrapped.task_spec) == repr(expected)
    assert envs.get_attr("train_config")[0].lr == 0.02 and envs.get_attr("metric") == ("error", "error")
    envs.close()


def test_a_spec_makes_another_env_of_the_same_task_that_runs_the_same() -> None:
    env = gym.make("ALA-Digits-v0", **TINY).unwrapped
    twin = env.task_spec.make_env()
    assert type(twin) is ALAClassificationEnv
    action = np.full(env.action_space.shape, 2, dtype=np.int64)
    runs = []
    for candidate in (env, twin):
        candidate.reset(seed=3)
        runs.append(candidate.step(action))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][4]["val_metric"] == runs[1][4]["val_metric"]


def test_spec_and_keywords_are_not_combined_and_each_part_checks_itself() -> None:
    spec = task_spec("ALA-Digits-v0", **TINY)
    with pytest.raises(TypeError, match="either spec= or the task's keywords"):
        ALAClassificationEnv(spec=spec, lr=0.1)
    with pytest.raises(TypeError, match="spec must be a TaskSpec"):
        ALAClassificationEnv(spec="digits")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="val_subsample must be"):
        DataSpec(val_subsample=0)
    with pytest.raises(ValueError, match="unknown dataset 'nosuch'"):  # named with the spec, as a model is
        task_spec("ALA-Classification-v0", dataset="nosuch")
    with pytest.raises(ValueError, match="unknown metric"):
        ClassificationLoss(metric="f1")
    with pytest.raises(ValueError, match="must be the same number of iterations"):
        dataclasses.replace(spec, train=dataclasses.replace(spec.train, total_iterations=16))
    # Named with the keywords it takes (the closest first where one is close), not Python's bare message.
    with pytest.raises(TypeError, match=r"^ALAClassificationEnv takes no keyword 'learning_rate'; its keywords are .*\blr\b"):
        task_spec("ALA-Digits-v0", learning_rate=0.1)
    with pytest.raises(TypeError, match=r"^ALAClassificationEnv takes no keyword 'total_iteration'; did you mean 'total_iterations'\?"):
        gym.make("ALA-Digits-v0", total_iteration=10)
    with pytest.raises(TypeError, match=r"^ALAClassificationEnv takes no keyword 'num_envs'; the child count is "
                                        r"gym.make_vec's num_envs \(the comparison's --children, --baseline-children\);"):  # fmt: skip
        gym.make("ALA-Digits-v0", num_envs=2)  # not 'num_threads', the closest name
    # The vector env's own options are among the names a misspelt keyword is matched against, and listed.
    with pytest.raises(TypeError, match=r"^the vector env of ALAClassificationEnv takes no keyword 'trainmode'; "
                                        r"did you mean 'train_mode'\? .*autoreset_mode, train_mode$"):  # fmt: skip
        gym.make_vec("ALA-Digits-v0", num_envs=2, trainmode="batched")
    # A spec builds the env of its own class, and make_env takes the env's options only.
    metric_spec = task_spec(ALAMetricLearningEnv, dataset="digits", total_iterations=20, steps_per_action=10)
    with pytest.raises(TypeError, match=r"^spec is a task of ala_gym.envs.metric_learning:ALAMetricLearningEnv, not of "
                                        r"ALAClassificationEnv: build its env with spec.make_env\(\)"):  # fmt: skip
        ALAClassificationEnv(spec=metric_spec)
    with pytest.raises(TypeError, match=r"^make_env takes render_mode and num_threads, not max_episode_steps: .*TimeLimit"):
        spec.make_env(max_episode_steps=3)


def test_a_make_spec_keyword_that_no_part_takes_is_refused_not_ignored() -> None:
    """An env class of one's own whose ``make_spec`` passes a keyword that no part of the spec has a field for
    would train without it: the keyword is named, with where it has to go."""

    class SmoothedEnv(ALAClassificationEnv):
        @classmethod
        def make_spec(cls, smoothing: float = 0.1, **keywords: Any) -> TaskSpec:
            bound = inspect.signature(ALAClassificationEnv.make_spec).bind(**keywords)
            bound.apply_defaults()
            return assemble(cls, {**bound.arguments, "smoothing": smoothing}, ClassificationLoss)

    expected = (
        "SmoothedEnv.make_spec's keywords ['smoothing'] belong to no part of the spec: give a part (the task's loss "
        "part) a field of that name, or map it to one with renames"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        SmoothedEnv.make_spec(**TINY)


@pytest.mark.parametrize("env_id", ["CartPole-v1", gym.Env], ids=["id", "class"])
def test_an_env_that_is_not_an_ala_env_has_no_task_spec(env_id: Any) -> None:
    """gymnasium's own ids (and classes) are found, but have no task to make a spec of: named, with the ids to use."""
    expected = (
        f"{env_id!r} is not an ALA env (its class has no make_spec): name an id that ala_gym registers, such as "
        "'ALA-Digits-v0', or one of your own registered with ala_gym.register_env"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        task_spec(env_id)


def test_a_registered_variant_keeps_its_keywords_and_takes_the_callers() -> None:
    spec = task_spec("ALA-Digits-AUCPR-v0", total_iterations=40, steps_per_action=20)
    assert spec.metric == "aucpr" and spec.higher_is_better and spec.data.dataset == "digits"
    assert spec.train.model == "mlp" and spec.train.total_iterations == 40
    retrieval = task_spec("ALA-CIFAR10-Margin-v0")
    assert retrieval.loss.framework == "margin" and retrieval.train.model == "resnet32"
    assert retrieval.train.output_size == 64  # embedding_size, renamed for the training part


def test_the_data_spec_passes_the_download_choice_and_draws_its_subset_from_its_seed(monkeypatch) -> None:
    """``download=False`` reaches a loader that can download (CIFAR-10's), so a missing folder fails instead of
    going online; a loader that cannot is not given the keyword. The training subset is drawn from ``split_seed``."""
    from ala_gym.core.data import load_dataset, training_subset

    class Stop(Exception):
        """Ends the load once its keywords are seen: no CIFAR-10 is read here."""

    calls = {}

    def recording(name, **kwargs):
        calls[name] = kwargs
        if name != "digits":
            raise Stop
        return load_dataset(name, **kwargs)

    monkeypatch.setattr(spec_module, "load_dataset", recording)
    with pytest.raises(Stop):
        DataSpec(dataset="cifar10", download=False, device="cpu").load()
    assert calls["cifar10"]["download"] is False
    subset = DataSpec(dataset="digits", train_size=200, split_seed=1, device="cpu").load().train.labels
    assert "download" not in calls["digits"]
    split = load_dataset("digits", split_seed=1)
    assert np.array_equal(subset, training_subset(split, 200, 1).train.labels)
    assert not np.array_equal(subset, training_subset(split, 200, 0).train.labels)
    with pytest.raises(ValueError, match="does not apply to data given as arrays"):
        DataSpec(dataset=(np.zeros((10, 2)), np.zeros(10, int), np.zeros((4, 2)), np.zeros(4, int)), data_root="x")


def test_the_envs_own_options_are_not_part_of_its_task() -> None:
    """``render_mode`` and ``num_threads`` are what ``gym.make`` takes for the env, not the task: the spec made
    with them is the spec made without."""
    with_options = task_spec("ALA-Digits-v0", render_mode=None, num_threads=1, **TINY)
    assert repr(with_options) == repr(task_spec("ALA-Digits-v0", **TINY))


def test_a_spec_of_default_parts_is_the_spec_of_the_envs_default_keywords() -> None:
    """``DataSpec()``, ``ClassificationLoss()`` and ``RetrievalLoss()`` are the parts that ``make_spec`` makes
    without keywords, and they hold the defaults the envs document: a spec assembled by hand trains what
    ``gym.make`` would."""
    spec = task_spec("ALA-Classification-v0")
    assert spec.data == DataSpec() and repr(spec.loss) == repr(ClassificationLoss())
    data, loss = spec.data, spec.loss
    assert (data.dataset, data.val_subsample, data.split_seed, data.download, data.device) == ("digits", 1000, 0, True, "auto")
    assert (loss.beta, loss.fixed_diagonal, loss.step_scaling, loss.phi_init, loss.loss_form) == (0.1, True, "row", None, "linear")
    assert (loss.sigmoid_temperature, loss.negative_floor, loss.metric) == (1.0, 1e-3, "error")
    assert (spec.episode.gamma, spec.episode.eval_points, spec.episode.eval_stride, spec.episode.history) == (0.9, 3, 10, 10)
    retrieval = task_spec(ALAMetricLearningEnv)
    assert retrieval.data == DataSpec(dataset="fashion-mnist") and repr(retrieval.loss) == repr(RetrievalLoss())
    assert (retrieval.loss.framework, retrieval.loss.loss_form, retrieval.loss.beta, retrieval.loss.recall_k) == (
        "triplet", "mixture", 0.1, 1)  # fmt: skip
    assert retrieval.train.output_size == 64 and retrieval.episode.steps_per_action == 100  # embedding_size, K


def test_the_validation_subsample_is_a_seeded_draw_of_the_split_or_the_split_itself() -> None:
    """``val_subsample`` samples of the validation split, drawn from ``split_seed`` (the same draw every time, another
    for another seed, on the same data); a subsample as large as the split, or None, is the split in its order."""
    data = DataSpec(device="cpu").load()
    features = data.val.images.reshape(len(data.val), -1)

    def rows(split_seed: int) -> torch.Tensor:
        subsample = DataSpec(val_subsample=50, split_seed=split_seed, device="cpu").validation(data)
        assert len(subsample) == 50
        return subsample.images.reshape(50, -1)

    first = rows(0)
    # Every drawn sample is one of the split's, none twice.
    matches = (first[:, None, :] == features[None, :, :]).all(-1)
    assert matches.any(1).all() and len(torch.unique(matches.float().argmax(1))) == 50
    assert torch.equal(rows(0), first) and not torch.equal(rows(1), first)
    for size in (len(data.val), len(data.val) + 1, None):
        whole = DataSpec(val_subsample=size, device="cpu").validation(data)
        assert torch.equal(whole.labels, data.val.labels) and torch.equal(whole.images, data.val.images)


def test_the_env_and_its_vector_env_expose_the_tasks_attributes() -> None:
    """What controllers and tools read off an env (``env.steps_per_action``, ``envs.get_attr("metric")``, ...) is
    the task's, on the single env and on the vector env."""
    env = gym.make("ALA-Digits-v0", **TINY, beta=0.2).unwrapped
    assert (env.steps_per_action, env.metric, env.num_classes, env.beta, env.batchable) == (4, "error", 10, 0.2, True)
    assert env.train_config.total_iterations == 8 and env.settings.steps_per_action == 4 and len(env.val_eval) == 100
    np.testing.assert_array_equal(env.phi_init, np.eye(10))
    envs = gym.make_vec("ALA-Digits-v0", num_envs=2, **TINY, beta=0.2)
    assert envs.get_attr("steps_per_action") == (4, 4) and envs.get_attr("beta") == (0.2, 0.2)
    assert envs.get_attr("num_classes") == (10, 10) and envs.get_attr("batchable") == (True, True)
    envs.close()


@pytest.mark.parametrize(("env_id", "higher"), [("ALA-Digits-v0", False), ("ALA-Digits-AUCPR-v0", True)])
def test_the_metrics_direction_is_an_attribute_of_its_own(env_id: str, higher: bool) -> None:
    """A controller reads it without fetching the evaluator (from a Ray actor, the tensors it holds on the
    actor's device)."""
    assert gym.make(env_id, **TINY).unwrapped.higher_is_better is higher
    envs = gym.make_vec(env_id, num_envs=2, **TINY)
    assert envs.get_attr("higher_is_better") == (higher, higher) == (envs.get_attr("evaluator")[0].higher_is_better,) * 2
    envs.close()


def test_the_loss_keywords_reach_the_loss_the_child_trains_under() -> None:
    """``loss_form``, ``sigmoid_temperature`` and ``negative_floor`` make the child's loss: here the printed
    sigmoid form of Eq. 6 at temperature 2 with no floor, computed by hand on a sample whose negatively weighted
    class has a log-probability far below log(1e-3), where the default floor would have cut it."""
    phi = np.eye(10)
    phi[0, 1] = phi[1, 0] = -0.5
    env = gym.make("ALA-Digits-v0", **TINY, phi_init=phi, loss_form="sigmoid", sigmoid_temperature=2.0,
                   negative_floor=None).unwrapped  # fmt: skip
    assert (env.task_settings.sigmoid_temperature, env.task_settings.negative_floor) == (2.0, None)
    logits = torch.zeros(1, 10)
    logits[0, 1] = -20.0
    log_probs = torch.log_softmax(logits, dim=1)[0]
    weighted = log_probs[0] - 0.5 * log_probs[1]  # y^T Phi log f for y = 0: unfloored, about 10
    expected = -torch.sigmoid(weighted / 2.0)
    torch.testing.assert_close(env.episode.task.loss(logits, torch.tensor([0])), expected)


def test_specs_compare_and_hash_by_value() -> None:
    """Two specs of one task are equal, also through a pickle, with a Phi given as an array or as lists; another
    Phi is another task. Data of one's own compares by identity (not sample by sample), and equal specs hash alike."""
    first, second = task_spec("ALA-Digits-v0"), task_spec("ALA-Digits-v0")
    assert first == second and pickle.loads(pickle.dumps(first)) == first and hash(first) == hash(second)
    halved = task_spec("ALA-Digits-v0", phi_init=0.5 * np.eye(10))
    assert halved == task_spec("ALA-Digits-v0", phi_init=(0.5 * np.eye(10)).tolist()) != first
    assert hash(halved) == hash(task_spec("ALA-Digits-v0", phi_init=(0.5 * np.eye(10)).tolist()))
    retrieval = task_spec("ALA-FashionMNIST-Triplet-v0")
    assert retrieval == task_spec("ALA-FashionMNIST-Triplet-v0") != task_spec("ALA-FashionMNIST-Triplet-v0", recall_k=2)
    x, y = np.random.default_rng(0).normal(size=(60, 4)), np.arange(60) % 3
    own = (x[:40], y[:40], x[40:], y[40:])
    assert task_spec("ALA-Classification-v0", dataset=own) == task_spec("ALA-Classification-v0", dataset=own)
    copies = tuple(part.copy() for part in own)
    assert task_spec("ALA-Classification-v0", dataset=own) != task_spec("ALA-Classification-v0", dataset=copies)


def test_a_spec_with_a_tensor_phi_compares_by_value_and_an_env_class_of_a_function_takes_its_spec() -> None:
    """``phi_init`` given as a tensor compares and hashes as the same values in an array do; an env class defined
    inside a function (which cannot be imported by name) takes a spec of its own class."""
    as_tensor = task_spec("ALA-Digits-v0", phi_init=torch.eye(10) * 0.5)
    assert as_tensor == task_spec("ALA-Digits-v0", phi_init=torch.eye(10) * 0.5)
    assert hash(as_tensor) == hash(task_spec("ALA-Digits-v0", phi_init=np.eye(10, dtype=np.float32) * 0.5))

    class LocalEnv(ALAClassificationEnv):
        pass

    spec = task_spec(LocalEnv, dataset="digits", total_iterations=20, steps_per_action=10, device="cpu")
    assert type(LocalEnv(spec=spec).task_spec) is TaskSpec


def test_a_saved_state_fits_an_env_whose_loss_part_compares_by_identity() -> None:
    """A loss part of one's own need not compare by value (a frozen dataclass declared ``eq=False`` compares by
    identity): a state saved by one env of the task fits another, its loss part compared field by field."""
    from dataclasses import dataclass

    @dataclass(frozen=True, eq=False)
    class IdentityLoss(ClassificationLoss):
        __eq__ = object.__eq__
        __hash__ = object.__hash__

    class OwnLossEnv(ALAClassificationEnv):
        @classmethod
        def make_spec(cls, **keywords: Any) -> TaskSpec:
            bound = inspect.signature(ALAClassificationEnv.make_spec).bind(**keywords)
            bound.apply_defaults()
            return assemble(cls, dict(bound.arguments), IdentityLoss)

    kwargs = dict(TINY, phi_init=0.9 * np.eye(10) + 0.01)
    source, target = OwnLossEnv(**kwargs), OwnLossEnv(**kwargs)
    assert source.task_spec.loss != target.task_spec.loss  # by identity
    source.reset(seed=0)
    target.set_state(source.get_state())
    np.testing.assert_array_equal(target.phi, source.phi)
