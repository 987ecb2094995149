"""The Ray vector env beyond the shared contract: equivalence with the native env, lost workers, the cluster.

One local cluster of 2 CPUs for the module (``ray_cluster``); children run on two actors of half a CPU.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray

from ala_gym.agents.baselines import FixedPhi
from ala_gym.wrappers.ray import RayVectorEnv, ray_units
from ala_gym.wrappers.ray import gpu_share as ray_gpu_share

ENV_ID = "ALA-Digits-v0"
TINY = dict(total_iterations=40, steps_per_action=10, eval_points=2, eval_stride=2, device="cpu", reward="raw")
N_PAIRS, STEPS = 55, 4
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make_ray(ray_cluster, isolated_cache):
    made = []

    def factory(num_envs: int, **kwargs) -> RayVectorEnv:
        kwargs = {"children_per_worker": 2, "num_cpus_per_worker": 0.5, **TINY, **kwargs}
        env_vars = {"ALA_GYM_CACHE": str(isolated_cache)}
        envs = gym.make_vec(ENV_ID, num_envs=num_envs, backend="ray", runtime_env={"env_vars": env_vars}, **kwargs)
        made.append(envs)
        return envs.unwrapped

    yield factory
    for envs in made:
        envs.close()


def kill(actor) -> None:
    """Kill a worker and wait until Ray reports it dead: ``ray.kill`` returns at once, and a call made right after it
    could still reach the living process (a loaded machine makes that likely)."""
    ray.kill(actor)
    wait_until_dead(actor)


def wait_until_dead(actor) -> None:
    """Return once calls to ``actor`` fail as to a dead actor; fail the test if it still answers after 60 s."""
    from ray.exceptions import RayActorError

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=10)
        except RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the killed worker still answers after 60 s")


def _run(envs, actions: np.ndarray, seed: int) -> list:
    trace = list(envs.reset(seed=seed))
    for action in actions:
        trace += list(envs.step(action))
    return trace


def _assert_same(a, b) -> None:
    """Equal bit for bit, info dicts included (same keys, masks and dtypes)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, np.ndarray) and a.dtype != object:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, np.ndarray):
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_the_ray_keywords_the_native_backend_points_to_ray_are_the_ray_envs_own() -> None:
    """``RAY_KEYWORDS`` (named without importing Ray) are exactly the keywords the Ray vector env takes beyond the
    native one's, so none is missing from, or wrongly in, the hint the native backend gives."""
    import inspect

    from ala_gym.envs.vector import ALAVectorEnv
    from ala_gym.registration import RAY_KEYWORDS

    def keywords(cls: type) -> set[str]:
        return {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}

    assert set(RAY_KEYWORDS) == keywords(RayVectorEnv) - keywords(ALAVectorEnv)


def test_an_env_id_of_ones_own_runs_on_ray_by_its_module(ray_cluster, tmp_path: Path, monkeypatch) -> None:
    """``gym.make_vec("module:EnvId", backend="ray")``: the workers import the module that registered the id, and
    its children are those of the native vector env."""
    (tmp_path / "ray_own_ids.py").write_text(
        "import ala_gym\n"
        f"ala_gym.register_env('RayOwn-v0', dict(dataset='digits', model='mlp', **{TINY!r}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    runtime_env = {"env_vars": {"PYTHONPATH": str(tmp_path)}}
    try:
        on_ray = gym.make_vec("ray_own_ids:RayOwn-v0", num_envs=2, backend="ray", runtime_env=runtime_env,
                              train_mode="sequential", num_cpus_per_worker=0.5)  # fmt: skip
        native = gym.make_vec("ray_own_ids:RayOwn-v0", num_envs=2, train_mode="sequential")
        np.testing.assert_array_equal(on_ray.reset(seed=4)[0], native.reset(seed=4)[0])
        on_ray.close()
    finally:
        gym.registry.pop("RayOwn-v0", None)
        sys.modules.pop("ray_own_ids", None)


@pytest.mark.parametrize("autoreset_mode", ["NextStep", "SameStep"])
def test_ray_children_equal_the_native_env_bit_for_bit(make_ray, autoreset_mode: str) -> None:
    """Sequential path on CPUs: 3 children on 2 actors give the in-process env's trajectories and infos."""
    actions = np.random.default_rng(5).integers(0, 3, size=(STEPS + 2, 3, N_PAIRS))
    kwargs = dict(train_mode="sequential", autoreset_mode=autoreset_mode)
    on_ray = make_ray(3, **kwargs)
    assert len(on_ray.workers) == 2
    native = gym.make_vec(ENV_ID, num_envs=3, **kwargs, **TINY)
    for got, want in zip(_run(on_ray, actions, 9), _run(native, actions, 9), strict=True):
        _assert_same(got, want)
    np.testing.assert_array_equal(np.array(on_ray.get_attr("phi")), np.array(native.get_attr("phi")))


def test_killed_worker_ends_its_children_and_the_controller_run_completes(make_ray) -> None:
    """Kill one of two actors mid-run: its child ends with worker_lost, the others' records are kept."""
    controller = FixedPhi(num_envs=3)
    reference = controller.run(gym.make_vec(ENV_ID, num_envs=3, train_mode="sequential", **TINY), seed=3)
    envs = make_ray(3, train_mode="sequential")

    def kill_second_worker(step: int, logs: dict) -> None:
        if step == 1:
            kill(envs.workers[1])  # children 0, 1 live on worker 0, child 2 on worker 1

    records = controller.run(envs, seed=3, on_step=kill_second_worker)
    lost = records[2]
    assert lost.worker_lost and np.isnan(lost.test_metric) and not lost.diverged
    assert lost.rewards[:1] == reference[2].rewards[:1] and lost.rewards[1] == -10.0 and len(lost.rewards) == 2
    for got, want in zip(records[:2], reference[:2]):
        assert got == want  # every other result kept, bit for bit

    # The lost child idles until reset(), which starts a new actor: the full run works again.
    assert envs._lost.tolist() == [False, True]
    records = controller.run(envs, seed=3)
    assert records == reference


def test_lost_worker_step_contract(make_ray) -> None:
    envs = make_ray(2, children_per_worker=1, worker_lost_reward=-1.0)
    envs.reset(seed=0)
    actions = np.ones((2, N_PAIRS), dtype=np.int64)
    _, _, _, _, before = envs.step(actions)
    kill(envs.workers[0])
    observation, reward, terminated, truncated, info = envs.step(actions)
    assert terminated.tolist() == [True, False] and not truncated.any() and reward[0] == -1.0
    assert info["_worker_lost"].tolist() == [True, False] and info["worker_lost"][0]
    assert "_test_metric" not in info  # not finished: no test metric
    assert info["val_metric"][0] == before["val_metric"][0] and info["iteration"].tolist() == [10, 20]
    assert before["row_improvement"][0].any() and not info["row_improvement"][0].any()  # no credit for the lost step
    # Afterwards the lost child idles: its last observation, reward 0, no info; set_attr and get_attr go on.
    envs.set_attr("phi", 0.5 * np.eye(10))
    np.testing.assert_array_equal(envs.get_attr("phi")[1], 0.5 * np.eye(10))
    np.testing.assert_array_equal(envs.get_attr("phi")[0], before["phi"][0])
    later, reward, terminated, truncated, info = envs.step(actions)
    np.testing.assert_array_equal(later[0], observation[0])
    assert reward[0] == 0.0 and not terminated[0] and not truncated[0] and not info["_val_metric"][0]
    kill(envs.workers[1])
    _, _, terminated, _, _ = envs.step(actions)
    assert terminated.tolist() == [False, True]
    with pytest.raises(RuntimeError, match="reset"):
        envs.get_attr("num_classes")


def test_a_worker_lost_just_after_an_episode_ended_reports_no_end_of_that_episode_again(make_ray) -> None:
    """The lost step carries the child's last info but not its finished episode's scores: a lost run must not
    look finished with the previous episode's test metric."""
    envs = make_ray(2, children_per_worker=1)
    envs.reset(seed=0)
    actions = np.ones((2, N_PAIRS), dtype=np.int64)
    for _ in range(STEPS):
        _, _, terminated, _, ended = envs.step(actions)
    assert terminated.all() and ended["_test_metric"].all() and ended["_final_val_metric"].all()
    kill(envs.workers[0])
    _, _, terminated, _, info = envs.step(actions)  # the others reset (NEXT_STEP); child 0 is lost
    assert terminated[0] and info["worker_lost"][0]
    for key in ("test_metric", "final_val_metric", "final_val_loss"):
        assert key not in info or not info[f"_{key}"][0], key


def test_a_lost_worker_under_same_step_autoreset_ends_its_children_as_episodes_end(make_ray) -> None:
    from ala_gym.wrappers.sb3 import SB3VecEnv

    envs = make_ray(2, children_per_worker=1, autoreset_mode="SameStep")
    venv = SB3VecEnv(envs)
    venv.seed(0)
    venv.reset()
    actions = np.ones((2, N_PAIRS), dtype=np.int64)
    venv.step(actions)
    kill(envs.workers[0])
    observations, _, dones, infos = venv.step(actions)
    # Stable-Baselines3 reads the ended episode's last observation from final_obs: there, and the same as returned.
    assert dones.tolist() == [True, False] and infos[0]["worker_lost"]
    np.testing.assert_array_equal(infos[0]["terminal_observation"], observations[0])


def test_a_worker_that_died_between_steps_is_replaced_by_the_next_reset(make_ray) -> None:
    envs = make_ray(2, children_per_worker=1)
    envs.reset(seed=0)
    envs.step(np.ones((2, N_PAIRS), dtype=np.int64))
    kill(envs.workers[1])
    with pytest.raises(RuntimeError, match="died while resetting; .* call reset\\(\\) again"):
        envs.reset(seed=0)
    observations, _ = envs.reset(seed=0)  # as the message says: a new actor for the group
    assert observations.shape == (2, N_PAIRS, 24) and not envs._lost.any()
    handle = envs.workers[0]
    envs.close()  # its actors go with it, also on a cluster the caller started
    wait_until_dead(handle)
    with pytest.raises(RuntimeError, match="closed"):
        envs.get_attr("num_classes")
    with pytest.raises(ValueError, match="children_per_worker must be an integer >= 1, got 2.0"):
        make_ray(2, children_per_worker=2.0)


def test_refuses_what_the_cluster_cannot_place_and_leaves_a_cluster_it_did_not_start(make_ray) -> None:
    with pytest.raises(ValueError, match="GPU"):
        make_ray(2, num_gpus_per_worker=1.0)
    with pytest.raises(ValueError, match="children_per_worker"):
        make_ray(3, children_per_worker=1, num_cpus_per_worker=1.0)  # 3 CPUs asked of 2
    with pytest.raises(ValueError, match="no GPU"):
        make_ray(2, device="cuda")
    # An actor sees the one GPU Ray gives it as cuda:0: another index fails there, so it is refused here.
    for gpus in (None, 0.5):
        with pytest.raises(ValueError, match=r"^device='cuda:1': Ray gives each worker a GPU of its own, which it sees as 'cuda'"):
            make_ray(2, device="cuda:1", num_gpus_per_worker=gpus)
    envs = make_ray(2)
    envs.close()
    assert ray.is_initialized() and not envs.started_ray


def test_shares_are_added_up_as_rays_scheduler_adds_them(make_ray) -> None:
    """Three thirds of the 2 CPUs: each rounded to Ray's unit of 1/10,000 (0.6667), they need more than the cluster
    has, and the third worker would wait forever; refused at once instead."""
    with pytest.raises(ValueError, match=r"^3 Ray workers x 0\.666667 CPU need 2\.0001 CPUs but the cluster has 2"):
        make_ray(3, children_per_worker=1, num_cpus_per_worker=2 / 3)


@pytest.mark.parametrize("gpus", [1.0, 2.0, 3.0, 8.0])
def test_the_default_gpu_share_fits_the_cluster_in_rays_units(gpus: float) -> None:
    for workers in range(1, 33):
        share = ray_gpu_share(gpus, workers)
        assert 0 < share <= 1.0 and ray_units(share) * workers <= ray_units(gpus), (gpus, workers, share)
        assert share >= min(1.0, gpus / workers) - 1e-4  # no more than one unit below the even split
    assert ray_gpu_share(1.0, 6) == 0.1666 and ray_gpu_share(2.0, 3) == 0.6666 and ray_gpu_share(4.0, 2) == 1.0


@pytest.mark.parametrize("gpus", [-1, float("nan"), "1"])
def test_a_gpu_share_that_is_not_a_number_of_at_least_0_is_refused_by_name(make_ray, gpus: object) -> None:
    """Before anything is asked of the cluster: not Ray's or Python's error about a NaN or a string later."""
    with pytest.raises(ValueError, match=r"^num_gpus_per_worker must be a finite number in \[0, inf\), got "):
        make_ray(2, num_gpus_per_worker=gpus)


def _last_line_of_a_fresh_process(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a new Python process (no Ray cluster yet) and return the last line it printed."""
    env = {**__import__("os").environ, "ALA_GYM_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_starts_and_stops_a_local_cluster_when_none_runs(tmp_path: Path) -> None:
    """...and gives the process back what Ray's start changed in it: Python's random state, the environment (Ray
    points ``breakpoint()`` at its own debugger), the SIGTERM handler and the ``ray`` logger's level."""
    code = (
        "import logging, os, random, signal, gymnasium as gym, numpy as np, ray, ala_gym\n"
        f"kwargs = {TINY!r}\n"
        "def state():\n"
        "    return random.getstate(), dict(os.environ), signal.getsignal(signal.SIGTERM), logging.getLogger('ray').level\n"
        "before = state()\n"
        "envs = gym.make_vec('ALA-Digits-v0', num_envs=2, backend='ray', num_cpus=1, children_per_worker=2, **kwargs)\n"
        "assert ray.is_initialized() and envs.unwrapped.started_ray\n"
        "assert os.environ.get('PYTHONBREAKPOINT') and signal.getsignal(signal.SIGTERM) != before[2]  # what is undone\n"
        "observation, _ = envs.reset(seed=0)\n"
        "envs.step(np.ones((2, 55), dtype=np.int64))\n"
        "envs.close()\n"
        "print(observation.shape, ray.is_initialized(), [a == b for a, b in zip(before, state())])\n"
    )
    assert _last_line_of_a_fresh_process(code, tmp_path) == "(2, 55, 24) False [True, True, True, True]"


def test_a_refusal_stops_the_local_cluster_the_env_started(tmp_path: Path) -> None:
    """The refused env closes without error afterwards, as gymnasium 1.1 to 1.2 close it when it is collected."""
    code = (
        "import ray, ala_gym\n"
        "from ala_gym.wrappers.ray import RayVectorEnv\n"
        f"kwargs = {TINY!r}\n"
        "env = RayVectorEnv.__new__(RayVectorEnv)\n"
        "try:\n"
        "    env.__init__('ALA-Digits-v0', 2, num_cpus=1, children_per_worker=1, num_cpus_per_worker=1.0, **kwargs)\n"
        "except ValueError as error:\n"
        "    refused = 'need 2 CPUs' in str(error), ray.is_initialized()\n"
        "env.close()\n"
        "print('refused:', *refused, env.closed)\n"
    )
    assert _last_line_of_a_fresh_process(code, tmp_path) == "refused: True False True"


def test_an_env_refused_before_ray_starts_closes_without_error() -> None:
    running = ray.is_initialized()  # a cluster an earlier test of the module started, or none
    env = RayVectorEnv.__new__(RayVectorEnv)
    with pytest.raises(ValueError, match="num_envs"):
        env.__init__("ALA-Digits-v0", 0, **TINY)
    env.close()
    assert env.closed and ray.is_initialized() == running


def test_a_cluster_address_that_nothing_answers_is_refused_in_one_line_not_retried_without_end(monkeypatch) -> None:
    """``ray.init`` retries an address where no cluster listens for ever; the package asks the address first and
    refuses it within its wait, naming the address and the fix. Addresses Ray resolves itself pass untouched."""
    import socket
    import time

    from ala_gym.wrappers import ray as ray_wrapper

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(ray_wrapper, "RAY_CONNECT_SECONDS", 2.0)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        start = time.monotonic()
        with pytest.raises(ValueError, match=rf"cannot reach a Ray cluster at {address} \(.*\); start one there"):
            ray_wrapper.check_reachable(address)
        assert time.monotonic() - start < 5.0
    with socket.socket() as listening:  # a port that answers passes
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        ray_wrapper.check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")
    for address in ("auto", "local"):
        ray_wrapper.check_reachable(address)


def test_an_address_with_no_cluster_behind_it_is_refused_in_one_line(monkeypatch) -> None:
    """``"auto"`` with no cluster running: ``ray.init`` raises ``ConnectionError`` at once, which reaches the user as
    one line that names the address and the fix (the command lines turn a ``ValueError`` into exit status 2)."""
    from ala_gym.wrappers import ray as ray_wrapper

    def no_cluster(**kwargs) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    monkeypatch.setattr(ray_wrapper.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_wrapper.ray, "init", no_cluster)
    with pytest.raises(ValueError) as caught:
        ray_wrapper.start_ray("auto", None)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("cannot join a Ray cluster at 'auto' (Could not find any")
    assert message.endswith("start one (ray start --head) or give no address")
