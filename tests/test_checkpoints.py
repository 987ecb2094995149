"""Policy checkpoints: files that are not one, weights that are not finite, and files of another package
version are refused at load with one line naming the file; the shipped policies load."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ala_gym
from ala_gym.agents import checkpoints
from ala_gym.agents.checkpoints import CheckpointError, save_checkpoint
from ala_gym.agents.reinforce import POLICY_LIBRARY, PairPolicy, ReinforceConfig, ReinforceController

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--num-envs", "1", "--total-iterations", "4", "--steps-per-action", "2", "--device", "cpu",
            "--env-kwarg", "eval_points=1", "--no-tensorboard"]


def save_reinforce(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    policy = PairPolicy(24, 8, torch.Generator().manual_seed(0))
    config = {**vars(ReinforceConfig(hidden=8)), "n_features": 24}
    checkpoints.save_checkpoint(path, "reinforce", config, state_dict or policy.state_dict())
    return path


def non_finite(path: Path, value: float) -> Path:
    """A reinforce checkpoint with ``value`` in its first weight, as a file written elsewhere (save_checkpoint
    refuses to write one) would hold it."""
    finite = save_reinforce(path.with_suffix(".finite.pt"))
    checkpoint = torch.load(finite, weights_only=True)
    first = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][first][0, 0] = value
    torch.save(checkpoint, path)
    finite.unlink()
    return path


def not_checkpoints(folder: Path) -> dict[str, Path]:
    """Files that are not checkpoints, each failing inside torch's loader in its own way."""
    files = {
        "text": b"hello world\n",  # read as a legacy pickle: KeyError 101 (the memo index "e")
        "json": b'{"format_version": 1, "state_dict": {}}\n',
        "pickle-protocol-97": b"\x80a",  # torch warns about the protocol before failing
    }
    for name, raw in files.items():
        (folder / f"{name}.pt").write_bytes(raw)
    return {name: folder / f"{name}.pt" for name in files}


def test_files_that_are_not_checkpoints_get_a_checkpoint_error(tmp_path: Path) -> None:
    for name, path in not_checkpoints(tmp_path).items():
        with pytest.raises(checkpoints.CheckpointError, match="is not an ala-gym policy checkpoint") as caught:
            checkpoints.load_checkpoint(path, "reinforce")
        assert str(path) in str(caught.value), name


@pytest.mark.parametrize("module", ["ala_gym.agents.reinforce", "ala_gym.agents.sb3"])
def test_load_of_a_bad_file_is_one_line_and_exit_2(module: str, tmp_path: Path) -> None:
    bad = {**not_checkpoints(tmp_path), "nan": non_finite(tmp_path / "nan.pt", float("nan"))}
    for name, path in bad.items():
        done = subprocess.run([sys.executable, "-m", module, "--load", str(path), *TINY_RUN], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, (name, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, (name, done.stderr)
        assert str(path) in done.stderr, (name, done.stderr)


def test_the_sb3_command_lines_model_file_names_its_policy_class_by_module_not_by_a_path(tmp_path: Path) -> None:
    """Run as ``python -m``, the policy class lives in ``__main__``; SB3's .zip must still name it by its module
    (cloudpickle would otherwise store the class whole, with the path of the file on the machine that ran it)."""
    import base64
    import json
    import zipfile

    done = subprocess.run([sys.executable, "-m", "ala_gym.agents.sb3", *TINY_RUN, "--save", str(tmp_path / "p.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(zipfile.ZipFile(tmp_path / "p.zip").read("data"))
    pickled = base64.b64decode(data["policy_class"][":serialized:"])
    assert b"ala_gym.agents.sb3" in pickled and b"PairSharedPolicy" in pickled and str(ROOT).encode() not in pickled


@pytest.mark.parametrize(
    "error, message",
    [
        (PermissionError(13, "Permission denied"), "cannot be read (Permission denied); check its permissions"),
        (OSError(5, "Input/output error"), "cannot be read (Input/output error)"),
    ],
)
def test_a_checkpoint_the_os_refuses_to_read_names_the_file_and_the_reason(
    error: OSError, message: str, tmp_path: Path, monkeypatch
) -> None:
    """A file that exists but cannot be read: a CheckpointError naming the file and the OS's reason, not an OSError
    (torch's read fails here as the OS would, since root reads any file). Only a refused read names permissions
    as the fix; a device's I/O error is no matter of permissions."""
    path = save_reinforce(tmp_path / "policy.pt")

    def refused(file, *args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoints.torch, "load", refused)
    with pytest.raises(checkpoints.CheckpointError) as caught:
        checkpoints.load_checkpoint(path, "reinforce")
    assert str(caught.value) == f"{path} {message}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_at_load(value: float, tmp_path: Path) -> None:
    path = non_finite(tmp_path / "diverged.pt", value)
    with pytest.raises(checkpoints.CheckpointError, match="non-finite") as caught:
        ReinforceController.load(path)
    assert str(path) in str(caught.value) and "net.0.weight" in str(caught.value)


def test_non_finite_weights_are_refused_at_save_and_the_file_there_stays(tmp_path: Path) -> None:
    path = tmp_path / "policy.pt"
    save_checkpoint(path, "reinforce", {}, {"w": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"policy.pt not written: the policy's weights are not finite \(NaN or inf in w\)"):
        save_checkpoint(path, "reinforce", {}, {"w": torch.tensor([1.0, float("nan")])})
    assert path.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["policy.pt"]


def test_checkpoint_of_another_package_version_is_refused(tmp_path: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(ala_gym, "__version__", "0.0.1")
        path = save_reinforce(tmp_path / "old.pt")
    with pytest.raises(checkpoints.CheckpointError) as caught:
        ReinforceController.load(path)
    message = str(caught.value)
    assert str(path) in message and "0.0.1" in message and ala_gym.__version__ in message
    assert "save the policy again" in message and "\n" not in message


def test_shipped_policies_are_of_this_version_and_load() -> None:
    shipped = sorted(POLICY_LIBRARY.glob("*.pt"))
    assert shipped
    for path in shipped:
        assert checkpoints.load_checkpoint(path, "reinforce")["ala_gym_version"] == ala_gym.__version__
        ReinforceController.load(path)


def test_state_dict_of_non_tensors_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "lists.pt"
    checkpoints.save_checkpoint(path, "reinforce", {}, {"net.0.weight": [[0.0]]})
    with pytest.raises(checkpoints.CheckpointError, match="must hold tensors only") as caught:
        checkpoints.load_checkpoint(path, "reinforce")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("config, state_dict", [(["hidden", 16], {}), ({}, [torch.zeros(1)])], ids=["config", "state_dict"])
def test_a_config_or_state_dict_that_is_no_dictionary_is_damaged(tmp_path: Path, config, state_dict) -> None:
    path = tmp_path / "listed.pt"
    checkpoints.save_checkpoint(path, "reinforce", config, state_dict)
    with pytest.raises(checkpoints.CheckpointError, match="config and state_dict must be dictionaries") as caught:
        checkpoints.load_checkpoint(path, "reinforce")
    assert str(path) in str(caught.value)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path: Path) -> None:
    """A meta-training state is no policy, and a policy no meta-training state: each load names what it holds."""
    path = tmp_path / "state.pt"
    checkpoints.save_checkpoint(path, "meta-train-state", {}, {}, trainer={"generation": 1})
    with pytest.raises(checkpoints.CheckpointError, match="holds a 'meta-train-state' checkpoint, not a 'reinforce' one"):
        ReinforceController.load(path)
    assert checkpoints.load_checkpoint(path, "meta-train-state")["trainer"] == {"generation": 1}


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_behind(tmp_path: Path) -> None:
    """A value torch cannot save fails the call and leaves neither the target nor a temporary file; an extra
    entry may not replace the header's keys."""
    with pytest.raises(pickle.PicklingError, match="cannot be saved"):
        checkpoints.save_checkpoint(tmp_path / "policy.pt", "reinforce", {}, {}, trainer=Unsaveable())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"extra entries \['format_version'\] would overwrite"):
        checkpoints.save_checkpoint(tmp_path / "policy.pt", "reinforce", {}, {}, format_version=0)


class Unsaveable:
    """A value whose pickling fails, as a write would fail midway."""

    def __reduce__(self):
        raise pickle.PicklingError("cannot be saved")
