"""A first env loop: one child trained on digits under a hand-written policy, step by step.

    python docs/tutorials/first_env.py                      # 400 SGD iterations, K = 20: 20 steps, seconds
    python docs/tutorials/first_env.py --total-iterations 40 --steps-per-action 10
"""

import argparse

import gymnasium as gym
import numpy as np

import ala_gym  # noqa: F401  (registers the ALA-* ids)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--total-iterations", type=int, default=400, help="the child's SGD iterations")
parser.add_argument("--steps-per-action", type=int, default=20, help="K: SGD iterations per env step")
args = parser.parse_args()

env = gym.make("ALA-Digits-v0", total_iterations=args.total_iterations, steps_per_action=args.steps_per_action,
               render_mode="ansi")
print("action space:", env.action_space)  # one entry per class pair: 0 lowers Phi(i, j), 1 keeps it, 2 raises it
print("observation space:", env.observation_space)  # one row of features per class pair

observation, info = env.reset(seed=0)
print(f"initial validation error {info['val_metric']:.3f}")
progress_column = env.observation_space.shape[1] - 1  # the last feature of every row: training progress
terminated = truncated = False
while not (terminated or truncated):
    # A policy of one's own: raise every off-diagonal entry of Phi during the first half of training
    # (smoothing the targets, as label smoothing does), then hold it. The env ignores diagonal actions.
    raise_phi = observation[0, progress_column] < 0.5
    action = np.full(env.action_space.shape, 2 if raise_phi else 1, dtype=np.int64)
    observation, reward, terminated, truncated, info = env.step(action)
    print(f"iteration {info['iteration']:5d}: reward {reward:+.0f}, validation error {info['val_metric']:.3f}, "
          f"pair credit of (0, 1) {info['row_improvement'][1]:+.4f}")

print(env.render())  # Phi beside the validation confusion, as text
print(f"test error {info['test_metric']:.3f} after {info['iteration']} iterations; "
      f"largest off-diagonal Phi {np.abs(info['phi'] - np.eye(10)).max():.3f}")
env.close()
