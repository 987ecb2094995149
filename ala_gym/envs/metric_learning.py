"""The metric-learning environments of ALA (section 4, Eqs. 9 and 10; Table 3): an embedding child trained
on some classes, rewarded by Recall@k on others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ala_gym.core.checks import as_numbers, check_int, check_real
from ala_gym.core.data import class_disjoint
from ala_gym.core.metric_learning import (
    FOCAL_PHI_RANGE,
    RECALL_KS,
    DistanceMixtureLoss,
    FocalDistanceLoss,
    RetrievalEvaluator,
    distance_weighted_miner,
    margin_loss,
    triplet_margin_loss,
)
from ala_gym.core.metrics import Evaluation
from ala_gym.core.trainer import seed_streams
from ala_gym.envs.base import ALAEnv
from ala_gym.envs.spec import BuiltTask, ComparedByValue, TaskSpec, assemble
from ala_gym.envs.task import LossTask, check_values

FRAMEWORKS = ("triplet", "margin")
LOSS_FORMS = ("mixture", "focal", "fixed")
DEFAULT_FORM = {"triplet": "mixture", "margin": "focal"}
"""The adaptive form each framework carries by default (Table 3's rows "Triplet + ALA (Distance mixture)"
and "Margin + ALA (Focal weighting)"; "Margin + ALA (Distance mixture)" is ``loss_form="mixture"``)."""
TERMS_CLIP = 10.0  # bound of the per-row statistics (every term lies in [0, 6.4] on the unit sphere)


class EmbeddingLossTask(LossTask):
    """The loss parameters of Eq. 9 or Eq. 10, one row per parameter, with the statistics of
    :meth:`ala_gym.core.metric_learning.DistanceMixtureLoss.terms` (or the focal loss's) as its features.

    ``form`` is the adaptive loss whose parameters the rows are; ``train_form`` the loss the child trains
    under: the same, or ``"fixed"`` (the framework's pytorch-metric-learning loss; the rows are then
    observed and moved but change nothing). Under the margin framework the mixture and the fixed margin
    loss average over triplets of Wu et al.'s distance-weighted miner, seeded by :meth:`seed`.

    Rows and values: the mixture's 10 weights ``Phi(i)`` in ``[0, 1]`` (moved by ``beta``); the focal loss's
    2 scales as ``v = log(Phi) / log(16)`` in ``[-1, 1]`` (moved by ``beta``, so one step multiplies
    ``Phi`` by ``16^beta``, 1.32 at 0.1); ``phi`` reads and prescribes ``Phi`` itself in both.
    """

    statistics_bound = TERMS_CLIP

    def __init__(
        self, form: str, train_form: str, framework: str, beta: float, phi_init: np.ndarray | None, device: torch.device
    ) -> None:
        self.form, self.framework = form, framework
        self._miner_generator = torch.Generator()
        miner = distance_weighted_miner(self._miner_generator) if framework == "margin" else None
        if form == "mixture":
            self.adaptive: DistanceMixtureLoss | FocalDistanceLoss = DistanceMixtureLoss(miner=miner, device=device)
            self.bounds = (0.0, 1.0)
        else:
            self.adaptive = FocalDistanceLoss(device=device)
            self.bounds = (-1.0, 1.0)
        self.initial_values = self.phi_checker()(self.adaptive.phi if phi_init is None else phi_init)
        self.values = self.initial_values.copy()
        self.step_sizes = np.full(self.rows, beta)
        if train_form == "fixed":
            self.loss = margin_loss(self._miner_generator) if framework == "margin" else triplet_margin_loss()
        else:
            self.loss = self.adaptive
        self.set_values(self.initial_values)

    def phi_of_values(self, values: np.ndarray) -> np.ndarray:
        """Eq. 9's 10 weights or Eq. 10's 2 scales."""
        return phi_of_values(values, self.form)

    def phi_checker(self) -> Callable[[Any], np.ndarray]:
        return partial(values_of_phi, form=self.form)

    def seed(self, seed: int) -> None:
        self._miner_generator.manual_seed(seed_streams(seed, 3)[2])

    def set_values(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.adaptive.set_phi(phi_of_values(self.values, self.form))

    def row_statistics(self, evaluation: Evaluation) -> np.ndarray:
        return np.clip(evaluation.statistics["terms"], 0.0, TERMS_CLIP)

    def row_metric(self, evaluation: Evaluation) -> np.ndarray:
        return np.full(self.rows, evaluation.metric)  # retrieval has no finer per-parameter credit

    def final_info(self, test: Evaluation | None) -> dict[str, float]:
        """``test_recall@k`` for k = 1, 2, 4, 8 on the test split (0 for a diverged child)."""
        return {f"test_recall@{k}": 0.0 if test is None else test.statistics[f"recall@{k}"] for k in RECALL_KS}

    def info(self, evaluation: Evaluation) -> dict[str, Any]:
        recalls = {key: value for key, value in evaluation.statistics.items() if key.startswith("recall@")}
        return {"terms": evaluation.statistics["terms"], **recalls}  # phi: the episode adds it to every info


def phi_of_values(values: np.ndarray, form: str) -> np.ndarray:
    """The loss parameters of the rows' values (the identity for the mixture, ``16^v`` for focal)."""
    return values.copy() if form == "mixture" else FOCAL_PHI_RANGE ** np.asarray(values)


def values_of_phi(phi: Any, form: str) -> np.ndarray:
    """The rows' values of user-given loss parameters, or a ``ValueError`` saying what they must be."""
    if form == "mixture":
        return check_values(phi, rows=10, bounds=(0.0, 1.0))
    phi = as_numbers("the focal loss parameters", phi, "2 values")
    low, high = 1 / FOCAL_PHI_RANGE, FOCAL_PHI_RANGE
    if phi.shape != (2,) or not np.all(np.isfinite(phi)) or np.any((phi < low) | (phi > high)):
        raise ValueError(f"the focal loss parameters must be 2 finite values in [{low}, {high}], got {phi!r}")
    return np.log(phi) / np.log(FOCAL_PHI_RANGE)


class ALAMetricLearningEnv(ALAEnv):
    """
    ## Description
    One embedding child trained under an adaptive metric-learning loss of Adaptive Loss Alignment (Huang et
    al., ICML 2019, section 4): the **distance mixture** of Eq. 9 (``Phi`` weights five increasing functions
    of the anchor-positive distance and five decreasing functions of the anchor-negative distance) or the
    **focal weighting** of Eq. 10 (``Phi`` scales a log-sum-exp over each anchor's positive and negative
    distances, offset ``alpha = 1``). The functions, their defaults and the choices the paper leaves open are
    in :mod:`ala_gym.core.metric_learning`. The child's outputs are L2-normalised embeddings of
    ``embedding_size`` dimensions, trained on class-balanced P x K batches of the **training classes**; the
    validation and test splits hold **other classes** (:func:`ala_gym.core.data.class_disjoint`; by default
    classes 0-4 train, 5-9 are retrieved), as in the paper's Stanford Online Products protocol, with one
    difference: there the validation and test classes are disjoint too, while here both retrieve the same
    held-out classes (other images), since a 10-class dataset leaves too few classes to split three ways. The
    reward is thus measured on the classes the final test reports on.

    ``framework`` names the paper's two settings (Table 3), which differ in sampling and fixed loss:
    ``"triplet"`` (after Schroff et al., but over every valid triplet of the batch rather than their semi-hard
    negatives; fixed loss pytorch-metric-learning's ``TripletMarginLoss()`` at its defaults: unsquared
    distances and margin 0.05, not Eq. 8's squared distances) and ``"margin"`` (Wu et al.: triplets drawn by
    the distance-weighted miner; fixed loss ``MarginLoss()``). ``loss_form`` picks the adaptive loss: by default the distance mixture
    under ``"triplet"`` and focal weighting under ``"margin"``; ``"mixture"`` under ``"margin"`` is the
    paper's best row; ``"fixed"`` trains under the framework's fixed loss (the baseline), with the rows of the
    framework's default adaptive form still observed and moved but not used.

    ## Action Space
    ``MultiDiscrete([3] * rows)``: one entry per loss parameter (10 for the mixture, 2 for focal), moving it
    by ``-beta``, ``0`` or ``+beta``. Mixture weights stay in ``[0, 1]``. Focal scales move on a log scale:
    the row value is ``v = log16(Phi)`` in ``[-1, 1]`` (``Phi`` in ``[1/16, 16]``), so a step multiplies
    ``Phi`` by ``16^beta``.

    ## Observation Space
    ``Box(shape=(rows, 24), float32)``, the layout of the classification env with one row per loss
    parameter instead of per class pair:

    | columns | what | range |
    |---|---|---|
    | 0-19 | the row's two statistics at the last 10 steps, oldest first | [0, 10] |
    | 20-21 | their relative change from the exponential moving average (rate 0.1) | [-10, 10] |
    | 22 | the row's value (mixture weight, or ``log16`` of the focal scale) | [0, 1] or [-1, 1] |
    | 23 | progress: iterations done / ``total_iterations`` | [0, 1] |

    The statistics are computed on the validation subsample at the step's last iteration (the paper's
    "computed distance terms"): for mixture row ``i`` the mean of its function ``F_i`` over all positive and
    over all negative validation pairs; for focal row 1 (positives) the mean distance of positive pairs and
    of negative pairs, for row 2 (negatives) the reverse. Unlike the classification env's, these statistics are
    not normalised: every term is bounded on the unit sphere (in ``[0, 6.4]``) and clipped at 10. Controllers
    built for the class-pair rows of the classification env act on these rows unchanged.

    ## Rewards
    Eq. 5 on the validation Recall@``recall_k`` (one k: the paper's "average Recall@k" is not defined further;
    default 1; higher is better, so the reward is
    ``sign(M_{t+1} - M_t)``), discounted over the step as Eq. 4 (see the classification env:
    ``eval_points`` evaluations ``eval_stride`` apart). A query's neighbours are the other items of the
    validation subsample, by cosine similarity of the normalised embeddings (``torch.topk`` on the device).
    ``reward="raw"`` gives the unquantised difference. If training diverges (a non-finite training loss or
    embedding), the episode terminates with reward ``divergence_penalty`` (default -10) and
    ``info["diverged"] = True``.

    ## Episode End
    When the child has used ``total_iterations`` SGD iterations, or on divergence. On termination ``info``
    carries ``test_metric`` (Recall@``recall_k`` within the full test split), ``test_recall@1`` to
    ``test_recall@8``, ``final_val_metric`` and ``final_val_loss`` (the evaluator's fixed yardstick loss on the
    full validation split); a diverged child scores 0 there (``inf`` for the loss).

    ``info`` always carries ``val_metric``, ``val_metric_discounted``, ``train_loss``, ``iteration``,
    ``phi`` (the loss parameters), ``terms`` (the raw statistics, ``[rows, 2]``), ``recall@1`` to
    ``recall@8`` (validation subsample), ``diverged`` and ``row_improvement`` (the whole metric's improvement
    for every row: retrieval has no finer credit); ``val_loss`` is the evaluator's fixed yardstick loss (as
    ``final_val_loss``) on the validation subsample, whatever loss the child trains under.

    ## Arguments
    * ``dataset`` (``"fashion-mnist"``, ``"cifar10"``, ``"digits"``), ``data_root``, ``download``,
      ``val_size``, ``split_seed``: as in the classification env; ``train_classes``, ``val_classes``,
      ``test_classes``: the class-disjoint split (defaults above).
    * ``framework`` (``"triplet"``/``"margin"``), ``loss_form`` (``"mixture"``/``"focal"``/``"fixed"``,
      default per framework), ``phi_init`` (Eq. 9: ``d^2`` and ``0.5/d`` selected; Eq. 10: ``[4, 4]``),
      ``beta`` (0.1).
    * ``steps_per_action`` (K, 100): SGD iterations between two decisions of the controller.
    * ``model``, ``embedding_size`` (64), ``total_iterations``, ``batch_size`` (P x K), ``samples_per_class``
      (K), ``lr``, ``momentum``, ``weight_decay``, ``lr_milestones``, ``lr_decay``: the child's training.
    * ``recall_k`` (1), ``reward``, ``gamma``, ``eval_points``, ``eval_stride``, ``val_subsample`` (1000),
      ``history``, ``divergence_penalty``, ``device``, ``num_threads``: as in the classification env.

    These are the keywords of :meth:`make_spec`, which turns them into the env's
    :class:`ala_gym.envs.spec.TaskSpec` (a spec of one's own makes its env with ``spec.make_env()``).

    pytorch-metric-learning's miner loops over the batch's classes on the host and cannot be ``vmap``-ed, so
    ``gym.make_vec`` trains the children of these envs one after another (``train_mode="sequential"``;
    ``"batched"`` is refused).

    ## Version History
    * v0: initial version.
    """

    @classmethod
    def make_spec(
        cls,
        dataset: str = "fashion-mnist",
        framework: str = "triplet",
        *,
        loss_form: str | None = None,
        data_root: str | None = None,
        download: bool = True,
        val_size: int | None = None,
        split_seed: int = 0,
        train_classes: list[int] | None = None,
        val_classes: list[int] | None = None,
        test_classes: list[int] | None = None,
        model: str = "small_cnn",
        embedding_size: int = 64,
        total_iterations: int = 2000,
        steps_per_action: int = 100,
        batch_size: int = 100,
        samples_per_class: int = 20,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: tuple[float, ...] = (0.5, 0.75),
        lr_decay: float = 0.1,
        beta: float = 0.1,
        phi_init: np.ndarray | None = None,
        recall_k: int = 1,
        reward: str = "sign",
        gamma: float = 0.9,
        eval_points: int = 3,
        eval_stride: int = 10,
        val_subsample: int | None = 1000,
        history: int = 10,
        divergence_penalty: float = -10.0,
        device: str = "auto",
    ) -> TaskSpec:
        """The :class:`ala_gym.envs.spec.TaskSpec` of these keywords (the env's Arguments), checked part by part."""
        keywords = dict(locals())  # first: the keywords and nothing else
        del keywords["cls"]
        return assemble(cls, keywords, RetrievalLoss, renames={"embedding_size": "output_size"})


@dataclass(frozen=True, eq=False)  # compared by value (phi_init may be an array, which has no truth value)
class RetrievalLoss(ComparedByValue):
    """The metric-learning part of a :class:`ala_gym.envs.spec.TaskSpec`: the framework, the adaptive loss its
    rows parameterise, Recall@k and the class-disjoint split (each field as under :class:`ALAMetricLearningEnv`'s
    Arguments)."""

    framework: str = "triplet"
    loss_form: str | None = None
    """None: the framework's default form (:data:`DEFAULT_FORM`)."""
    beta: float = 0.1
    phi_init: np.ndarray | None = None
    recall_k: int = 1
    train_classes: list[int] | None = None
    val_classes: list[int] | None = None
    test_classes: list[int] | None = None

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {self.framework!r}")
        loss_form = DEFAULT_FORM[self.framework] if self.loss_form is None else self.loss_form
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {loss_form!r}")
        object.__setattr__(self, "loss_form", loss_form)
        object.__setattr__(self, "beta", check_real("beta", self.beta, 0.0, low_open=True))
        object.__setattr__(self, "recall_k", check_int("recall_k", self.recall_k, 1))

    @property
    def metric(self) -> str:
        return f"recall@{self.recall_k}"

    @property
    def higher_is_better(self) -> bool:
        return True

    @property
    def row_form(self) -> str:
        """The adaptive form whose parameters the rows are (the framework's own under ``"fixed"``)."""
        assert self.loss_form is not None  # set by __post_init__
        return DEFAULT_FORM[self.framework] if self.loss_form == "fixed" else self.loss_form

    def _check_recall_k(self, name: str, labels: torch.Tensor) -> None:
        """Refuse a ``recall_k`` at which every query of ``labels``' items finds an item of its class whatever the
        embedding: more neighbours than the items of other classes than the query's (its class the smallest), and a
        split of no item or of one class, where Recall@k measures nothing."""
        present = labels.unique()
        if len(present) < 2:
            raise ValueError(
                f"the {name} holds {len(labels)} item(s) of {len(present)} class(es), and Recall@k needs items of 2 classes "
                "at least: give it more items (val_size, val_subsample) or more classes (val_classes, test_classes)"
            )
        others = len(labels) - int(torch.bincount(labels)[present].min())
        if self.recall_k > others:
            raise ValueError(
                f"recall_k={self.recall_k} makes Recall@k 1 whatever the embedding on the {name} ({len(labels)} items, "
                f"{others} outside the smallest class's): choose recall_k <= {others}, or evaluate on more items"
            )

    def build(self, spec: TaskSpec) -> BuiltTask:
        per_class = spec.train.samples_per_class
        if per_class is not None and per_class < 2:  # no positive pair in a batch: the losses would be 0
            raise ValueError(f"samples_per_class must be at least 2 for metric learning (a batch needs two items of a "
                             f"class for a positive pair), got {per_class}")  # fmt: skip
        data = class_disjoint(spec.data.load(), self.train_classes, self.val_classes, self.test_classes)
        assert self.loss_form is not None  # set by __post_init__
        make_task = partial(
            EmbeddingLossTask, self.row_form, self.loss_form, self.framework, self.beta, self.phi_init, data.device
        )
        # The statistics depend on the loss's shape functions only, never on Phi: one evaluator serves every child.
        adaptive = make_task().adaptive
        val_eval = spec.data.validation(data)
        for name, split in (("validation subsample", val_eval), ("test split", data.test)):
            self._check_recall_k(name, split.labels)
        return BuiltTask(
            spec=spec,
            data=data,
            evaluator=RetrievalEvaluator(data.num_classes, self.recall_k, loss=adaptive),
            val_eval=val_eval,
            make_task=make_task,
            # pytorch-metric-learning's miner loops over the batch's classes on the host: no vmap over children.
            batchable=False,
            attributes={
                "num_classes": data.num_classes, "framework": self.framework, "loss_form": self.loss_form,
                "row_form": self.row_form, "beta": self.beta, "phi_init": self.phi_init,
            },
        )  # fmt: skip
