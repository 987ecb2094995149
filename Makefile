# Set-up and entry points. Every target creates the virtual environment when it is absent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch and torchvision builds every environment here installs first (pip takes them from a local wheel source
# where one is configured); setup.cfg only declares ranges.
TORCH := torch==2.14.1 torchvision==0.29.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Data that is not downloaded (the CIFAR-10 subset) lies in shared/data beside the checkout, unless set otherwise.
export ALA_GYM_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test test-oldest test-cuda coverage fashion-mnist chromium docs gpu-check

setup: $(STAMP)

# torch and torchvision first, then the package with every extra and the test tools.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Real Fashion-MNIST (70k images) from Debian's package; needs root (or sudo).
fashion-mnist:
	@test -f $(FASHION_MNIST) || { command -v apt-get >/dev/null || { echo "make: $(FASHION_MNIST) is missing and there is no apt-get: put Fashion-MNIST's four idx .gz files in $(dir $(FASHION_MNIST)) (Debian's dataset-fashion-mnist holds them)" >&2; exit 2; }; apt-get update && apt-get install -y dataset-fashion-mnist; }

# Chromium from Debian, for the documentation site's browser test (tests/test_docs_site.py); needs root (or sudo).
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null || { echo "make: no chromium on PATH and no apt-get to install it: install Chromium so that the command chromium starts it" >&2; exit 2; }; apt-get update && apt-get install -y chromium; }

# The documentation site, into site/ (not committed); a broken link or reference fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The main job: compare controllers on the embedded digits data (under a minute on a CPU after set-up).
demo: $(STAMP)
	$(PY) -m ala_gym.benchmarks.compare --env ALA-Digits-v0 --preset demo

# What needs a GPU, in one command, on a machine with one (benchmarks/gpu.py; results in benchmarks/results/gpu/).
gpu-check: $(STAMP) fashion-mnist
	$(PY) -m ala_gym.benchmarks.gpu --device cuda

# The tests marked cuda on the GPU that make test hides (tests/conftest.py): tests/test_device_placement.py's workflows
# and AdaLFL's run on CUDA, on a machine with one.
test-cuda: $(STAMP) fashion-mnist
	@$(PY) -c "import sys, torch; torch.cuda.is_available() or sys.exit(print('make test-cuda: torch sees no CUDA GPU; run it on a machine with one', file=sys.stderr) or 2)"
	ALA_GYM_TEST_CUDA=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m cuda

# Two pytest-xdist workers of one torch thread each: the 2 cores the suite is sized for.
TEST_WORKERS ?= 2

test: $(STAMP) fashion-mnist chromium
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The suite's core on the oldest dependencies setup.cfg admits (requirements-oldest.txt), in a virtual environment of
# its own, on Python 3.10 or 3.11 (the oldest releases have no wheels for newer ones); not part of make test (its
# installs take minutes). torch and torchvision are $(TORCH); pytest and pytest-xdist are bounded as setup.cfg's dev extra bounds them.
OLDEST_VENV ?= .venv-oldest
OLDEST_TESTS := tests/test_core.py tests/test_data.py tests/test_env.py tests/test_vector.py tests/test_spec.py \
	tests/test_episode.py tests/test_losses.py tests/test_metrics.py tests/test_trainer.py tests/test_batched.py \
	tests/test_golden.py tests/test_metric_env.py tests/test_metric_learning.py tests/test_agents.py \
	tests/test_adalfl.py tests/test_learnloss.py tests/test_meta_train.py tests/test_optional_deps.py \
	tests/test_zoo.py tests/test_ray.py tests/test_host_syncs.py

test-oldest: fashion-mnist
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(OLDEST_VENV)/bin/python -m pip install --quiet -r requirements-oldest.txt 'pytest>=7,<9.2' 'pytest-xdist>=3.5,<4'
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-deps -e .
	OMP_NUM_THREADS=1 $(OLDEST_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(OLDEST_TESTS)

# The test suite under coverage.py (pyproject.toml's settings): a report of the lines and branches it leaves unrun.
coverage: $(STAMP) fashion-mnist chromium
	rm -f .coverage .coverage.*
	OMP_NUM_THREADS=1 $(PY) -m coverage run -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
	$(PY) -m coverage combine --quiet
	$(PY) -m coverage report
