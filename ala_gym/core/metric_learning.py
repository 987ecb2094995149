"""Metric learning: ALA's adaptive embedding losses (Eqs. 9 and 10), the fixed losses of
pytorch-metric-learning, and retrieval evaluation by Recall@k.

Every loss is a callable ``loss(embeddings, labels) -> scalar`` over a P x K batch of raw model outputs
(any width); it L2-normalises them itself, so distances lie in ``[0, 2]``:
``d(i, j) = ||e_i / |e_i| - e_j / |e_j| ||``. The adaptive losses hold their parameters Phi in a tensor
(:attr:`params`, moved in place by :meth:`set_phi`, as :class:`ala_gym.core.losses.PhiLoss`) and give, per
loss parameter, the validation statistics the paper's controller observes (:meth:`terms`: one row per
parameter, ``[mean over positive pairs, mean over negative pairs]`` of the distance term that parameter
weights), so controllers written for the class-pair rows of the classification env read them unchanged.

**Distance mixture** (Eq. 9): ``l = sum_i Phi(i) F_i^+(d+) + sum_i Phi(i+5) F_i^-(d-)`` averaged over
triplets ``(anchor, positive, negative)``, ``Phi`` in ``[0, 1]^10``, initialised to select ``d^2`` and
``0.5 / d``. The paper leaves the other shapes to its (unpublished) supplement and reports that results
are insensitive to them; the ones here span concave, linear, convex and hinge shapes on ``[0, 2]`` and
include the terms of both frameworks the paper builds on:

| i | ``F_i^+(d)`` (increasing) | ``F_i^-(d)`` (decreasing) |
|---|---|---|
| 1 | ``d^2`` (Schroff et al.'s triplet loss; the initial choice) | ``0.5 / (d + eps)`` (the initial choice) |
| 2 | ``d`` | ``2 - d`` |
| 3 | ``log(1 + d)`` (concave: pulls near positives hardest) | ``4 - d^2`` (Schroff et al.'s ``-d^2``, shifted) |
| 4 | ``exp(d) - 1`` (convex: pulls far positives hardest) | ``exp(-d)`` |
| 5 | ``relu(d - 1.0)`` (Wu et al.'s margin term, beta 1.2, margin 0.2) | ``relu(1.4 - d)`` (the same, negatives) |

The decreasing terms are shifted to be non-negative on ``[0, 2]`` (a constant changes no gradient, and
non-negative statistics keep the observation rows comparable). ``eps`` (default 0.1) keeps ``0.5 / d``
and its gradient bounded (by 5 and 50) when two embeddings of different classes coincide; above that the
term is within 7% of ``0.5 / d`` at ``d = 1.4``. Eq. 9 is printed without a hinge or margin and is used as
printed.

**Focal weighting** (Eq. 10): per anchor, ``1/Phi(1) log[1 + sum_{i+} exp(Phi(1) (d+ - alpha))] +
1/Phi(2) log[1 + sum_{i-} exp(-Phi(2) (d- - alpha))]`` over every positive and negative of the anchor in
the batch, averaged over anchors, ``alpha = 1`` (the paper's value). Phi is in ``R^2`` and must stay
positive (it divides); larger values focus the loss on the hardest pairs. The paper gives no initial value
or range: ``FOCAL_PHI_INIT`` and ``FOCAL_PHI_RANGE`` are documented beside them. Its statistics are the
distances each parameter acts on, beside the others (as a class pair's ``[C_ij, C_ji]``): row 1
(positives) ``[mean d over positive pairs, mean d over negative pairs]``, row 2 (negatives) the reverse.

Which triplets the mixture averages over is the framework's data sampling: every valid triplet of the
batch (the triplet framework; pytorch-metric-learning's default ``triplets_per_anchor="all"``) or those
drawn by Wu et al.'s distance-weighted miner (the margin framework). Focal weighting needs no sampling:
its log-sum-exp already weights each anchor's pairs by hardness.

The fixed baselines are pytorch-metric-learning's ``TripletMarginLoss()`` and ``MarginLoss()`` with
``DistanceWeightedMiner()``, at the library's defaults (:func:`triplet_margin_loss`,
:func:`margin_loss`). The margin loss's beta stays fixed at 1.2: the child trainer updates the model's
weights only.

pytorch-metric-learning's triplet sampling draws from torch's default generators (``torch.randint``,
``torch.multinomial`` with no generator argument). :class:`SeededMiner` runs a miner inside
``torch.random.fork_rng`` with the default generators seeded from its own explicit generator, so mining
is reproducible from a seed and the global random state is the same afterwards. Mining synchronises with
the host (the library loops over the batch's classes) and cannot be ``vmap``-ed: trainers that use a
miner train their children one after another.

:class:`RetrievalEvaluator` measures Recall@k (a query counts as retrieved at ``k`` if any of its ``k``
nearest neighbours, itself excluded, has its class; Recall@1 is precision at 1) by ``torch.topk`` over
cosine similarities of the L2-normalised embeddings on their device, in row blocks; only scalars and
small arrays go back to the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ala_gym.core.metrics import Evaluation, class_counts

RECALL_KS = (1, 2, 4, 8)
"""The Recall@k levels reported as statistics (the paper's SOP table uses 1, 10, 100, 1000 on 22,634
classes; 1-8 is the usual scale for a few thousand images of a handful of classes)."""
MIXTURE_PHI_INIT = np.array([1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0])
"""Eq. 9's initial Phi: ``d^2`` for positives and ``0.5 / d`` for negatives."""
FOCAL_PHI_INIT = np.array([4.0, 4.0])
"""Eq. 10's initial Phi (not given in the paper): with ``alpha = 1`` and distances in ``[0, 2]``, a pair's
weight then spans ``exp(-4)`` to ``exp(4)`` between the easiest and the hardest pair, a moderate focus."""
FOCAL_PHI_RANGE = 16.0
"""Eq. 10's Phi lies in ``[1 / FOCAL_PHI_RANGE, FOCAL_PHI_RANGE]``: from a near-mean over the anchor's pairs
to a near-maximum (at 16 a pair 0.2 farther from the offset weighs ``exp(3.2) = 25`` times more)."""
FOCAL_ALPHA = 1.0
"""Eq. 10's distance offset (the paper's value)."""
MIXTURE_EPS = 0.1
"""The offset in ``0.5 / (d + eps)``, the initial decreasing term of Eq. 9."""
_MIN_SQUARED_DISTANCE = 1e-8  # keeps the gradient of sqrt finite at coinciding embeddings

Miner = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""``miner(embeddings, labels) -> (anchor, positive, negative)`` triplet indices."""


def pairwise_distances(embeddings: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances between the L2-normalised rows of ``embeddings`` and ``reference`` (default: itself)."""
    query = F.normalize(embeddings, dim=1)
    reference = query if reference is None else F.normalize(reference, dim=1)
    squared = (2.0 - 2.0 * query @ reference.T).clamp_min(_MIN_SQUARED_DISTANCE)
    return squared.sqrt()


def mixture_terms(distances: torch.Tensor, eps: float = MIXTURE_EPS) -> torch.Tensor:
    """``[10, *distances.shape]``: the five increasing terms ``F_i^+`` then the five decreasing terms ``F_i^-``
    of Eq. 9 (table in the module docstring), each applied to every distance."""
    d = distances
    return torch.stack([
        d * d, d, torch.log1p(d), torch.expm1(d), F.relu(d - 1.0),
        0.5 / (d + eps), 2.0 - d, 4.0 - d * d, torch.exp(-d), F.relu(1.4 - d),
    ])  # fmt: skip


def _pair_masks(labels: torch.Tensor, reference_labels: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive (same class, not the same item) and negative masks of rows ``offset..`` against all items."""
    same = labels[:, None] == reference_labels[None, :]
    rows = torch.arange(len(labels), device=labels.device)
    itself = torch.zeros_like(same)
    itself[rows, rows + offset] = True
    return same & ~itself, ~same


def pair_means(
    embeddings: torch.Tensor, labels: torch.Tensor, terms: Callable[[torch.Tensor], torch.Tensor], block: int = 512
) -> torch.Tensor:
    """``[n_terms, 2]``: each term's mean over all positive pairs and over all negative pairs of the items.

    ``terms`` maps a distance block ``[b, N]`` to ``[n_terms, b, N]``. Rows are processed ``block`` at a time
    so that memory stays ``O(block * N)``. A set with no positive (or no negative) pair gives 0 there.
    """
    embeddings = embeddings.detach()
    sums = torch.zeros(2, device=embeddings.device, dtype=torch.float64)
    totals: torch.Tensor | None = None
    for start in range(0, len(labels), block):
        distances = pairwise_distances(embeddings[start : start + block], embeddings)
        positive, negative = _pair_masks(labels[start : start + block], labels, start)
        values = terms(distances)
        part = torch.stack([(values * positive).sum(dim=(1, 2)), (values * negative).sum(dim=(1, 2))], dim=1)
        totals = part.double() if totals is None else totals + part.double()
        sums += torch.stack([positive.sum(), negative.sum()]).double()
    assert totals is not None, "pair_means needs at least one item"
    return (totals / sums.clamp_min(1.0)).float()


def _all_triplet_mean(positive_terms: torch.Tensor, negative_terms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of ``positive_terms[a, p] + negative_terms[a, n]`` over every valid triplet ``(a, p, n)`` of the batch,
    without listing them: anchor ``a`` appears in ``P_a * N_a`` triplets."""
    positive, negative = _pair_masks(labels, labels, 0)
    n_pos, n_neg = positive.sum(dim=1), negative.sum(dim=1)
    count = (n_pos * n_neg).sum()
    total = (n_neg * (positive_terms * positive).sum(dim=1)).sum() + (n_pos * (negative_terms * negative).sum(dim=1)).sum()
    return total / count.clamp_min(1)


class SeededMiner:
    """A pytorch-metric-learning miner whose random draws come from ``generator`` (see the module docstring).

    ``generator`` is a CPU ``torch.Generator``: drawing each call's seed from it never waits on a GPU.
    """

    def __init__(self, miner: Any, generator: torch.Generator) -> None:
        if generator.device.type != "cpu":
            raise ValueError(f"SeededMiner needs a CPU generator, got one on {generator.device}")
        self.miner, self.generator = miner, generator

    def __call__(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # anchor, positive and negative indices
        seed = int(torch.randint(2**62, (), generator=self.generator))
        device = embeddings.device
        if not bool(torch.isfinite(embeddings).all()):
            # A diverged child: no triplets (the miner's own reductions fail on NaN distances); its evaluation ends
            # the episode with the divergence penalty. The seed above is drawn all the same, to keep the stream.
            none = torch.empty(0, dtype=torch.int64, device=device)
            return none, none, none
        gpu_indices: list[int] = []  # the embeddings' GPU, none on a CPU
        if device.type == "cuda":
            gpu_indices.append(device.index if device.index is not None else torch.cuda.current_device())
        # fork_rng restores the CPU generator (and the listed GPU's) on exit, whatever the miner drew.
        with torch.random.fork_rng(devices=gpu_indices):
            torch.default_generator.manual_seed(seed)
            for index in gpu_indices:
                torch.cuda.default_generators[index].manual_seed(seed)
            return self.miner(embeddings, labels)


def distance_weighted_miner(generator: torch.Generator) -> SeededMiner:
    """Wu et al.'s distance-weighted sampling at pytorch-metric-learning's defaults (cutoff 0.5, nonzero-loss
    cutoff 1.4), drawn from ``generator``."""
    from pytorch_metric_learning import miners

    return SeededMiner(miners.DistanceWeightedMiner(), generator)


class PMLLoss:
    """A fixed pytorch-metric-learning loss, optionally on a miner's triplets: ``loss(emb, labels, miner(emb, labels))``."""

    def __init__(self, loss: Any, miner: Miner | None = None) -> None:
        self.loss, self.miner = loss, miner

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        indices = None if self.miner is None else self.miner(embeddings, labels)
        return self.loss(embeddings, labels, indices)


def triplet_margin_loss() -> PMLLoss:
    """The triplet framework's fixed loss: ``losses.TripletMarginLoss()`` at the library's defaults (unsquared
    distances, margin 0.05, the mean over the batch's triplets of positive loss), not Eq. 8 as printed (squared
    distances)."""
    from pytorch_metric_learning import losses

    return PMLLoss(losses.TripletMarginLoss())


def margin_loss(generator: torch.Generator) -> PMLLoss:
    """The margin framework's fixed loss (Wu et al.): ``losses.MarginLoss()`` (margin 0.2, beta 1.2) on the triplets
    of ``miners.DistanceWeightedMiner()``, drawn from ``generator`` (a CPU generator)."""
    from pytorch_metric_learning import losses

    return PMLLoss(losses.MarginLoss(), distance_weighted_miner(generator))


class _AdaptiveLoss(ABC):
    """Phi in a tensor (moved in place), called as ``loss(embeddings, labels)``; subclasses define the loss."""

    params: torch.Tensor

    def set_phi(self, values: np.ndarray) -> None:
        """Copy the host values into :attr:`params` in place (the tensor stays the same object)."""
        self.params.copy_(torch.as_tensor(np.asarray(values), dtype=self.params.dtype))

    @property
    def phi(self) -> np.ndarray:
        return self.params.detach().cpu().numpy().astype(np.float64)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.functional(embeddings, labels, self.params)

    @abstractmethod
    def functional(self, embeddings: torch.Tensor, labels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The loss of ``embeddings`` and ``labels`` under the loss parameters ``params``."""

    @abstractmethod
    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[n_params, 2]`` on the embeddings' device: per loss parameter, the mean of the term it weights over
        all positive pairs and over all negative pairs of ``embeddings`` (a validation set)."""


def _check_phi(values: np.ndarray, size: int, low: float, high: float, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (size,) or not np.all(np.isfinite(values)) or np.any(values < low) or np.any(values > high):
        raise ValueError(f"{name} Phi must be {size} finite values in [{low}, {high}], got {values!r}")
    return values


class DistanceMixtureLoss(_AdaptiveLoss):
    """Eq. 9: a Phi-weighted mixture of five increasing terms of ``d+`` and five decreasing terms of ``d-``.

    ``miner`` picks the triplets (``None``: every valid triplet of the batch). ``phi`` defaults to
    :data:`MIXTURE_PHI_INIT`; entries lie in ``[0, 1]``.
    """

    n_params = 10

    def __init__(
        self, phi: np.ndarray | None = None, miner: Miner | None = None, eps: float = MIXTURE_EPS,
        device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        values = _check_phi(MIXTURE_PHI_INIT if phi is None else phi, self.n_params, 0.0, 1.0, "distance-mixture")
        self.params = torch.tensor(values, dtype=torch.float32, device=device)
        self.miner, self.eps = miner, eps

    def set_phi(self, values: np.ndarray) -> None:
        super().set_phi(_check_phi(values, self.n_params, 0.0, 1.0, "distance-mixture"))

    def _weighted(self, distances: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_i Phi(i) F_i^+(d)`` and ``sum_i Phi(i+5) F_i^-(d)`` of every distance."""
        terms = mixture_terms(distances, self.eps)
        mixed = torch.tensordot(params[:5], terms[:5], dims=1), torch.tensordot(params[5:], terms[5:], dims=1)
        return mixed

    def functional(self, embeddings: torch.Tensor, labels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        distances = pairwise_distances(embeddings)
        if self.miner is None:
            return _all_triplet_mean(*self._weighted(distances, params), labels)
        anchor, positive, negative = self.miner(embeddings, labels)
        if len(anchor) == 0:  # no triplet drawn: a zero that keeps the graph (as pytorch-metric-learning's losses)
            return embeddings.sum() * 0.0
        pos_terms, _ = self._weighted(distances[anchor, positive], params)
        _, neg_terms = self._weighted(distances[anchor, negative], params)
        return (pos_terms + neg_terms).mean()

    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pair_means(embeddings, labels, lambda d: mixture_terms(d, self.eps))


class FocalDistanceLoss(_AdaptiveLoss):
    """Eq. 10: focal (log-sum-exp) weighting of every anchor's positive and negative distances, offset ``alpha``.

    ``phi`` defaults to :data:`FOCAL_PHI_INIT`; both entries must lie in ``[phi_min, phi_max]`` (positive).
    """

    n_params = 2

    def __init__(
        self, phi: np.ndarray | None = None, alpha: float = FOCAL_ALPHA, phi_min: float = 1 / FOCAL_PHI_RANGE,
        phi_max: float = FOCAL_PHI_RANGE,
        device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        if not 0 < phi_min < phi_max:
            raise ValueError(f"need 0 < phi_min < phi_max, got {phi_min}, {phi_max}")
        self.alpha, self.phi_min, self.phi_max = alpha, phi_min, phi_max
        values = _check_phi(FOCAL_PHI_INIT if phi is None else phi, self.n_params, phi_min, phi_max, "focal")
        self.params = torch.tensor(values, dtype=torch.float32, device=device)

    def set_phi(self, values: np.ndarray) -> None:
        super().set_phi(_check_phi(values, self.n_params, self.phi_min, self.phi_max, "focal"))

    def functional(self, embeddings: torch.Tensor, labels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        distances = pairwise_distances(embeddings)
        positive, negative = _pair_masks(labels, labels, 0)
        zero = torch.zeros(len(labels), 1, device=distances.device, dtype=distances.dtype)

        def soft_max(scale: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            # 1/Phi log(1 + sum exp(Phi x)) = 1/Phi logsumexp([0, Phi x...]) over the anchor's masked pairs
            scaled = torch.where(mask, scale * offsets, float("-inf"))  # a scalar: no tensor built on the host
            return torch.logsumexp(torch.cat([zero, scaled], dim=1), dim=1) / scale

        pull = soft_max(params[0], distances - self.alpha, positive)
        push = soft_max(params[1], self.alpha - distances, negative)
        return (pull + push).mean()

    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        own_first = pair_means(embeddings, labels, lambda d: d[None])  # [[positive mean, negative mean]]
        return torch.cat([own_first, own_first.flip(1)])


# ---------------------------------------------------------------- retrieval


def retrieval_hits(
    embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = RECALL_KS, block: int = 512
) -> torch.Tensor:
    """``[N, len(ks)]`` booleans: whether any of the ``k`` nearest other items of each query shares its class.

    Items are both queries and references (a query is never its own neighbour); nearest means the largest
    cosine similarity of the L2-normalised embeddings. A query or reference with a non-finite embedding never
    counts as a hit. ``k`` larger than ``N - 1`` is clamped to ``N - 1``.
    """
    if len(labels) < 2:
        raise ValueError(f"retrieval needs at least 2 items, got {len(labels)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    largest = min(max(ks), len(labels) - 1)
    normalized = F.normalize(embeddings.detach().float(), dim=1)
    finite = torch.isfinite(normalized).all(dim=1)
    normalized = torch.where(finite[:, None], normalized, torch.zeros_like(normalized))
    columns = [min(k, largest) - 1 for k in ks]
    hits = []
    for start in range(0, len(labels), block):
        similarity = normalized[start : start + block] @ normalized.T
        rows = torch.arange(similarity.shape[0], device=similarity.device)
        similarity[rows, rows + start] = float("-inf")
        similarity.masked_fill_(~finite[None, :], float("-inf"))  # a mask index would sync with the host
        neighbours = similarity.topk(largest, dim=1).indices
        # Ties at -inf (fewer finite items than k) may pick the query itself: never a hit.
        others = neighbours != (rows + start)[:, None]
        matches = (labels[neighbours] == labels[start : start + block, None]) & finite[neighbours] & others
        found = matches.cumsum(dim=1) > 0  # found[:, j]: a match within the first j + 1 neighbours
        # Column by column: an index tensor would be copied from the host for every block.
        hits.append(torch.stack([found[:, column] for column in columns], dim=1) & finite[start : start + block, None])
    return torch.cat(hits)


class RetrievalEvaluator:
    """Recall@``k`` of embeddings as the metric (higher is better), with named statistics.

    Statistics: ``"recall@k"`` for every ``k`` of ``ks``; ``"embedding_norm"``, the mean norm of the raw
    embeddings (non-finite when the model diverged); ``"loss"``, a fixed yardstick of the embedding whatever
    loss trains it: Eq. 9 at its initial Phi averaged over pairs (mean ``d^2`` over positive pairs plus mean
    ``0.5 / (d + eps)`` over negative pairs); ``"terms"``, ``loss.terms(...)`` (``[n_params, 2]``)
    when an adaptive ``loss`` is given. ``class_metric`` is Recall@``k`` per query class (``num_classes``
    entries; classes absent from the split get 0). One device-to-host copy per call.
    """

    higher_is_better = True
    worst = 0.0

    def __init__(
        self, num_classes: int, k: int = 1, ks: Sequence[int] = RECALL_KS, loss: _AdaptiveLoss | None = None,
        block: int = 512,
    ) -> None:  # fmt: skip
        self.ks = tuple(sorted(set(ks) | {k}))
        self.num_classes, self.k, self.loss, self.block = num_classes, k, loss, block
        self.metric_column = self.ks.index(k)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Evaluation:
        hits = retrieval_hits(embeddings, labels, self.ks, self.block).float()
        recalls = hits.mean(dim=0)
        sums = torch.zeros(self.num_classes, device=hits.device).index_add_(0, labels, hits[:, self.metric_column])
        per_class = sums / class_counts(labels, self.num_classes).clamp_min(1)
        norm = embeddings.detach().float().norm(dim=1).mean()
        # F_1^+ and F_1^-: the first of the five increasing and of the five decreasing terms
        yardstick = pair_means(embeddings, labels, lambda d: mixture_terms(d)[::5], self.block)
        parts = [recalls, norm[None], (yardstick[0, 0] + yardstick[1, 1])[None], per_class]
        if self.loss is not None:
            parts.append(self.loss.terms(embeddings, labels).flatten())
        packed = torch.cat([part.float() for part in parts]).double().cpu().numpy()
        n_ks = len(self.ks)
        statistics: dict[str, Any] = {f"recall@{k}": float(packed[i]) for i, k in enumerate(self.ks)}
        statistics["embedding_norm"], statistics["loss"] = float(packed[n_ks]), float(packed[n_ks + 1])
        class_end = n_ks + 2 + self.num_classes
        if self.loss is not None:
            statistics["terms"] = packed[class_end:].reshape(-1, 2)
        return Evaluation(
            metric=float(packed[self.metric_column]),
            higher_is_better=True,
            statistics=statistics,
            class_metric=packed[n_ks + 2 : class_end],
        )
