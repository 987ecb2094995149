"""Controllers of one's own in the benchmark: ``package.module:Factory`` specs and installed plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ala_gym.agents
from ala_gym.benchmarks import compare
from ala_gym.benchmarks.compare import run as compare_run

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")
PLUGIN = textwrap.dedent(
    """
    import numpy as np
    from ala_gym.agents.base import Controller


    class AlwaysUp(Controller):
        '''Raises every pair's Phi each step: a controller written outside the package.'''

        def __init__(self, num_envs: int = 1) -> None:
            self.num_envs = num_envs

        def act(self, observations, infos):
            return np.full(observations.shape[:2], 2, dtype=np.int64)


    def make_up(num_envs: int = 1) -> AlwaysUp:
        return AlwaysUp(num_envs)


    def make_named(label: str, num_envs: int = 1) -> AlwaysUp:
        controller = AlwaysUp(num_envs)
        controller.label = label
        return controller


    def make_weighted(weights: dict[str, float] | None = None, num_envs: int = 1) -> AlwaysUp:
        controller = AlwaysUp(num_envs)
        controller.weights = weights
        return controller


    def make_unresolved(label: "NotImportedHere", num_envs: int = 1) -> AlwaysUp:  # a name for type checkers only
        controller = AlwaysUp(num_envs)
        controller.label = label
        return controller


    class Countless(Controller):
        '''A controller of one's own with no constructor: no num_envs keyword.'''

        def act(self, observations, infos):
            return np.ones(observations.shape[:2], dtype=np.int64)


    def make_countless() -> AlwaysUp:
        return AlwaysUp()


    NOT_A_CONTROLLER = 3


    def make_nothing(**kwargs):
        return "no controller"
    """
)


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_controllers.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path / "results")
    return tmp_path


def test_a_module_factory_runs_through_the_comparison(plugin: Path) -> None:
    rows = compare.compare("ALA-Digits-v0", ["ce", "my_controllers:AlwaysUp(num_envs=2)"], [0], TINY, "own")
    assert [row["controller"] for row in rows] == ["ce", "my_controllers:AlwaysUp(num_envs=2)"]
    results = json.loads((plugin / "results" / "own" / "results.json").read_text())
    mine = next(run for run in results["runs"] if run["controller"].startswith("my_controllers"))
    assert mine["num_children"] == 2
    assert mine["children"][0]["phi"][-1][0][1] > 0  # it raised Phi(0, 1)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_here:Factory", "cannot import 'no_such_module_here'"),
        ("my_controllers:Missing", "has no 'Missing'"),
        ("my_controllers:NOT_A_CONTROLLER", "is not callable"),
        ("my_controllers:make_nothing", "not an ala_gym.agents.Controller"),
        ("nonsense", "unknown controller 'nonsense'"),
        ("broken_on_import:Factory", "importing 'broken_on_import' fails \\(RuntimeError: no GPU here\\)"),
        (".my_controllers:AlwaysUp", "'.my_controllers' is relative; name the module by its full import path"),
    ],
)
def test_bad_specs_are_refused_in_one_line(plugin: Path, spec: str, message: str) -> None:
    (plugin / "broken_on_import.py").write_text('raise RuntimeError("no GPU here")\n')
    with pytest.raises(compare.ComparisonError, match=message):
        compare.build_controller(spec)


def test_a_controller_without_a_child_count_keyword_runs_on_one_child_and_is_told_how_to_take_more(plugin: Path) -> None:
    """--baseline-children sets a fixed controller's num_envs: one that takes no such keyword runs where that count
    is 1 (or unset), and where it is more, the refusal says what to add instead of a bare TypeError."""
    assert compare.build_controller("my_controllers:Countless", baseline_children=1).num_envs == 1
    assert compare.build_controller("my_controllers:Countless").num_envs == 1
    with pytest.raises(compare.ComparisonError, match=r"^controller 'my_controllers:Countless': --baseline-children 2 "
                                                      r"runs such rows on 2 children, but it takes no num_envs keyword; "
                                                      r"give it one that sets the controller's num_envs"):  # fmt: skip
        compare.build_controller("my_controllers:Countless", baseline_children=2)
    assert compare.build_controller("my_controllers:AlwaysUp", baseline_children=2).num_envs == 2
    # A factory function that takes no count, whatever its controller's constructor takes: decided by the factory.
    assert compare.build_controller("my_controllers:make_countless", baseline_children=1).num_envs == 1


def test_the_command_line_takes_a_module_factory(plugin: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": f"{plugin}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "ala_gym.benchmarks.compare", "--env", "ALA-Digits-v0", "--controllers",
               "my_controllers:make_up", "--seeds", "1", "--env-kwargs", json.dumps(TINY), "--name",
               str(plugin / "cli-results")]  # fmt: skip
    result = subprocess.run(command, cwd=Path(compare.__file__).parents[2], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| my_controllers:make_up | 1 |" in result.stdout
    bad = subprocess.run(command[:6] + ["my_controllers:Missing"] + command[7:], cwd=Path(compare.__file__).parents[2],
                         env=environment, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "has no 'Missing'" in bad.stderr and "Traceback" not in bad.stderr


def test_an_installed_plugin_is_found_by_its_entry_point_name(plugin: Path) -> None:
    dist = plugin / "my_controllers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-controllers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ala_gym.agents.ENTRY_POINT_GROUP}]\nalways-up = my_controllers:make_up\n"
                                           "broken = my_controllers_gone:make\n")  # fmt: skip
    controller = compare.build_controller("always-up")
    assert type(controller).__name__ == "AlwaysUp" and controller.name == "always-up"
    with pytest.raises(compare.ComparisonError, match="entry point 'my_controllers_gone:make' .* does not load"):
        compare.build_controller("broken")  # a plugin whose module is gone: named, not a traceback


def test_an_env_id_of_ones_own_works_in_the_command_lines_by_its_module(tmp_path: Path) -> None:
    # The module registers a dataset name and the id; each command line imports it by the "module:EnvId" name.
    (tmp_path / "my_tasks.py").write_text(
        "import ala_gym\n"
        "from sklearn.datasets import load_digits\n"
        "from ala_gym.envs import register_dataset\n"
        "def load():\n"
        "    x, y = load_digits(return_X_y=True)\n"
        "    return x[:1400], y[:1400], x[1400:], y[1400:]\n"
        "register_dataset('digits-again', load)\n"
        "ala_gym.register_env('Again-v0', dict(dataset='digits-again', model='mlp', total_iterations=20,\n"
        "                                      steps_per_action=10, eval_points=1, device='cpu'))\n"
    )
    environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    commands = [
        ["ala_gym.benchmarks.compare", "--env", "my_tasks:Again-v0", "--controllers", "ce,pbt", "--seeds", "1",
         "--name", str(tmp_path / "results")],
        ["ala_gym.agents.meta_train", "--tasks", "my_tasks:Again-v0", "--horizon", "20,20", "--steps-per-action", "10",
         "--population", "1", "--generations", "1", "--hidden", "8", "--save", str(tmp_path / "meta.pt")],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run([sys.executable, "-m", *command], env=environment, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| pbt | 10 |" in table  # the package's vector env: PBT drives its population of children
    assert (tmp_path / "meta.pt").is_file()


def test_a_factory_with_a_required_keyword_is_a_row_and_its_keywords_are_typed(plugin: Path) -> None:
    assert compare.build_controller("my_controllers:make_named(label=mine)").label == "mine"
    with pytest.raises(compare.ComparisonError, match="label must be str, got 7"):
        compare.build_controller("my_controllers:make_named(label=7)")  # the factory function's own hint
    with pytest.raises(compare.ComparisonError, match=r"controller 'my_controllers:make_named': .*missing 1 required "
                                                      r"positional argument: 'label'"):  # fmt: skip
        compare.build_controller("my_controllers:make_named")  # the keyword left out


def test_a_dict_keyword_takes_an_object_and_hints_that_do_not_resolve_check_nothing(plugin: Path) -> None:
    """A keyword hinted ``dict`` takes a JSON object and refuses a list; a factory whose hints name what its module
    cannot resolve (a type imported for type checkers only) still builds, its keywords taken as written."""
    assert compare.build_controller('my_controllers:make_weighted(weights={"a": 0.5})').weights == {"a": 0.5}
    with pytest.raises(compare.ComparisonError, match=r"weights must be dict\[str, float\] \| None, got \[0.5\]"):
        compare.build_controller("my_controllers:make_weighted(weights=[0.5])")
    assert compare.build_controller("my_controllers:make_unresolved(label=7)").label == 7


def test_an_env_id_of_the_package_cannot_be_registered_over() -> None:
    """``register_env`` refuses the package's own ids, as ``register_dataset`` and ``register_model`` refuse its
    names: replacing one would change what every command and result means by it. The id stays the package's."""
    import gymnasium as gym

    import ala_gym

    before = gym.spec("ALA-Digits-v0")
    with pytest.raises(ValueError, match="ALA-Digits-v0 is one of the package's env ids; register yours under a name"):
        ala_gym.register_env("ALA-Digits-v0", dict(dataset="digits", model="mlp"))
    assert gym.spec("ALA-Digits-v0") is before


def test_an_env_id_of_ones_own_is_named_with_its_module_for_other_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gymnasium makes ``"module:EnvId"`` as ``EnvId``; the Ray workers, other processes, get it back with the
    module that registered it, and one registered by a script run as ``__main__`` is refused in one line."""
    import importlib

    import gymnasium as gym

    from ala_gym.registration import importable_id

    (tmp_path / "own_ids.py").write_text(
        "import ala_gym\nala_gym.register_env('OwnIds-v0', dict(dataset='digits', model='mlp'))\n"
    )
    # Registered through a helper function of another module: the module whose import registered it is named.
    (tmp_path / "own_helpers.py").write_text(
        "import ala_gym\ndef add(name):\n    ala_gym.register_env(name, dict(dataset='digits', model='mlp'))\n"
    )
    (tmp_path / "own_tasks.py").write_text("import own_helpers\nown_helpers.add('HelperIds-v0')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("own_ids")
        assert importable_id("OwnIds-v0") == "own_ids:OwnIds-v0"
        importlib.import_module("own_tasks")
        assert importable_id("HelperIds-v0") == "own_tasks:HelperIds-v0"
        assert importable_id("ALA-Digits-v0") == "ALA-Digits-v0"
        exec("import ala_gym\nala_gym.register_env('MainIds-v0', dict(dataset='digits'))", {"__name__": "__main__"})
        with pytest.raises(ValueError, match=r"^MainIds-v0 was registered by the script run as __main__, .*'module:MainIds-v0'$"):
            gym.make_vec("MainIds-v0", num_envs=1, backend="ray")
    finally:
        for env_id in ("OwnIds-v0", "MainIds-v0", "HelperIds-v0"):
            gym.registry.pop(env_id, None)
        for module in ("own_ids", "own_helpers", "own_tasks"):
            sys.modules.pop(module, None)
