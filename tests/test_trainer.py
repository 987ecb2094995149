"""The child-training core: determinism, isolation from global RNGs, schedule, and learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ala_gym.core.data import load_dataset
from ala_gym.core.models import build_model
from ala_gym.core.trainer import ChildTrainer, TrainConfig

CONFIG = TrainConfig(model="mlp", total_iterations=40, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _weights(trainer: ChildTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_same_seed_same_weights_and_losses(digits) -> None:
    runs = [ChildTrainer(digits, CONFIG, seed=7) for _ in range(2)]
    losses = [[run.train(5, F.cross_entropy) for _ in range(3)] for run in runs]
    assert losses[0] == losses[1]
    for a, b in zip(_weights(runs[0]), _weights(runs[1])):
        assert torch.equal(a, b)
    other = ChildTrainer(digits, CONFIG, seed=8)
    assert [other.train(5, F.cross_entropy) for _ in range(3)] != losses[0]


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet32"])
def test_build_model_is_seeded_and_shaped(name: str) -> None:
    shape = (3, 32, 32)
    models = [build_model(name, shape, 10, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    first, same, other = (torch.cat([p.flatten() for p in m.parameters()]) for m in models)
    assert torch.equal(first, same) and not torch.equal(first, other)
    assert models[0](torch.zeros(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet20"])
def test_embedding_head_is_another_output_size(name: str) -> None:
    shape = (1, 28, 28)
    embedder = build_model(name, shape, 32, torch.Generator().manual_seed(0))
    assert embedder(torch.zeros(3, *shape)).shape == (3, 32)
    classifier = build_model(name, shape, 10, torch.Generator().manual_seed(0))
    assert [n for n, _ in embedder.named_parameters()] == [n for n, _ in classifier.named_parameters()]


def test_resnet32_structure() -> None:
    model = build_model("resnet32", (3, 32, 32), 10, torch.Generator().manual_seed(0))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31  # 1 + 3 stages x 5 blocks x 2 convs; plus the fc layer: 32 weighted layers
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert 0.46e6 < sum(p.numel() for p in model.parameters()) < 0.47e6  # He et al.: 0.46M


def test_global_rng_untouched(digits, global_rng_unchanged) -> None:
    with global_rng_unchanged():
        trainer = ChildTrainer(digits, CONFIG, seed=0)
        trainer.train(5, F.cross_entropy)
        trainer.evaluate(digits.val)


def test_lr_schedule() -> None:
    config = TrainConfig(total_iterations=100, lr=0.1, lr_milestones=(0.5, 0.75), lr_decay=0.1)
    assert [config.lr_at(i) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # A milestone whose product with the budget lands just above a whole number in floating point
    # (0.55 * 100 = 55.00000000000001, 0.14 * 50 = 7.000000000000001) decays at that iteration, not the next.
    for milestone, total, at in ((0.55, 100, 55), (0.14, 50, 7)):
        rates = TrainConfig(total_iterations=total, lr=0.1, lr_milestones=(milestone,), lr_decay=0.1).lr_at
        assert [rates(at - 1), rates(at)] == pytest.approx([0.1, 0.01]), milestone
    # Between whole iterations it decays at the first one past the milestone: 0.3 * 35 = 10.5.
    assert [TrainConfig(total_iterations=35, lr=0.1, lr_milestones=(0.3,)).lr_at(i) for i in (10, 11)] == pytest.approx([0.1, 0.01])


def test_optimizer_follows_schedule(digits, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate the SGD step applies (not only the one the trainer reports) halves at the milestone."""
    import ala_gym.core.trainer as trainer_module

    applied, step = [], trainer_module.sgd_step

    def recording(*args, **kwargs):
        applied.append(kwargs["lr"])
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "sgd_step", recording)
    config = TrainConfig(total_iterations=4, batch_size=16, lr=0.2, lr_milestones=(0.5,), lr_decay=0.5, momentum=0.5)
    trainer = ChildTrainer(digits, config, seed=0)
    seen = []
    for _ in range(4):
        trainer.train_step(F.cross_entropy)
        seen.append(trainer.lr)
    assert seen == pytest.approx([0.2, 0.2, 0.1, 0.1]) and applied == pytest.approx(seen)
    assert trainer.velocity is not None and trainer.done


@pytest.mark.parametrize(
    "kwargs",
    [{"total_iterations": 0}, {"lr": 0.0}, {"momentum": 1.0}, {"lr_milestones": (0.75, 0.5)}, {"lr_milestones": (1.0,)},
     {"weight_decay": -1e-4}],  # a negative decay would push the weights away from zero
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)



def test_an_embedding_width_sets_the_childs_output_width(digits) -> None:
    """``output_size`` (metric learning's embedding width) replaces the one logit per class, in the config's own
    model and in every trainer's."""
    default, embedding = TrainConfig(model="mlp"), TrainConfig(model="mlp", output_size=32)
    assert default.outputs(digits) == 10 and embedding.outputs(digits) == 32
    inputs = digits.normalize(digits.train.images[:3])
    assert embedding.build_model(digits, 0)(inputs).shape == (3, 32)
    assert ChildTrainer(digits, embedding, seed=0).logits(digits.val).shape == (len(digits.val), 32)


def test_class_balanced_batches_hold_batch_size_over_k_classes_of_k_samples(digits) -> None:
    """``samples_per_class=K`` draws ``batch_size / K`` classes of K samples each: 12 / 4 = 3 classes of 4."""
    config = TrainConfig(model="mlp", batch_size=12, samples_per_class=4)
    sampler = config.sampler(digits, seed=0)
    for _ in range(3):
        _, labels = sampler.next()
        classes, counts = np.unique(labels.numpy(), return_counts=True)
        assert len(classes) == 3 and counts.tolist() == [4, 4, 4]

def test_training_reduces_loss_on_digits(digits) -> None:
    config = TrainConfig(model="mlp", total_iterations=300, batch_size=64, lr=0.05)
    trainer = ChildTrainer(digits, config, seed=0)
    before = trainer.evaluate(digits.val)
    first = trainer.train(20, F.cross_entropy)
    last = trainer.train(280, F.cross_entropy)
    after = trainer.evaluate(digits.val)
    assert last < first / 3
    assert after.loss < before.loss / 3 and after.metric < 0.15 < before.metric
    assert trainer.iteration == 300 and trainer.done
    with pytest.raises(ValueError):
        trainer.train(0, F.cross_entropy)


def test_evaluation_does_not_depend_on_eval_batch_size(digits) -> None:
    results = [
        ChildTrainer(digits, TrainConfig(eval_batch_size=size), seed=3).evaluate(digits.val, "nll") for size in (7, 1000)
    ]
    assert results[0].metric == pytest.approx(results[1].metric, rel=1e-5)
    np.testing.assert_allclose(results[0].confusion, results[1].confusion, rtol=1e-5)


def test_batched_trainer_without_momentum_trains_only_the_active_children(digits) -> None:
    """Plain SGD (momentum 0, no momentum buffers to update) with a child sitting out: the active child takes
    the single trainer's step, the inactive one keeps its initial weights."""
    from ala_gym.core.batched import BatchedTrainer
    from ala_gym.core.losses import PhiLoss

    config = TrainConfig(model="mlp", total_iterations=10, batch_size=16, momentum=0.0)
    batched = BatchedTrainer(digits, config, [3, 4])
    singles = [ChildTrainer(digits, config, seed) for seed in (3, 4)]
    loss = PhiLoss(torch.eye(10))
    batched.train_step(torch.stack([loss.params, loss.params]), np.array([True, False]), loss)
    singles[0].train(1, loss)
    assert batched.iterations.tolist() == [1, 0]
    for child, single in enumerate(singles):
        for name, value in single.model.named_parameters():
            torch.testing.assert_close(batched.params[name][child].detach(), value.detach(), rtol=0, atol=1e-6)
