"""Meta-train the pair-shared policy by evolution strategies, then run it frozen beside cross-entropy.

    python docs/tutorials/meta_training.py                       # 5 generations of 8 digits children, 200 iterations
    python docs/tutorials/meta_training.py --generations 1 --total-iterations 40 --steps-per-action 10

Every generation trains 2 x population children once, each pair under theta +- sigma epsilon with common random
numbers, and moves theta along the estimate of the gradient of the children's final validation metric.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import ala_gym.agents
from ala_gym.agents.meta_train import MetaTrainConfig, meta_train
from ala_gym.agents.reinforce import ReinforceController

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--total-iterations", type=int, default=200, help="each child's SGD iterations")
parser.add_argument("--steps-per-action", type=int, default=20, help="K")
parser.add_argument("--generations", type=int, default=5)
parser.add_argument("--population", type=int, default=4, help="antithetic pairs per generation")
args = parser.parse_args()

env_kwargs = dict(device="cpu", batch_size=32, eval_points=2, eval_stride=5, val_subsample=200)
config = MetaTrainConfig(
    tasks=("ALA-Digits-v0",), horizon=(args.total_iterations, args.total_iterations),
    steps_per_action=args.steps_per_action, population=args.population, generations=args.generations,
    env_kwargs=env_kwargs,
)
trainer = meta_train(config)  # a checkpoint per generation with state_path=..., resumed when present
for entry in trainer.history:
    print(f"generation {entry['generation']}: mean final validation error {-entry['fitness_mean']:.4f}")

# The meta-trained policy is a reinforce policy file: run it frozen on new children, and cross-entropy beside it.
path = Path(tempfile.mkdtemp()) / "meta.pt"
trainer.save_policy(path)
budget = dict(total_iterations=args.total_iterations, steps_per_action=args.steps_per_action, **env_kwargs)
for name, controller in (("meta-trained policy", ReinforceController.load(path, train=False, num_envs=4)),
                         ("cross-entropy", ala_gym.agents.CONTROLLERS["ce"](num_envs=4))):
    envs = controller.make_envs("ALA-Digits-v0", **budget)
    records = controller.run(envs, seed=1000)  # children no generation trained
    envs.close()
    print(f"{name}: test error {np.mean([r.test_metric for r in records]):.4f}")
