"""The ALA vector env with its children on Ray actors: many processes, GPUs and machines, one controller.

``gym.make_vec("ALA-FashionMNIST-v0", num_envs=10, backend="ray", children_per_worker=5)`` builds a
:class:`RayVectorEnv`: two Ray actors, each holding five children in an
:class:`ala_gym.envs.vector.ALAVectorEnv` of its own (the core's trainers inside, the dataset loaded once
per actor), and the controller on the driver. Per step only the actions go out and each child's step
result (observation, reward, the info's scalars and ``C x C`` Phi and confusion statistics) comes back.
Needs ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.spaces import Box
from gymnasium.vector import AutoresetMode, VectorEnv

from ala_gym.wrappers import require

require("ray")  # before importing it: without the extra, one line saying which to install
import ray
from ray.exceptions import RayActorError, RayTaskError

from ala_gym.core.checks import check_int, check_no_options, check_real
from ala_gym.core.global_rng import python_random_kept
from ala_gym.envs.vector import (
    ALAVectorEnv,
    check_actions,
    check_open,
    check_vector_args,
    phi_values,
    seed_children,
    set_vector_spaces,
)

# Keys that belong to the step that ended an episode; a lost worker's children do not repeat them.
# Ray counts resources in units of 1/10,000, each request rounded to the nearest unit (its scheduler's FixedPoint).
RAY_RESOURCE_UNITS = 10_000


def ray_units(quantity: float) -> int:
    """``quantity`` of a resource in the units Ray's scheduler counts, rounded as it rounds them."""
    return int(quantity * RAY_RESOURCE_UNITS + 0.5)


def gpu_share(gpus: float, workers: int) -> float:
    """Each of ``workers`` workers' share of ``gpus`` GPUs (one at most), rounded *down* to Ray's unit: rounded to
    the nearest, a third or a sixth of a GPU would add up to more than the cluster has, and the last worker would
    wait for a GPU forever."""
    return min(1.0, math.floor(gpus * RAY_RESOURCE_UNITS / workers) / RAY_RESOURCE_UNITS)


_EPISODE_END_KEYS = ("final_obs", "final_info", "test_metric", "final_val_metric", "final_val_loss")


@dataclass(frozen=True)
class _DriverState:
    """What ``ray.init`` changes in the driver's process and ``ray.shutdown`` leaves so, as it was before."""

    environ: dict[str, str | None]
    """The variables init set or changed (``PYTHONBREAKPOINT`` to Ray's debugger among them), with their values
    before (None: unset)."""
    sigterm: Any
    """The SIGTERM handler before (init installs Ray's in the main thread)."""
    ray_log_level: int
    """The ``ray`` logger's level before (init sets it to errors only)."""


_state_before_ray: _DriverState | None = None
"""Set while a Ray that :func:`start_ray` started runs in this process."""


RAY_CONNECT_SECONDS = 10.0
"""How long :func:`check_reachable` waits for a cluster's address to answer."""


def check_reachable(address: str) -> None:
    """Refuse, in one line, a ``host:port`` cluster address (``ray://`` too) that no process answers within
    :data:`RAY_CONNECT_SECONDS`: ``ray.init`` would retry it without end. ``"auto"`` and ``"local"`` are Ray's to
    resolve, which fails at once when no cluster runs."""
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as error:
        raise ValueError(
            f"cannot reach a Ray cluster at {address} ({error}); start one there (ray start --head) or fix the address"
        ) from None


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address``, or start a local one of ``num_cpus`` (quiet: no dashboard, errors only),
    unless Ray is initialised already (a cluster the caller chose); True when this call started it.
    :func:`stop_ray` gives the process back its environment variables, SIGTERM handler and ``ray`` log level,
    and Python's ``random`` is left as it was; Ray's own files (its session folder in the temp dir, its token
    in ``~/.ray``) stay."""
    global _state_before_ray
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    environ, sigterm, level = dict(os.environ), signal.getsignal(signal.SIGTERM), logging.getLogger("ray").level
    quiet: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, configure_logging=True)
    try:
        with python_random_kept():  # ray.init draws from it
            ray.init(address=address, **quiet) if address else ray.init(num_cpus=num_cpus, **quiet)
    except ConnectionError as error:  # "auto" with no cluster running, or one that went away
        raise ValueError(
            f"cannot join a Ray cluster at {address!r} ({str(error).splitlines()[0]}); start one (ray start --head) or "
            "give no address"
        ) from None
    changed = {key: environ.get(key) for key in {*environ, *os.environ} if environ.get(key) != os.environ.get(key)}
    _state_before_ray = _DriverState(changed, sigterm, level)
    return True


def stop_ray(started: bool) -> None:
    """Shut Ray down if :func:`start_ray` started it, and undo what that start changed in this process; a cluster
    the caller initialised stays up."""
    global _state_before_ray
    if not (started and ray.is_initialized()):
        return
    with python_random_kept():
        ray.shutdown()
    state, _state_before_ray = _state_before_ray, None
    if state is None:
        return
    for key, value in state.environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if signal.getsignal(signal.SIGTERM) is not state.sigterm and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, state.sigterm)
    logging.getLogger("ray").setLevel(state.ray_log_level)


class ChildGroup:
    """The children of one Ray actor: an :class:`ALAVectorEnv` over them, run in the actor's process."""

    def __init__(self, num_threads: int) -> None:
        # The actor's process is its own: use as many threads as Ray reserved CPUs for it.
        torch.set_num_threads(num_threads)
        self.env: ALAVectorEnv  # built by start(), which the driver calls first

    def start(self, env_id: str, num_envs: int, env_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Build the children (loading the dataset) and describe them. A method, not ``__init__``, so that
        a bad keyword reaches the driver as its own exception rather than as a dead actor."""
        self.env = ALAVectorEnv(env_id, num_envs, **env_kwargs)
        return {
            "single_observation_space": self.env.single_observation_space,
            "single_action_space": self.env.single_action_space,
            "phi_checker": self.env.episodes[0].task.phi_checker(),
            "phi_ndim": int(np.ndim(self.env.episodes[0].task.phi)),
            "divergence_penalty": self.env.settings.divergence_penalty,
            "device": str(self.env.data.device),
            "train_mode": self.env.train_mode,
        }

    def reset(self, seed: list[int | None] | None) -> tuple[np.ndarray, dict]:
        return self.env.reset(seed=seed)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        return self.env.step(actions)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.env.get_attr(name)

    def set_attr(self, name: str, values: list[Any]) -> None:
        self.env.set_attr(name, values)


class RayVectorEnv(VectorEnv):
    """
    ## Description
    ``num_envs`` ALA children on Ray actors ("workers"), ``children_per_worker`` per actor, under one
    controller on the driver. Observations, actions, rewards, seeding, autoreset and info are those of
    :class:`ala_gym.envs.vector.ALAVectorEnv` (child ``i`` of ``reset(seed=s)`` is seeded with ``s + i``),
    so controllers and :class:`ala_gym.wrappers.sb3.SB3VecEnv` run on it unchanged; with
    ``train_mode="sequential"`` on CPUs its trajectories are bit for bit those of the native env run at the
    actors' torch thread count (one by default; at another count the float sums part in the last bits).
    ``train_mode="auto"`` is chosen per actor, for its own group of children and device.

    ## Cluster
    With Ray already initialised (``ray.init(address=...)`` by the user) the env uses that cluster;
    otherwise it calls ``ray.init(address=address)`` when ``address`` is given, else starts a local cluster
    of ``num_cpus`` CPUs (default: all) without dashboard. :meth:`close` kills the env's actors and shuts
    Ray down only if the env started it. Every actor reserves ``num_cpus_per_worker`` CPUs (its torch
    thread count) and ``num_gpus_per_worker`` GPUs; by default the workers share the cluster's GPUs
    (``min(1, GPUs / workers)`` each, fractions pack several workers on one GPU) unless the env's
    ``device`` is ``"cpu"``. Ray gives each actor its GPU as ``cuda``. Actors import ``ala_gym`` on their
    node: install it there or ship it with ``runtime_env={"py_modules": [...]}`` (passed to every actor,
    as are its ``env_vars``, such as ``ALA_GYM_DATA``).

    ## Lost Workers
    When an actor dies (killed process, lost node), the env goes on with the others. Each child of the
    lost actor ends its episode in the next :meth:`step`: terminated, reward ``worker_lost_reward``
    (default: the task's ``divergence_penalty``, -10, as a run that failed), its last observation, and its
    last info with ``info["worker_lost"] = True`` (no ``test_metric``: the run was not finished; under
    ``autoreset_mode=SAME_STEP`` also as ``final_obs`` and ``final_info``, as an ended episode's). Until
    the next :meth:`reset`, which starts a new actor for the group, those children return their last
    observation, reward 0, neither terminated nor truncated, and no info.

    ## Arguments
    ``RayVectorEnv(env_id, num_envs, *, children_per_worker=1, num_cpus_per_worker=1.0,
    num_gpus_per_worker=None, address=None, num_cpus=None, runtime_env=None, worker_lost_reward=None,
    max_episode_steps=None, autoreset_mode=NEXT_STEP, train_mode="auto", **env_kwargs)``; the last four
    and ``env_kwargs`` are those of :class:`ALAVectorEnv`.

    ## Version History
    * v0: initial version.
    """

    observation_space: Box  # the batched Box of the children's observations (set_vector_spaces)

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        children_per_worker: int = 1,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        runtime_env: dict[str, Any] | None = None,
        worker_lost_reward: float | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        train_mode: str = "auto",
        **env_kwargs: Any,
    ) -> None:
        # What close() reads, set first: gymnasium (1.1 to 1.2) closes an env whose __init__ raised when it is collected.
        self.workers: list[Any] = []
        self.started_ray = False
        autoreset_mode = check_vector_args(
            num_envs, max_episode_steps, autoreset_mode, train_mode, env_kwargs.pop("render_mode", None)
        )
        children_per_worker = check_int("children_per_worker", children_per_worker, 1)
        num_cpus_per_worker = check_real("num_cpus_per_worker", num_cpus_per_worker, 0.0, low_open=True)
        if num_gpus_per_worker is not None:
            num_gpus_per_worker = check_real("num_gpus_per_worker", num_gpus_per_worker, 0.0)
        self.num_envs = num_envs
        self.groups = [range(a, min(a + children_per_worker, num_envs)) for a in range(0, num_envs, children_per_worker)]
        self.started_ray = start_ray(address, num_cpus)
        try:  # what the cluster cannot give is asked of it, so once it runs; a refusal stops a cluster started here
            self.num_gpus_per_worker = self._gpus_per_worker(num_gpus_per_worker, str(env_kwargs.get("device", "auto")))
            self.num_cpus_per_worker = num_cpus_per_worker
            self._check_capacity()
        except BaseException:
            stop_ray(self.started_ray)
            self.started_ray = False
            raise
        self._worker_args = (
            env_id,
            dict(env_kwargs, max_episode_steps=max_episode_steps, autoreset_mode=autoreset_mode, train_mode=train_mode),
        )
        self._runtime_env = runtime_env
        try:
            description = self._start_workers(range(len(self.groups)))
        except RayTaskError as error:  # a bad task keyword: its own exception, not Ray's wrapper
            self.close()
            raise error.cause from None
        assert description is not None  # num_envs >= 1: at least one worker started
        self.phi_checker: Callable[[Any], np.ndarray] = description["phi_checker"]
        self.phi_ndim: int = description["phi_ndim"]
        self.worker_lost_reward = (
            float(description["divergence_penalty"]) if worker_lost_reward is None else float(worker_lost_reward)
        )
        set_vector_spaces(self, description["single_observation_space"], description["single_action_space"], autoreset_mode)
        self._lost = np.zeros(len(self.groups), dtype=bool)  # per worker: its actor died
        self._reported = np.zeros(num_envs, dtype=bool)  # per child: its lost-worker step was returned
        self._observations = np.zeros(self.observation_space.shape, dtype=np.float32)
        self._last_info: list[dict[str, Any]] = [{} for _ in range(num_envs)]
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        check_open(self)
        check_no_options(options)
        seeds = seed_children(self, seed)
        self._start_workers(np.flatnonzero(self._lost))
        self._lost[:] = False
        self._reported[:] = False
        results = []
        for g, group in enumerate(self.groups):
            group_seeds = None if seeds is None else [seeds[i] for i in group]
            try:
                results.append(ray.get(self.workers[g].reset.remote(group_seeds)))
            except RayActorError as error:
                self._lost[g] = True  # the next reset() starts a new actor for it
                raise RuntimeError(
                    f"the Ray worker of children {group.start}..{group.stop - 1} died while resetting; "
                    "check the cluster's logs (memory, GPUs) and call reset() again"
                ) from error
        infos: dict[str, Any] = {}
        for group, (observations, group_infos) in zip(self.groups, results):
            self._observations[group.start : group.stop] = observations
            for local, child in enumerate(group):
                infos = self._record_info(infos, _child_info(group_infos, local), child)
        self._needs_reset[:] = False
        self._started = True
        return self._observations.copy(), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        check_open(self)
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.action_space, ~self._needs_reset & ~self._reported)
        # Every live worker steps at once; the driver then collects their results in order.
        pending = {g: self.workers[g].step.remote(actions[group.start : group.stop])
                   for g, group in enumerate(self.groups) if not self._lost[g]}  # fmt: skip
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for g, group in enumerate(self.groups):
            result = self._get(g, pending[g]) if g in pending else None
            if result is None:
                infos = self._lost_step(group, rewards, terminations, infos)
                continue
            observations, group_rewards, group_terminations, group_truncations, group_infos = result
            span = slice(group.start, group.stop)
            self._observations[span] = observations
            rewards[span], terminations[span], truncations[span] = group_rewards, group_terminations, group_truncations
            for local, child in enumerate(group):
                infos = self._record_info(infos, _child_info(group_infos, local), child)
        ended = terminations | truncations
        self._needs_reset = ended & (self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP)
        return self._observations.copy(), rewards, terminations, truncations, infos

    def close_extras(self, **kwargs: Any) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        stop_ray(self.started_ray)
        self.started_ray = False

    # ---------------------------------------------------------------- attributes (``set_attr("phi", ...)``)
    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Per child: ``"phi"`` (``C x C``; a lost worker's children keep their last one) or an attribute
        every child shares, as a single env of the task has it (asked of one live worker)."""
        check_open(self)
        live = [g for g in range(len(self.groups)) if not self._lost[g]]
        if name != "phi":
            for g in live:
                try:
                    values = self._get(g, self.workers[g].get_attr.remote(name))
                except RayTaskError as error:  # a name the children lack: their own AttributeError, not Ray's wrapper
                    raise error.cause from None
                if values is not None:
                    return tuple(values[0] for _ in range(self.num_envs))
            raise RuntimeError("every Ray worker of this env is lost: call reset() to start new ones")
        phis = [self._last_info[i].get("phi") for i in range(self.num_envs)]
        for g in live:
            values = self._get(g, self.workers[g].get_attr.remote("phi"))
            if values is not None:
                phis[self.groups[g].start : self.groups[g].stop] = values
        return tuple(phis)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Set ``"phi"`` per child: a list (or a stacked array) of ``num_envs`` matrices, or one matrix for every
        child."""
        check_open(self)
        values = list(phi_values(name, values, self.num_envs, self.phi_ndim))
        for value in values:  # all checks before any worker changes
            self.phi_checker(value)
        pending = {g: self.workers[g].set_attr.remote("phi", values[group.start : group.stop])
                   for g, group in enumerate(self.groups) if not self._lost[g]}  # fmt: skip
        for g, ref in pending.items():
            self._get(g, ref)

    # ---------------------------------------------------------------- helpers
    def _gpus_per_worker(self, requested: float | None, device: str) -> float:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if device.startswith("cuda:") and device != "cuda:0":  # an actor sees only the GPU Ray gave it, as cuda:0
            raise ValueError(f"device={device!r}: Ray gives each worker a GPU of its own, which it sees as 'cuda'; pass "
                             "device='cuda' (or 'auto'), and num_gpus_per_worker for the share of one it takes")  # fmt: skip
        if requested is not None:  # checked by __init__
            return requested
        if device == "cpu":
            return 0.0
        if device.startswith("cuda") and gpus == 0:
            raise ValueError(f"device={device!r} but the Ray cluster has no GPU: use device='cpu' or a cluster with GPUs")
        return gpu_share(gpus, len(self.groups))

    def _check_capacity(self) -> None:
        """Refuse at once what the cluster can never place (Ray would leave the actors pending forever)."""
        resources = ray.cluster_resources()
        for kind, per_worker in (("CPU", self.num_cpus_per_worker), ("GPU", self.num_gpus_per_worker)):
            # Added up as Ray's scheduler adds them: each share rounded to its unit first.
            needed, total = ray_units(per_worker) * len(self.groups) / RAY_RESOURCE_UNITS, float(resources.get(kind, 0.0))
            if needed > total:
                raise ValueError(
                    f"{len(self.groups)} Ray workers x {per_worker:g} {kind} need {needed:g} {kind}s but the cluster has "
                    f"{total:g}: raise children_per_worker or lower num_{kind.lower()}s_per_worker"
                )

    def _start_workers(self, groups: Any) -> dict[str, Any] | None:
        """New actors for ``groups`` (all at once, each loading the data); the first one's description."""
        env_id, kwargs = self._worker_args
        actor = ray.remote(ChildGroup).options(
            num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker, max_restarts=0,
            runtime_env=self._runtime_env,
        )  # fmt: skip
        started = []
        for g in groups:
            # An actor handle: Ray types its methods as the class's plain functions, without their .remote.
            worker: Any = actor.remote(max(1, math.floor(self.num_cpus_per_worker)))
            if g < len(self.workers):
                self.workers[g] = worker
            else:
                self.workers.append(worker)
            started.append(worker.start.remote(env_id, len(self.groups[g]), kwargs))
        descriptions = ray.get(started)
        return descriptions[0] if descriptions else None

    def _get(self, group: int, ref: Any) -> Any | None:
        """The worker's result, or None (and the worker marked lost) if its actor died."""
        try:
            return ray.get(ref)
        except RayActorError:
            self._lost[group] = True
            return None

    def _record_info(self, infos: dict[str, Any], info: dict[str, Any], child: int) -> dict[str, Any]:
        if info:
            self._last_info[child] = {k: v for k, v in info.items() if k not in _EPISODE_END_KEYS}
        return self._add_info(infos, info, child)

    def _lost_step(self, group: range, rewards: np.ndarray, terminations: np.ndarray, infos: dict) -> dict:
        """A lost worker's children: each ends its episode once (see "Lost Workers"), then idles."""
        for child in group:
            if self._reported[child]:
                continue
            last = self._last_info[child]
            info = dict(last, worker_lost=True, row_improvement=np.zeros_like(last["row_improvement"]))
            if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
                # The same-step contract of an episode's end: its last observation and info beside the step's (the
                # child cannot be reset without an actor, so the step's observation is that same last one).
                info = dict(info, final_obs=self._observations[child].copy(), final_info=dict(info))
            rewards[child], terminations[child] = self.worker_lost_reward, True
            self._reported[child] = True
            infos = self._add_info(infos, info, child)
        return infos


def _child_info(infos: dict[str, Any], child: int) -> dict[str, Any]:
    """One child's entries of a vector env's ``infos`` (arrays with ``_key`` masks, nested dicts alike)."""
    info = {}
    for key, values in infos.items():
        if key.startswith("_") or not infos.get(f"_{key}", np.ones(child + 1, dtype=bool))[child]:
            continue
        value = _child_info(values, child) if isinstance(values, dict) else values[child]
        # numpy scalars back to Python ones, so that ``_add_info`` batches them with the native dtypes
        info[key] = value.item() if isinstance(value, np.generic) else value
    return info
