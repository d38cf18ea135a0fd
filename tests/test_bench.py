"""`tunefm bench`: real measurements on the real data (CPU, tiny), packing arithmetic, the command's errors."""

import json

import pytest
import torch
from click.testing import CliRunner

from tunefm import bench_report
from tunefm.cli import main
from tunefm.engine import bench


@pytest.fixture(scope="module")
def cpu_rows(data_dir):
    machine = bench.Machine.here(torch.device("cpu"))
    return machine, bench.measure(["iaro1", "iaro2"], [64], machine, seconds=0.2, data_dir=str(data_dir),
                                  bench_images=1000, trial_images=6000)


@pytest.mark.slow
def test_measures_speed_and_memory_per_model_and_batch(cpu_rows):
    machine, rows = cpu_rows
    assert [(r.model, r.batch_size, r.device) for r in rows] == [("iaro1", 64, "cpu"), ("iaro2", 64, "cpu")]
    for row in rows:
        assert row.samples >= 3 * 64 and row.samples_per_s > 0
        assert row.peak_mb > row.model_mb > 0 and row.base_mb > 0
        assert row.data_mb == pytest.approx(bench.split_mb(6000), abs=0.1)
        assert row.trial_mb == pytest.approx(row.model_mb + row.data_mb + row.base_mb, abs=0.2)
        assert row.gpu_busy is None
        assert row.loop in ("plain", "channels_last", "native_conv")  # what calibration chose here
    # iaro2 has 41x iaro1's parameters and wider activations: it is slower on any machine. Its
    # measured memory is not compared: peak RSS on a CPU depends on the allocator's caches, and
    # on one machine of this kind iaro2's came out below iaro1's (71.8 vs 92.4 MB).
    iaro1, iaro2 = rows
    assert iaro2.samples_per_s < iaro1.samples_per_s


@pytest.mark.slow
def test_cpu_packing_is_limited_by_cores_or_memory(cpu_rows):
    machine, rows = cpu_rows
    for packing in bench.advise(rows, machine):
        assert packing.by_cpu == machine.cores_per_device and packing.by_compute is None
        assert packing.trials == min(packing.by_cpu, packing.by_memory) and packing.gpu_fraction is None
    small = bench.Machine("cpu", "test", memory_mb=2_000, cores_per_device=8)
    assert bench.pack(rows[1], small).limit == "memory"


def row(model="iaro1", batch_size=32, trial_mb=1_000.0, busy=0.2):
    return bench.Row(model, batch_size, "cuda", 1000, 5e4, 100.0, 200.0, 300.0, 500.0, trial_mb, busy)


GPU = bench.Machine("cuda", "H100", memory_mb=80_000, cores_per_device=16, context_mb=500)


@pytest.mark.parametrize("trial_mb, busy, cores, trials, limit", [
    (1_000, 0.2, 16, 5, "compute"),  # a fifth of the step time in kernels: 5 fill the GPU
    (30_000, 0.05, 16, 2, "memory"),  # 72,000 usable MB hold two
    (1_000, 0.01, 4, 4, "cpu"),  # each trial needs a core to launch its kernels
    (1_000, 1.0, 16, 1, "compute"),  # a GPU-bound trial gets the whole GPU
])
def test_gpu_packing_takes_the_tightest_limit(trial_mb, busy, cores, trials, limit):
    machine = bench.Machine("cuda", "H100", memory_mb=80_000, cores_per_device=cores)
    packing = bench.pack(row(trial_mb=trial_mb, busy=busy), machine)
    assert (packing.trials, packing.limit) == (trials, limit)
    assert packing.gpu_fraction == pytest.approx(1 / trials, abs=1e-4)


def test_one_fraction_per_model_from_its_tightest_batch_size():
    packings = bench.advise([row(batch_size=8, busy=0.1), row(batch_size=256, busy=0.5), row("iaro3", busy=0.25)], GPU)
    tightest = bench.per_model(packings)
    assert (tightest["iaro1"].batch_size, tightest["iaro1"].trials) == (256, 2)
    assert tightest["iaro3"].trials == 4
    text = bench_report.bench_text([row(batch_size=8, busy=0.1), row(batch_size=256, busy=0.5), row("iaro3", busy=0.25)],
                        packings, GPU)
    assert "iaro1: 2 trial(s) per GPU (limited by compute at batch 256): --gpus-per-trial 0.5" in text
    assert "iaro3: 4 trial(s) per GPU (limited by compute at batch 32): --gpus-per-trial 0.25" in text


@pytest.mark.slow
def test_bench_command_json_and_table(data_dir):
    args = ["bench", "--models", "iaro1", "--batch-sizes", "32,64", "--seconds", "0.1", "--data-dir", str(data_dir),
            "--device", "cpu"]
    result = CliRunner().invoke(main, args + ["--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["model"], r["batch_size"]) for r in report["rows"]] == [("iaro1", 32), ("iaro1", 64)]
    assert report["machine"]["device"] == "cpu" and len(report["packing"]) == 2
    assert "measured iaro1 batch 32" in result.stderr
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0
    assert "iaro1: " in table.stdout and "trial(s) at once on this machine" in table.stdout
    assert "samples/s" in table.stdout and "peak RSS MB" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--models", "nope"], "Error: unknown model 'nope'; valid models: iaro1, "),
    (["--batch-sizes", "0"], "Error: --batch-sizes must be integers >= 1, got 0"),
    (["--batch-sizes", "eight"], "Error: Invalid value for '--batch-sizes': expected int values separated by commas"),
    (["--seconds", "0"], "Error: --seconds must be > 0, got 0.0"),
    (["--cpus-per-trial", "0"], "Error: --cpus-per-trial must be > 0, got 0.0"),
    (["--device", "tpu"], "Error: Invalid value for '--device': 'tpu' is not one of 'cpu', 'cuda'."),
])
def test_bench_mistakes_are_one_line(args, message):
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(message), result.output


def test_cuda_asked_for_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(main, ["bench", "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output == ("Error: --device cuda: no CUDA device is available here (torch.cuda.is_available() "
                             "is False); use --device cpu\n")


def test_a_trial_too_big_for_the_device_is_said_so():
    too_big = row("iaro4", batch_size=256, trial_mb=100_000)
    packing = bench.pack(too_big, GPU)
    assert (packing.trials, packing.limit, packing.gpu_fraction) == (0, "memory", None)
    assert ("iaro4: a trial at batch 256 needs 100,000 MB, more than 90% of this device's 80,000 MB"
            in bench_report.bench_text([too_big], [packing], GPU))
