"""AdaLFL: meta-gradient, offline initialisation, online runs, divergence, saving, and the benchmark's view."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents import CONTROLLERS
from ala_gym.agents.adalfl import (
    AdaLFLConfig,
    AdaLFLController,
    LossNetwork,
    initialise_offline,
    load_loss_network,
    loss_shape,
    meta_sampler,
    meta_step,
    save_loss_network,
)
from ala_gym.core.data import load_dataset
from ala_gym.core.functional import FunctionalChild
from ala_gym.core.models import build_model
from ala_gym.core.trainer import TrainConfig

DIGITS = dict(total_iterations=60, steps_per_action=20, device="cpu")


def run_once(controller: AdaLFLController, on_step=None, **env_kwargs):
    """The one record of ``controller``'s run on the digits budget (seed 0), its env closed after."""
    envs = controller.make_envs("ALA-Digits-v0", **{**DIGITS, **env_kwargs})
    try:
        (record,) = controller.run(envs, seed=0, on_step=on_step)
    finally:
        envs.close()
    return record


def tiny_setting() -> tuple[LossNetwork, FunctionalChild, dict, tuple, tuple]:
    """A float64 loss network and linear-ReLU child, a momentum buffer, and two batches of 3 classes."""
    generator = torch.Generator().manual_seed(0)
    network = LossNetwork(AdaLFLConfig(hidden=5), generator).double()
    child_module = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in child_module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5)
    child = FunctionalChild(child_module)
    velocity = {k: torch.randn(v.shape, generator=generator, dtype=torch.float64) * 0.1 for k, v in child.params.items()}
    batch = (torch.randn(8, 4, generator=generator, dtype=torch.float64), torch.arange(8) % 3)
    meta_batch = (torch.randn(8, 4, generator=generator, dtype=torch.float64), (torch.arange(8) + 1) % 3)
    return network, child, velocity, batch, meta_batch


def test_meta_gradient_matches_finite_differences() -> None:
    """d CE(child after one momentum-Nesterov-weight-decay step under M_phi) / d phi, as ``meta_step``
    computes it, against central differences along random directions in phi's space."""
    network, child, velocity, batch, meta_batch = tiny_setting()
    train = TrainConfig(lr=0.3, momentum=0.9, weight_decay=1e-2)
    frozen = torch.optim.SGD(network.parameters(), lr=0.0)  # leaves phi in place and its gradient in .grad

    def objective() -> torch.Tensor:
        return meta_step(network, frozen, child, velocity, batch, meta_batch, 0.3, train, nesterov=True).meta_loss

    objective()
    gradient = [p.grad.clone() for p in network.parameters()]
    assert sum(float(g.abs().sum()) for g in gradient) > 0
    generator = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in network.parameters()]
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(network.parameters(), direction):
                    p.add_(sign * eps * d)
            values.append(float(objective()))
            with torch.no_grad():
                for p, d in zip(network.parameters(), direction):
                    p.sub_(sign * eps * d)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = float(sum((g * d).sum() for g, d in zip(gradient, direction)))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_meta_step_leaves_the_child_and_steps_phi() -> None:
    network, child, velocity, batch, meta_batch = tiny_setting()
    before_child = {k: v.clone() for k, v in child.params.items()}
    before_phi = [p.detach().clone() for p in network.parameters()]
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    result = meta_step(network, optimizer, child, velocity, batch, meta_batch, 0.1, TrainConfig(), nesterov=False)
    for name, value in child.params.items():
        assert torch.equal(value, before_child[name])
        assert not torch.equal(result.params[name], value) and not result.params[name].requires_grad
    assert all(not torch.equal(p, q) for p, q in zip(network.parameters(), before_phi))


@pytest.mark.parametrize("model", ["resnet32"])  # the package's model with BatchNorm (the small CNN holds none)
def test_meta_step_on_conv_models_keeps_running_statistics_to_the_training_batch(model: str) -> None:
    """Only the base forward (training batch) moves the BatchNorm running statistics; the meta forward
    on the validation batch does not."""
    generator = torch.Generator().manual_seed(0)
    module = build_model(model, (3, 8, 8), 4, generator).train()
    child = FunctionalChild(module)
    network = LossNetwork(AdaLFLConfig(), generator)
    batch = (torch.randn(6, 3, 8, 8, generator=generator), torch.arange(6) % 4)
    meta_batch = (torch.randn(6, 3, 8, 8, generator=generator) * 5 + 3, torch.arange(6) % 4)
    reference = build_model(model, (3, 8, 8), 4, torch.Generator().manual_seed(0)).train()
    reference(batch[0])  # the running statistics one ordinary training forward would leave
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    result = meta_step(network, optimizer, child, None, batch, meta_batch, 0.05, TrainConfig(model=model), False)
    assert torch.isfinite(result.meta_loss)
    assert any(name.endswith("running_mean") for name, _ in module.named_buffers())
    for (name, value), (_, expected) in zip(module.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(value, expected, msg=name)


def test_the_meta_objectives_batches_come_from_the_split_it_names() -> None:
    """``meta_batch="val"`` draws its batches from the validation split (normalised as the training ones, with
    their own labels), ``"train"`` from the training split."""
    data = load_dataset("digits")

    def found_in(images: torch.Tensor, split) -> torch.Tensor:  # per image: is it a row of the split, label too
        rows = data.normalize(split.images)
        same = (images[:, None] == rows[None]).flatten(2).all(-1)
        return same.any(-1), same

    for source, split, other in (("val", data.val, data.train), ("train", data.train, data.val)):
        sampler = meta_sampler(data, source, 64, torch.Generator().manual_seed(0))
        for _ in range(4):
            images, labels = sampler.next()
            inside, same = found_in(images, split)
            assert inside.all()
            assert all(int(labels[i]) in split.labels[same[i]].tolist() for i in range(len(labels)))
            assert not found_in(images, other)[0].all()


def test_the_activation_is_a_leaky_softplus() -> None:
    """``(1 - leak) softplus_beta(x) + leak x``: log(2) / beta at 0, the line of slope ``leak`` far below 0."""
    from ala_gym.agents.adalfl import SmoothLeakyReLU

    act = SmoothLeakyReLU(smoothness=2.0, leak=0.1)
    values = act(torch.tensor([0.0, -100.0, 100.0], dtype=torch.float64))
    torch.testing.assert_close(values, torch.tensor([0.9 * np.log(2) / 2, -10.0, 100.0], dtype=torch.float64))


def test_the_offline_phase_reports_its_mean_meta_loss(monkeypatch) -> None:
    import ala_gym.agents.adalfl as adalfl

    losses = iter([1.0, 3.0])
    real = adalfl.meta_step
    monkeypatch.setattr(adalfl, "meta_step", lambda *args: dataclasses.replace(real(*args), meta_loss=torch.tensor(next(losses))))
    config = AdaLFLConfig(offline_steps=2)
    network = LossNetwork(config, torch.Generator().manual_seed(0))
    mean = initialise_offline(network, load_dataset("digits"), TrainConfig(model="mlp"), config, 0)
    assert float(mean) == 2.0


def test_offline_initialisation_ranks_the_true_class_lower() -> None:
    """After a short Algorithm 1 on digits, for any prediction the loss is lower when the label is the
    predicted class than when it is another class (as for cross-entropy); the loss shape falls with p_true."""
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(1)) * 3
    probabilities, predicted = F.softmax(logits, 1), logits.argmax(1)
    other = (predicted + torch.randint(1, 10, (500,), generator=torch.Generator().manual_seed(2))) % 10

    @torch.no_grad()
    def true_class_lower(network: LossNetwork) -> float:
        on_true = network.per_sample(probabilities, F.one_hot(predicted, 10).float())
        on_other = network.per_sample(probabilities, F.one_hot(other, 10).float())
        return float((on_true < on_other).float().mean())

    config = AdaLFLConfig(offline_steps=100)
    network = LossNetwork(config, torch.Generator().manual_seed(1))
    assert true_class_lower(network) < 0.5  # this random initialisation ranks the wrong way round
    initialise_offline(network, load_dataset("digits"), TrainConfig(model="mlp", lr=0.05, weight_decay=5e-4), config, 0)
    assert true_class_lower(network) >= 0.99
    assert np.all(np.diff(loss_shape(network, 10, 21)["loss"]) < 0)


def test_online_run_on_digits_completes_and_adapts_the_loss(tmp_path) -> None:
    controller = CONTROLLERS["adalfl"]()
    envs = controller.make_envs("ALA-Digits-v0", offline_steps=10, **DIGITS)
    assert controller.config.offline_steps == 10  # a config field given as a keyword sets the config
    steps: list[int] = []
    try:
        (record,) = controller.run(envs, seed=0, on_step=lambda step, logs: steps.append(step))
    finally:
        envs.close()
    assert steps == [1, 2, 3] and len(record.val_metric) == 3 and record.iterations == 60
    assert not record.diverged and 0 <= record.test_metric < 0.9 and record.offline_s > 0
    assert 0 < record.final_val_loss < np.inf  # what the oracles' ties are decided by, as for every record
    assert record.phi == [] and np.isfinite(record.meta_loss).all()
    assert record.loss_shape_start["loss"] != record.loss_shape_end["loss"]  # the online phase moved phi

    # From a saved network (no offline phase): the run ends with a different network than it started.
    saved = tmp_path / "loss.pt"
    save_loss_network(controller.loss_network, saved)
    start = {k: v.clone() for k, v in controller.loss_network.state_dict().items()}
    again = AdaLFLController(AdaLFLConfig(init_path=str(saved)))
    envs = again.make_envs("ALA-Digits-v0", **DIGITS)
    try:
        (resumed,) = again.run(envs, seed=1)
    finally:
        envs.close()
    assert resumed.offline_meta_loss != resumed.offline_meta_loss  # nan: no offline phase ran
    assert resumed.loss_shape_start == record.loss_shape_end  # it starts from the saved network, not a fresh one
    assert any(not torch.equal(v, start[k]) for k, v in again.loss_network.state_dict().items())


def test_same_seed_same_initial_child_and_batches_as_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """AdaLFL's child for seed s is the env's child for seed s (what ``ce`` trains): weights and batches."""
    seen = {}
    import ala_gym.agents.adalfl as adalfl

    original = adalfl.OnlineTrainer.__init__

    def spy(self, trainer, *args, **kwargs):
        seen["weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        seen["batch"] = trainer.sampler.next()
        trainer.sampler._position -= trainer.sampler.batch_size  # put the batch back
        original(self, trainer, *args, **kwargs)

    monkeypatch.setattr(adalfl.OnlineTrainer, "__init__", spy)
    controller = AdaLFLController(AdaLFLConfig(offline_steps=2))
    envs = controller.make_envs("ALA-Digits-v0", **DIGITS)
    try:
        controller.run(envs, seed=3)
    finally:
        envs.close()
    env = gym.make("ALA-Digits-v0", loss_form="cross_entropy", **DIGITS).unwrapped
    env.reset(seed=3)
    for name, value in env.trainer.model.state_dict().items():
        assert torch.equal(value, seen["weights"][name]), name
    inputs, labels = env.trainer.sampler.next()
    assert torch.equal(inputs, seen["batch"][0]) and torch.equal(labels, seen["batch"][1])


@pytest.mark.parametrize("offline_steps", [0, 3], ids=["online", "offline phase too"])
@pytest.mark.parametrize("metric, worst", [("error", 1.0), ("nll", float("inf"))])
def test_divergence_is_recorded_not_raised(metric: str, worst: float, offline_steps: int) -> None:
    """A diverged run is scored as the envs score a diverged child (the worst metric, without evaluating the
    broken model); what it logs and records holds no NaN, and it keeps the last finite loss network. With an
    offline phase, the divergence comes there: the run ends before the child trains, with the initial network."""
    controller = AdaLFLController(AdaLFLConfig(offline_steps=offline_steps))
    logged: list[dict] = []
    record = run_once(controller, lambda step, values: logged.append(values), lr=1e30, metric=metric)
    assert record.diverged and len(record.val_metric) < 3
    assert record.test_metric == record.final_val_metric == worst and record.final_val_loss == float("inf")
    assert record.val_metric[-1] == worst and record.meta_loss[-1] == float("inf")
    assert logged[-1] == {"val_metric": worst, "meta_loss": float("inf"), "loss": float("inf")}
    assert all(torch.isfinite(value).all() for value in controller.loss_network.state_dict().values())
    assert np.isfinite(record.loss_shape_end["loss"]).all() and np.isfinite(record.loss_shape_start["loss"]).all()
    if offline_steps:
        assert record.offline_meta_loss == float("inf") and record.iterations == 0 and len(logged) == 1


@pytest.mark.parametrize("which", ["loss", "meta_loss"])
def test_a_non_finite_loss_ends_the_run_even_where_the_child_still_evaluates(monkeypatch, which: str) -> None:
    """A NaN learned loss or meta-objective is divergence by itself: the run ends after that step and scores as
    diverged, though here the child's weights (and so its evaluation) stayed finite."""
    import ala_gym.agents.adalfl as adalfl

    real = adalfl.meta_step
    calls = []

    def nan_on_the_second_call(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(which)
        return dataclasses.replace(result, **{which: torch.tensor(float("nan"))}) if len(calls) == 2 else result

    monkeypatch.setattr(adalfl, "meta_step", nan_on_the_second_call)
    controller = AdaLFLController(AdaLFLConfig(offline_steps=0))
    record = run_once(controller)
    assert record.diverged and len(record.val_metric) == 1 and np.isfinite(record.val_metric[0])
    assert record.test_metric == record.final_val_metric == 1.0


def test_a_network_broken_by_a_steps_last_meta_update_ends_the_run_and_the_last_finite_one_is_kept(monkeypatch) -> None:
    """The last meta-update of a step can leave the loss network NaN while that step's losses were finite: the
    step counts as diverged, and the run keeps the network the step started from."""
    import ala_gym.agents.adalfl as adalfl

    real, calls, started = adalfl.meta_step, [], {}
    steps_per_action = DIGITS["steps_per_action"]

    def breaks_the_network_at_the_end_of_step_one(network, *args, **kwargs):
        if not calls:
            started.update({name: value.clone() for name, value in network.state_dict().items()})
        result = real(network, *args, **kwargs)
        calls.append(1)
        if len(calls) == steps_per_action:
            with torch.no_grad():
                for parameter in network.parameters():
                    parameter.fill_(float("nan"))
        return result

    monkeypatch.setattr(adalfl, "meta_step", breaks_the_network_at_the_end_of_step_one)
    controller = AdaLFLController(AdaLFLConfig(offline_steps=0))
    record = run_once(controller)
    assert record.diverged and len(record.val_metric) == 1
    assert all(torch.isfinite(value).all() for value in controller.loss_network.state_dict().values())
    for name, value in controller.loss_network.state_dict().items():
        assert torch.equal(value, started[name]), name


def test_saved_loss_network_loads_with_weights_only(tmp_path) -> None:
    config = AdaLFLConfig(hidden=7, smoothness=5.0, leak=0.1, bias=True)
    network = LossNetwork(config, torch.Generator().manual_seed(0))
    path = tmp_path / "loss.pt"
    save_loss_network(network, path)
    torch.load(path, weights_only=True)  # plain types and tensors only
    loaded = load_loss_network(path)
    assert loaded.hyper == network.hyper
    logits, labels = torch.randn(5, 4), torch.arange(5) % 4
    torch.testing.assert_close(loaded(logits, labels), network(logits, labels))
    with pytest.raises(FileNotFoundError, match="save_loss_network"):
        load_loss_network(tmp_path / "missing.pt")
    # A file that needs arbitrary unpickling (code that runs on load) is refused before anything is built from it.
    hostile = tmp_path / "hostile.pt"
    torch.save({"hyper": NotATensor(), "state_dict": {}}, hostile)
    with pytest.raises(ValueError, match=r"hostile.pt holds no loss network \(UnpicklingError: Weights only load failed"):
        load_loss_network(hostile)
    # Files that hold something else: one line naming the file and what it lacks, already when the config names it.
    torch.save({"state_dict": {}}, tmp_path / "no-hyper.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    other_size = {"hyper": network.hyper, "state_dict": LossNetwork(AdaLFLConfig(hidden=3), torch.Generator()).state_dict()}
    torch.save(other_size, tmp_path / "other-size.pt")
    for name in ("no-hyper.pt", "text.pt", "tensor.pt", "other-size.pt"):
        with pytest.raises(ValueError, match=rf"^\S*{name} holds no loss network \(\w+: .*\); pass a file save_loss_network wrote$"):
            AdaLFLConfig(init_path=str(tmp_path / name))


class NotATensor:
    """A class that ``weights_only`` unpickling does not allow."""


@pytest.mark.parametrize("kwargs, message", [
    (dict(meta_batch="test"), "meta_batch must be 'val' or 'train'"),
    (dict(offline_steps=-1), "offline_steps must be an integer >= 0"), (dict(meta_lr=0.0), "meta_lr must be a finite number in \\(0,"),
    (dict(hidden=0), "hidden must be an integer >= 1"), (dict(smoothness=0.0), "smoothness must be a finite number in \\(0, inf\\)"),
    (dict(leak=1.0), "leak must be a finite number in \\[0, 1\\)"), (dict(leak=-0.1), "leak must be a finite number in \\[0, 1\\)"),
    (dict(init_path="/no/such/loss.pt"), "init_path /no/such/loss.pt: no such file"),
])  # fmt: skip
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaLFLConfig(**kwargs)


def test_adalfl_refuses_to_act_outside_its_run_and_a_vector_env_without_an_ala_task() -> None:
    """AdaLFL trains the child itself in ``run()``: ``act`` is refused with where it acts, and so is a vector env
    that carries no ALA task (any but the native one), by its class, before any child is built."""
    controller = AdaLFLController()
    with pytest.raises(TypeError, match=r"AdaLFL sets no Phi: it trains the child itself in run\(\)"):
        controller.act(np.zeros((1, 45, 24)), {})
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(TypeError, match="needs the native ALA vector env that make_envs builds .*, not a SyncVectorEnv"):
        controller.run(envs, seed=0)
    envs.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: make test-cuda on a machine with one")
def test_runs_on_cuda() -> None:
    controller = AdaLFLController(AdaLFLConfig(offline_steps=5))
    envs = controller.make_envs("ALA-Digits-v0", **{**DIGITS, "device": "cuda"})
    try:
        (record,) = controller.run(envs, seed=0)
    finally:
        envs.close()
    assert not record.diverged and np.isfinite(record.test_metric)


def test_benchmark_runs_adalfl_beside_ce(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ala_gym.benchmarks import adalfl_report, compare
    from ala_gym.benchmarks.compare import run as compare_run

    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    tiny = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")
    rows = compare.compare("ALA-Digits-v0", ["ce", "adalfl@offline_steps=3"], [0], tiny, "tiny")
    adalfl = next(row for row in rows if row["controller"] == "adalfl@offline_steps=3")
    assert adalfl["wall_vs_ce"] > 0 and np.isnan(adalfl["final_phi_offset"])
    run = next(r for r in json.loads((tmp_path / "tiny" / "results.json").read_text())["runs"] if r["controller"] != "ce")
    assert run["env_kwargs"]["offline_steps"] == 3 and run["children"][0]["offline_s"] > 0
    assert len(run["children"][0]["val_metric"]) == 2
    adalfl_report.main(["--name", "tiny", "--ce", str(tmp_path / "tiny" / "results.json")])
    report = (tmp_path / "tiny" / "adalfl.md").read_text()
    assert "| adalfl@offline_steps=3 | 0 |" in report and "Cross-entropy reference" in report
    assert (tmp_path / "tiny" / "loss_shape.png").stat().st_size > 0


def test_cost_benchmark_writes_its_table(tmp_path) -> None:
    from ala_gym.benchmarks import adalfl_cost

    adalfl_cost.main(["--tasks", "digits", "--iterations", "1", "--repeats", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "adalfl_cost.json").read_text())["rows"]
    assert rows[0]["task"] == "digits" and rows[0]["adalfl_vs_ce"] > 0
    # Each ratio is the medians' (of every sample kept), the table shows them as recorded.
    medians = {name: float(np.median(values)) for name, values in rows[0]["samples_ms"].items()}
    assert rows[0]["ms_per_iteration"] == pytest.approx(medians)
    assert rows[0]["adalfl_vs_ce"] == pytest.approx(medians["adalfl"] / medians["ce"])
    assert rows[0]["offline_step_vs_ce"] == pytest.approx(medians["offline"] / medians["ce"])
    ms = rows[0]["ms_per_iteration"]
    assert (f"| digits | mlp | cpu | {ms['ce']:.2f} | {ms['adalfl']:.2f} | {rows[0]['adalfl_vs_ce']:.2f}x | "
            f"{ms['offline']:.2f} | {rows[0]['offline_step_vs_ce']:.2f}x |") in (tmp_path / "adalfl_cost.md").read_text()
    # Measuring other tasks into the same folder would drop the digits row unseen: refused.
    saved = (tmp_path / "adalfl_cost.json").read_text()
    with pytest.raises(SystemExit) as caught:
        adalfl_cost.main(["--tasks", "fashion-mnist", "--iterations", "1", "--repeats", "1", "--out", str(tmp_path)])
    assert caught.value.code == 2 and (tmp_path / "adalfl_cost.json").read_text() == saved
    with pytest.raises(SystemExit) as exit_info:
        adalfl_cost.main(["--tasks", "imagenet", "--out", str(tmp_path)])
    assert exit_info.value.code == 2


def test_the_cost_benchmark_reports_the_median_of_its_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per timer: a warm-up, then one sample a repeat; the row holds every sample, the medians and their ratios."""
    from ala_gym.benchmarks import adalfl_cost

    # In call order: the warm-ups of ce, adalfl and offline, then one of each per repeat.
    scripted = iter([9.0, 9.0, 9.0, 1.0, 4.0, 8.0, 5.0, 6.0, 2.0, 2.0, 5.0, 3.0])
    monkeypatch.setattr(adalfl_cost, "median_ms", lambda *args: lambda: next(scripted))
    row = adalfl_cost.measure("digits", torch.device("cpu"), 1, 3, None)
    assert row["samples_ms"] == {"ce": [1.0, 5.0, 2.0], "adalfl": [4.0, 6.0, 5.0], "offline": [8.0, 2.0, 3.0]}
    assert row["ms_per_iteration"] == {"ce": 2.0, "adalfl": 5.0, "offline": 3.0}
    assert row["adalfl_vs_ce"] == 2.5 and row["offline_step_vs_ce"] == 1.5


def test_resnet32_child_on_cifar_runs(tiny_cifar_dir) -> None:
    """ResNet-32 (BatchNorm) on augmented CIFAR batches: offline and online phases complete."""
    controller = AdaLFLController(AdaLFLConfig(offline_steps=1))
    envs = controller.make_envs(
        "ALA-CIFAR10-v0", data_root=tiny_cifar_dir, download=False, val_size=20, model="resnet32", batch_size=8,
        total_iterations=2, steps_per_action=1, eval_points=1, device="cpu",
    )  # fmt: skip
    try:
        (record,) = controller.run(envs, seed=0)
    finally:
        envs.close()
    assert not record.diverged and len(record.val_metric) == 2 and np.isfinite(record.meta_loss).all()


def test_a_cost_block_reports_milliseconds_per_iteration(monkeypatch) -> None:
    """A block of 4 iterations timed at one second (a clock that ticks a second per reading): 250 ms each."""
    from itertools import count
    from types import SimpleNamespace

    from ala_gym.benchmarks import adalfl_cost

    clock = count()
    monkeypatch.setattr(adalfl_cost, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    ran = []
    timer = adalfl_cost.median_ms(lambda: ran.append(1), torch.device("cpu"), iterations=4)
    assert timer() == 250.0 and ran == [1]


def test_the_loss_is_the_mean_over_classes_and_batch_of_l_phi_on_target_probability_pairs() -> None:
    """``M_phi(y, f(x)) = mean_b (1/C) sum_i l_phi(y_bi, p_bi)``, with the one-hot target first in each pair and
    the softmax probability second, computed here one pair at a time."""
    network, _, _, _, _ = tiny_setting()
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2, 0])
    probabilities = F.softmax(logits, dim=1)
    with torch.no_grad():
        pairs = [[float(network.net(torch.tensor([float(labels[b] == i), float(probabilities[b, i])], dtype=torch.float64)))
                  for i in range(3)] for b in range(5)]  # fmt: skip
        expected = torch.tensor(pairs, dtype=torch.float64).mean(dim=1)
        torch.testing.assert_close(network.per_sample(probabilities, F.one_hot(labels, 3).double()), expected)
        torch.testing.assert_close(network(logits, labels), expected.mean())


def test_the_loss_shape_is_taken_on_an_open_grid_of_predictions_that_sum_to_one() -> None:
    """``p_true`` is ``1/(n+1) .. n/(n+1)``; each point's prediction puts ``p`` on the true class and spreads the
    rest evenly over the ``C - 1`` others: its loss is ``per_sample`` of that prediction."""
    network, _, _, _, _ = tiny_setting()
    network = network.float()
    shape = loss_shape(network, 4, 3)
    np.testing.assert_allclose(shape["p_true"], [0.25, 0.5, 0.75], rtol=1e-6)
    p = torch.tensor([0.25, 0.5, 0.75])
    rows = torch.stack([p, (1 - p) / 3, (1 - p) / 3, (1 - p) / 3], dim=1)
    with torch.no_grad():
        expected = network.per_sample(rows, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1))
    np.testing.assert_allclose(shape["loss"], expected.tolist(), rtol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_childs_step_is_torch_sgd_under_the_learned_loss(nesterov: bool) -> None:
    """The stepped child is what ``torch.optim.SGD`` (momentum buffer = the given velocity, weight decay, Nesterov
    as asked) makes of one step on ``M_phi``; the reported losses are ``M_phi`` on the training batch before the
    step and the cross-entropy of the stepped child on the meta batch, with the meta batch's own labels."""
    network, child, velocity, batch, meta_batch = tiny_setting()
    reference = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    reference.load_state_dict(child.params)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
    for (name, p) in reference.named_parameters():
        sgd.state[p]["momentum_buffer"] = velocity[name].clone()
    with torch.no_grad():
        loss_before = network(reference(batch[0]), batch[1])
    sgd.zero_grad()
    network(reference(batch[0]), batch[1]).backward(inputs=list(reference.parameters()))
    sgd.step()
    frozen = torch.optim.SGD(network.parameters(), lr=0.0)
    train = TrainConfig(lr=0.3, momentum=0.9, weight_decay=1e-2)
    result = meta_step(network, frozen, child, velocity, batch, meta_batch, 0.3, train, nesterov=nesterov)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(result.params[name], p.detach(), msg=name)
        torch.testing.assert_close(result.velocity[name], sgd.state[p]["momentum_buffer"], msg=name)
    torch.testing.assert_close(result.loss, loss_before)
    with torch.no_grad():
        torch.testing.assert_close(result.meta_loss, F.cross_entropy(reference(meta_batch[0]), meta_batch[1]))


def test_each_meta_step_takes_the_gradient_of_its_own_meta_loss_only() -> None:
    """``phi``'s gradient is reset before each meta step: a second, identical step (phi left in place) leaves the
    same gradient as the first, not their sum."""
    network, child, velocity, batch, meta_batch = tiny_setting()
    frozen = torch.optim.SGD(network.parameters(), lr=0.0)
    train = TrainConfig(lr=0.3, momentum=0.9, weight_decay=1e-2)
    meta_step(network, frozen, child, velocity, batch, meta_batch, 0.3, train, nesterov=False)
    first = [p.grad.clone() for p in network.parameters()]
    meta_step(network, frozen, child, velocity, batch, meta_batch, 0.3, train, nesterov=False)
    for p, g in zip(network.parameters(), first):
        torch.testing.assert_close(p.grad, g)


def test_the_online_phase_follows_the_schedule_to_the_budget_and_reports_block_means(monkeypatch) -> None:
    """With a budget that is not a multiple of K, the last block is shorter and the run stops at the budget; each
    child step takes the schedule's learning rate at its iteration (milestones included); the recorded meta loss
    of a block is the mean of its steps'."""
    import ala_gym.agents.adalfl as adalfl

    real, lrs, metas, configs = adalfl.meta_step, [], [], []

    def recording(*args):
        result = real(*args)
        lrs.append(args[6])
        configs.append(args[7])
        metas.append(float(result.meta_loss))
        return result

    monkeypatch.setattr(adalfl, "meta_step", recording)
    controller = AdaLFLController(AdaLFLConfig(offline_steps=0))
    envs = controller.make_envs("ALA-Digits-v0", total_iterations=25, steps_per_action=10, device="cpu")
    try:
        (record,) = controller.run(envs, seed=0)
    finally:
        envs.close()
    schedule = configs[0]  # the env's child configuration, whose lr milestones fall inside the 25 iterations
    assert record.iterations == 25 and len(lrs) == 25 and len(record.val_metric) == 3 and schedule.total_iterations == 25
    assert lrs == [schedule.lr_at(i) for i in range(25)] and len(set(lrs)) == 3
    np.testing.assert_allclose(record.meta_loss, [np.mean(metas[:10]), np.mean(metas[10:20]), np.mean(metas[20:])])
