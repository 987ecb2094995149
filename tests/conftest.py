"""Shared fixtures: an isolated cache folder and tiny datasets written in the real on-disk formats.

No test downloads anything: CIFAR-10 and Fashion-MNIST are generated here, small enough to load in
milliseconds but in exactly the layout torchvision's readers (and ala_gym's checks) expect.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

# One OpenMP thread, as `make test` runs the suite, set before torch starts its thread pool: a process whose pool
# once ran wider can compute a child in another float order than a fresh one-thread process, such as a Ray actor,
# and the bit-for-bit comparisons between the two would fail under a bare `pytest`.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite computes on the CPU on every machine, as CI does: its bit-for-bit and recorded-float comparisons are the
# CPU's, and a GPU sums in other orders (and "auto" would pick it). So a GPU stays hidden, from the command lines the
# tests start too, unless ALA_GYM_TEST_CUDA=1: `make test-cuda` runs the tests marked `cuda` on it.
if os.environ.get("ALA_GYM_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# The genuine CIFAR-10 subset lies in shared/data beside the checkout; the package's own default data home is the
# user's data folder, so the tests (like the Makefile's targets) name this one unless a machine sets its own.
os.environ.setdefault("ALA_GYM_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
CIFAR_PER_BATCH = 20  # images per batch file: 100 train+val, 20 test
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FMNIST_TRAIN, FMNIST_TEST = 200, 50
FMNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("images", FMNIST_TRAIN),
    "train-labels-idx1-ubyte.gz": ("labels", FMNIST_TRAIN),
    "t10k-images-idx3-ubyte.gz": ("images", FMNIST_TEST),
    "t10k-labels-idx1-ubyte.gz": ("labels", FMNIST_TEST),
}


RAY_TEST = re.compile(r"(^|[^a-z])ray", re.IGNORECASE)
"""Node ids of tests that start Ray: ``test_ray.py``, a ``[ray]`` backend, a Ray tutorial (not "array")."""
WHOLE_MODULES = {"test_wheel", "test_agents"}
"""Modules whose module-scoped fixtures are expensive (a built wheel, trained policies)."""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups then (else it finds none)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): every test that starts Ray
    runs on one worker, one at a time, as in a serial run, and so do the docs site's tests, whose fixture starts
    every page's commands, a Ray tutorial among them; a module of :data:`WHOLE_MODULES` stays on one worker too,
    so that its fixtures are made once."""
    for item in items:
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        if RAY_TEST.search(item.nodeid) or "ray_cluster" in getattr(item, "fixturenames", ()) or module == "test_docs_site":
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif module in WHOLE_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test, restored after: bitwise comparisons need the same reduction order
    in every path, and tiny networks only lose to the spin-waiting of threads on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``ALA_GYM_CACHE`` at a per-test folder so no test reads or writes the user's cache."""
    cache = tmp_path / "ala_gym_cache"
    monkeypatch.setenv("ALA_GYM_CACHE", str(cache))
    return cache


ROOT = Path(__file__).resolve().parents[1]
COMMITTED_OUTPUTS = [ROOT / "benchmarks" / "results", ROOT / "agents" / "policies"]
"""Folders of committed results and policies, where the benchmarks and trainers write by default (relative to the
working directory, the repository's root in the suite): a test must write into a temporary folder instead."""


def _committed_files() -> dict[Path, tuple[int, int]]:
    files = (path for folder in COMMITTED_OUTPUTS for path in folder.rglob("*") if path.is_file())
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in files}


def _not_ignored(paths: list[str]) -> list[str]:
    """``paths`` but those in a folder of results that git ignores whole: what ``make demo`` writes into its own
    folder while the suite runs is no test's doing. A run in a committed comparison's ``runs/`` still counts (the
    comparison would resume from it). All of them outside a git checkout."""
    folders = {path: "/".join(Path(path).parts[:3]) + "/" for path in paths if Path(path).parts[:2] == ("benchmarks", "results")}
    if not folders:
        return paths
    try:
        done = subprocess.run(
            ["git", "check-ignore", "--stdin"], cwd=ROOT, input="\n".join(sorted(set(folders.values()))),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except OSError:  # no git
        return paths
    if done.returncode not in (0, 1):  # 1: none ignored; anything else: not a checkout
        return paths
    ignored = set(done.stdout.splitlines())
    return [path for path in paths if folders.get(path) not in ignored]


@pytest.fixture(autouse=True)
def committed_outputs_untouched() -> Iterator[None]:
    """Fail the test that wrote, replaced or removed a committed result or policy (a command run in the process
    without ``--out``, say, after its refusal of bad input regressed), naming the files, before a later run of
    the suite or a commit takes the test's output for a result."""
    before = _committed_files()
    yield
    after = _committed_files()
    paths = before.keys() | after.keys()
    changed = _not_ignored(sorted(str(path.relative_to(ROOT)) for path in paths if before.get(path) != after.get(path)))
    fix = "give it a temporary folder, and git checkout or remove these"
    assert not changed, f"the test wrote into the committed results: {changed}; {fix}"


@contextlib.contextmanager
def _global_rng_unchanged() -> Iterator[None]:
    torch.manual_seed(2024)
    np.random.seed(2024)
    random.seed(2024)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    assert torch.equal(torch.get_rng_state(), torch_state), "torch's global RNG was used"
    numpy_after = np.random.get_state()
    assert np.array_equal(numpy_after[1], numpy_state[1]) and numpy_after[2:] == numpy_state[2:], "numpy's global RNG was used"
    assert random.getstate() == python_state, "Python's global RNG was used"


@pytest.fixture
def global_rng_unchanged() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``with global_rng_unchanged(): ...`` fails if the block draws from torch's, numpy's or Python's global RNG."""
    return _global_rng_unchanged


@pytest.fixture(scope="session")
def tiny_cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 "python version" folder (pickled dicts, uint8 N x 3072 rows) with its own ``MD5SUMS``.

    Same layout as ``shared/data/cifar10-subset``: the batch files lie directly in the folder.
    Labels cycle through all 10 classes in every batch.
    """
    folder = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(1234)
    for index, name in enumerate(CIFAR_BATCHES):
        batch = {
            "batch_label": f"{name} of the tiny test set",
            "labels": [int(v) for v in (np.arange(CIFAR_PER_BATCH) + index) % 10],
            "data": rng.integers(0, 256, size=(CIFAR_PER_BATCH, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{k}.png" for k in range(CIFAR_PER_BATCH)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": CIFAR_LABEL_NAMES, "num_cases_per_batch": CIFAR_PER_BATCH, "num_vis": 3072})
    )
    sums = [f"{hashlib.md5((folder / n).read_bytes()).hexdigest()}  {n}" for n in ["batches.meta", *CIFAR_BATCHES]]
    (folder / "MD5SUMS").write_text("\n".join(sums) + "\n")
    return folder


def _idx_bytes(kind: str, count: int, rng: np.random.Generator) -> bytes:
    """An idx file: magic ``0 0 0x08 ndim`` (unsigned bytes), big-endian dims, then the raw values."""
    if kind == "images":
        header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (count, 28, 28))
        body = rng.integers(0, 256, size=count * 28 * 28, dtype=np.uint8)
    else:
        header = bytes([0, 0, 0x08, 1]) + int(count).to_bytes(4, "big")
        body = (np.arange(count) % 10).astype(np.uint8)
    return header + body.tobytes()


@pytest.fixture(scope="session")
def tiny_fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four gzip-compressed idx files of Fashion-MNIST: 200 train / 50 test 28x28 images."""
    folder = tmp_path_factory.mktemp("tiny_fmnist")
    rng = np.random.default_rng(4321)
    for name, (kind, count) in FMNIST_FILES.items():
        (folder / name).write_bytes(gzip.compress(_idx_bytes(kind, count, rng)))
    return folder


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster of 2 CPUs per test module (starting one takes seconds), shut down at its end."""
    import logging

    import ray

    settings = dict(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        ray.init(**settings)
    except Exception as error:  # Ray waits a fixed time for its node to start, which a loaded machine can outlast
        if "timed out during startup" not in str(error):
            raise
        ray.shutdown()
        ray.init(**settings)  # once more, then the test fails with Ray's error
    yield
    ray.shutdown()


@pytest.fixture(params=["native", "ray"])
def make_vec(request: pytest.FixtureRequest, isolated_cache: Path) -> Iterator[Callable[..., object]]:
    """``make_vec(env_id, num_envs=N, **kwargs)``: ``gym.make_vec`` on each vector backend.

    On Ray: the module's local cluster, at most two children per actor (3 children run on 2 actors),
    half a CPU per actor, and the test's cache folder passed to the actors. Every env is closed afterwards.
    """
    import gymnasium as gym

    extra: dict[str, object] = {}
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        extra = dict(backend="ray", children_per_worker=2, num_cpus_per_worker=0.5,
                     runtime_env={"env_vars": {"ALA_GYM_CACHE": str(isolated_cache)}})  # fmt: skip
    made = []

    def factory(env_id: str, num_envs: int, **kwargs):
        envs = gym.make_vec(env_id, num_envs=num_envs, **extra, **kwargs)
        made.append(envs)
        return envs

    factory.backend = request.param
    yield factory
    for envs in made:
        envs.close()
