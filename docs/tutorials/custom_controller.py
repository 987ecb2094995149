"""Your own controller, compared with cross-entropy by the benchmark on the same seeds and budget.

    python docs/tutorials/custom_controller.py               # 2 seeds x 400 iterations on digits, under a minute
    python docs/tutorials/custom_controller.py --seeds 1 --total-iterations 40 --steps-per-action 10 --name /tmp/mine

The table, the JSON of every run and the plots land in benchmarks/results/<name>/ (an absolute --name is a
folder of its own). Run again, the comparison reuses its finished runs; another budget needs another name.
"""

import argparse

import numpy as np

import ala_gym.agents
from ala_gym.agents.base import Controller
from ala_gym.benchmarks.compare import compare

LOWER, KEEP, RAISE = 0, 1, 2  # the three actions of every row: -step, 0, +step


class SmoothThenHold(Controller):
    """Raises every off-diagonal entry of Phi while training progress is below ``until``, then holds it."""

    name = "smooth-then-hold"

    def __init__(self, until: float = 0.5, num_envs: int = 1) -> None:
        self.until = until
        self.num_envs = num_envs  # children per run: the benchmark's --baseline-children sets it

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        # observations: [children, rows, features]; the last feature of a row is the training progress.
        progress = observations[:, 0, -1]
        actions = np.full(observations.shape[:2], KEEP, dtype=np.int64)
        actions[progress < self.until] = RAISE  # the env ignores the diagonal's actions
        return actions


# The benchmark finds controllers by name: register a factory (keywords in a spec such as
# "smooth-then-hold(until=0.3)" are passed to it).
ala_gym.agents.CONTROLLERS["smooth-then-hold"] = SmoothThenHold

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--total-iterations", type=int, default=400)
    parser.add_argument("--steps-per-action", type=int, default=20)
    parser.add_argument("--name", default="tutorial-smooth-then-hold", help="results folder under benchmarks/results/")
    args = parser.parse_args()
    rows = compare(
        "ALA-Digits-v0",
        ["ce", "smooth-then-hold", "smooth-then-hold(until=0.25)"],
        seeds=list(range(args.seeds)),
        env_kwargs={"total_iterations": args.total_iterations, "steps_per_action": args.steps_per_action},
        name=args.name,
    )
    for row in rows:
        print(f"{row['controller']:>30}: test error {row['test_mean']:.2f}% +- {row['test_std']:.2f}")
