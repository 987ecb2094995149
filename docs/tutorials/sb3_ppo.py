"""Stable-Baselines3 PPO as the controller: learn a policy over a few children, then run it frozen on new ones.

    python docs/tutorials/sb3_ppo.py                        # 4 children x 400 iterations, K = 20, under a minute
    python docs/tutorials/sb3_ppo.py --children 2 --total-iterations 20 --steps-per-action 10

Needs the sb3 extra: pip install -e '.[sb3]'.
"""

import argparse

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO

import ala_gym.agents
from ala_gym.agents.sb3 import PairSharedPolicy
from ala_gym.wrappers.sb3 import SB3VecEnv

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--children", type=int, default=4)
parser.add_argument("--total-iterations", type=int, default=400)
parser.add_argument("--steps-per-action", type=int, default=20)
args = parser.parse_args()
budget = dict(total_iterations=args.total_iterations, steps_per_action=args.steps_per_action)
steps = -(-args.total_iterations // args.steps_per_action)  # controller steps in one child's training

# 1. SB3 on the ALA vector env. SB3VecEnv.make builds it in the SAME_STEP autoreset mode that SB3 expects.
venv = SB3VecEnv.make("ALA-Digits-v0", num_envs=args.children, **budget)
venv.seed(0)  # child i is seeded with 0 + i, as gym.make(...).reset(seed=i)
# PairSharedPolicy: one small MLP per class-pair row, so the policy does not depend on the class count.
model = PPO(PairSharedPolicy, venv, n_steps=steps, batch_size=steps * args.children, gamma=0.9, seed=0)
model.learn(total_timesteps=steps * args.children)  # one update after every child trained once
venv.close()

# 2. The learned policy, frozen, on new children (seeds 100, 101, ...), beside cross-entropy on the same children.
def run(policy, loss_form=None):
    """Each child's test error, and the share of the policy's pair actions that moved Phi (1 is "keep")."""
    kwargs = {**budget, **({"loss_form": loss_form} if loss_form else {})}
    envs = gym.make_vec("ALA-Digits-v0", num_envs=args.children, **kwargs)
    observations, infos = envs.reset(seed=100)
    test_error = np.full(args.children, np.nan)
    moves = []
    while np.isnan(test_error).any():  # the vector env resets a finished child on the next step: stop first
        actions = policy(observations)
        moves.append(np.mean(actions != 1))
        observations, rewards, terminated, truncated, infos = envs.step(actions)
        finished = terminated & np.isnan(test_error)
        if finished.any():  # test_metric is in the info of the step that ends a child's training
            test_error[finished] = infos["test_metric"][finished]
    envs.close()
    return test_error, float(np.mean(moves))

learned, moved = run(lambda observations: model.predict(observations, deterministic=True)[0])
cross_entropy, _ = run(lambda observations: np.ones((args.children, observations.shape[1]), dtype=np.int64), "cross_entropy")
print("test error, learned policy:", np.round(learned, 4), "mean", round(float(learned.mean()), 4),
      f"({moved:.0%} of its pair actions moved Phi)")
print("test error, cross-entropy: ", np.round(cross_entropy, 4), "mean", round(float(cross_entropy.mean()), 4))

# 3. The same algorithm as a registered controller: what the benchmark runs for its "ppo" rows.
controller = ala_gym.agents.CONTROLLERS["ppo"](num_envs=args.children)
envs = controller.make_envs("ALA-Digits-v0", **budget)
records = controller.run(envs, seed=0)  # learns online while the children train once; one record per child
envs.close()
print("ppo controller, test error per child:", [round(record.test_metric, 4) for record in records])
