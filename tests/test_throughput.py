"""The throughput benchmark at a token budget: every configuration measured, the roofline and the FLOP counts
recorded, and the targets' lines computed from the numbers. No test asserts a speed: the benchmark measures
that, on the machine it runs on."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch

from ala_gym.benchmarks import throughput
from ala_gym.core import allocator

RESULTS_MLP = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "throughput-mlp-epyc"


def test_tiny_run_measures_one_child_both_paths_roofline_and_flops(tmp_path, tiny_cifar_dir, monkeypatch) -> None:
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "cifar10-subset").symlink_to(tiny_cifar_dir)
    monkeypatch.setenv("ALA_GYM_DATA", str(data_root))  # --data-root sets it for the measuring processes; restored after
    monkeypatch.setattr(throughput, "BATCHED_TARGET", ("mlp", 2, 8.0))  # the kernels' probe at a measured N
    out = tmp_path / "out"
    throughput.main([
        "--models", "mlp", "small_cnn", "--num-envs", "2", "--modes", "single", "native-sequential", "native-batched",
        "--steps", "1", "--iterations", "2", "--batch-size", "8", "--val-subsample", "64", "--threads", "1",
        "--roofline-seconds", "0.05", "--data-root", str(data_root), "--out", str(out),
    ])  # fmt: skip
    report = json.loads((out / "throughput.json").read_text())
    rows = {(r["model"], r["num_envs"], r["mode"]): r for r in report["results"]}
    expected = [(model, n, mode) for model in ("mlp", "small_cnn")
                for n, mode in ((1, "single"), (2, "native-sequential"), (2, "native-batched"))]  # fmt: skip
    assert sorted(rows) == sorted(expected)  # the single env once per model, at N = 1
    for row in rows.values():
        assert "error" not in row, row
        assert row["iterations_per_s"] > 0 and row["timed_steps"] >= 1
        # Summed over the children: N children x timed steps x K iterations, over the timed seconds.
        assert row["iterations_per_s"] == pytest.approx(row["num_envs"] * row["timed_steps"] * 2 / row["seconds"])
    assert report["roofline"]["gflops"] > 0 and report["load_average"]["start"] and report["args"]["threads"] == 1
    assert report["kernels"]["model"] == "mlp" and report["kernels"]["num_envs"] == 2
    assert report["kernels"]["iterations_per_s"] > 0 and len(report["kernels"]["rounds"]) == 1
    assert report["kernels"]["bfloat16_autocast_iterations_per_s"] > 0
    # The MLP's matrix products at batch 8: the forward's, twice over backward but for the input's gradient.
    forward = 2 * 8 * (64 * 64 + 64 * 64 + 64 * 10)
    assert report["flops_per_iteration"]["mlp"] == 3 * forward - 2 * 8 * 64 * 64
    assert report["flops_per_iteration"]["small_cnn"] > 10 * report["flops_per_iteration"]["mlp"]
    # The replayed products are the batched call's whole arithmetic: the two children's FlopCounterMode count.
    products = report["products"]
    assert (products["model"], products["num_envs"], len(products["products"])) == ("mlp", 2, 8)
    assert products["flops"] == 2 * report["flops_per_iteration"]["mlp"]
    assert products["iterations_per_s"] > 0 and products["bfloat16_iterations_per_s"] > 0
    table = (out / "throughput.md").read_text()
    assert "| 1 | single |" in table and "% of roofline" in table and "FlopCounterMode" in table
    # Each row's ratio to one child, achieved GFLOP/s and share of the roofline, from the recorded numbers.
    roof = report["roofline"]["gflops"]
    for (model, n, mode), row in rows.items():
        rate, flops = row["iterations_per_s"], report["flops_per_iteration"][model]
        one = rows[(model, 1, "single")]["iterations_per_s"]
        gflops = rate * flops / 1e9
        assert (f"| {n} | {mode} | {rate:.1f} | {'1.00' if mode == 'single' else ''} | {rate / one:.2f} | {gflops:.2f} "
                f"| {100 * gflops / roof:.1f} |") in table, (model, n, mode)  # fmt: skip
    assert "batched kernels alone: `BatchedTrainer.gradients`" in table
    assert "Target: mlp, N = 2 batched at" in table and "Bound: the batched forward and backward alone of N = 2 mlp" in table
    assert "Bound: under bfloat16 autocast the same forward and backward run at" in table
    assert "their matrix products alone: the 8 products" in table and "Bound: the matrix products alone" in table


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gymnasiums_vector_modes_step_every_child(mode: str, one_torch_thread, monkeypatch) -> None:
    """``sync`` and ``async``: gymnasium's vector env of that mode over N single envs, each child stepped every
    timed step."""
    import gymnasium as gym

    made, make_vec = [], gym.make_vec

    def recorded(*args, **kwargs):
        envs = make_vec(*args, **kwargs)
        made.append(type(envs).__name__)
        return envs

    monkeypatch.setattr(gym, "make_vec", recorded)
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: None)  # a measuring process's setting, not pytest's
    config = {"model": "mlp", "num_envs": 2, "mode": mode, "device": "cpu", "threads": 1, "seed": 0, "steps": 1,
              "iterations": 2, "batch_size": 8, "val_subsample": 64}  # fmt: skip
    row = throughput.measure(config)
    assert made == [{"sync": "SyncVectorEnv", "async": "AsyncVectorEnv"}[mode]]
    assert row["timed_steps"] == 1 and row["iterations_per_s"] == pytest.approx(2 * 2 / row["seconds"])


def test_the_convolutional_models_run_on_fashion_mnist_when_asked() -> None:
    config = {"model": "small_cnn", "dataset": "fashion-mnist", "device": "cpu", "iterations": 5, "batch_size": 8,
              "val_subsample": 64}  # fmt: skip
    env_id, kwargs = throughput.env_setup(config)
    assert env_id == "ALA-FashionMNIST-v0" and "data_root" not in kwargs and kwargs["model"] == "small_cnn"
    assert throughput.env_setup({**config, "dataset": "cifar10-subset"})[0] == "ALA-CIFAR10-v0"


def test_rounds_alternate_their_order_and_rows_keep_the_median(tmp_path, monkeypatch) -> None:
    """``--repeats 3``: a roofline before each round, the configurations forwards, backwards, forwards; each
    row the median of its rounds' rates (every rate kept), the roofline the best round's."""
    calls: list[tuple[str, int]] = []

    def fake_run(config: dict, timeout: float) -> dict:
        calls.append((config["mode"], config.get("num_envs", 0)))
        round_ = sum(call == calls[-1] for call in calls)  # this configuration's round: 1, 2, 3
        if config["mode"] == "roofline":  # the best round is the middle one
            return {**config, "gflops": {1: 50.0, 2: 90.0, 3: 10.0}[round_]}
        rate = {1: 5.0, 2: 1.0, 3: 4.0}[round_]  # by round: 5, 1, 4 (median 4, mean 3.33)
        return {**config, "iterations_per_s": rate * config["num_envs"], "seconds": 1.0, "timed_steps": 1,
                "peak_rss_mib": 1.0, "peak_cuda_mib": None}  # fmt: skip

    monkeypatch.setattr(throughput, "run_isolated", fake_run)
    monkeypatch.setattr(throughput, "training_flops", lambda config: 1000)
    throughput.main(["--models", "mlp", "--num-envs", "1", "4", "--modes", "single", "native-batched", "--repeats", "3",
                     "--out", str(tmp_path)])  # fmt: skip
    order, roofline = [("single", 1), ("native-batched", 1), ("native-batched", 4)], [("roofline", 0)]
    assert calls == roofline + order + roofline + order[::-1] + roofline + order
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert report["roofline"]["gflops"] == 90.0 and report["roofline"]["rounds"] == [50.0, 90.0, 10.0]
    batched = next(r for r in report["results"] if r["num_envs"] == 4)
    assert batched["round_iterations_per_s"] == [20.0, 4.0, 16.0] and batched["iterations_per_s"] == 16.0
    assert report["flops_per_iteration"] == {"mlp": 1000}


def test_render_rewrites_the_markdown_of_a_saved_report_with_its_note_and_failed_rows(tmp_path, monkeypatch) -> None:
    """--render writes throughput.md again from throughput.json alone: the --note, and a configuration whose process
    failed shown by its error."""

    def fake_run(config: dict, timeout: float) -> dict:
        if config["mode"] == "roofline":
            return {**config, "gflops": 50.0}
        if config["num_envs"] == 4:
            return {**config, "error": "timed out after 600 s"}
        return {**config, "iterations_per_s": 10.0, "seconds": 1.0, "timed_steps": 1, "peak_rss_mib": 1.0,
                "peak_cuda_mib": None}  # fmt: skip

    monkeypatch.setattr(throughput, "run_isolated", fake_run)
    monkeypatch.setattr(throughput, "training_flops", lambda config: 1000)
    throughput.main(["--models", "mlp", "--num-envs", "1", "4", "--modes", "single", "native-batched", "--note",
                     "cores shared with another job", "--out", str(tmp_path)])  # fmt: skip
    table = (tmp_path / "throughput.md").read_text()
    assert "\ncores shared with another job\n" in table
    assert "| 4 | native-batched | error: timed out after 600 s | | | | | | | |" in table
    (tmp_path / "throughput.md").unlink()
    throughput.main(["--render", "--out", str(tmp_path)])
    assert (tmp_path / "throughput.md").read_text() == table


@pytest.mark.parametrize(
    "outcome, error",
    [("timeout", "timed out after 5 s"), ("traceback", "MemoryError: out of memory"), ("silent", "exit -9")],
)
def test_a_measuring_process_that_fails_gives_its_row_an_error(outcome: str, error: str, monkeypatch) -> None:
    """A configuration whose process runs past --timeout, or exits with an error, becomes a row with that error (the
    last line of its stderr, else its exit status), and the other rows are still measured."""

    def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        if outcome == "timeout":
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        stderr = "Traceback (most recent call last):\nMemoryError: out of memory\n" if outcome == "traceback" else ""
        return subprocess.CompletedProcess(command, -9 if outcome == "silent" else 1, stdout="", stderr=stderr)

    monkeypatch.setattr(throughput.subprocess, "run", run)
    assert throughput.run_isolated({"mode": "single"}, 5.0) == {"mode": "single", "error": error}


def test_replayed_products_keep_their_layouts_and_their_other_arguments() -> None:
    """A convolution's recorded call replays on fresh tensors of its sizes and strides in the dtype asked for,
    with its other arguments (no bias, stride, padding, ...) as recorded."""
    weight, images = torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(2, 3, 8, 8)
    convolution = torch.nn.functional.conv2d
    calls = throughput.recorded_products(lambda: convolution(images, weight, stride=2, padding=1).sum().backward())
    replays = throughput.replay_products(calls, torch.bfloat16, torch.Generator().manual_seed(0), "cpu")
    assert [func.overloadpacket.__name__ for func, _, _ in replays] == ["convolution", "convolution_backward"]
    for (_, recorded, _), (_, replayed, _) in zip(calls, replays, strict=True):
        for before, after in zip(recorded, replayed, strict=True):
            if isinstance(before, throughput.TensorLayout):
                assert (after.shape, after.stride(), after.dtype) == (before.size, before.stride, torch.bfloat16)
            else:
                assert after == before
    assert replays[0][1][2:] == [None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1]
    throughput.run_products(replays)


def test_bad_input_is_refused_before_any_measuring_process(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(throughput, "run_isolated", lambda config, timeout: pytest.fail("measured despite bad input"))
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path / "no-data"))
    (tmp_path / "file").write_text("kept\n")
    (tmp_path / "busy" / "throughput.json").mkdir(parents=True)
    wrongs = [
        ("--num-envs, --steps must be positive", ["--models", "mlp", "--num-envs", "0", "--steps", "0"]),
        ("CIFAR-10 not found", ["--models", "small_cnn"]),  # the CIFAR-10 subset is not under $ALA_GYM_DATA
        # 0 would fall back to --batch-size; a negative one failed in the model's check with a traceback.
        *(("--resnet-batch-size must be positive", ["--models", "resnet32", "--resnet-batch-size", n]) for n in ("0", "-5")),
        # A timeout of 0 s timed out every row and wrote the report of errors over the saved one.
        *(("--timeout must be a positive, finite number", ["--models", "mlp", "--timeout", t]) for t in ("0", "nan", "inf")),
        ("--roofline-seconds must be a positive, finite number", ["--models", "mlp", "--roofline-seconds", "-1"]),
        *(("--min-seconds must be a finite number of seconds, 0 or more", ["--models", "mlp", "--min-seconds", t])
          for t in ("-1", "nan")),
        (f"{tmp_path / 'file'} is a file, not a folder", ["--models", "mlp", "--out", str(tmp_path / "file" / "out")]),
        (f"{tmp_path / 'busy' / 'throughput.json'} is a folder where the report goes",
         ["--models", "mlp", "--out", str(tmp_path / "busy")]),
    ]  # fmt: skip
    for message, wrong in wrongs:
        with pytest.raises(SystemExit) as caught:
            throughput.main(["--out", str(tmp_path / "out"), *wrong])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and message in err and err.strip().count("\n") == 0, (wrong, err)
    assert not (tmp_path / "out").exists() and (tmp_path / "file").read_text() == "kept\n"


def test_a_run_that_measured_nothing_leaves_the_saved_report(tmp_path, monkeypatch, capsys) -> None:
    saved = {name: f"the saved {name}\n" for name in ("throughput.json", "throughput.md")}
    for name, text in saved.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(throughput, "run_isolated", lambda config, timeout: {**config, "error": "timed out after 1 s"})
    with pytest.raises(SystemExit) as caught:
        throughput.main(["--models", "mlp", "--num-envs", "1", "--modes", "single", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "no configuration was measured (first error: timed out after 1 s)" in err
    assert {name: (tmp_path / name).read_text() for name in saved} == saved


@pytest.mark.parametrize("content", [None, "{", "[]", '{"args": {}}',
                                     '{"argv": [], "args": {}, "machine": {}, "finished": "x", "results": [{}]}'])
def test_render_refuses_a_missing_or_damaged_report_in_one_line(tmp_path, capsys, content: str | None) -> None:
    if content is not None:
        (tmp_path / "throughput.json").write_text(content)
    with pytest.raises(SystemExit) as caught:
        throughput.main(["--render", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    expected = f"no {tmp_path / 'throughput.json'}" if content is None else f"{tmp_path / 'throughput.json'} is damaged"
    assert caught.value.code == 2 and expected in err and err.strip().count("\n") == 0
    assert not (tmp_path / "throughput.md").exists()


@pytest.mark.parametrize("factor, met", [(9.0, "met"), (8.0, "met"), (7.0, "not met"), (3.0, "not met")])
def test_target_lines_follow_the_numbers(factor: float, met: str) -> None:
    """The same report with faster or slower batched rows: the verdicts come from the rates."""
    model, n, target = throughput.BATCHED_TARGET
    rows = [
        {"model": model, "num_envs": 1, "mode": "single", "iterations_per_s": 100.0},
        {"model": model, "num_envs": n, "mode": "native-batched", "iterations_per_s": factor * 100.0},
        {"model": model, "num_envs": n, "mode": "native-sequential", "iterations_per_s": 100.0},
    ]
    cnn = throughput.NO_SLOWER_MODEL
    for size in (throughput.NO_SLOWER_FROM, 32):
        rows += [
            {"model": cnn, "num_envs": size, "mode": "native-sequential", "iterations_per_s": 10.0},
            {"model": cnn, "num_envs": size, "mode": "native-batched", "iterations_per_s": 10.0 * factor / 8},
        ]
    report = {"args": {"models": [model, cnn]}, "results": rows, "roofline": {"gflops": 50.0},
              "flops_per_iteration": {model: 5e6},
              "kernels": {"model": model, "num_envs": n, "iterations_per_s": 2 * factor * 100.0,
                          "bfloat16_autocast_iterations_per_s": 3 * factor * 100.0},
              "products": {"model": model, "num_envs": n, "iterations_per_s": 4 * factor * 100.0,
                           "bfloat16_iterations_per_s": 8 * factor * 100.0}}  # fmt: skip
    lines = throughput.findings(copy.deepcopy(report))
    reach = "within" if 2 * factor >= target else "beyond"
    assert any(line.startswith(f"Bound: the batched forward and backward alone of N = {n} {model}")
               and f"{2 * factor:.2f}x one child's: the target is {reach}" in line and "runs at 50% of them" in line
               for line in lines)  # fmt: skip
    assert f"Bound: under bfloat16 autocast the same forward and backward run at {300 * factor:.0f} iterations/s, " \
        f"{3 * factor:.2f}x one child's (1.50x float32)." in lines
    reach = "within" if 4 * factor >= target else "beyond"
    assert any(line.startswith("Bound: the matrix products alone") and f"{4 * factor:.2f}x one child's: the target is "
               f"{reach} their reach in float32; they take 50% of `gradients`' time" in line and f"{8 * factor:.2f}x." in line
               for line in lines)  # fmt: skip
    assert f"Target: {model}, N = {n} batched at {factor:.2f}x one child's iterations/s (target >= {target:g}x): {met}." in lines
    assert any(line.startswith("Bound: at the roofline (50.0 GFLOP/s)") and "100.0x one child's" in line for line in lines)
    assert any(line.startswith(f"Target: {cnn} batched no slower") and line.endswith(f": {met}.") for line in lines)


def test_the_roofline_counts_two_flops_per_multiply_add_of_each_product(monkeypatch) -> None:
    """Four products of two n-square matrices in a block timed at one second (a clock that ticks a second per
    reading): 4 x 2 n^3 FLOP in that second."""
    from itertools import count
    from types import SimpleNamespace

    clock = count()
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    size = throughput.ROOFLINE_SIZE["cpu"]
    result = throughput.roofline({"device": "cpu", "threads": 1, "seconds": 0.5})
    assert result["gflops"] == pytest.approx(4 * 2 * size**3 / 1e9)


@pytest.mark.parametrize("ray, overhead, verdict", [
    (80.0, "+25.0%", "not under the 5% target"), (98.0, "+2.0%", "under the 5% target"),
    (125.0, "-20.0%", "negative: the actor ran faster than the process, so this run cannot tell Ray's overhead"),
])  # fmt: skip
def test_rays_overhead_is_the_extra_time_of_a_step_in_one_actor(ray: float, overhead: str, verdict: str) -> None:
    """The same children in one Ray actor and in the process: the process's rate over the actor's, less 1, is the
    share of a step Ray adds (an actor faster than the process tells nothing of it); more actors are set against
    the process's rate."""
    rows = [{"model": "mlp", "num_envs": 4, "mode": mode, "iterations_per_s": rate}
            for mode, rate in (("native-sequential", 100.0), ("ray-1", ray), ("ray-2", 150.0))]  # fmt: skip
    lines = throughput.findings({"args": {"models": ["mlp"]}, "results": rows})
    assert (f"mlp, N = 4: Ray's per-step overhead (ray-1 against native-sequential) {overhead} of a step ({verdict})."
            in lines)  # fmt: skip
    assert "mlp, N = 4: ray-2 runs 1.50x the native-sequential rate." in lines
    assert not any("ray-4" in line for line in lines)  # not measured


def test_a_model_measured_as_one_child_only_has_no_findings() -> None:
    rows = [{"model": "mlp", "num_envs": 1, "mode": "single", "iterations_per_s": 100.0}]
    assert throughput.findings({"args": {"models": ["mlp"]}, "results": rows}) == []


@pytest.mark.parametrize(("matmul", "conv", "said"), [
    (False, True, "matrix products IEEE float32, cuDNN convolutions TF32"),
    (True, False, "matrix products TF32, cuDNN convolutions IEEE float32"),
])  # fmt: skip
def test_a_cuda_report_says_how_cuda_computed_float32(tmp_path, monkeypatch, matmul: bool, conv: bool, said: str) -> None:
    """Beside the GPU: the roofline's products and the children's convolutions may run in TF32 or not (torch's
    defaults differ between the two), which a percentage of the roofline depends on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Some GPU")
    # Plain assignments, restored by hand: the flags are computed attributes that monkeypatch cannot restore.
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
        info = throughput.machine()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    assert info["float32_on_cuda"] == said
    report = json.loads((RESULTS_MLP / "throughput.json").read_text())
    report["machine"] = info
    out = tmp_path / "out"
    out.mkdir()
    (out / "throughput.json").write_text(json.dumps(report))
    throughput.main(["--render", "--out", str(out)])
    assert f"GPU Some GPU (float32 on CUDA: {said})" in (out / "throughput.md").read_text()


def test_the_kernel_and_product_entries_keep_each_rates_best_round_and_every_round() -> None:
    """Three rounds, one failed: the fastest float32 and bfloat16 rates of those measured (from different rounds
    where they differ), the products of the fastest float32 round, and every round's rate in order (None: failed)."""
    base = {"model": "mlp", "num_envs": 32}
    kernels = [{**base, "iterations_per_s": 10.0, "bfloat16_autocast_iterations_per_s": 7.0}, {"error": "killed"},
               {**base, "iterations_per_s": 12.0, "bfloat16_autocast_iterations_per_s": 5.0}]  # fmt: skip
    kept = throughput.best_kernels(kernels)
    assert kept["iterations_per_s"] == 12.0 and kept["bfloat16_autocast_iterations_per_s"] == 7.0
    assert kept["rounds"] == [10.0, None, 12.0] and kept["bfloat16_autocast_rounds"] == [7.0, None, 5.0]
    products = [{**base, "products": ["slow"], "flops": 1.0, "iterations_per_s": 8.0, "bfloat16_iterations_per_s": 20.0},
                {**base, "products": ["fast"], "flops": 1.0, "iterations_per_s": 9.0, "bfloat16_iterations_per_s": 15.0}]  # fmt: skip
    best = throughput.best_products(products)
    assert best["products"] == ["fast"] and best["iterations_per_s"] == 9.0 and best["bfloat16_iterations_per_s"] == 20.0
    assert throughput.best_kernels([{"error": "killed"}]) == {} == throughput.best_products([])
