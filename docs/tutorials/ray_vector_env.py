"""Children on Ray actors: the same vector env contract, the children trained in other processes.

    python docs/tutorials/ray_vector_env.py                 # 4 children on 2 actors, 400 iterations, K = 20
    python docs/tutorials/ray_vector_env.py --children 2 --total-iterations 20 --steps-per-action 10

Needs the ray extra: pip install -e '.[ray]'. Without an address, this starts a local cluster; on a
cluster, ray.init(address="auto") on its head node (or address=... to gym.make_vec).
"""

import argparse
import logging

import gymnasium as gym
import numpy as np
import ray

import ala_gym  # noqa: F401  (registers the ALA-* ids)
import ala_gym.agents

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--children", type=int, default=4)
parser.add_argument("--total-iterations", type=int, default=400)
parser.add_argument("--steps-per-action", type=int, default=20)
args = parser.parse_args()
budget = dict(total_iterations=args.total_iterations, steps_per_action=args.steps_per_action, device="cpu")

ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)

# Any controller runs on the Ray backend unchanged: here the bundled REINFORCE, learning on the driver while
# the children train on the actors (only actions go out, only step results come back).
controller = ala_gym.agents.CONTROLLERS["reinforce-multi"](num_envs=args.children)

# The Ray backend of gym.make_vec: children_per_worker children per actor, each actor loading the data once.
# A vector env built by hand applies the controller's own env keywords, as controller.make_envs(...) would.
envs = gym.make_vec("ALA-Digits-v0", num_envs=args.children, backend="ray", children_per_worker=2,
                    num_cpus_per_worker=1, **budget, **controller.env_kwargs())
print(type(envs.unwrapped).__name__, "with", len(envs.unwrapped.workers), "actors")

# The vector env's contract, as in the native env: child i is seeded as gym.make(...).reset(seed=i).
observations, infos = envs.reset(seed=0)
print("observations:", observations.shape)  # [children, class pairs, features]
actions = np.ones((args.children, observations.shape[1]), dtype=np.int64)  # keep Phi where it is
observations, rewards, terminated, truncated, infos = envs.step(actions)
print("rewards after one step:", rewards, "validation errors:", np.round(infos["val_metric"], 3))

records = controller.run(envs, seed=0)  # resets the children and trains each once, learning as they go
envs.close()  # ends the actors; a cluster this script did not start keeps running
print("reinforce-multi on Ray, test error per child:", [round(record.test_metric, 4) for record in records])
print("children whose actor was lost:", sum(record.worker_lost for record in records))

ray.shutdown()
