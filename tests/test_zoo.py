"""RL Baselines3 Zoo trains on the ALA envs with the shipped hyperparameters (the module ala_gym.agents.zoo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ala_gym import ENV_IDS
from ala_gym.agents import zoo


def test_the_zoo_table_holds_every_id_of_the_package() -> None:
    assert set(zoo.hyperparams) == set(ENV_IDS)


@pytest.mark.parametrize("env_id", ["ALA-Digits-v0", "ALA-Digits-AUCPR-v0"])
def test_rl_zoo_trains_ppo_with_the_shipped_hyperparameters(tmp_path: Path, env_id: str) -> None:
    from stable_baselines3 import PPO

    command = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", env_id, "--gym-packages", "ala_gym",
        "--conf-file", "ala_gym.agents.zoo", "-n", "32", "--seed", "0", "--eval-freq", "-1",
        "--save-freq", "-1", "--log-folder", str(tmp_path), "--env-kwargs", "total_iterations:40",
        "steps_per_action:10", "eval_points:2", "eval_stride:2", "device:'cpu'",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (saved,) = tmp_path.glob(f"ppo/{env_id}_*/{env_id}.zip")
    model = PPO.load(saved, device="cpu")
    action, _ = model.predict(np.zeros(55 * 24, dtype=np.float32), deterministic=True)  # the flattened observation
    assert action.shape == (55,)
