"""The metric-learning environments of ALA (section 4, Eqs. 9 and 10; Table 3): an embedding child trained
on some classes, rewarded by Recall@k on others."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from ala_gym.core.checks import check_int, check_real
from ala_gym.core.data import ClassificationData, class_disjoint
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
from ala_gym.core.trainer import TrainConfig, seed_streams
from ala_gym.envs.base import ALAEnv, load_env_dataset, set_threads, validation_subsample
from ala_gym.envs.episode import EpisodeSettings
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
        return {"phi": self.phi, "terms": evaluation.statistics["terms"], **recalls}


def phi_of_values(values: np.ndarray, form: str) -> np.ndarray:
    """The loss parameters of the rows' values (the identity for the mixture, ``16^v`` for focal)."""
    return values.copy() if form == "mixture" else FOCAL_PHI_RANGE ** np.asarray(values)


def values_of_phi(phi: Any, form: str) -> np.ndarray:
    """The rows' values of user-given loss parameters, or a ``ValueError`` saying what they must be."""
    if form == "mixture":
        return check_values(phi, rows=10, bounds=(0.0, 1.0))
    phi = np.asarray(phi, dtype=np.float64)
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
    classes 0-4 train, 5-9 are retrieved), as in the paper's Stanford Online Products protocol.

    ``framework`` names the paper's two settings (Table 3), which differ in sampling and fixed loss:
    ``"triplet"`` (Schroff et al.: every valid triplet of the batch; fixed loss pytorch-metric-learning's
    ``TripletMarginLoss()``) and ``"margin"`` (Wu et al.: triplets drawn by the distance-weighted miner;
    fixed loss ``MarginLoss()``). ``loss_form`` picks the adaptive loss: by default the distance mixture
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
    of negative pairs, for row 2 (negatives) the reverse. Controllers built for the class-pair rows of the
    classification env act on these rows unchanged.

    ## Rewards
    Eq. 5 on the validation Recall@``recall_k`` (default 1; higher is better, so the reward is
    ``sign(M_{t+1} - M_t)``), discounted over the step as Eq. 4 (see the classification env:
    ``eval_points`` evaluations ``eval_stride`` apart). A query's neighbours are the other items of the
    validation subsample, by cosine similarity of the normalised embeddings (``torch.topk`` on the device).
    ``reward="raw"`` gives the unquantised difference. If training diverges (a non-finite training loss or
    embedding), the episode terminates with reward ``divergence_penalty`` (default -10) and
    ``info["diverged"] = True``.

    ## Episode End
    When the child has used ``total_iterations`` SGD iterations, or on divergence. On termination ``info``
    carries ``test_metric`` (Recall@``recall_k`` within the full test split), ``test_recall@1`` to
    ``test_recall@8`` and ``final_val_metric``; a diverged child scores 0 there.

    ``info`` always carries ``val_metric``, ``val_metric_discounted``, ``train_loss``, ``iteration``,
    ``phi`` (the loss parameters), ``terms`` (the raw statistics, ``[rows, 2]``), ``recall@1`` to
    ``recall@8`` (validation subsample), ``diverged`` and ``row_improvement`` (the whole metric's improvement
    for every row: retrieval has no finer credit); ``val_loss`` is NaN (no cross-entropy here).

    ## Arguments
    * ``dataset`` (``"fashion-mnist"``, ``"cifar10"``, ``"digits"``), ``data_root``, ``download``,
      ``val_size``, ``split_seed``: as in the classification env; ``train_classes``, ``val_classes``,
      ``test_classes``: the class-disjoint split (defaults above).
    * ``framework`` (``"triplet"``/``"margin"``), ``loss_form`` (``"mixture"``/``"focal"``/``"fixed"``,
      default per framework), ``phi_init`` (Eq. 9: ``d^2`` and ``0.5/d`` selected; Eq. 10: ``[4, 4]``),
      ``beta`` (0.1).
    * ``model``, ``embedding_size`` (64), ``total_iterations``, ``batch_size`` (P x K), ``samples_per_class``
      (K), ``lr``, ``momentum``, ``weight_decay``, ``lr_milestones``, ``lr_decay``: the child's training.
    * ``recall_k`` (1), ``reward``, ``gamma``, ``eval_points``, ``eval_stride``, ``val_subsample`` (1000),
      ``history``, ``divergence_penalty``, ``device``, ``num_threads``: as in the classification env.

    pytorch-metric-learning's miner loops over the batch's classes on the host and cannot be ``vmap``-ed, so
    ``gym.make_vec`` trains the children of these envs one after another (``train_mode="sequential"``;
    ``"batched"`` is refused).

    ## Version History
    * v0: initial version.
    """

    batchable = False

    def __init__(
        self,
        dataset: str = "fashion-mnist",
        framework: str = "triplet",
        *,
        loss_form: str | None = None,
        render_mode: str | None = None,
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
        num_threads: int | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (this env does not render), got {render_mode!r}")
        self.render_mode = render_mode
        set_threads(num_threads)
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
        loss_form = DEFAULT_FORM[framework] if loss_form is None else loss_form
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {loss_form!r}")
        beta = check_real("beta", beta, 0.0, low_open=True)
        recall_k = check_int("recall_k", recall_k, 1)
        settings = EpisodeSettings(
            total_iterations=total_iterations, steps_per_action=steps_per_action, reward=reward, gamma=gamma,
            eval_points=eval_points, eval_stride=eval_stride, history=history, divergence_penalty=divergence_penalty,
        )  # fmt: skip
        self.train_config = TrainConfig(
            model=model, total_iterations=total_iterations, batch_size=batch_size, lr=lr, momentum=momentum,
            weight_decay=weight_decay, lr_milestones=lr_milestones, lr_decay=lr_decay,
            samples_per_class=samples_per_class, output_size=embedding_size,
        )  # fmt: skip
        full = load_env_dataset(
            dataset, data_root=data_root, download=download, val_size=val_size, split_seed=split_seed, device=device
        )
        self.data: ClassificationData = class_disjoint(full, train_classes, val_classes, test_classes)
        self.num_classes = self.data.num_classes
        self.framework, self.loss_form = framework, loss_form
        self.row_form = DEFAULT_FORM[framework] if loss_form == "fixed" else loss_form
        self.beta, self.phi_init = beta, phi_init
        self.steps_per_action, self.metric = steps_per_action, f"recall@{recall_k}"
        self.val_eval = validation_subsample(self.data.val, val_subsample, split_seed)
        # The statistics depend on the loss's shape functions only, never on Phi: one evaluator serves every child.
        self.evaluator = RetrievalEvaluator(self.num_classes, recall_k, loss=self._task(phi_init).adaptive)
        self._setup(settings)

    def _task(self, phi_init: np.ndarray | None) -> EmbeddingLossTask:
        return EmbeddingLossTask(self.row_form, self.loss_form, self.framework, self.beta, phi_init, self.data.device)

    def make_task(self) -> EmbeddingLossTask:
        return self._task(self.phi_init)


def _defaults(dataset: str) -> dict[str, Any]:
    if dataset == "cifar10":
        # ResNet-32 as the paper's CIFAR child; budget and learning rate chosen for the CPU, not tuned.
        return dict(model="resnet32", total_iterations=8000, steps_per_action=200, lr=0.05, weight_decay=1e-4)
    return {}


class ALAFashionMNISTTripletEnv(ALAMetricLearningEnv):
    """
    ## Description
    :class:`ALAMetricLearningEnv` in the triplet framework with the distance mixture (Eq. 9) on Fashion-MNIST:
    training on classes 0-4 (T-shirt, trouser, pullover, dress, coat; 25,000 images of the 50,000-image
    training split), retrieval on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot; about 5,000 validation
    and 5,000 test images). Small CNN with a 64-d embedding, 2,000 momentum-SGD iterations of 5 x 20 batches
    (lr 0.01, decayed 10x at 50% and 75%), a controller step every K = 100 iterations: 20 steps an episode.

    ## Arguments
    Every keyword of :class:`ALAMetricLearningEnv`.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("fashion-mnist", "triplet", **{**_defaults("fashion-mnist"), **kwargs})


class ALAFashionMNISTMarginEnv(ALAMetricLearningEnv):
    """
    ## Description
    :class:`ALAMetricLearningEnv` in the margin framework (Wu et al.'s distance-weighted sampling) with focal
    weighting (Eq. 10) on Fashion-MNIST, with the data, child and budget of :class:`ALAFashionMNISTTripletEnv`.

    ## Arguments
    Every keyword of :class:`ALAMetricLearningEnv` (``loss_form="mixture"`` for the distance mixture).

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("fashion-mnist", "margin", **{**_defaults("fashion-mnist"), **kwargs})


class ALACIFAR10TripletEnv(ALAMetricLearningEnv):
    """
    ## Description
    :class:`ALAMetricLearningEnv` in the triplet framework with the distance mixture (Eq. 9) on CIFAR-10:
    training on classes 0-4 (airplane, automobile, bird, cat, deer), retrieval on 5-9 (dog, frog, horse, ship,
    truck). ResNet-32 with a 64-d embedding, 8,000 momentum-SGD iterations of 5 x 20 batches (lr 0.05,
    weight decay 1e-4, decayed 10x at 50% and 75%; pad-crop-flip augmentation), a step every K = 200
    iterations: 40 steps an episode. ``data_root`` as in :class:`ala_gym.envs.cifar10.ALACIFAR10Env`.

    ## Arguments
    Every keyword of :class:`ALAMetricLearningEnv`.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("cifar10", "triplet", **{**_defaults("cifar10"), **kwargs})


class ALACIFAR10MarginEnv(ALAMetricLearningEnv):
    """
    ## Description
    :class:`ALAMetricLearningEnv` in the margin framework with focal weighting (Eq. 10) on CIFAR-10, with the
    data, child and budget of :class:`ALACIFAR10TripletEnv`.

    ## Arguments
    Every keyword of :class:`ALAMetricLearningEnv` (``loss_form="mixture"`` for the distance mixture).

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("cifar10", "margin", **{**_defaults("cifar10"), **kwargs})
