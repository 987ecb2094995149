"""The overhead and malloc benchmarks: the loops train the env's own child, and tiny runs write their reports."""

from __future__ import annotations

import json
import platform
import statistics

import gymnasium as gym
import numpy as np
import pytest
import torch

from ala_gym.benchmarks import overhead
from ala_gym.core.data import training_batch
from ala_gym.core.losses import PhiLoss
from ala_gym.core.trainer import ChildTrainer


def _digits_env():
    env = gym.make("ALA-Digits-v0", disable_env_checker=True, total_iterations=20, steps_per_action=5).unwrapped
    env.reset(seed=overhead.ENV_SEED)
    return env


def test_env_child_seed_gives_the_weights_every_loop_starts_from():
    env = _digits_env()
    loop_child = ChildTrainer(env.data, env.train_config, overhead.env_child_seed(overhead.ENV_SEED)).model
    pairs = list(zip(loop_child.parameters(), env.trainer.model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_timed_call_reports_its_wall_then_its_cpu_seconds(monkeypatch):
    # Fake clocks: 2.5 s of wall and 0.5 s of CPU pass during the call.
    walls, cpus = iter([10.0, 12.5]), iter([3.0, 3.5])
    monkeypatch.setattr(overhead.time, "perf_counter", lambda: next(walls))
    monkeypatch.setattr(overhead.time, "process_time", lambda: next(cpus))
    calls = []
    assert overhead._timed_both(lambda: calls.append(1), torch.device("cpu")) == (2.5, 0.5)
    assert calls == [1]


def test_the_plain_loop_takes_one_fresh_batch_per_iteration(monkeypatch):
    env = _digits_env()
    batches = []

    def counted(data, index, generator):
        batches.append(index.clone())
        return training_batch(data, index, generator)

    monkeypatch.setattr(overhead, "training_batch", counted)
    overhead._plain_loop(env, overhead.env_child_seed(overhead.ENV_SEED))(3)
    assert len(batches) == 3 and all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1 :])
    assert all(len(index) == env.train_config.batch_size for index in batches)


def test_the_trainer_rows_take_the_three_kernels_of_eq_6_at_their_phi():
    env = _digits_env()
    phis = overhead._phis(env.data.num_classes)
    settings = env.task_settings
    kernels = {}
    for name, phi in phis.items():
        loss = PhiLoss(torch.zeros(phi.shape), settings.loss_form, settings.sigmoid_temperature, settings.negative_floor)
        loss.set_phi(phi.astype(np.float32))
        kernels[name] = loss.kernel
        # The loop trains the env's child under that Phi: its first iteration's loss is the one computed here.
        expected = ChildTrainer(env.data, env.train_config, 7).train(1, loss)
        assert overhead._trainer_loop(env, 7, phi)(1) == expected, name
    assert kernels == {"trainer": "hard", "trainer-soft": "soft", "trainer-general": "general"}


def test_per_image_costs_divide_each_timing_by_the_images_it_covered(monkeypatch):
    env = _digits_env()
    monkeypatch.setattr(overhead, "_timed", lambda fn, device: (fn(), 1.0)[1])  # every timed call: 1 s
    costs = overhead._per_image_costs(env, torch.device("cpu"))
    # 5 training iterations of a batch each; one evaluation of the validation split per batch size.
    assert costs["train_s_per_image"] == pytest.approx(1 / (5 * env.train_config.batch_size))
    sizes = {str(size) for size in (*overhead.EVAL_BATCH_SIZES, env.train_config.eval_batch_size)}
    assert costs["eval_s_per_image"] == pytest.approx(dict.fromkeys(sizes, 1 / len(env.val_eval)))


def test_every_timed_env_step_is_a_full_step_of_a_running_episode(monkeypatch):
    """Repeats past the child's budget start a new episode outside the timing: every timed step trains K iterations."""
    from ala_gym.envs.classification import ALAClassificationEnv

    short = {**overhead.CONFIGS["digits"]["kwargs"], "total_iterations": 4}
    monkeypatch.setitem(overhead.CONFIGS["digits"], "kwargs", short)
    trained, step = [], ALAClassificationEnv.step

    def counted(self, action):
        before = self.trainer.iteration
        result = step(self, action)
        trained.append(self.trainer.iteration - before)
        return result

    monkeypatch.setattr(ALAClassificationEnv, "step", counted)
    row = overhead.measure("digits", torch.device("cpu"), 4, 2)  # a warm-up step and 4 timed ones: 10 iterations of 4
    assert trained == [2] * 5
    for kind in ("wall", "cpu"):  # each loop's time is the median of its repetitions, recorded beside it
        for loop in overhead.LOOPS:
            assert len(row[f"{kind}_s"][loop]) == 4
            assert row[f"median_{kind}_s"][loop] == statistics.median(row[f"{kind}_s"][loop])


def test_merge_keeps_the_other_configs_rows_and_each_note_once(tmp_path, monkeypatch):
    """--merge writes this run's rows beside the saved report's others, and its notes after the saved ones, each once."""
    argv = ["--configs", "digits", "--repeats", "1", "--steps-per-action", "2", "--out", str(tmp_path)]
    overhead.main([*argv, "--note", "first"])
    saved = json.loads((tmp_path / "overhead.json").read_text())
    earlier = ["--configs", "fashion-mnist", "--threads", "2"]  # the command that measured it, with another count
    saved["results"]["fashion-mnist"] = saved["results"]["digits"] | {"model": "small_cnn", "argv": earlier, "torch_num_threads": 2}
    (tmp_path / "overhead.json").write_text(json.dumps(saved))
    # Without --merge, a command that leaves a saved row out is refused: it would drop it unseen.
    monkeypatch.setattr(overhead, "measure", lambda *args: pytest.fail("measured before the refusal"))
    with pytest.raises(SystemExit) as caught:
        overhead.main(argv)
    assert caught.value.code == 2 and json.loads((tmp_path / "overhead.json").read_text()) == saved
    monkeypatch.undo()
    overhead.main([*argv, "--merge", "--note", "second", "--note", "first"])
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert list(report["results"]) == ["digits", "fashion-mnist"]
    assert report["results"]["fashion-mnist"] == saved["results"]["fashion-mnist"]
    assert report["notes"] == [*saved["notes"], "second"] and saved["notes"][0] == "first"
    table = (tmp_path / "overhead.md").read_text()
    assert "| fashion-mnist | small_cnn |" in table
    # The header is the latest command's; the kept row names its own.
    assert ("* Rows kept from earlier commands (`--merge`): fashion-mnist: `python -m ala_gym.benchmarks.overhead "
            "--configs fashion-mnist --threads 2` on") in table and "digits: `python" not in table
    # A row of a file written before rows named their command takes its file's header command.
    older = json.loads((tmp_path / "overhead.json").read_text())
    for row in older["results"].values():
        del row["argv"], row["date_utc"]
    older["argv"] = ["--configs", "digits", "fashion-mnist", "--threads", "3"]
    (tmp_path / "overhead.json").write_text(json.dumps(older))
    overhead.main([*argv, "--merge"])
    table = (tmp_path / "overhead.md").read_text()
    assert "fashion-mnist: `python -m ala_gym.benchmarks.overhead --configs digits fashion-mnist --threads 3` on" in table


def test_merge_into_a_report_whose_rows_lack_what_the_table_reads_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    (tmp_path / "overhead.json").write_text(json.dumps({"results": {"foo": {"model": 1}}, "notes": []}))
    monkeypatch.setattr(overhead, "measure", lambda *args: pytest.fail("measured before the refusal"))
    with pytest.raises(SystemExit) as caught:
        overhead.main(["--configs", "digits", "--repeats", "1", "--out", str(tmp_path), "--merge"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and "overhead.json is damaged: it lacks what the report reads" in err
    assert json.loads((tmp_path / "overhead.json").read_text())["results"] == {"foo": {"model": 1}}


def test_tiny_run_writes_json_and_markdown(tmp_path):
    overhead.main(["--configs", "digits", "--repeats", "1", "--steps-per-action", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "overhead.json").read_text())
    row = report["results"]["digits"]
    assert row["steps_per_action"] == 2 and row["repeats"] == 1
    assert row["malloc"] in ("glibc thresholds fixed", "system default (not glibc)")
    assert set(row["median_cpu_s"]) == set(overhead.LOOPS) and all(v > 0 for v in row["median_cpu_s"].values())
    # A loop's overhead is its extra time over plain training, in % of plain's (positive: slower than plain).
    for kind in ("cpu", "wall"):
        medians = row[f"median_{kind}_s"]
        expected = {loop: 100 * (medians[loop] - medians["plain"]) / medians["plain"] for loop in overhead.LOOPS}
        assert row[f"vs_plain_{kind}_pct"] == pytest.approx(expected)
    cpu = row["median_cpu_s"]
    assert row["env_vs_trainer_cpu_pct"] == pytest.approx(100 * (cpu["env"] - cpu["trainer"]) / cpu["trainer"])
    # The validation passes of one step (eval_points of them) against the env step's wall time.
    share = 100 * row["eval_points"] * row["validation_pass_s"] / row["median_wall_s"]["env"]
    assert row["validation_share_of_step_pct"] == pytest.approx(share)
    wall = row["median_wall_s"]
    assert row["env_vs_trainer_wall_pct"] == pytest.approx(100 * (wall["env"] - wall["trainer"]) / wall["trainer"])
    table = (tmp_path / "overhead.md").read_text()
    assert "| digits | mlp | 2 | 1 |" in table and "malloc" in table
    # On a CPU the ratios read this process's CPU time; on a GPU, where CPU time counts launches and waits, wall time.
    env = f"{row['vs_plain_cpu_pct']['env']:+.1f}% | {row['vs_plain_wall_pct']['env']:+.1f}% | {row['env_vs_trainer_cpu_pct']:+.1f}%"
    assert "env vs plain (CPU) | env vs plain (wall) | env vs trainer (CPU)" in table and env in table
    report["machine"]["device"] = "cuda"
    on_gpu = overhead.render_markdown(report)
    env = f"{row['vs_plain_wall_pct']['env']:+.1f}% | {row['vs_plain_cpu_pct']['env']:+.1f}% | {row['env_vs_trainer_wall_pct']:+.1f}%"
    assert "env vs plain (wall) | env vs plain (CPU) | env vs trainer (wall)" in on_gpu and env in on_gpu
    assert f"| {overhead._ms(wall['plain'])} |" in on_gpu


def test_counts_that_are_not_positive_are_refused(tmp_path, capsys):
    # --repeats 0 used to fall back to each config's default count and run for minutes.
    with pytest.raises(SystemExit) as caught:
        overhead.main(["--configs", "digits", "--repeats", "0", "--threads", "0", "--out", str(tmp_path / "out")])
    assert caught.value.code == 2 and "--repeats, --threads must be positive" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_malloc_benchmark_times_both_loops_under_both_thresholds(tmp_path):
    from ala_gym.benchmarks import malloc

    malloc.main(["--config", "digits", "--rounds", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "malloc.json").read_text())
    assert [row["mode"] for row in report["results"]] == list(malloc.MODES)
    # Only the second worker fixes the thresholds (None: not asked; a bool: whether glibc took them).
    assert [row["retain_freed_memory"] for row in report["results"]] == [None, platform.libc_ver()[0] == "glibc"]
    assert all(len(row["cpu_s"][loop]) == 2 for row in report["results"] for loop in malloc.LOOP_NAMES)
    assert all(count >= 0 for row in report["results"] for loop in malloc.LOOP_NAMES for count in row["faults"][loop])
    for row in report["results"]:  # the summaries are those of the rounds recorded beside them
        for loop in malloc.LOOP_NAMES:
            assert row["median_cpu_s"][loop] == statistics.median(row["cpu_s"][loop])
            assert row["median_faults"][loop] == statistics.median(row["faults"][loop])
            assert row["mean_faults"][loop] == statistics.fmean(row["faults"][loop])
    assert "| retained |" in (tmp_path / "malloc.md").read_text()
    report["notes"] = ["cores shared with another job"]
    assert malloc.render_markdown(report).endswith("\n## Notes\n\n* cores shared with another job\n")
