"""The ALA classification environment; the registered classification ids are registrations of it with keywords."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ala_gym.core.checks import check_bool, check_real
from ala_gym.core.data import UserData
from ala_gym.core.losses import LOSS_FORMS, check_phi
from ala_gym.core.metrics import METRICS, ClassificationEvaluator
from ala_gym.core.models import ModelSpec, draws_randomness
from ala_gym.envs.base import ALAEnv
from ala_gym.envs.class_pairs import STEP_SCALINGS, ClassPairSettings, ClassPairTask
from ala_gym.envs.spec import BuiltTask, ComparedByValue, TaskSpec, assemble

__all__ = ["ALAClassificationEnv", "ClassificationLoss"]


@dataclass(frozen=True, eq=False)  # compared by value (phi_init may be an array, which has no truth value)
class ClassificationLoss(ComparedByValue):
    """The classification part of a :class:`ala_gym.envs.spec.TaskSpec`: Phi's actions, Eq. 6's form and the
    metric (each field as under :class:`ALAClassificationEnv`'s Arguments)."""

    beta: float = 0.1
    fixed_diagonal: bool = True
    step_scaling: str = "row"
    phi_init: np.ndarray | None = None
    loss_form: str = "linear"
    sigmoid_temperature: float = 1.0
    negative_floor: float | None = 1e-3
    metric: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", check_real("beta", self.beta, 0.0, low_open=True))
        temperature = check_real("sigmoid_temperature", self.sigmoid_temperature, 0.0, low_open=True)
        object.__setattr__(self, "sigmoid_temperature", temperature)
        if self.negative_floor is not None:
            floor = check_real("negative_floor", self.negative_floor, 0.0, 1.0, low_open=True, high_open=True)
            object.__setattr__(self, "negative_floor", floor)
        object.__setattr__(self, "fixed_diagonal", check_bool("fixed_diagonal", self.fixed_diagonal))
        if self.step_scaling not in STEP_SCALINGS:
            raise ValueError(f"step_scaling must be one of {STEP_SCALINGS}, got {self.step_scaling!r}")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"unknown loss_form {self.loss_form!r}; choose one of {LOSS_FORMS}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {sorted(METRICS)}")

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    def build(self, spec: TaskSpec) -> BuiltTask:
        data = spec.data.load()
        # Refuse a model that does not fit the data now; vmap cannot batch the random draws of dropout-like layers.
        batchable = not draws_randomness(spec.train.probe_model(data))
        num_classes = data.num_classes
        phi_init = check_phi(np.eye(num_classes) if self.phi_init is None else self.phi_init, num_classes)
        val_eval = spec.data.validation(data)
        val_class_counts = torch.bincount(val_eval.labels, minlength=num_classes).cpu().numpy()
        # The rows of a class the reward's subsample lacks would read placeholder statistics all run.
        held = torch.bincount(data.val.labels, minlength=num_classes).cpu().numpy() > 0
        missing = np.flatnonzero(held & (val_class_counts == 0)).tolist()
        if missing:
            raise ValueError(
                f"the validation subsample of {len(val_eval)} samples (val_subsample, drawn from split_seed="
                f"{spec.data.split_seed}) has no sample of class(es) {missing}, which the validation split holds: "
                "raise val_subsample, or pass val_subsample=None to measure on the whole split"
            )
        if self.metric == "aucpr":  # the macro mean over the classes present: of one class, 1 whatever the model
            splits = (("validation subsample", val_eval.labels, "val_size, val_subsample"),
                      ("test split", data.test.labels, "the dataset's test labels"))  # fmt: skip
            for name, labels, where in splits:
                if len(labels.unique()) < 2:
                    raise ValueError(f"AUCPR on the {name} ({len(labels)} item(s) of one class) is 1 whatever the model: "
                                     f"give it items of 2 classes at least ({where})")  # fmt: skip
        task_settings = ClassPairSettings(
            num_classes=num_classes, beta=self.beta, loss_form=self.loss_form,
            sigmoid_temperature=self.sigmoid_temperature, negative_floor=self.negative_floor,
            fixed_diagonal=self.fixed_diagonal, step_scaling=self.step_scaling,
        )  # fmt: skip
        return BuiltTask(
            spec=spec,
            data=data,
            evaluator=ClassificationEvaluator(num_classes, self.metric),
            val_eval=val_eval,
            make_task=partial(ClassPairTask, task_settings, phi_init, data.device, val_class_counts),
            batchable=batchable,
            attributes={
                "num_classes": num_classes, "beta": self.beta, "phi_init": phi_init, "task_settings": task_settings,
                "val_class_counts": val_class_counts,
            },
        )  # fmt: skip


class ALAClassificationEnv(ALAEnv):
    """
    ## Description
    One child model trained under the adaptive loss of Adaptive Loss Alignment (Huang et al., ICML 2019,
    Eq. 6): ``l = -y^T Phi log f(y|x)`` (``loss_form="linear"``, the default, equal to cross-entropy at
    ``Phi = I``) or the printed ``-sigmoid(y^T Phi log f(y|x))`` (``loss_form="sigmoid"``). Each step
    the agent moves every symmetric entry ``Phi(i, j) = Phi(j, i)`` one step down, not at all, or one step
    up (kept in ``[-1, 1]``; by default ``beta / (C - 1)`` off the diagonal with the diagonal held, the
    paper's ``beta`` on every entry with ``fixed_diagonal=False, step_scaling="entry"``: Action Space), the
    child then trains ``K`` momentum-SGD iterations under the new loss, and the reward says whether the
    discounted validation metric improved.

    ## Action Space
    ``MultiDiscrete([3] * n_pairs)`` with ``n_pairs = C (C + 1) / 2`` unordered class pairs ``(i, j)``,
    ``i <= j`` (diagonal included; 55 for 10 classes), in the row-major upper-triangle order of
    ``ala_gym.core.losses.class_pairs``. Action ``a`` changes the pair's entry by ``step * (a - 1)``, where
    ``step`` is, by default (``fixed_diagonal=True``, ``step_scaling="row"``):

    * ``0`` on the diagonal: ``Phi(i, i)`` stays at its initial value (1), and diagonal actions are
      ignored (``movable_rows`` marks the pairs an action can move);
    * ``beta / (C - 1)`` off the diagonal, so that one step changes a row's off-diagonal mass by at most
      ``beta`` whatever the class count (for 100 classes this is the 0.001 step that a public CIFAR-100
      re-implementation found by hand).

    The paper's literal rule (``fixed_diagonal=False, step_scaling="entry"``) moves every entry by
    ``beta``. Why the defaults differ, measured on digits with 10 children: the diagonal starts at its
    clip bound 1 and can only fall, and a random walk of +-beta per entry leaves rows whose off-diagonal
    entries reach the diagonal, where the loss's minimiser no longer puts the arg-max on the true class;
    an untrained policy then collapses the child, while with a held diagonal and per-row steps even a
    random policy does not (the ``reinforce-paper-multi`` and ``reinforce-frozen`` rows against ``ce`` in
    ``benchmarks/results/digits/table.md``).

    ## Observation Space
    ``Box(shape=(n_pairs, 24), float32)``: one row per pair ``(i, j)``, holding the paper's four state
    components (section 3.2):

    | columns | what | range |
    |---|---|---|
    | 0-19 | ``[C_ij, C_ji]`` of Eq. 7 at the last 10 steps, oldest first, divided by ``log C`` | [0, 10] |
    | 20-21 | relative change of ``[C_ij, C_ji]`` from their exponential moving average (rate 0.1) | [-10, 10] |
    | 22 | current ``Phi(i, j)`` | [-1, 1] |
    | 23 | progress: iterations done / ``total_iterations`` | [0, 1] |

    ``C`` is computed on the validation subsample at the step's last iteration. At reset the history
    is filled with the initial model's statistics.

    ## Rewards
    Eq. 4 discounts the validation metric over the step's ``K`` iterations, ``M_{t+1} = sum_j
    gamma^(K-j) M(w^j)``. Evaluating the validation set after each of the ``K`` iterations would cost
    more than the training itself, so the metric is measured at ``eval_points`` iterations spaced
    ``eval_stride`` apart and ending at the step's last iteration (those that would fall before the step's
    first are left out: ``min(eval_points, ceil(K / eval_stride))`` points), on a fixed validation subsample of
    ``val_subsample`` images (drawn once from ``split_seed``), and averaged with the weights
    ``gamma^(K-j)`` normalised to one. With ``gamma = 0.9`` the iterations more than 30 before the
    step's end carry under 5% of Eq. 4's weight, so three points 10 apart cover the part of the sum
    that matters. ``reward="sign"`` (default) gives Eq. 5's ``sign(M_t - M_{t+1})`` in {-1, 0, 1};
    ``reward="raw"`` gives the unquantised ``M_t - M_{t+1}``. ``M_0`` is the initial model's metric.
    For a metric where higher is better (``"accuracy"``, ``"aucpr"``) the difference is ``M_{t+1} - M_t``: a positive
    reward always means the child got better.

    If training diverges (a non-finite training or validation loss), the episode terminates with
    reward ``divergence_penalty`` (default -10, below any sign reward) and ``info["diverged"] = True``.

    ## Episode End
    The episode terminates when the child has used its budget of ``total_iterations`` SGD iterations
    (``ceil(total_iterations / K)`` steps; the last step may be shorter) or when training diverges.
    There is no truncation of its own: progress is part of the observation. On termination ``info`` also
    carries ``test_metric``, and ``final_val_metric`` and ``final_val_loss`` (the NLL) on the full validation
    set. A step truncated from
    outside (``gym.make(..., max_episode_steps=N)``, or the vector env's ``max_episode_steps``) does not:
    the training run has not finished; ``env.unwrapped.evaluate_split("test")`` measures it if wanted.
    A diverged child scores the metric's worst value there (``ala_gym.core.metrics.Metric.worst``:
    1.0 for ``"error"``, ``inf`` for ``"nll"``, 0.0 for ``"accuracy"`` and ``"aucpr"``), never NaN, and a
    ``final_val_loss`` of ``inf``.

    ## Rendering
    ``render_mode="rgb_array"``: ``render()`` returns an ``H x W x 3`` uint8 picture of the current Phi
    (on the fixed scale [-1, 1]) beside the validation confusion of the last evaluation, shown as
    ``exp(-C_ij)`` (Eq. 7: the geometric-mean probability that samples of class ``i`` give class ``j``).
    ``render_mode="ansi"``: ``render()`` returns the same as text, Phi above the confusion. ``gym.make(id, render_mode=...)``.

    ``info`` always carries ``val_metric`` and ``val_loss`` (subsample, at the step's last iteration),
    ``val_metric_discounted`` (``M_t``), ``train_loss`` (mean loss under Phi over the step), ``iteration``,
    ``phi`` (``C x C``), ``confusion`` (the raw Eq. 7 statistics), ``soft_labels`` (``C x C``: row ``i`` the mean
    predicted distribution over the correctly classified validation samples of class ``i``, one-hot where none
    is; the soft labels of online label smoothing), ``diverged`` and ``row_improvement``:
    per class pair ``(i, j)``, the improvement of the discounted validation metric (Eq. 4) restricted to the
    validation samples of classes ``i`` and ``j`` (``i`` alone on the diagonal; for AUCPR, whose per-class
    average precision ranks every sample, the mean of classes ``i``'s and ``j``'s, weighted by their counts),
    from the last step to this one: the credit of each pair's own decision, for controllers that want it (zero at reset and on
    divergence). The reward itself stays Eq. 5's, for the whole child.

    ## Arguments
    ``gym.make("ALA-Digits-v0", steps_per_action=20, total_iterations=200)``: every keyword of
    :meth:`make_spec`, which turns them into the env's :class:`ala_gym.envs.spec.TaskSpec` (a spec of one's own
    makes its env with ``spec.make_env()``, or ``ALAClassificationEnv(spec=spec)``: through ``gym.make``, only
    with ``ALA-Classification-v0``, whose registration adds no keyword beside it), plus ``render_mode`` and
    ``num_threads``:

    * ``dataset``: ``"digits"``, ``"fashion-mnist"``, ``"cifar10"`` or a name given to
      ``ala_gym.core.data.register_dataset``; ``data_root``, ``download`` and ``val_size`` go to its loader
      (``ala_gym.core.data``), ``split_seed`` fixes the train/validation split and the validation subsample
      (not the child's seed). ``train_size`` keeps that many of the training images (a subset drawn from
      ``split_seed``; None keeps them all): less data to fit, so that a long run overfits, the regime where the
      loss's regularisation shows; normalisation statistics stay those of the full training split. Data of one's
      own as arrays or Datasets (:func:`ala_gym.core.data.from_user_data`): the registration
      ``ALA-Classification-v0`` says how they are read and checked (``ala_gym.registration.ENV_IDS``).
    * ``model``: a name (``"mlp"``, ``"small_cnn"``, ``"resnet20"``, ``"resnet32"`` or one given to
      ``ala_gym.core.models.register_model``) or a factory ``(input_shape, num_outputs) -> nn.Module``;
      built and run once on two training inputs here, so a model that does not fit the data is refused at
      ``gym.make``.
    * ``total_iterations``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``, ``lr_milestones``,
      ``lr_decay``: the child's training (``ala_gym.core.trainer.TrainConfig``).
    * ``steps_per_action`` (K, 200 in the paper), ``beta`` (0.1), ``fixed_diagonal`` (True) and
      ``step_scaling`` (``"row"`` or ``"entry"``) as under Action Space, ``phi_init`` (identity), ``loss_form``,
      ``sigmoid_temperature``, ``negative_floor`` (1e-3: a negative entry stops rewarding ``log f_j`` once
      ``f_j`` is below it, which keeps Eq. 6 bounded; ``None`` for Eq. 6 as printed; see ``ala_gym.core.losses``).
    * ``metric`` (``"error"`` or ``"nll"``, lower is better; ``"accuracy"`` or ``"aucpr"``, macro one-vs-rest
      average precision, higher is better), ``reward``, ``gamma`` (0.9), ``eval_points``,
      ``eval_stride``, ``val_subsample`` (1000; a larger subsample costs validation time, measured in
      ``benchmarks/results/overhead.md``, and buys little agreement of the sign reward, measured in
      ``benchmarks/results/reward_agreement.md``), ``history`` (10), ``divergence_penalty``.
    * ``device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    * ``num_threads``: torch intra-op threads of this process. ``None`` leaves the setting alone, except
      in a multiprocessing worker (``gym.make_vec(..., vectorization_mode="async")``, or any process that
      ``multiprocessing`` started), where it means 1: workers then neither oversubscribe the cores nor, when
      forked, hang on the parent's OpenMP pool. The setting is torch's, for the whole process, and stays after
      ``close()``: restoring it there would change the threads (and so the sums' order) of another env
      still training in the process.

    Several children sharing one controller: ``gym.make_vec(id, num_envs=N)`` builds the native
    :class:`ala_gym.envs.vector.ALAVectorEnv` (one process, children trained together).

    ## Version History
    * v0: initial version; later made ``fixed_diagonal=True`` and ``step_scaling="row"`` the defaults
      and added ``info["row_improvement"]`` (the paper's step rule stays selectable by keyword); later
      still accepted model factories and registered dataset and model names (the registered models and
      datasets train exactly as before).
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}
    num_classes: int
    task_settings: ClassPairSettings

    @classmethod
    def make_spec(
        cls,
        dataset: str | UserData = "digits",
        *,
        data_root: str | None = None,
        download: bool = True,
        val_size: int | None = None,
        split_seed: int = 0,
        train_size: int | None = None,
        model: ModelSpec = "mlp",
        total_iterations: int = 2000,
        steps_per_action: int = 50,
        batch_size: int = 128,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: tuple[float, ...] = (0.5, 0.75),
        lr_decay: float = 0.1,
        beta: float = 0.1,
        fixed_diagonal: bool = True,
        step_scaling: str = "row",
        phi_init: np.ndarray | None = None,
        loss_form: str = "linear",
        sigmoid_temperature: float = 1.0,
        negative_floor: float | None = 1e-3,
        metric: str = "error",
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
        return assemble(cls, keywords, ClassificationLoss)

    # ---------------------------------------------------------------- rendering
    def render(self) -> np.ndarray | str | None:
        """Phi beside the validation confusion (see the class docstring); None without a ``render_mode``."""
        if self.render_mode is None:
            return None
        self._check_open()
        if self.trainer is None:
            raise RuntimeError("nothing to render before reset(): call reset() first")
        info = self._last_info
        confusion = np.exp(-np.asarray(info["confusion"]))
        if self.render_mode == "ansi":
            return self._render_text(info, confusion)
        return self._render_picture(info, confusion)

    def _render_text(self, info: dict[str, Any], confusion: np.ndarray) -> str:
        def grid(matrix: np.ndarray) -> str:
            return "\n".join(" ".join(f"{value:+.2f}" for value in row) for row in matrix)

        return (
            f"iteration {info['iteration']}/{self.train_config.total_iterations}, validation {self.metric} "
            f"{info['val_metric']:.4f}\nPhi:\n{grid(info['phi'])}\n"
            f"validation confusion exp(-C_ij) (row i: true class):\n{grid(confusion)}\n"
        )

    def _render_picture(self, info: dict[str, Any], confusion: np.ndarray) -> np.ndarray:
        # A figure of its own on the Agg canvas: no pyplot state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(8, 3.6), dpi=80)
        canvas = FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        for axis, matrix, title, scale in (
            (left, info["phi"], "Phi", dict(cmap="RdBu_r", vmin=-1.0, vmax=1.0)),
            (right, confusion, "validation confusion exp(-C_ij)", dict(cmap="viridis", vmin=0.0, vmax=1.0)),
        ):
            image = axis.imshow(matrix, **scale)
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("class j")
            axis.set_ylabel("class i")
            figure.colorbar(image, ax=axis, fraction=0.046)
        figure.suptitle(f"iteration {info['iteration']}, validation {self.metric} {info['val_metric']:.3f}", fontsize=10)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
