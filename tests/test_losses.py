"""Eq. 6 loss forms and the class-pair parameterisation of Phi."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ala_gym.core.losses import (
    PhiLoss,
    check_phi,
    class_pairs,
    matrix_to_pairs,
    pairs_to_matrix,
    pairwise_auc_loss,
    phi_loss,
)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 10, generator=generator), torch.randint(0, 10, (32,), generator=generator)


def _random_phi(seed: int = 1, classes: int = 10) -> torch.Tensor:
    values = np.random.default_rng(seed).uniform(-1, 1, classes * (classes + 1) // 2)
    return torch.tensor(pairs_to_matrix(values, classes), dtype=torch.float32)


def test_linear_at_identity_is_cross_entropy(batch) -> None:
    logits, labels = batch
    torch.testing.assert_close(phi_loss(logits, labels, torch.eye(10)), F.cross_entropy(logits, labels))


def test_linear_form_by_hand(batch) -> None:
    logits, labels = batch
    phi = _random_phi()
    log_probs = F.log_softmax(logits, dim=1)
    expected = -torch.stack([phi[y] @ log_probs[n] for n, y in enumerate(labels)]).mean()
    torch.testing.assert_close(phi_loss(logits, labels, phi, "linear"), expected)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_sigmoid_form_value(batch, temperature: float) -> None:
    logits, labels = batch
    phi = _random_phi(2)
    log_probs = F.log_softmax(logits, dim=1)
    weighted = torch.stack([phi[y] @ log_probs[n] for n, y in enumerate(labels)])
    expected = -torch.sigmoid(weighted / temperature).mean()
    torch.testing.assert_close(phi_loss(logits, labels, phi, "sigmoid", temperature), expected)


def test_sigmoid_form_at_identity_is_minus_p_over_one_plus_p(batch) -> None:
    """sigmoid(log p) = p / (1 + p): at Phi = I the printed form is -mean(p_y / (1 + p_y)), from softmax alone."""
    logits, labels = batch
    p_y = torch.softmax(logits, dim=1)[torch.arange(len(labels)), labels]
    torch.testing.assert_close(phi_loss(logits, labels, torch.eye(10), "sigmoid"), -(p_y / (1 + p_y)).mean())


def test_cross_entropy_form_ignores_phi(batch) -> None:
    logits, labels = batch
    torch.testing.assert_close(phi_loss(logits, labels, _random_phi(), "cross_entropy"), F.cross_entropy(logits, labels))


def test_pairwise_auc_loss_by_hand(batch) -> None:
    logits, labels = batch
    labels = labels.where(labels != 9, 8)  # class 9 absent: it has no pair and is left out of the mean
    scores = F.softmax(logits, dim=1)
    per_class = []
    for c in range(9):
        positives, negatives = scores[labels == c, c], scores[labels != c, c]
        per_class.append(torch.stack([(1.0 - (p - n)).clamp_min(0) ** 2 for p in positives for n in negatives]).mean())
    torch.testing.assert_close(pairwise_auc_loss(logits, labels), torch.stack(per_class).mean())
    torch.testing.assert_close(phi_loss(logits, labels, _random_phi(), "auc_pairwise"), torch.stack(per_class).mean())
    # A margin the score gaps exceed: the hinge is zero wherever positives outrank negatives by it.
    ranked = torch.where(F.one_hot(labels, 10) > 0, 20.0, 0.0)
    assert float(pairwise_auc_loss(ranked, labels, margin=0.5)) == 0.0


def test_pairwise_auc_loss_of_a_single_pair_per_class_and_of_no_pair() -> None:
    """A class with one (positive, negative) pair is that pair's squared hinge, not a fraction of it; a batch of one
    class has no pair at all and its loss is 0, not 0 / 0."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]])
    labels = torch.tensor([0, 1])  # class 0: pair (0, 1); class 1: pair (1, 0); class 2: no positive
    scores = F.softmax(logits, dim=1)
    hinges = [(1.0 - (scores[0, 0] - scores[1, 0])) ** 2, (1.0 - (scores[1, 1] - scores[0, 1])) ** 2]
    torch.testing.assert_close(pairwise_auc_loss(logits, labels), torch.stack(hinges).mean())
    alone = logits.clone().requires_grad_()
    loss = pairwise_auc_loss(alone, torch.tensor([2, 2]))
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(torch.autograd.grad(loss, alone)[0]).all()


def test_pairwise_auc_loss_runs_under_vmap(batch) -> None:
    logits, labels = batch
    stacked = torch.stack([logits, 2 * logits])
    expected = torch.stack([pairwise_auc_loss(logits, labels), pairwise_auc_loss(2 * logits, labels)])
    torch.testing.assert_close(torch.vmap(pairwise_auc_loss, in_dims=(0, None))(stacked, labels), expected)


def test_phi_loss_object_follows_set_phi(batch) -> None:
    logits, labels = batch
    phi = torch.eye(10)
    loss = PhiLoss(phi)
    before = loss(logits, labels)
    loss.set_phi(_random_phi().numpy())
    assert loss.phi is phi, "set_phi writes into the same tensor"
    assert not torch.allclose(before, loss(logits, labels))
    torch.testing.assert_close(loss(logits, labels), phi_loss(logits, labels, phi))


def _nonnegative_phi() -> np.ndarray:
    values = np.random.default_rng(3).uniform(0, 0.3, 55)
    matrix = pairs_to_matrix(values, 10)
    np.fill_diagonal(matrix, 1.0)
    return matrix


def _identity_and_one_pair() -> np.ndarray:
    """Phi = I with one off-diagonal pair raised: the first step away from cross-entropy, every other entry 0."""
    matrix = np.eye(10)
    matrix[0, 1] = matrix[1, 0] = 0.2
    return matrix


@pytest.mark.parametrize(
    ("matrix", "negative_floor", "kernel"),
    [
        (np.eye(10), 1e-3, "hard"),
        (_nonnegative_phi(), 1e-3, "soft"),
        (_random_phi().numpy(), None, "soft"),  # without a floor Eq. 6 is the soft-target cross-entropy for any sign
        (_identity_and_one_pair(), 1e-3, "soft"),  # zero entries are not negative ones
        (_random_phi().numpy(), 1e-3, "general"),
    ],
)
def test_fused_kernels_equal_the_general_form(batch, matrix: np.ndarray, negative_floor, kernel: str) -> None:
    logits, labels = batch
    logits = logits * 4  # confident rows, so the floor would bind where an entry is negative
    loss = PhiLoss(torch.zeros(10, 10), negative_floor=negative_floor)
    loss.set_phi(matrix)
    assert loss.kernel == kernel
    general = logits.clone().requires_grad_()
    fused = logits.clone().requires_grad_()
    expected = phi_loss(general, labels, loss.phi, negative_floor=negative_floor)
    value = loss(fused, labels)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(value, fused)[0], torch.autograd.grad(expected, general)[0])


@pytest.mark.parametrize(
    ("form", "temperature", "negative_floor"),
    [("linear", 1.0, 1e-3), ("linear", 1.0, None), ("sigmoid", 3.0, 1e-3), ("sigmoid", 0.5, None)],
)
def test_functional_under_the_losss_own_phi_is_the_loss(
    batch: tuple[torch.Tensor, torch.Tensor], form: str, temperature: float, negative_floor: float | None
) -> None:
    """What the N-children trainer vmaps over, ``functional(logits, labels, Phi)``, is the loss called with that Phi:
    the same form, temperature and floor."""
    logits, labels = batch
    logits = logits * 4  # confident rows, so the floor binds where an entry is negative
    phi = _random_phi(4)
    loss = PhiLoss(phi.clone(), form=form, temperature=temperature, negative_floor=negative_floor)
    torch.testing.assert_close(loss.functional(logits, labels, phi), loss(logits, labels))
    torch.testing.assert_close(
        loss.functional(logits, labels, phi), phi_loss(logits, labels, phi, form, temperature, negative_floor)
    )


def test_other_forms_keep_the_general_kernel() -> None:
    for form in ("sigmoid", "cross_entropy"):
        loss = PhiLoss(torch.eye(10), form=form)
        loss.set_phi(_nonnegative_phi())
        assert loss.kernel == "general"


@pytest.mark.parametrize("kwargs", [{"form": "cubic"}, {"temperature": 0.0}])
def test_phi_loss_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PhiLoss(torch.eye(3), **kwargs)
    if "form" in kwargs:
        with pytest.raises(ValueError, match="cubic"):
            phi_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), torch.eye(3), "cubic")


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_pairs_round_trip(classes: int) -> None:
    pairs = class_pairs(classes)
    assert len(pairs) == classes * (classes + 1) // 2
    assert np.all(pairs[:, 0] <= pairs[:, 1]) and len({tuple(p) for p in pairs}) == len(pairs)
    values = np.arange(len(pairs), dtype=np.float64)
    matrix = pairs_to_matrix(values, classes)
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(matrix[pairs[:, 0], pairs[:, 1]], values)
    np.testing.assert_array_equal(matrix_to_pairs(matrix), values)
    np.testing.assert_array_equal(matrix_to_pairs(np.triu(matrix)), values)  # read from the upper triangle


def test_ten_classes_have_55_pairs_in_row_major_order() -> None:
    pairs = class_pairs(10)
    assert len(pairs) == 55
    assert pairs[:3].tolist() == [[0, 0], [0, 1], [0, 2]] and pairs[10].tolist() == [1, 1]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.eye(3), "shape"),
        (np.full((4, 4), np.nan), "finite"),
        (np.eye(4) * 1.5, r"\[-1.0, 1.0\]"),
        (np.eye(4) - 1.5 * (1 - np.eye(4)), r"\[-1.0, 1.0\]"),  # below the bound, not only above it
        (np.triu(np.full((4, 4), 0.5)), "symmetric"),
    ],
)
def test_check_phi_errors(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_phi(matrix, 4)


@pytest.mark.parametrize("kwargs", [dict(negative_floor=1.0), dict(negative_floor=0.0), dict(temperature=0.0), dict(form="cubic")])
def test_a_loss_refuses_settings_out_of_range(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("form", "loss form")):
        PhiLoss(torch.eye(3), **kwargs)


def test_check_phi_accepts_valid() -> None:
    phi = pairs_to_matrix(np.linspace(-1, 1, 10), 4)
    np.testing.assert_array_equal(check_phi(phi, 4), phi)


def test_a_negative_weight_meets_a_floored_log_probability() -> None:
    """Under a negative weight the loss would fall without bound as that class's probability goes to 0: its
    log-probability is floored at log(negative_floor), so the loss stops at -w log(floor) there; positive
    weights see the true log-probability."""
    logits = torch.tensor([[10.0, -30.0, 0.0]])  # p(1) ~ 1e-18, far below the floor
    phi = torch.tensor([[1.0, -0.5, 0.2], [-0.5, 1.0, 0.0], [0.2, 0.0, 1.0]])
    log_probs = F.log_softmax(logits, dim=1)[0]
    expected = -(log_probs[0] - 0.5 * np.log(1e-3) + 0.2 * log_probs[2])
    torch.testing.assert_close(phi_loss(logits, torch.tensor([0]), phi, negative_floor=1e-3), expected)
    unfloored = -(log_probs[0] - 0.5 * log_probs[1] + 0.2 * log_probs[2])
    torch.testing.assert_close(phi_loss(logits, torch.tensor([0]), phi, negative_floor=None), unfloored)
