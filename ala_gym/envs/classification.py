"""The base ALA classification environment; the registered tasks are small subclasses of it."""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from ala_gym.data import ClassificationData, load_dataset
from ala_gym.losses import LOSS_FORMS, PhiLoss, check_phi, class_pairs, matrix_to_pairs, pairs_to_matrix
from ala_gym.metrics import METRICS, Evaluation, discounted_metric
from ala_gym.trainer import ChildTrainer, TrainConfig

N_ACTIONS = 3  # {-beta, 0, +beta}
CONFUSION_CLIP = 10.0  # bound of the normalised confusion statistics (C / log(num_classes))
CHANGE_CLIP = 10.0  # bound of their relative change from the moving average
MOVING_AVERAGE_RATE = 0.1


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ALAClassificationEnv(gym.Env):
    """
    ## Description
    One child model trained under the adaptive loss of Adaptive Loss Alignment (Huang et al., ICML 2019,
    Eq. 6): ``l = -y^T Phi log f(y|x)`` (``loss_form="linear"``, the default, equal to cross-entropy at
    ``Phi = I``) or the printed ``-sigmoid(y^T Phi log f(y|x))`` (``loss_form="sigmoid"``). Each step
    the agent moves every symmetric entry ``Phi(i, j) = Phi(j, i)`` by ``-beta``, ``0`` or ``+beta``
    (kept in ``[-1, 1]``), the child then trains ``K`` momentum-SGD iterations under the new loss, and
    the reward says whether the discounted validation metric improved.

    ## Action Space
    ``MultiDiscrete([3] * n_pairs)`` with ``n_pairs = C (C + 1) / 2`` unordered class pairs ``(i, j)``,
    ``i <= j`` (diagonal included; 55 for 10 classes), in the row-major upper-triangle order of
    ``ala_gym.losses.class_pairs``. Action ``a`` changes the pair's entry by ``beta * (a - 1)``.

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
    ``eval_stride`` apart and ending at the step's last iteration, on a fixed validation subsample of
    ``val_subsample`` images (drawn once from ``split_seed``), and averaged with the weights
    ``gamma^(K-j)`` normalised to one. With ``gamma = 0.9`` the iterations more than 30 before the
    step's end carry under 5% of Eq. 4's weight, so three points 10 apart cover the part of the sum
    that matters. ``reward="sign"`` (default) gives Eq. 5's ``sign(M_t - M_{t+1})`` in {-1, 0, 1};
    ``reward="raw"`` gives the unquantised ``M_t - M_{t+1}``. ``M_0`` is the initial model's metric.

    If training diverges (a non-finite training or validation loss), the episode terminates with
    reward ``divergence_penalty`` (default -10, below any sign reward) and ``info["diverged"] = True``.

    ## Episode End
    The episode terminates when the child has used its budget of ``total_iterations`` SGD iterations
    (``ceil(total_iterations / K)`` steps; the last step may be shorter) or when training diverges.
    There is no truncation: progress is part of the observation. On termination ``info`` also carries
    ``test_metric`` and ``final_val_metric`` (on the full validation set).

    ``info`` always carries ``val_metric`` and ``val_loss`` (subsample, at the step's last iteration),
    ``val_metric_discounted`` (``M_t``), ``train_loss`` (mean loss under Phi over the step), ``iteration``,
    ``phi`` (``C x C``), ``confusion`` (the raw Eq. 7 statistics) and ``diverged``.

    ## Arguments
    ``gym.make("ALA-Digits-v0", steps_per_action=20, total_iterations=200)``; every argument of
    ``__init__`` can be passed as a keyword:

    * ``dataset``: ``"digits"``, ``"fashion-mnist"`` or ``"cifar10"``; ``data_root``, ``download`` and
      ``val_size`` go to its loader (``ala_gym.data``), ``split_seed`` fixes the train/validation split
      and the validation subsample (not the child's seed).
    * ``model``, ``total_iterations``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
      ``lr_milestones``, ``lr_decay``: the child's training (``ala_gym.trainer.TrainConfig``).
    * ``steps_per_action`` (K, 200 in the paper), ``beta`` (0.1), ``phi_init`` (identity), ``loss_form``,
      ``sigmoid_temperature``.
    * ``metric`` (``"error"`` or ``"nll"``, lower is better), ``reward``, ``gamma`` (0.9), ``eval_points``,
      ``eval_stride``, ``val_subsample``, ``history`` (10), ``divergence_penalty``.
    * ``device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        dataset: str = "digits",
        *,
        data_root: str | None = None,
        download: bool = True,
        val_size: int | None = None,
        split_seed: int = 0,
        model: str = "mlp",
        total_iterations: int = 2000,
        steps_per_action: int = 50,
        batch_size: int = 128,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: tuple[float, ...] = (0.5, 0.75),
        lr_decay: float = 0.1,
        beta: float = 0.1,
        phi_init: np.ndarray | None = None,
        loss_form: str = "linear",
        sigmoid_temperature: float = 1.0,
        metric: str = "error",
        reward: str = "sign",
        gamma: float = 0.9,
        eval_points: int = 3,
        eval_stride: int = 10,
        val_subsample: int | None = 2000,
        history: int = 10,
        divergence_penalty: float = -10.0,
        device: str = "auto",
    ) -> None:
        if steps_per_action < 1:
            raise ValueError(f"steps_per_action must be positive, got {steps_per_action}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"unknown loss_form {loss_form!r}; choose one of {LOSS_FORMS}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        if reward not in ("sign", "raw"):
            raise ValueError(f"reward must be 'sign' or 'raw', got {reward!r}")
        if not 0 < gamma <= 1 or eval_points < 1 or eval_stride < 1 or history < 1:
            raise ValueError("need 0 < gamma <= 1 and positive eval_points, eval_stride, history")
        self.train_config = TrainConfig(
            model=model,
            total_iterations=total_iterations,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            lr_milestones=tuple(lr_milestones),
            lr_decay=lr_decay,
        )
        loader_kwargs: dict[str, Any] = {"split_seed": split_seed}
        if dataset != "digits" and data_root is not None:
            loader_kwargs["data_root"] = data_root
        if dataset == "cifar10":
            loader_kwargs["download"] = download
        if val_size is not None:
            loader_kwargs["val_size"] = val_size
        self.data: ClassificationData = load_dataset(dataset, device=resolve_device(device), **loader_kwargs)
        self.num_classes = self.data.num_classes
        self.pairs = class_pairs(self.num_classes)
        self.steps_per_action = steps_per_action
        self.beta = beta
        self.phi_init = check_phi(np.eye(self.num_classes) if phi_init is None else phi_init, self.num_classes)
        self.loss_form, self.sigmoid_temperature = loss_form, sigmoid_temperature
        self.metric, self.reward_type, self.gamma = metric, reward, gamma
        self.eval_points, self.eval_stride, self.history = eval_points, eval_stride, history
        self.divergence_penalty = float(divergence_penalty)
        self.val_eval = self._subsample(self.data.val, val_subsample, split_seed)

        n_pairs = len(self.pairs)
        self.n_features = 2 * history + 4
        low = np.concatenate([np.zeros(2 * history), [-CHANGE_CLIP] * 2, [-1.0, 0.0]]).astype(np.float32)
        high = np.concatenate([np.full(2 * history, CONFUSION_CLIP), [CHANGE_CLIP] * 2, [1.0, 1.0]]).astype(np.float32)
        self.observation_space = spaces.Box(np.tile(low, (n_pairs, 1)), np.tile(high, (n_pairs, 1)), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(n_pairs, N_ACTIONS, dtype=np.int64))

        self.trainer: ChildTrainer | None = None
        self.phi_pairs = matrix_to_pairs(self.phi_init)
        self._phi = torch.tensor(self.phi_init, dtype=torch.float32, device=self.data.device)
        self._loss = PhiLoss(self._phi, loss_form, sigmoid_temperature)
        self._pair_history: deque[np.ndarray] = deque(maxlen=history)
        self._moving_average = np.zeros((n_pairs, 2))
        self._last_metric = 0.0
        self._terminated = True

    @staticmethod
    def _subsample(split, size: int | None, seed: int):
        if size is None or size >= len(split):
            return split
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 2))[:size]
        return split.subset(order.to(split.labels.device))

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.trainer = ChildTrainer(self.data, self.train_config, int(self.np_random.integers(2**63 - 1)))
        self._set_phi_pairs(matrix_to_pairs(self.phi_init))
        evaluation = self.trainer.evaluate(self.val_eval, self.metric)
        pair_stats = self._pair_statistics(evaluation)
        self._pair_history = deque([pair_stats] * self.history, maxlen=self.history)
        self._moving_average = pair_stats.copy()
        self._last_metric = evaluation.metric
        self._terminated = False
        return self._observation(), self._info(evaluation, train_loss=float("nan"), diverged=False)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.trainer is None or self._terminated:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        deltas = self.beta * (self._validate_action(action) - 1)
        self._set_phi_pairs(np.clip(self.phi_pairs + deltas, -1.0, 1.0))

        iterations = min(self.steps_per_action, self.train_config.total_iterations - self.trainer.iteration)
        values, offsets, loss_sums = [], [], []
        evaluation, done = None, 0
        for offset in self._eval_offsets(iterations):
            chunk = iterations - offset - done
            loss_sums.append(self.trainer.train(chunk, self._loss) * chunk)
            done += chunk
            evaluation = self.trainer.evaluate(self.val_eval, self.metric)
            values.append(evaluation.metric)
            offsets.append(offset)
            if not (np.isfinite(loss_sums[-1]) and evaluation.finite):
                break  # diverged: stop spending compute on a broken model
        assert evaluation is not None
        train_loss = float(sum(loss_sums) / done)
        diverged = not (np.isfinite(train_loss) and evaluation.finite)
        self._terminated = diverged or self.trainer.done

        if diverged:
            reward = self.divergence_penalty
            observation = self._observation()
        else:
            metric = discounted_metric(values, offsets, self.gamma)
            improvement = self._last_metric - metric
            reward = float(np.sign(improvement)) if self.reward_type == "sign" else float(improvement)
            self._last_metric = metric
            pair_stats = self._pair_statistics(evaluation)
            self._pair_history.append(pair_stats)
            change = (pair_stats - self._moving_average) / np.maximum(np.abs(self._moving_average), 1e-8)
            self._moving_average += MOVING_AVERAGE_RATE * (pair_stats - self._moving_average)
            observation = self._observation(change)
        info = self._info(evaluation, train_loss, diverged)
        if self._terminated:
            info["test_metric"] = self.trainer.evaluate(self.data.test, self.metric).metric
            info["final_val_metric"] = self.trainer.evaluate(self.data.val, self.metric).metric
        return observation, float(reward), bool(self._terminated), False, info

    # ---------------------------------------------------------------- Phi, readable and settable
    @property
    def phi(self) -> np.ndarray:
        """The current ``C x C`` Phi. Assigning it (symmetric, entries in [-1, 1]) lets fixed baselines
        prescribe Phi; through a vector env: ``envs.set_attr("phi", [phi_0, phi_1, ...])``."""
        return pairs_to_matrix(self.phi_pairs, self.num_classes)

    @phi.setter
    def phi(self, value: np.ndarray) -> None:
        self._set_phi_pairs(matrix_to_pairs(check_phi(value, self.num_classes)))

    # ---------------------------------------------------------------- helpers
    def _eval_offsets(self, iterations: int) -> list[int]:
        """``K - j`` for the evaluated iterations ``j`` of a step of ``iterations`` iterations, largest first."""
        offsets = [k * self.eval_stride for k in range(self.eval_points - 1, -1, -1)]
        return [o for o in offsets if o < iterations]

    def _validate_action(self, action: Any) -> np.ndarray:
        array = np.asarray(action)
        expected = self.action_space.shape
        if array.shape != expected:
            raise ValueError(f"action must have shape {expected} (one entry per class pair), got {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.isin(array, (0, 1, 2))):
            raise ValueError("action entries must be integers in {0, 1, 2} (meaning -beta, 0, +beta)")
        return array.astype(np.int64)

    def _set_phi_pairs(self, values: np.ndarray) -> None:
        self.phi_pairs = np.asarray(values, dtype=np.float64)
        # Copy into the tensor the loss holds, so the loss sees the new Phi without being rebuilt.
        self._phi.copy_(torch.from_numpy(pairs_to_matrix(self.phi_pairs, self.num_classes)))

    def _pair_statistics(self, evaluation: Evaluation) -> np.ndarray:
        """``[C_ij, C_ji]`` per pair, normalised by ``log C`` (the value of a uniform prediction)."""
        normalised = np.clip(evaluation.confusion / np.log(self.num_classes), 0.0, CONFUSION_CLIP)
        rows, cols = self.pairs[:, 0], self.pairs[:, 1]
        return np.stack([normalised[rows, cols], normalised[cols, rows]], axis=1)

    def _observation(self, change: np.ndarray | None = None) -> np.ndarray:
        n_pairs = len(self.pairs)
        history = np.concatenate(list(self._pair_history), axis=1)  # [n_pairs, 2 * history], oldest first
        change = np.zeros((n_pairs, 2)) if change is None else np.clip(change, -CHANGE_CLIP, CHANGE_CLIP)
        assert self.trainer is not None
        progress = np.full((n_pairs, 1), min(self.trainer.iteration / self.train_config.total_iterations, 1.0))
        return np.concatenate([history, change, self.phi_pairs[:, None], progress], axis=1).astype(np.float32)

    def _info(self, evaluation: Evaluation, train_loss: float, diverged: bool) -> dict:
        assert self.trainer is not None
        return {
            "val_metric": evaluation.metric,
            "val_loss": evaluation.loss,
            "val_metric_discounted": self._last_metric,
            "train_loss": train_loss,
            "iteration": self.trainer.iteration,
            "phi": self.phi,
            "confusion": evaluation.confusion,
            "diverged": diverged,
        }
