"""hfdiff.training.config.cpu_threads: --num_cpu_threads wins; auto takes the cores other processes leave free at
start-up (within this process's affinity, scaled to physical cores), capped by the launcher's split or torch's count.
The decision code runs for real; only the operating system's readings (per-CPU load, affinity, core counts) are set."""

import os
import subprocess
import sys

import psutil
import pytest
import torch

from hfdiff.training import TrainingConfig
from hfdiff.training.config import cpu_threads, free_cpu_cores


@pytest.fixture
def machine(monkeypatch):
    """Describe a machine: per-CPU load in %, the CPUs this process may run on, physical and logical core counts."""

    def describe(load, allowed=None, physical=None, launcher=True):
        logical = len(load)
        monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: list(load))
        monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: len(load) if logical else physical or len(load))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(logical) if allowed is None else allowed))
        if launcher:
            monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
        else:
            monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)

    return describe


def test_num_cpu_threads_wins_without_reading_the_load(machine, monkeypatch):
    machine([100.0, 100.0])
    monkeypatch.setattr(psutil, "cpu_percent", lambda **_: pytest.fail("the load was read"))
    assert cpu_threads(TrainingConfig(num_cpu_threads=3), 1) == (3, "--num_cpu_threads")


@pytest.mark.parametrize(
    "load, processes, expected",
    [
        ([2.0, 1.0], 1, 2),  # idle 2-core machine: both cores
        ([100.0, 3.0], 1, 1),  # one core taken by another process: the other one only
        ([99.0, 97.0], 1, 1),  # all busy: still one thread
        ([0.0, 100.0, 5.0, 100.0], 1, 2),
        ([0.0, 0.0, 0.0, 0.0], 2, 2),  # the launcher's split: physical cores / processes
        ([0.0, 100.0, 0.0, 0.0], 2, 1),  # 3 free cores for 2 processes: one each, not 2 threads on a shared core
    ],
)
def test_auto_counts_free_cores_under_the_launcher(machine, load, processes, expected):
    machine(load)
    threads, reason = cpu_threads(TrainingConfig(), processes)
    assert threads == expected
    assert f"{sum(p < 50 for p in load)} of {len(load)} CPUs free" in reason


def test_auto_reads_only_the_cpus_of_this_process_affinity(machine):
    machine([100.0, 100.0, 0.0, 0.0], allowed={2, 3})
    assert cpu_threads(TrainingConfig(), 1)[0] == 2
    machine([0.0, 0.0, 100.0, 0.0], allowed={2, 3})
    assert cpu_threads(TrainingConfig(), 1)[0] == 1


def test_free_hyper_threads_count_as_physical_cores(machine):
    machine([100.0] + [0.0] * 7, physical=4)  # 8 logical CPUs on 4 cores, one busy: 7 free hyper-threads
    assert free_cpu_cores()[0] == 3
    assert cpu_threads(TrainingConfig(), 1)[0] == 3


def test_plain_python_never_raises_torch_thread_count(machine):
    machine([0.0] * 8, launcher=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threads, reason = cpu_threads(TrainingConfig(), 1)
    finally:
        torch.set_num_threads(before)
    assert threads == 1 and "torch's thread count" in reason


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs and affinity"
)
def test_a_real_busy_process_takes_its_core_away():
    """A real busy loop pinned to one of this process's CPUs, and this process restricted to that CPU and one other:
    the measured free cores are 1 (the other CPU, or none if it is busy too: still at least 1)."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os; os.sched_setaffinity(0, {{{first}}}); print(flush=True)\nwhile True: pass",
        ],
        stdout=subprocess.PIPE,
    )
    before = os.sched_getaffinity(0)
    try:
        busy.stdout.readline()  # the loop has started
        os.sched_setaffinity(0, {first, second})
        cores, reason = free_cpu_cores()
    finally:
        os.sched_setaffinity(0, before)
        busy.kill()
        busy.wait()
    assert cores == 1, reason
    assert reason.startswith(("1 of 2 CPUs free", "0 of 2 CPUs free")), reason


@pytest.mark.parametrize("command", ["sample", "visualize"])
def test_cli_on_a_cpu_takes_the_free_cores_as_training_does(machine, command, tmp_path, capsys):
    """`hfdiff sample` / `visualize` on a CPU with one of two cores busy run one thread (training's rule,
    hfdiff.cpu_threads), and say so."""
    from tiny import make_pipe

    from hfdiff import cli

    make_pipe().save_pretrained(tmp_path / "model")
    machine([100.0, 3.0], launcher=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if command == "sample":
            args = ["sample", str(tmp_path / "model"), "--per_class", "1", "--output", str(tmp_path / "g.png")]
        else:
            args = ["visualize", "samples", "--model", str(tmp_path / "model"), "--output_dir", str(tmp_path)]
        assert cli.main([*args, "--device", "cpu", "--num_inference_steps", "2"]) == 0
        assert torch.get_num_threads() == 1
        assert "1 CPU thread(s): at most 2 (torch's thread count); 1 of 2 CPUs free" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
