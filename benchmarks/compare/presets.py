"""The named configurations of ``--preset`` (data only) and their description for ``--help``."""

from __future__ import annotations

from typing import Any

# The fixed rows every comparison has: what a user would compare a learned loss with. Where multi-child
# controllers run 2 children, ``ce(num_envs=2)`` trains cross-entropy on exactly their children (run k:
# seeds k and k + 1), for a paired comparison.
FIXED_ROWS = "ce,phi-identity,label-smoothing,phi-uniform,random,confusion"
# The Fashion-MNIST presets' budget: 1200 iterations of batch 128 are about 3 epochs of the 50k training
# images; K = 30 gives 40 steps.
FASHION_MNIST_BUDGET = dict(total_iterations=1200, steps_per_action=30, eval_points=2, eval_stride=5, val_subsample=1000)

# A small training set seen for many epochs: the small CNN on 1,000 training images, 1200 iterations of 64
# (77 epochs), where cross-entropy overfits (cifar10-subset-long, and a task of without-cifar10-cnn's family).
SMALL_TRAIN_CNN = dict(model="small_cnn", lr=0.05, weight_decay=5e-4, train_size=1000, batch_size=64, total_iterations=1200,
                       steps_per_action=20, eval_points=2, eval_stride=5, val_subsample=500)


def metric_learning_preset(env: str, name: str) -> dict[str, Any]:
    """A Fashion-MNIST metric-learning comparison (train on classes 0-4, retrieve on 5-9): the framework's
    fixed loss, the adaptive loss held at its initial Phi, ALA learned online and frozen at its initial
    policy, and PPO, every row on the same 2 children per seed. 1000 iterations of 5 x 20 batches (4 epochs
    of the 25k training images), K = 50: 20 steps a child."""
    return dict(
        env=env,
        controllers="fixed-loss,phi-init,reinforce-multi,reinforce-frozen,ppo",
        seeds=3,
        children=2,
        baseline_children=2,
        seed_stride=2,
        env_kwargs=dict(total_iterations=1000, steps_per_action=50, eval_points=2, eval_stride=5, val_subsample=1000),
        name=name,
    )


META_DIGITS_CNN = (
    "meta-digits-cnn", "meta-digits-cnn-bias", "meta-digits-cnn-sigma", "meta-digits-cnn-head", "meta-digits-cnn-seed1",
    "meta-digits-cnn-sigma-seed1", "meta-digits-cnn-average", "meta-digits-cnn-average-seed1", "meta-digits-cnn-pop32",
    "meta-digits-cnn-pop32-seed1", "meta-digits-cnn-loss", "meta-digits-cnn-loss-seed1", "meta-digits-cnn-still",
    "meta-digits-cnn-still-seed1",
)  # fmt: skip
"""Policies meta-trained on digits alone, with the fashion-mnist preset's small CNN child, learning rate, batch
size and K at horizons of 400-1200 iterations (``agents/policies/meta-digits-cnn*.json``), under four settings
of the evolution strategies: their defaults; the action head's biases alone from a near-constant policy; all
parameters at six times the default perturbation (sigma 0.3); the action head alone at sigma 0.3 from a
near-constant policy; the first and the third again with a second meta-training seed (``-seed1``); the first,
with both seeds, ranking tied children by their mean rank (``-average``, ``rank_ties="average"``) or by their
final validation loss (``-loss``, ``rank_ties="loss"``), with 32 antithetic pairs instead of 8 (``-pop32``), and
from a near-constant policy (``-still``, ``init_no_change=0.9``). A family of one dataset, chosen for the held-out
preset's child and budget."""

FASHION_MNIST_APART = (
    "without-fashion-mnist", "meta-digits-cnn-average-seed1", "meta-digits-cnn-pop32", "meta-digits-cnn-pop32-seed1",
)  # fmt: skip
"""The policies the fashion-mnist-apart and fashion-mnist-fresh presets run again on children no two seeds share:
the leave-one-out policy and the three whose verdicts against cross-entropy were closest in the fashion-mnist
preset (chosen on its children, 0-5, which the apart preset's first three seeds train again)."""

CIFAR10_SUBSET_SHORT = dict(
    model="small_cnn", lr=0.05, weight_decay=5e-4,
    data_root="cifar10-subset",  # relative: under --data-root / $ALA_GYM_DATA (see ala_gym.core.data.with_data_home)
    total_iterations=400, steps_per_action=20, eval_points=2, eval_stride=5, val_subsample=None,
)  # fmt: skip
"""The short CIFAR-10 subset budget: the small CNN, 400 iterations of batch 128 (about 12 epochs of its 4,136
training images), K = 20."""

CIFAR10_FRESH = ("without-cifar10", "without-cifar10-all-tasks", "without-cifar10-cnn")
"""The policies meta-trained without CIFAR-10 that the cifar10-subset-fresh preset runs: the first, and the two
whose mean per-seed difference against cross-entropy was smallest in the cifar10-subset preset after it."""

RAMPS = (
    "phi-ramp(start=0.0;end=0.1)", "phi-ramp(start=0.1;end=0.0)", "phi-ramp(start=0.0;end=-0.1)",
    "phi-ramp(start=0.1;end=0.0;follow=true)",
)  # fmt: skip
"""When a smoother loss pays: Phi drifting from identity to the selected +0.1 over the run (the path of a
policy of the action space that moves one way all run), +0.1 early decaying to cross-entropy, the
sharpening drift to -0.1, and the early ramp followed by actions of the action space from identity."""

RAMP_POLICIES = (
    "reinforce-transfer-frozen(policy=ramp-clone)",
    "reinforce-transfer-frozen(policy=without-cifar10-ramp)",
    "reinforce-transfer-frozen(policy=without-cifar10-ramp-seed1)",
)  # fmt: skip
"""The followed early ramp as a policy file (``agents/policies/ramp-clone.json``: the pair-shared policy
fitted to ``phi-ramp(start=0.1;end=0.0;follow=true)``'s actions on the Fashion-MNIST task of the CNN family),
and the CNN family's meta-training started from it (seeds 0 and 1), run frozen: whether the policy class
holds the schedule, and what the search added to it."""


def cnn_family_task_preset(total_iterations: int, name: str) -> dict[str, Any]:
    """The Fashion-MNIST task of the without-cifar10-cnn meta-training family (:data:`SMALL_TRAIN_CNN`) at
    ``total_iterations``: cross-entropy, the oracles, the family's policies frozen and the ramps of
    :data:`RAMPS`, 2 new children per seed."""
    return dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce,oracle-phi,oracle-smoothing,reinforce-transfer-frozen(policy=without-cifar10-cnn),"
        "reinforce-transfer-frozen(policy=without-cifar10-cnn-60)," + ",".join(RAMPS + RAMP_POLICIES),
        seeds=5,
        children=2,
        baseline_children=2,
        seed_stride=2,
        env_kwargs=dict(SMALL_TRAIN_CNN, total_iterations=total_iterations),
        name=name,
    )


def fresh_children_preset(
    env: str, policies: tuple[str, ...], children: int, env_kwargs: dict, name: str, rows: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Cross-entropy, both oracles, ``policies`` run frozen and the controllers ``rows``, every row (the oracles'
    grids too) on ``children`` children per seed, at seeds 50-54 with none shared between seeds: children that no
    earlier comparison trained, so that no verdict rests on the children a policy was picked on, and the oracles'
    spreads are those of means over as many children as the policies'."""
    frozen = tuple(f"reinforce-transfer-frozen(policy={p})" for p in policies)
    return dict(
        env=env,
        controllers=",".join(("ce", "oracle-phi", "oracle-smoothing") + frozen + rows),
        seeds=5,
        first_seed=50,
        children=children,
        baseline_children=children,
        seed_stride=children,
        env_kwargs=env_kwargs,
        name=name,
    )


# Budgets chosen so a CPU can finish; each gives every child tens of controller steps.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(
        env="ALA-Digits-v0",
        controllers="ce,label-smoothing,reinforce-frozen,reinforce-multi",
        seeds=2,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(total_iterations=600, steps_per_action=20),
        name="demo-digits",
    ),
    # Every controller on the same 10 children per seed (seeds 0, 10, ..., 40: no child shared between
    # seeds), and the sweep that chose the defaults of ReinforceConfig, UniformPhi and the env step rules
    # (one lever changed per row).
    "digits": dict(
        env="ALA-Digits-v0",
        controllers="ce,label-smoothing,random,ppo,phi-uniform(off_diagonal=0.003),phi-uniform(off_diagonal=0.01),"
        "phi-uniform(off_diagonal=0.03),phi-uniform(off_diagonal=0.1),confusion,reinforce-paper-multi,"
        "reinforce-frozen,reinforce-multi,reinforce-multi(lr=0.001),reinforce-multi(lr=0.03),"
        "reinforce-multi(baseline=ema),reinforce-multi(pair_credit=false),reinforce-multi(init_no_change=0.9),"
        "reinforce-multi(entropy_coef=0.01),reinforce-multi(updates_per_step=4),"
        "reinforce-multi@fixed_diagonal=false,reinforce-multi@step_scaling=entry,reinforce-multi@beta=0.3,"
        # The best fixed Phi and label smoothing selected on validation, and the policies meta-trained without
        # digits (agents/policies/without-digits.json and its second seed), run frozen.
        "oracle-phi,oracle-smoothing,reinforce-transfer-frozen(policy=without-digits),"
        "reinforce-transfer-frozen(policy=without-digits-seed1)",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(total_iterations=600, steps_per_action=20),
        name="digits",
    ),
    # Horizon: does the policy keep learning over 100 controller steps, and does it optimise the end of
    # training? 2000 iterations of 128 images are ~240 epochs of the 1,077 training images: the regime where a
    # regularising loss pays. The oracles and every credit of ReinforceConfig on the same 10 children per seed.
    "digits-long": dict(
        env="ALA-Digits-v0",
        controllers="ce,phi-uniform,oracle-phi,oracle-smoothing,online-smoothing,reinforce-frozen,reinforce-multi,"
        "reinforce-multi(return_horizon=10),reinforce-multi(return_horizon=25),"
        "reinforce-multi(episodic_weight=1.0;warmup_runs=2),reinforce-multi(episodic_weight=0.5;warmup_runs=2),pbt,"
        "pbt-frozen,reinforce-transfer-frozen(policy=without-digits),reinforce-transfer-frozen(policy=without-digits-seed1)",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(total_iterations=2000, steps_per_action=20),
        name="digits-long",
    ),
    # The long-horizon regime on a second dataset, sized for a CPU: the 64-64 MLP child on 5,000 Fashion-MNIST
    # training images (2000 iterations of 128: 51 epochs), where cross-entropy's validation error is flat or
    # rising at the end. The oracles, online label smoothing, the online learner with per-step and with episodic
    # credit, its frozen initial policy, PBT and its initial population, all on the same 10 children per seed.
    "fashion-mnist-long": dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce,oracle-phi,oracle-smoothing,online-smoothing,reinforce-frozen,reinforce-multi,"
        "reinforce-multi(episodic_weight=1.0;warmup_runs=2),pbt,pbt-frozen,"
        # The policy meta-trained without Fashion-MNIST (agents/policies/without-fashion-mnist.json), run frozen;
        # then the same family meta-trained on both tasks every generation (two meta-training seeds).
        "reinforce-transfer-frozen(policy=without-fashion-mnist),"
        "reinforce-transfer-frozen(policy=without-fashion-mnist-all-tasks),"
        "reinforce-transfer-frozen(policy=without-fashion-mnist-all-tasks-seed1)",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(model="mlp", train_size=5000, total_iterations=2000, steps_per_action=20, eval_points=2,
                        eval_stride=5, val_subsample=1000),
        name="fashion-mnist-long",
    ),
    # The long-horizon regime on the genuine CIFAR-10 subset, sized for a CPU: the small CNN on 1,000 of its
    # training images (1200 iterations of 64: 77 epochs), where cross-entropy overfits. 4 children per row and
    # seed (not 10) keep the preset within about an hour and a half on one core; the rows of fashion-mnist-long,
    # and a policy meta-trained without CIFAR-10, run frozen.
    "cifar10-subset-long": dict(
        env="ALA-CIFAR10-v0",
        controllers="ce,oracle-phi,oracle-smoothing,online-smoothing,reinforce-frozen,reinforce-multi,pbt,pbt-frozen,"
        # The policy meta-trained on digits and Fashion-MNIST only (agents/policies/without-cifar10.json), run frozen.
        "reinforce-transfer-frozen(policy=without-cifar10),"
        # The same family meta-trained on both tasks every generation; sequential like ce, which ran before the
        # small CNN's children were batched by default, so that both train the same children the same way.
        "reinforce-transfer-frozen(policy=without-cifar10-all-tasks)@train_mode=sequential,"
        # Meta-trained on both tasks every generation, Fashion-MNIST on 1,000 training images (a small training
        # set seen for many epochs, as here), sequential as the row above.
        "reinforce-transfer-frozen(policy=without-cifar10-small-train)@train_mode=sequential,"
        # Meta-trained on small CNN children of digits and of Fashion-MNIST on 1,000 training images, at this
        # preset's learning rate, weight decay and batch size; sequential as the rows above.
        "reinforce-transfer-frozen(policy=without-cifar10-cnn)@train_mode=sequential,"
        # The same meta-training run on to 60 generations.
        "reinforce-transfer-frozen(policy=without-cifar10-cnn-60)@train_mode=sequential,"
        # When in the run a smoother loss pays (sequential as the rows above).
        + ",".join(f"{ramp}@train_mode=sequential" for ramp in RAMPS + RAMP_POLICIES),
        seeds=5,
        children=4,
        baseline_children=4,
        seed_stride=10,
        # data_root is relative: under --data-root / $ALA_GYM_DATA (see ala_gym.core.data.with_data_home)
        env_kwargs=dict(SMALL_TRAIN_CNN, data_root="cifar10-subset"),
        name="cifar10-subset-long",
    ),
    # One task of the without-cifar10-cnn meta-training family at its longest horizon: small CNN children on
    # 1,000 Fashion-MNIST training images (1200 iterations of 64: 77 epochs, cifar10-subset-long's recipe).
    # Does the meta-trained policy beat the best constants on a task it was meta-trained on (children of
    # other seeds)? Where it does not, its loss on CIFAR-10 is the evolution strategies', not the transfer's.
    "fashion-mnist-cnn-small-train": cnn_family_task_preset(1200, "fashion-mnist-cnn-small-train"),
    # The same task at the family's shortest horizon (400 iterations of 64: 26 epochs): the meta-training
    # fitness averages horizons in 400-1200, so does a smoother loss pay at both ends?
    "fashion-mnist-cnn-small-train-short": cnn_family_task_preset(400, "fashion-mnist-cnn-small-train-short"),
    "fashion-mnist": dict(
        env="ALA-FashionMNIST-v0",
        controllers=FIXED_ROWS + ",phi-identity-sigmoid,reinforce-paper,reinforce-paper-multi,"
        "reinforce-paper@beta=0.01,reinforce-paper-multi@beta=0.01,ppo@fixed_diagonal=false;step_scaling=entry,"
        "reinforce-frozen,reinforce-multi,reinforce-transfer-frozen,reinforce-transfer,ce(num_envs=2),"
        "adalfl@offline_steps=50,learnloss,"
        # Ablation of the transferred policy: it lowers every off-diagonal entry by one step per step, to
        # -0.444 after 40 steps; these hold such a Phi fixed from the start, on the same 2 children.
        "phi-uniform(off_diagonal=-0.444;num_envs=2),phi-uniform(off_diagonal=-0.1;num_envs=2),"
        # Fine-tuning that can learn: the shipped policy's logits divided by 10 (at 1 it is deterministic).
        "reinforce-transfer(temperature=10),"
        # The policy meta-trained without Fashion-MNIST, frozen; sequential like ce(num_envs=2), which ran before
        # the small CNN's children were batched by default, so that both train the same children the same way.
        "reinforce-transfer-frozen(policy=without-fashion-mnist)@train_mode=sequential,"
        # The best fixed Phi and label smoothing selected on validation (one child, as ce).
        "oracle-phi,oracle-smoothing,"
        # The family of without-fashion-mnist meta-trained on both tasks every generation (two meta-training
        # seeds); sequential as above.
        "reinforce-transfer-frozen(policy=without-fashion-mnist-all-tasks)@train_mode=sequential,"
        "reinforce-transfer-frozen(policy=without-fashion-mnist-all-tasks-seed1)@train_mode=sequential,"
        # The fourteen policies meta-trained on digits alone with this preset's child and budget (the digits-cnn
        # preset; META_DIGITS_CNN says under which settings of the evolution strategies); sequential as above.
        + ",".join(f"reinforce-transfer-frozen(policy={name})@train_mode=sequential" for name in META_DIGITS_CNN),
        seeds=5,
        children=2,
        seed_stride=1,  # as these runs ran: consecutive seeds of a 2-child row share a child (its table says so)
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist",
    ),
    # The fashion-mnist preset's child and budget (small CNN, batch 128, 1200 iterations, K = 30) on digits, a
    # dataset of the family meta-trained without Fashion-MNIST: which side of cross-entropy does the best fixed
    # Phi, selected on validation, take there? (1200 iterations of 128 are about 140 epochs of digits' 1,077
    # training images, against 3 of Fashion-MNIST's 50,000.) Then the policies meta-trained on this task
    # (META_DIGITS_CNN), run frozen on one child per seed, the child of ce's run: what the evolution strategies
    # achieve on their own task.
    "digits-cnn": dict(
        env="ALA-Digits-v0",
        controllers="ce,oracle-phi,oracle-smoothing,phi-uniform(off_diagonal=-0.1),"
        + ",".join(f"reinforce-transfer-frozen(policy={name};num_envs=1)" for name in META_DIGITS_CNN),
        seeds=5,
        env_kwargs=dict(FASHION_MNIST_BUDGET, model="small_cnn", val_subsample=None),
        name="digits-cnn",
    ),
    # The fashion-mnist preset's transfer rows whose verdicts were closest to beating ce, and the leave-one-out
    # policy, with ce on the same children, at a seed stride of 2: the fashion-mnist preset ran its 2-child rows
    # at stride 1, where consecutive seeds share a child, so its seed values were not independent. Seeds 0-2 here
    # train children 0-5, those the fashion-mnist preset chose these policies on; fashion-mnist-fresh runs others.
    "fashion-mnist-apart": dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce(num_envs=2)@train_mode=sequential,"
        + ",".join(f"reinforce-transfer-frozen(policy={name})@train_mode=sequential" for name in FASHION_MNIST_APART),
        seeds=5,
        children=2,
        seed_stride=2,
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist-apart",
    ),
    # The same policies and cross-entropy, and the oracles, on children that no earlier Fashion-MNIST comparison
    # trained (the apart preset's first three seeds train the children the policies were chosen on): seeds 50-54
    # at stride 2 give children 100-109. Every row, the oracles' grids too, trains 2 children per seed in the
    # same train mode, so the oracles' spreads are those of 2-child means, as the policies' are.
    "fashion-mnist-fresh": fresh_children_preset("ALA-FashionMNIST-v0", FASHION_MNIST_APART, 2, FASHION_MNIST_BUDGET, "fashion-mnist-fresh"),
    # The online learner at its own child count (10, as in the paper and the digits sweep) instead of the
    # fashion-mnist preset's 2, at that preset's budget: every row on the same 10 children per seed. Then
    # the shipped digits policy, and one reward for all pairs (per-pair credit can move pairs apart).
    "fashion-mnist-10": dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce,reinforce-multi,reinforce-frozen,reinforce-transfer-frozen,reinforce-multi(pair_credit=false)",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist-10",
    ),
    # AUCPR as the reward (Table 2 of the paper) at the fashion-mnist preset's budget: cross-entropy, the
    # pairwise AUC-ROC surrogate, ALA with the bundled REINFORCE on one child, and PPO on two.
    "fashion-mnist-aucpr": dict(
        env="ALA-FashionMNIST-AUCPR-v0",
        controllers="ce,auc-pairwise,reinforce,ppo",
        seeds=5,
        children=2,
        seed_stride=1,  # as these runs ran: consecutive seeds of a 2-child row share a child (its table says so)
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist-aucpr",
    ),
    "cifar10-subset": dict(
        env="ALA-CIFAR10-v0",
        controllers=FIXED_ROWS + ",phi-identity-sigmoid,reinforce-paper,reinforce-paper-multi,"
        "reinforce-paper@beta=0.01,reinforce-paper-multi@beta=0.01,ppo@fixed_diagonal=false;step_scaling=entry,"
        "reinforce-frozen,reinforce-multi,reinforce-transfer-frozen,reinforce-transfer,ce(num_envs=2),"
        "reinforce-transfer(temperature=10),reinforce-transfer-frozen(policy=without-cifar10),"
        # The best fixed Phi and label smoothing selected on validation (one child, as ce).
        "oracle-phi,oracle-smoothing,"
        # Meta-trained on both tasks every generation (the second, Fashion-MNIST on 1,000 training images);
        # sequential like ce(num_envs=2) (see cifar10-subset-long).
        "reinforce-transfer-frozen(policy=without-cifar10-all-tasks)@train_mode=sequential,"
        "reinforce-transfer-frozen(policy=without-cifar10-small-train)@train_mode=sequential,"
        # Meta-trained on small CNN children (see cifar10-subset-long), for 30 and for 60 generations;
        # sequential as above.
        "reinforce-transfer-frozen(policy=without-cifar10-cnn)@train_mode=sequential,"
        "reinforce-transfer-frozen(policy=without-cifar10-cnn-60)@train_mode=sequential,"
        # When in the run a smoother loss pays (sequential as above).
        + ",".join(f"{ramp}@train_mode=sequential" for ramp in RAMPS + RAMP_POLICIES),
        seeds=5,
        children=2,
        seed_stride=1,  # as these runs ran: consecutive seeds of a 2-child row share a child (its table says so)
        env_kwargs=CIFAR10_SUBSET_SHORT,
        name="cifar10-subset",
    ),
    # The short CIFAR-10 subset budget on 4 children per seed, none shared between seeds and none that an earlier
    # comparison trained (seeds 50-54 at stride 4: children 200-219): cross-entropy, both oracles on as many
    # children, and the transfer policies of CIFAR10_FRESH. Does any constant of the action space, or a policy,
    # beat cross-entropy here once the spread of a seed is that of a mean over 4 children? And the schedules of
    # RAMPS with the policies that hold one (RAMP_POLICIES; the two meta-trained ones beat ce at the long budget):
    # does a loss that changes over the run pay where no constant does?
    "cifar10-subset-fresh": fresh_children_preset(
        "ALA-CIFAR10-v0", CIFAR10_FRESH, 4, CIFAR10_SUBSET_SHORT, "cifar10-subset-fresh", RAMPS + RAMP_POLICIES
    ),
    # Metric learning: Table 3's triplet framework (Eq. 9 mixture) and margin framework (Eq. 10 focal weights).
    "fashion-mnist-triplet": metric_learning_preset("ALA-FashionMNIST-Triplet-v0", "fashion-mnist-triplet"),
    "fashion-mnist-margin": metric_learning_preset("ALA-FashionMNIST-Margin-v0", "fashion-mnist-margin"),
    # The paper's task (ResNet-32 on CIFAR-10, K = 200) at a quarter of the schedule, for a GPU, with the paper's
    # controller on the paper's step rules beside the package's: python -m ala_gym.benchmarks.compare --preset cifar10-gpu
    "cifar10-gpu": dict(
        env="ALA-CIFAR10-v0",
        controllers="ce,phi-identity,random,confusion,reinforce,reinforce-multi,reinforce-paper-multi",
        seeds=3,
        env_kwargs=dict(total_iterations=16000, steps_per_action=200, device="cuda"),
        name="cifar10-resnet32-gpu",
    ),
}


def describe_presets() -> str:
    """What each preset runs, for ``--help``."""
    lines = ["presets (flags given beside --preset override its values):"]
    for name, preset in PRESETS.items():
        kwargs = preset["env_kwargs"]
        children = preset.get("children")
        lines.append(
            f"  {name}: {preset['env']}" + (f" ({kwargs['model']})" if "model" in kwargs else "")
            + f", {preset['seeds']} seeds" + (f" from {preset['first_seed']}" if preset.get("first_seed") else "")
            + f", {kwargs.get('total_iterations', 'env default')} "
            f"iterations, K = {kwargs.get('steps_per_action', 'env default')}, "
            + (f"--children {children}" if children else "multi-child controllers at their own child count")
            + (f", --baseline-children {preset['baseline_children']}" if preset.get("baseline_children") else "")
            + (f", --seed-stride {preset['seed_stride']}" if preset.get("seed_stride") else "")
            + f", writes benchmarks/results/{preset['name']}/; controllers: {preset['controllers'].replace(',', ', ')}"
        )
    return "\n".join(lines)
