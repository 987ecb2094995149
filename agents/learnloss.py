"""LearnLoss (Streeter, "Learning Effective Loss Functions Efficiently", arXiv 1907.00103): choose the
weights of a loss that is linear in its components, ``l_lambda(theta) = f_0(theta) + sum_i lambda_i f_i(theta)``,
so that the model minimising it has a low validation error (any metric, differentiable or not).

**This module is a reconstruction.** The paper's pseudo-code, linear program and stopping rule are not
available; what is known is the abstract (an anytime algorithm over a loss linear in lambda), the related
patent (a convex program over observed models, each described by its vector of loss-component values and
its validation error) and the companion paper's LearnLinReg/TuneReg (a linear program over observed
models, re-solved after every training run; k + 1 models suffice in its "easy" case). From these this module follows
a *selection LP* (B1 below), because it needs exactly what the patent
names (component values and validation errors of observed models) and nothing the paper would have to
define further, and because it has the property TuneReg states: once a lambda exists that makes the best
model the loss minimiser, a few models pin it down.

Selection LP (B1). Observed models ``j = 1..n`` with component vectors ``f_j`` (``f_j[0]`` the data term,
whose weight is fixed at 1 so that lambda = 0 is not a trivial answer) and validation errors ``e_j``.
For a candidate ``m`` (first the best model, then the next best, ...)::

    maximise  t
    s.t.      (f_j - f_m) . (1, lambda) >= s_j * t     for every j with f_j != f_m
              0 <= lambda_i <= U_i                      (a box keeps the LP bounded)

solved with ``scipy.optimize.linprog(method="highs")``. ``t > 0`` means model ``m`` has, under
``l_lambda``, a lower loss than every other observed model: it is on the lower convex hull of the observed
component vectors. If ``t <= 0`` for the best model (it is not on the hull: no linear loss in the box
prefers it), the next-best model is tried, and so on; if none is on the hull, or the observed models do
not differ at all, the result says so (``Selection.lam is None``) and the caller decides (the tuner draws
a random lambda, the controller keeps its current one).

Two margins (``centre``):

* ``centre=False``: ``s_j = 1``, the LP exactly as in B1: the margin is measured in loss, and the solution
  is a vertex of the feasible region (often a corner of the box).
* ``centre=True`` (the tuner's default): in the box rescaled to the unit cube (``u = lambda / U``), rows
  are normalised (``s_j = ||(f_j - f_m)[1:] * U||``) and the box faces are constraints too, so ``t`` is the
  distance from ``u`` to the nearest face of the region where ``m`` is the minimiser: the LP returns that
  region's Chebyshev centre. This is the exploration step here. Each observed model is the exact minimiser
  of the loss it was trained with; training at a lambda inside the best model's region therefore either
  yields a better model, or a model whose loss at that lambda is lower than the best's, which cuts that
  lambda (and a neighbourhood) out of the region. Proposing the centre makes every unsuccessful run cut
  off a large part of the region, like a cutting-plane method; the vertex of the plain margin sits on
  the region's boundary, where a cut removes little.

Anytime loop (:func:`learn_loss`): ``k + 1`` runs with random lambda (log-uniform in
``[log_low * U_i, U_i]``), then repeat: solve the selection LP over all runs so far, train with its
lambda, add the model, re-solve. When the LP's lambda was tried already (a deterministic trainer would
return the same model: no information), the next-best model's region is taken instead, and so on down
the hull; when no model gives an untried lambda, a random lambda is tried; these random
runs are also what keeps the loop exploring every region eventually (the paper's worst-case
guarantee suggests some such exploration; how it explores is not known). The best validation model
seen so far is returned at every point: the loop is anytime.

On the fly (:class:`LearnLossPhi`, the ``learnloss`` controller of the ALA benchmark; this package's adaptation of
the LP to one training run, a heuristic baseline, not a method the paper is known to describe): the same LP
over the checkpoints of one child's training run, one per controller step, with the linear family that
the env's loss ``-y^T Phi log f`` can express: cross-entropy (Phi's diagonal, weight fixed 1), a uniform
label-smoothing term (the same weight on every off-diagonal entry) and one confusion term per class
pair (Phi's off-diagonal entries). The env has no per-step weight decay, so there is no L2 term. The
components of a checkpoint come from the env's per-class statistics on its validation subsample (the
only ones it reports), its error is the step's discounted validation metric (negated where higher is
better, such as accuracy). The LP uses the plain loss
margin: checkpoints are not minimisers of any loss in the family, so the cutting argument above does
not apply, and the vertex answer keeps every weight at 0 unless it helps the best checkpoint's margin;
the weights move part of the way towards it each step, within small bounds (Phi's off-diagonal entries
stay in [0, 0.05] by default), so a run starts as, and stays close to, cross-entropy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linprog

from ala_gym.agents.baselines import FixedPhi
from ala_gym.core.checks import check_int, check_optional_int, check_real
from ala_gym.core.losses import pairs_to_matrix
from ala_gym.core.metrics import get_metric


# ---------------------------------------------------------------------- the selection LP
@dataclass
class Selection:
    """What the selection LP chose."""

    lam: np.ndarray | None
    """Weights of the tuned components (``lambda_0 = 1`` excluded); None when no observed model is strictly
    on the lower hull (``model`` None), or when no other model differs from ``model`` (``margin`` is inf). A
    model that the others lose to for every lambda in the box still gets the LP's lambda (its centre or a vertex
    of the box): any lambda is then right."""
    model: int | None
    """Index of the observed model that ``lam`` makes the minimiser."""
    margin: float
    """The LP's ``t`` for that model (a loss margin, or a distance in the unit box with ``centre``)."""
    rank: int
    """0 if ``model`` is the best observed model, 1 the next best, ...; -1 without a model."""


def hull_selections(
    features: np.ndarray,
    errors: np.ndarray,
    upper: np.ndarray,
    centre: bool = True,
    margin_tol: float = 1e-9,
) -> Iterator[Selection]:
    """The selection LP's answer for every observed model on the lower hull, best model first (module
    docstring); ends with one ``Selection`` without a lambda: without a model, or, where no other model differs
    from the model reached (nothing to prefer it to), that model. :func:`select_loss` takes the first; the
    anytime loop walks further down when the best model's lambda has been tried already.

    ``features`` is ``[n, 1 + k]`` (column 0 the data term), ``errors`` ``[n]``, ``upper`` ``[k]`` the box
    bounds ``U``; ``centre`` and ``margin_tol`` as in :class:`LearnLossConfig`. Models with non-finite
    values (diverged runs) are left out.
    """
    features, errors = np.asarray(features, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(upper) + 1 or len(errors) != len(features):
        raise ValueError(f"features must be [n, {len(upper) + 1}] beside errors [n]; got {features.shape}, {errors.shape}")
    if np.any(upper <= 0):
        raise ValueError(f"box bounds must be positive, got {upper}")
    finite = np.flatnonzero(np.isfinite(features).all(axis=1) & np.isfinite(errors))
    order = finite[np.argsort(errors[finite], kind="stable")]
    k = len(upper)
    for rank, m in enumerate(order):
        diff = features[finite] - features[m]
        data, reg = diff[:, 0], diff[:, 1:] * upper  # in unit-box coordinates u = lambda / U
        scale = np.linalg.norm(reg, axis=1) if centre else np.ones(len(diff))
        distinct = np.abs(diff).max(axis=1) > 0
        if centre:
            # A model with the same regulariser values but a lower data term beats m for every lambda.
            if np.any(~(np.abs(reg).max(axis=1) > 0) & distinct & (data < 0)):
                continue
            distinct &= scale > 0
        if not distinct.any():
            # No other model differs from m (with centre, none whose regulariser values differ): no preference.
            yield Selection(lam=None, model=int(m), margin=float("inf"), rank=rank)
            return
        # Variables x = [u_1..u_k, t]; linprog minimises -t subject to A_ub x <= b_ub:
        # -(reg_j . u) + s_j t <= data_j   <=>   data_j + reg_j . u >= s_j t.
        a_ub = np.hstack([-reg[distinct], scale[distinct, None]])
        b_ub = data[distinct]
        if centre:  # distance to the box faces: u_i >= t and u_i <= 1 - t
            eye = np.eye(k)
            a_ub = np.vstack([a_ub, np.hstack([-eye, np.ones((k, 1))]), np.hstack([eye, np.ones((k, 1))])])
            b_ub = np.concatenate([b_ub, np.zeros(k), np.ones(k)])
        cost = np.zeros(k + 1)
        cost[-1] = -1.0
        result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(0.0, 1.0)] * k + [(None, None)], method="highs")
        if result.status == 0 and -result.fun > margin_tol:
            yield Selection(lam=result.x[:k] * upper, model=int(m), margin=float(-result.fun), rank=rank)
    # No (further) model strictly on the lower hull, or no finite model at all: a defined "no choice".
    yield Selection(lam=None, model=None, margin=float("nan"), rank=-1)


def select_loss(*args: Any, **kwargs: Any) -> Selection:
    """The selection LP for the best observed model, falling back to the next best: the first answer of
    :func:`hull_selections` (same arguments)."""
    return next(hull_selections(*args, **kwargs))


# ---------------------------------------------------------------------- the anytime loop (offline tuning)
@dataclass
class LearnLossConfig:
    """Settings of the anytime loop :func:`learn_loss`."""

    upper: tuple[float, ...] = (0.1, 0.1)
    """Box bound ``U_i`` of every tuned weight ``lambda_i`` (its lower bound is 0); one entry per component."""
    budget: int = 20
    """Training runs in all (the loop's only stopping rule)."""
    initial_runs: int | None = None
    """Runs with random lambda before the first LP; None means ``k + 1`` (the fewest that can pin down k weights)."""
    log_low: float = 1e-5
    """Random lambdas are log-uniform in ``[log_low * U_i, U_i]``, the range random search and TPE sample."""
    centre: bool = True
    """Propose the Chebyshev centre of the best model's region (True) or the plain loss-margin vertex (False)."""
    margin_tol: float = 1e-9
    """A model counts as on the lower hull only with margin ``t`` above this."""
    repeat_rtol: float = 1e-2
    """A proposal within this relative distance of a tried lambda (every component) is replaced by a random one:
    relative, because good weights are often orders of magnitude below the box bound."""

    def __post_init__(self) -> None:
        # The selection LP needs a box: refused before the first training run, not once the LP first runs.
        if not self.upper or not all(0 < bound < math.inf for bound in self.upper):
            raise ValueError(f"upper must hold a positive, finite box bound per tuned weight, got {self.upper}")
        check_int("budget", self.budget, 1)
        check_optional_int("initial_runs", self.initial_runs, 1)
        check_real("log_low", self.log_low, 0.0, 1.0, low_open=True)  # log-uniform: 0 has no logarithm
        check_real("margin_tol", self.margin_tol, 0.0)
        check_real("repeat_rtol", self.repeat_rtol, 0.0)


@dataclass
class Trial:
    """One training run of the loop."""

    lam: np.ndarray
    features: np.ndarray
    """``[1 + k]``: the data term, then the tuned components, of the trained model."""
    error: float
    """Validation error of the trained model."""
    source: str
    """Why this lambda: ``initial`` (random start), ``lp`` (the selection LP) or ``explore`` (random)."""
    propose_s: float
    """Seconds spent choosing lambda (the LP); training time is the trainer's to report in ``info``."""
    info: dict[str, Any] = field(default_factory=dict)


Train = Callable[[np.ndarray], tuple[np.ndarray, float, dict[str, Any]]]
"""``train(lam) -> (features [1 + k], validation error, info)``: train one model to convergence."""


def random_lambda(config: LearnLossConfig, rng: np.random.Generator) -> np.ndarray:
    """A lambda drawn log-uniformly in ``[log_low * U_i, U_i]`` per component."""
    upper = np.asarray(config.upper, dtype=np.float64)
    return upper * np.exp(rng.uniform(np.log(config.log_low), 0.0, size=len(upper)))


def propose(trials: list[Trial], config: LearnLossConfig, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The next lambda to train with, and why (see :class:`Trial.source`)."""
    upper = np.asarray(config.upper, dtype=np.float64)
    initial = config.initial_runs if config.initial_runs is not None else len(upper) + 1
    if len(trials) < initial:
        return random_lambda(config, rng), "initial"
    tried = np.array([t.lam for t in trials])
    features, errors = np.array([t.features for t in trials]), np.array([t.error for t in trials])
    for selection in hull_selections(features, errors, upper, config.centre, config.margin_tol):
        if selection.lam is None:
            break
        close = np.abs(tried - selection.lam) <= config.repeat_rtol * np.maximum(tried, selection.lam) + 1e-12 * upper
        if not close.all(axis=1).any():
            return selection.lam, "lp"
        # Tried already: the model there is known, so training again teaches nothing; the next-best
        # model's region is the next most promising place to look.
    return random_lambda(config, rng), "explore"


def best_trial(trials: list[Trial]) -> Trial:
    """The run with the lowest validation error (the first one on ties)."""
    return min(trials, key=lambda t: t.error if np.isfinite(t.error) else np.inf)


def learn_loss(
    train: Train,
    config: LearnLossConfig,
    rng: np.random.Generator,
    on_trial: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """Run the anytime loop for ``config.budget`` training runs; return every run (:func:`best_trial`
    picks the answer, at any prefix of the list). ``on_trial``, where given, is called with each run as it
    ends (to log or save it)."""
    trials: list[Trial] = []
    while len(trials) < config.budget:
        start = time.perf_counter()
        lam, source = propose(trials, config, rng)
        propose_s = time.perf_counter() - start
        features, error, info = train(lam)
        trial = Trial(lam, np.asarray(features, dtype=np.float64), float(error), source, propose_s, info)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    return trials


# ---------------------------------------------------------------------- on the fly: the ALA controller
@dataclass
class LearnLossPhiConfig:
    """Settings of the on-the-fly controller :class:`LearnLossPhi`."""

    smoothing_max: float = 0.02
    """Upper bound of the uniform label-smoothing weight ``s`` (added to every off-diagonal Phi entry)."""
    pair_max: float = 0.03
    """Upper bound of each class-pair weight ``c_ij``; Phi_ij = s + c_ij stays within [0, smoothing_max + pair_max]."""
    rate: float = 0.5
    """Fraction of the way the weights move towards the LP's answer each step (vertex answers jump; this damps them)."""
    centre: bool = False
    """LP margin: the plain loss margin of B1 (False) or the Chebyshev centre (True)."""
    window: int | None = None
    """Checkpoints the LP sees: the last ``window`` steps of the run (None: every step so far). Each step solves
    LPs with a constraint per checkpoint, falling back to more of them as the run goes on, so without a window
    a step's cost grows faster than the run's length: set one for runs of many hundreds of controller steps."""

    def __post_init__(self) -> None:
        if not (self.smoothing_max > 0 and self.pair_max > 0 and 0 < self.rate <= 1):
            raise ValueError(
                f"need smoothing_max > 0, pair_max > 0 and 0 < rate <= 1, got {self.smoothing_max}, {self.pair_max}, "
                f"{self.rate}"
            )
        if self.smoothing_max + self.pair_max > 1:  # Phi's off-diagonal entries stay within [0, 1]
            raise ValueError(f"smoothing_max + pair_max must be at most 1, got {self.smoothing_max + self.pair_max}")
        if self.window is not None and self.window < 2:  # the LP compares checkpoints: two at least
            raise ValueError(f"window must be None (every step) or at least 2, got {self.window}")


def confusion_features(confusion: np.ndarray) -> np.ndarray:
    """Loss components of one checkpoint from the env's statistics ``C_ij`` (mean ``-log p_j`` on class-i samples).

    With roughly balanced classes, the env's loss under ``Phi = I + offdiag(s + c_ij)`` is
    ``(1/C) sum_ij Phi_ij C_ij = f_ce + s f_smooth + sum_{i<j} c_ij f_ij`` with ``f_ce = tr(C) / C``,
    ``f_smooth = (sum C - tr C) / C`` and ``f_ij = (C_ij + C_ji) / C``: returned in that order.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    num_classes = len(confusion)
    rows, cols = np.triu_indices(num_classes, k=1)
    trace = np.trace(confusion)
    return np.concatenate([[trace, confusion.sum() - trace], confusion[rows, cols] + confusion[cols, rows]]) / num_classes


class LearnLossPhi(FixedPhi):
    """LearnLoss on the fly: every controller step is an observed model (its checkpoint's loss components,
    :func:`confusion_features`, and its discounted validation error); the selection LP over the run's
    checkpoints so far gives the weights of the next step's Phi.

    The components are measured on the env's validation subsample, the only per-class statistics the env
    reports each step (the data term of the offline tuner is a training loss). Without a model to prefer
    (first step, or no checkpoint on the hull) Phi keeps its weights, so a run starts as cross-entropy.
    """

    name = "learnloss"
    learned = True

    def __init__(self, config: LearnLossPhiConfig | None = None) -> None:
        super().__init__(loss_form="linear")
        self.config = config or LearnLossPhiConfig()
        self.features: list[list[np.ndarray]] = []
        self.errors: list[list[float]] = []
        self.weights: list[np.ndarray] = []
        self.error_sign = 1.0

    def begin(self, envs: Any, seed: int) -> None:
        # The controller is deterministic given the run; nothing to seed. State is per child.
        self.error_sign = -1.0 if get_metric(envs.get_attr("metric")[0]).higher_is_better else 1.0
        self.features = [[] for _ in range(envs.num_envs)]
        self.errors = [[] for _ in range(envs.num_envs)]
        self.weights = [np.zeros(0) for _ in range(envs.num_envs)]

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        num_classes = np.shape(infos["phi"])[-1]
        n_pairs = num_classes * (num_classes - 1) // 2
        upper = np.concatenate([[self.config.smoothing_max], np.full(n_pairs, self.config.pair_max)])
        phis = []
        for child in range(len(observations)):
            if int(infos["iteration"][child]) == 0 or len(self.weights[child]) != len(upper):
                # A new episode (the first, or an autoreset one): forget the previous run's checkpoints.
                self.features[child], self.errors[child] = [], []
                self.weights[child] = np.zeros(len(upper))
            self.features[child].append(confusion_features(infos["confusion"][child]))
            self.errors[child].append(self.error_sign * float(infos["val_metric_discounted"][child]))
            window = self.config.window or len(self.errors[child])
            selection = select_loss(
                np.array(self.features[child][-window:]), np.array(self.errors[child][-window:]), upper, self.config.centre
            )
            if selection.lam is not None:
                self.weights[child] += self.config.rate * (selection.lam - self.weights[child])
            phis.append(weights_to_phi(self.weights[child], num_classes))
        return np.stack(phis)


def weights_to_phi(weights: np.ndarray, num_classes: int) -> np.ndarray:
    """``[s, c_01, c_02, ...]`` -> Phi with unit diagonal and off-diagonal entries ``s + c_ij``."""
    rows, cols = np.triu_indices(num_classes)
    values = np.zeros(len(rows))
    values[rows != cols] = weights[0] + weights[1:]
    return pairs_to_matrix(values, num_classes) + np.eye(num_classes)
