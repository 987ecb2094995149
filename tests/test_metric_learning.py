"""Metric-learning core: Recall@k against brute force, Eqs. 9 and 10 against hand computation, the fixed
pytorch-metric-learning losses, and the class-disjoint split."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ala_gym.core.data import ClassBalancedSampler, class_disjoint, load_digits
from ala_gym.core.metric_learning import (
    MIXTURE_EPS,
    DistanceMixtureLoss,
    FocalDistanceLoss,
    RetrievalEvaluator,
    SeededMiner,
    distance_weighted_miner,
    margin_loss,
    pair_means,
    pairwise_distances,
    retrieval_hits,
    triplet_margin_loss,
)


def _batch(seed: int = 0, classes: int = 4, per_class: int = 5, width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(classes * per_class, width, generator=generator, dtype=torch.float64)
    return embeddings, torch.arange(classes).repeat_interleave(per_class)


def _distances(embeddings: torch.Tensor) -> np.ndarray:
    unit = embeddings.detach().numpy() / np.linalg.norm(embeddings.detach().numpy(), axis=1, keepdims=True)
    return np.linalg.norm(unit[:, None, :] - unit[None, :, :], axis=2)


def _brute_force_recall(embeddings: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    hits = []
    for q in range(len(labels)):
        distances = np.linalg.norm(unit - unit[q], axis=1)
        distances[q] = np.inf
        hits.append(bool(np.any(labels[np.argsort(distances, kind="stable")[:k]] == labels[q])))
    return np.array(hits)


@pytest.mark.parametrize("block", [7, 512])
def test_recall_at_k_matches_brute_force(block: int) -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(60, 5)).astype(np.float32)
    labels = rng.integers(0, 6, size=60)
    hits = retrieval_hits(torch.from_numpy(embeddings), torch.from_numpy(labels), (1, 2, 4, 8), block=block).numpy()
    for column, k in enumerate((1, 2, 4, 8)):
        np.testing.assert_array_equal(hits[:, column], _brute_force_recall(embeddings, labels, k))
    assert 0 < hits[:, 0].mean() < hits[:, 3].mean() < 1  # the random case is not degenerate


def test_recall_at_1_is_precision_at_1_of_pytorch_metric_learning() -> None:
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(4)
    embeddings = torch.from_numpy(rng.normal(size=(80, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 5, size=80))
    calculator = AccuracyCalculator(include=("precision_at_1",), k=1, knn_func=CustomKNN(LpDistance()))
    expected = calculator.get_accuracy(embeddings, labels, embeddings, labels, ref_includes_query=True)["precision_at_1"]
    assert RetrievalEvaluator(5)(embeddings, labels).metric == pytest.approx(expected)


def test_retrieval_evaluator_statistics_and_divergence() -> None:
    embeddings, labels = _batch(classes=3, per_class=4)
    labels = labels + 2  # classes 2-4 of a 6-class dataset, as a class-disjoint validation split holds
    evaluation = RetrievalEvaluator(6, k=2, loss=DistanceMixtureLoss())(embeddings.float(), labels)
    assert evaluation.higher_is_better and evaluation.metric == evaluation.statistics["recall@2"]
    assert {"recall@1", "recall@2", "recall@4", "recall@8", "embedding_norm", "loss", "terms"} <= evaluation.statistics.keys()
    assert evaluation.statistics["terms"].shape == (10, 2)
    assert evaluation.class_metric.shape == (6,) and np.all(evaluation.class_metric[:2] == 0)
    assert evaluation.class_metric[2:5] @ np.full(3, 1 / 3) == pytest.approx(evaluation.metric)
    assert evaluation.finite
    norms = embeddings.float().norm(dim=1)
    assert evaluation.statistics["embedding_norm"] == pytest.approx(float(norms.mean()), rel=1e-6)
    d, y = _distances(embeddings), labels.numpy()
    positive_pairs = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    yardstick = np.mean(d[positive_pairs] ** 2) + np.mean(0.5 / (d[y[:, None] != y[None, :]] + MIXTURE_EPS))
    assert evaluation.loss == evaluation.statistics["loss"] == pytest.approx(yardstick, rel=1e-4)
    broken = embeddings.float().clone()
    broken[0, 0] = float("nan")
    diverged = RetrievalEvaluator(6)(broken, labels)
    assert not diverged.finite  # the embedding norm carries the NaN, so episodes can detect divergence
    assert np.all(np.isfinite([diverged.statistics[f"recall@{k}"] for k in (1, 2, 4, 8)]))


def test_distance_mixture_at_init_is_d_squared_and_half_inverse_d_over_all_triplets() -> None:
    embeddings, labels = _batch()
    d, y = _distances(embeddings), labels.numpy()
    per_triplet = [
        d[a, p] ** 2 + 0.5 / (d[a, n] + MIXTURE_EPS)
        for a, p, n in itertools.product(range(len(y)), repeat=3)
        if a != p and y[a] == y[p] and y[a] != y[n]
    ]
    loss = DistanceMixtureLoss(device="cpu")
    loss.params = loss.params.double()
    assert float(loss(embeddings, labels)) == pytest.approx(np.mean(per_triplet), rel=1e-9)


def test_distance_mixture_on_mined_triplets_and_its_terms() -> None:
    embeddings, labels = _batch(seed=1)
    d = _distances(embeddings)
    anchor, positive, negative = distance_weighted_miner(torch.Generator().manual_seed(5))(embeddings, labels)
    assert len(anchor) > 0
    expected = np.mean(d[anchor, positive] ** 2 + 0.5 / (d[anchor, negative] + MIXTURE_EPS))
    loss = DistanceMixtureLoss(miner=distance_weighted_miner(torch.Generator().manual_seed(5)))
    loss.params = loss.params.double()
    assert float(loss(embeddings, labels)) == pytest.approx(expected, rel=1e-9)
    # terms: row 0 is d^2 and row 5 is 0.5 / (d + eps), each averaged over positive and over negative pairs
    y = labels.numpy()
    positive_pairs = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    negative_pairs = y[:, None] != y[None, :]
    terms = DistanceMixtureLoss().terms(embeddings.float(), labels).numpy()
    assert terms.shape == (10, 2)
    np.testing.assert_allclose(terms[0], [np.mean(d[positive_pairs] ** 2), np.mean(d[negative_pairs] ** 2)], rtol=1e-4)
    inverse = 0.5 / (d + MIXTURE_EPS)
    np.testing.assert_allclose(terms[5], [inverse[positive_pairs].mean(), inverse[negative_pairs].mean()], rtol=1e-4)
    # increasing terms grow with the distance, decreasing ones shrink: on random embeddings of random
    # classes positive and negative pairs are alike, so check the shapes on a separated embedding instead
    separated = torch.eye(4).repeat_interleave(3, dim=0) + 0.01 * torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    rows = DistanceMixtureLoss().terms(separated, torch.arange(4).repeat_interleave(3)).numpy()
    assert np.all(rows[[0, 1, 2, 3], 0] < rows[[0, 1, 2, 3], 1]) and np.all(rows[5:, 0] > rows[5:, 1])


@pytest.mark.parametrize("phi", [None, (2.0, 8.0), (8.0, 0.5)], ids=["init", "pull-softer", "push-softer"])
def test_focal_weighting_matches_eq_10(phi: tuple[float, float] | None) -> None:
    """Eq. 10 by hand, at the initial Phi and at unequal ones: Phi(1) scales the positives, Phi(2) the negatives."""
    embeddings, labels = _batch(seed=2)
    d, y = _distances(embeddings), labels.numpy()
    loss = FocalDistanceLoss(None if phi is None else np.array(phi))
    phi1, phi2 = loss.phi
    per_anchor = []
    for a in range(len(y)):
        pos = [d[a, p] for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [d[a, n] for n in range(len(y)) if y[n] != y[a]]
        per_anchor.append(
            np.log1p(np.sum(np.exp(phi1 * (np.array(pos) - 1.0)))) / phi1
            + np.log1p(np.sum(np.exp(-phi2 * (np.array(neg) - 1.0)))) / phi2
        )
    loss.params = loss.params.double()
    assert float(loss(embeddings, labels)) == pytest.approx(np.mean(per_anchor), rel=1e-9)
    terms = loss.terms(embeddings.float(), labels).numpy()
    positive_pairs = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    means = [np.mean(d[positive_pairs]), np.mean(d[y[:, None] != y[None, :]])]
    np.testing.assert_allclose(terms, [means, means[::-1]], rtol=1e-5)


def _mixture_terms(d: np.ndarray) -> np.ndarray:
    """Eq. 9's ten terms by hand (the module docstring's table): five increasing, then five decreasing."""
    return np.stack([
        d**2, d, np.log1p(d), np.expm1(d), np.maximum(d - 1.0, 0.0),
        0.5 / (d + MIXTURE_EPS), 2.0 - d, 4.0 - d**2, np.exp(-d), np.maximum(1.4 - d, 0.0),
    ])  # fmt: skip


def test_distance_mixture_at_any_phi_weights_each_of_the_ten_terms_over_all_triplets() -> None:
    """Every term of the table, each weighted by its own Phi entry: ``Phi(1..5)`` the positives' terms and
    ``Phi(6..10)`` the negatives', over every valid triplet; ``terms`` gives each term's pair means."""
    embeddings, labels = _batch(seed=6)
    d, y = _distances(embeddings), labels.numpy()
    assert d.min() < 1.0 < 1.4 < d.max()  # both hinges are active on some pairs and not on others
    phi = np.random.default_rng(0).uniform(size=10).astype(np.float32).astype(np.float64)  # as Phi is held
    values = _mixture_terms(d)
    pulled, pushed = np.tensordot(phi[:5], values[:5], axes=1), np.tensordot(phi[5:], values[5:], axes=1)
    per_triplet = [
        pulled[a, p] + pushed[a, n]
        for a, p, n in itertools.product(range(len(y)), repeat=3)
        if a != p and y[a] == y[p] and y[a] != y[n]
    ]
    loss = DistanceMixtureLoss(phi)
    loss.params = loss.params.double()
    assert float(loss(embeddings, labels)) == pytest.approx(np.mean(per_triplet), rel=1e-9)
    positive_pairs = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    expected = np.stack([values[:, positive_pairs].mean(axis=1), values[:, y[:, None] != y[None, :]].mean(axis=1)], axis=1)
    np.testing.assert_allclose(loss.terms(embeddings.float(), labels).numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("block", [3, 512])
def test_pair_means_in_blocks_and_without_positive_pairs(block: int) -> None:
    """Rows processed a few at a time give the means of all rows at once (each block masks its own items
    out of the positives); a set with no positive pair gives 0 there, not NaN."""
    embeddings, labels = _batch(seed=7, classes=3, per_class=4)
    d, y = _distances(embeddings), labels.numpy()
    positive_pairs = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    means = pair_means(embeddings.float(), labels, lambda distances: distances[None], block=block).numpy()
    np.testing.assert_allclose(means, [[d[positive_pairs].mean(), d[y[:, None] != y[None, :]].mean()]], rtol=1e-5)
    distinct = pair_means(embeddings.float(), torch.arange(len(y)), lambda distances: distances[None], block=block).numpy()
    assert distinct[0, 0] == 0.0
    np.testing.assert_allclose(distinct[0, 1], d[~np.eye(len(y), dtype=bool)].mean(), rtol=1e-5)


def test_coinciding_embeddings_lie_at_the_distance_floor() -> None:
    """Two embeddings at the same point are ``1e-4`` apart (the square root of the floor on squared distances),
    so ``0.5 / (d + eps)`` reads ``0.5 / (1e-4 + eps)`` there, as it does for embeddings closer than the floor."""
    coinciding = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # exact unit directions: 2 - 2 cos is exactly 0
    assert float(pairwise_distances(coinciding)[0, 1]) == pytest.approx(1e-4, rel=1e-6)
    close = torch.tensor([[1.0, 0.0], [1.0, 1e-6]], dtype=torch.float64)  # 1e-6 apart: below the floor
    assert float(pairwise_distances(close)[0, 1]) == pytest.approx(1e-4, rel=1e-6)


def test_a_miner_drawing_no_triplet_gives_a_zero_loss_that_keeps_the_graph() -> None:
    """No triplet to average over: the loss is 0 and differentiable (a zero gradient), as the library's losses."""
    def no_triplet(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty

    embeddings, labels = _batch(seed=8)
    embeddings.requires_grad_(True)
    value = DistanceMixtureLoss(miner=no_triplet)(embeddings, labels)
    (gradient,) = torch.autograd.grad(value, embeddings)
    assert float(value.detach()) == 0.0 and torch.all(gradient == 0)


def _brute_force_recall_of_finite(embeddings: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Recall@k where a non-finite item is no query's neighbour and never retrieves anything itself."""
    finite = np.isfinite(embeddings).all(axis=1)
    hits = np.zeros(len(labels), dtype=bool)
    kept = np.flatnonzero(finite)
    hits[kept] = _brute_force_recall(embeddings[kept], labels[kept], min(k, len(kept) - 1))  # never itself
    return hits


@pytest.mark.parametrize("block", [1, 4, 512])
def test_recall_at_k_skips_non_finite_items_as_queries_and_as_neighbours(block: int) -> None:
    """Diverged embeddings (NaN rows) neither retrieve nor are retrieved; with fewer finite items than k, the
    query itself (tied with them at -inf) is never counted."""
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(10, 3)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    embeddings[[1, 4, 7, 8]] = np.nan  # classes 2 and 3 keep one finite item each: only a NaN one shares its class
    hits = retrieval_hits(torch.from_numpy(embeddings), torch.from_numpy(labels), (1, 2, 4, 9), block=block).numpy()
    for column, k in enumerate((1, 2, 4, 9)):
        np.testing.assert_array_equal(hits[:, column], _brute_force_recall_of_finite(embeddings, labels, k), err_msg=f"k={k}")
    assert not hits[[1, 4, 6, 7, 8, 9]].any() and hits[[0, 2, 3, 5], -1].all()


def test_phi_moves_in_place_and_is_validated() -> None:
    mixture, focal = DistanceMixtureLoss(), FocalDistanceLoss()
    tensor = mixture.params
    mixture.set_phi(np.full(10, 0.5))
    assert mixture.params is tensor and torch.all(tensor == 0.5)
    for bad in (np.full(10, 1.5), np.full(9, 0.5), np.full(10, np.nan)):
        with pytest.raises(ValueError, match="distance-mixture Phi"):
            mixture.set_phi(bad)
    with pytest.raises(ValueError, match="focal Phi"):
        focal.set_phi(np.array([0.0, 1.0]))  # Phi divides Eq. 10: it must stay positive
    embeddings, labels = _batch()
    before = float(focal(embeddings.float(), labels))
    focal.set_phi(np.array([16.0, 16.0]))
    assert float(focal(embeddings.float(), labels)) != pytest.approx(before)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: DistanceMixtureLoss(eps=0.0), r"^eps must be positive, got 0.0$"),
        (lambda: retrieval_hits(torch.ones(1, 4), torch.zeros(1, dtype=torch.int64)), r"^retrieval needs at least 2 items, got 1$"),
        (lambda: retrieval_hits(*_batch(), ks=(1, 0)), r"^ks must be positive integers, got \(1, 0\)$"),
        (lambda: retrieval_hits(*_batch(), ks=()), r"^ks must be positive integers, got \(\)$"),
        # A stand-in for a CUDA generator (only its device is read): the refusal holds on a machine without a GPU.
        (lambda: SeededMiner(None, SimpleNamespace(device=torch.device("cuda", 0))),
         r"^SeededMiner needs a CPU generator, got one on cuda:0$"),
    ],
    ids=["mixture-eps", "one-item", "k-zero", "no-k", "gpu-generator"],
)  # fmt: skip
def test_bad_arguments_are_refused_by_name(call: Callable[[], object], message: str) -> None:
    """Each refusal is a ValueError naming the argument, what it must be and the value it got, raised before
    anything is computed (an eps of 0 would divide by zero distances; a k of 0 would count no neighbour)."""
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", ["mixture", "mixture-mined", "focal", "triplet", "margin"])
def test_losses_have_finite_gradients_even_for_coinciding_embeddings(name: str, global_rng_unchanged) -> None:
    embeddings, labels = _batch(seed=3)
    embeddings = embeddings.float()
    embeddings[1] = embeddings[0]  # a positive pair at distance 0
    embeddings[5] = embeddings[0]  # a negative pair at distance 0
    embeddings.requires_grad_(True)
    with global_rng_unchanged():
        generator = torch.Generator().manual_seed(0)
        loss = {
            "mixture": lambda: DistanceMixtureLoss(),
            "mixture-mined": lambda: DistanceMixtureLoss(miner=distance_weighted_miner(generator)),
            "focal": lambda: FocalDistanceLoss(),
            "triplet": triplet_margin_loss,
            "margin": lambda: margin_loss(generator),
        }[name]()
        value = loss(embeddings, labels)
        (gradient,) = torch.autograd.grad(value, embeddings)
    assert torch.isfinite(value) and float(value.detach()) > 0
    assert torch.all(torch.isfinite(gradient)) and float(gradient.abs().sum()) > 0


def test_mining_is_reproducible_from_its_generator() -> None:
    embeddings, labels = _batch(seed=4)

    def mined(seed: int) -> list[torch.Tensor]:
        return list(distance_weighted_miner(torch.Generator().manual_seed(seed))(embeddings, labels))

    first, again, other = mined(7), mined(7), mined(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_class_disjoint_split_shares_no_class() -> None:
    data = load_digits()
    split = class_disjoint(data)
    train, val, test = (set(s.labels.unique().tolist()) for s in (split.train, split.val, split.test))
    assert train == {0, 1, 2, 3, 4} and val == test == {5, 6, 7, 8, 9}
    assert split.num_classes == 10 and split.train.images.device == data.device
    assert len(split.train) == int(torch.isin(data.train.labels, torch.arange(5)).sum())
    custom = class_disjoint(data, train_classes=[0, 2, 4, 6], val_classes=[1, 3], test_classes=[5, 7, 9])
    assert set(custom.val.labels.tolist()) == {1, 3} and set(custom.test.labels.tolist()) == {5, 7, 9}
    # Any iterable of classes, a generator too (read once), and numpy's integers.
    once = class_disjoint(data, train_classes=(c for c in range(5)), val_classes=np.array([5, 6]))
    assert set(once.train.labels.tolist()) == train and set(once.test.labels.tolist()) == {5, 6, 7, 8, 9}
    assert set(once.val.labels.tolist()) == {5, 6}
    with pytest.raises(ValueError, match="class-disjoint"):
        class_disjoint(data, train_classes=[0, 1, 2], val_classes=[2, 3])
    with pytest.raises(ValueError, match=r"classes \[2\] are both trained on and evaluated on"):  # a test class too
        class_disjoint(data, train_classes=[0, 1, 2], val_classes=[5, 6], test_classes=[2, 3])
    # Out of range, one class named twice (a one-class retrieval split), or no class index at all (4.5 was class 4).
    for bad in ({"test_classes": [12, 13]}, {"val_classes": [5, 5]}, {"test_classes": [4.5, 6]}, {"val_classes": [True, 5]}):
        with pytest.raises(ValueError, match="at least 2 distinct classes"):
            class_disjoint(data, **{"train_classes": [0, 1], **bad})
    # the P x K sampler draws only training classes
    sampler = ClassBalancedSampler(split, 5, 4, torch.Generator().manual_seed(0))
    _, labels = sampler.next()
    assert set(labels.tolist()) == train
