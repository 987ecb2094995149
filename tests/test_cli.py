"""Command lines: bad input ends with one clear line and exit status 2, help texts say what options do."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ala_gym.agents import checkpoints, progress
from ala_gym.agents.reinforce import PairPolicy, ReinforceConfig, ReinforceController
from ala_gym.agents.reinforce import main as reinforce_main
from ala_gym.agents.sb3 import main as sb3_main

TINY_RUN = ["--num-envs", "1", "--total-iterations", "4", "--steps-per-action", "2", "--device", "cpu",
            "--env-kwarg", "eval_points=1", "--no-tensorboard"]


def _good_checkpoint(path: Path) -> dict:
    policy = PairPolicy(24, 8, torch.Generator().manual_seed(0))
    config = {**vars(ReinforceConfig(hidden=8)), "n_features": 24}
    checkpoints.save_checkpoint(path, "reinforce", config, policy.state_dict())
    return torch.load(path, weights_only=True)


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    good = _good_checkpoint(folder / "good.pt")
    cases = {}

    def case(name: str, message: str, payload=None, raw: bytes | None = None) -> None:
        path = folder / f"{name}.pt"
        if raw is not None:
            path.write_bytes(raw)
        else:
            torch.save(payload, path)
        cases[name] = (path, message)

    # Arbitrary pickled objects, which weights_only refuses to build.
    case("pickle", "does not load as plain tensors", raw=pickle.dumps(subprocess.CompletedProcess(["x"], 0)))
    case("torch-pickle", "does not load as plain tensors", {"format_version": subprocess.CompletedProcess(["x"], 0)})
    case("random", "does not load as plain tensors", raw=bytes(range(256)) * 8)
    case("empty", "does not load as plain tensors", raw=b"")
    case("missing-keys", "no state_dict", {k: v for k, v in good.items() if k != "state_dict"})
    case("string-version", "invalid format_version '1'", {**good, "format_version": "1"})
    shapes = {key: torch.zeros(3, 3) for key in good["state_dict"]}
    case("wrong-shapes", "damaged reinforce policy", {**good, "state_dict": shapes})
    cases["absent"] = (folder / "absent.pt", "no such checkpoint file")
    return cases


def test_bad_checkpoints_get_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    for name, (path, message) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(checkpoints.CheckpointError, match=message) as caught:
            ReinforceController.load(path)
        text = str(caught.value)
        assert str(path) in text and "weights_only=False" not in text, name


def test_reinforce_cli_bad_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path, _ = _bad_checkpoints(tmp_path)["random"]
    done = subprocess.run(
        [sys.executable, "-m", "ala_gym.agents.reinforce", "--load", str(path), *TINY_RUN],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert str(path) in done.stderr


@pytest.mark.parametrize("main", [reinforce_main, sb3_main], ids=["reinforce", "sb3"])
def test_cli_bad_env_value_and_missing_checkpoint_exit_2(main, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*TINY_RUN, "--beta", "nan"])
    assert caught.value.code == 2 and "beta must be a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["--load", str(tmp_path / "absent.pt"), *TINY_RUN])
    assert caught.value.code == 2 and "no such checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("main", [reinforce_main, sb3_main], ids=["reinforce", "sb3"])
def test_load_with_config_flags_is_refused(main, tmp_path: Path, capsys) -> None:
    _good_checkpoint(tmp_path / "policy.pt")
    with pytest.raises(SystemExit) as caught:
        main(["--load", str(tmp_path / "policy.pt"), "--hidden", "64", *TINY_RUN])
    assert caught.value.code == 2 and "drop --hidden" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["--freeze", *TINY_RUN])
    assert caught.value.code == 2 and "--freeze needs --load" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["ala_gym.agents.reinforce", "ala_gym.agents.sb3"])
def test_agent_help_documents_seed_and_shows_no_empty_defaults(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
    assert "--seed SEED seed of the run" in text and "(default: 32)" in text


def test_compare_help_describes_presets_and_counts() -> None:
    done = subprocess.run([sys.executable, "-m", "ala_gym.benchmarks.compare", "--help"], capture_output=True, text=True,
                          timeout=120)
    text = " ".join(done.stdout.split())
    assert "how many seeds: runs seeds 0, 1, ..., N-1" in text and "the Fashion-MNIST and CIFAR presets set 2" in text
    assert "cifar10-subset: ALA-CIFAR10-v0, 5 seeds, 400 iterations, K = 20, --children 2" in text
    assert "--env ALA-Digits-v0" in text  # the example runs on the embedded data, in any clone


def test_agent_progress_bar_only_on_a_terminal() -> None:
    logger = progress.RunLogger(3, None)  # under pytest, stderr is captured: not a terminal
    try:
        assert logger.bar.disable
        logger(1, {"reward": 1.0})  # still usable as on_step
    finally:
        logger.close()
