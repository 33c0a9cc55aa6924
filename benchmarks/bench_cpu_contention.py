"""CPU training speed when another process keeps one core busy: torch's old thread count beside hfdiff's auto.

    python benchmarks/bench_cpu_contention.py              # 80 steps of batch 64 per row, ~7 minutes on 2 cores
    python benchmarks/bench_cpu_contention.py --steps 40   # quicker, noisier

Each row runs `python train_conditional.py` (the procedural sprites, sprite-small, the CPU defaults otherwise) in its
own process, as a user would, once on an idle machine and once beside a background `python -c "while True: pass"`
(not pinned: the scheduler places it). Rows:
- old: 2 threads: --num_cpu_threads 2, the count the old auto chose on this machine (physical cores, also
  torch's own default);
- new: auto: no flag; the run counts the cores that are free at start-up (hfdiff.training.config.cpu_threads);
- 1 thread: --num_cpu_threads 1, for reference;
- 2 threads, passive OpenMP: old's count with OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers instead of spinning);
- and once more new auto, with the busy loop started only after the run has chosen its threads: load that arrives
  later, which auto does not follow.

images/s is the median of the run's logged intervals (--logging_steps 10) after the first (warm-up), read from its
TensorBoard log. The slowdown is idle images/s / busy images/s of the same row; 2x is what losing one of two cores
costs at best. Results go to benchmarks/results/cpu_contention.{json,md}, with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
ROWS = {
    "old: 2 threads": (["--num_cpu_threads", "2"], {}),
    "new: auto": ([], {}),
    "1 thread": (["--num_cpu_threads", "1"], {}),
    "2 threads, passive OpenMP": (["--num_cpu_threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def logged_images_per_second(output_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(output_dir.glob("logs/*/events.out.tfevents.*"))
    if not events:
        raise FileNotFoundError(f"no TensorBoard log under {output_dir}/logs: did the run fail?")
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars("images_per_second")]


def start_busy_loop() -> subprocess.Popen:
    busy = subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"], stdout=subprocess.PIPE)
    busy.stdout.readline()
    time.sleep(1.0)  # past its start-up, running flat out
    return busy


def run_training(flags: list[str], env: dict[str, str], steps: int, workdir: Path, busy_after_start: bool) -> dict:
    """One training process; its images/s per logged interval and the thread choice it logged. With
    `busy_after_start`, a busy loop starts once the run has logged its thread choice (load that arrives later)."""
    output_dir = Path(tempfile.mkdtemp(dir=workdir))
    command = [
        sys.executable, str(ROOT / "train_conditional.py"), "--output_dir", str(output_dir),
        "--num_train_images", "4096", "--max_train_steps", str(steps), "--logging_steps", "10",
        "--checkpointing_steps", "0", "--validation_steps", str(10 * steps), "--num_validation_images", "1",
        "--validation_inference_steps", "2", *flags,
    ]  # fmt: skip
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        if name not in env:
            child_env.pop(name, None)
    run = subprocess.Popen(
        command, env=child_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines, busy = [], None
    try:
        for line in run.stderr:  # tqdm's carriage returns end lines here too
            lines.append(line)
            if busy_after_start and busy is None and "CPU thread(s) per process" in line:
                busy = start_busy_loop()
        run.wait()
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(lines)[-3000:]}")
    intervals = logged_images_per_second(output_dir)
    choice = next((line.split("INFO hfdiff.training.loop: ")[-1].strip() for line in lines
                   if "CPU thread(s) per process" in line), "")  # fmt: skip
    return {"intervals": intervals, "images_per_second": statistics.median(intervals[1:]), "threads_log": choice}


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_contention.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# CPU training beside one busy process",
        "",
        f"`{results['command']}`; {results['machine']}; {results['steps']} steps of 64 images per row, images/s "
        "the median of the logged intervals after the first.",
        "",
        "| threads | idle images/s | one core busy images/s | slowdown |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in results["rows"].items():
        idle, busy = row["idle"]["images_per_second"], row["busy"]["images_per_second"]
        lines.append(f"| {name} | {idle:.0f} | {busy:.0f} | {idle / busy:.2f}x |")
    old_idle = results["rows"]["old: 2 threads"]["idle"]["images_per_second"]
    new = results["rows"]["new: auto"]
    lines += [
        "",
        f"new auto beside one busy core vs the old idle speed: {old_idle / new['busy']['images_per_second']:.2f}x "
        "slower (target <= 2.5x).",
        "",
        "Load that arrives after start-up is not followed: new auto with the busy loop started once it had chosen "
        f"its threads (idle at start-up, so 2): {new['busy after start-up']['images_per_second']:.0f} images/s.",
        "",
        "The new auto's logged choice:",
        "",
        f"- idle: `{new['idle']['threads_log']}`",
        f"- busy: `{new['busy']['threads_log']}`",
        "",
    ]
    (RESULTS / "cpu_contention.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run (default: 80)")
    args = parser.parse_args()
    results = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count(logical=False)} physical cores, "
        f"{psutil.cpu_count()} logical",
        "steps": args.steps,
        "rows": {name: {} for name in ROWS},
    }
    with tempfile.TemporaryDirectory() as workdir:
        for background in ("idle", "busy"):
            busy = start_busy_loop() if background == "busy" else None
            try:
                for name, (flags, env) in ROWS.items():
                    row = run_training(flags, env, args.steps, Path(workdir), busy_after_start=False)
                    results["rows"][name][background] = row
                    print(f"{background:4} {name:28} {row['images_per_second']:6.0f} images/s", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
        late = run_training([], {}, args.steps, Path(workdir), busy_after_start=True)
        results["rows"]["new: auto"]["busy after start-up"] = late
        print(f"busy after start-up, new: auto {late['images_per_second']:6.0f} images/s", flush=True)
    write_results(results)
    print((RESULTS / "cpu_contention.md").read_text())


if __name__ == "__main__":
    main()
