"""Soak: train for minutes with frequent checkpoints; memory must stay flat and every checkpoint must load.

    python benchmarks/soak_training.py                       # GPU: ~5 minutes, a checkpoint every 1,000 steps
    python benchmarks/soak_training.py --minutes 0.5 --quick # CPU smoke run

hfdiff.training.train runs as the scripts run it (GPU defaults: CUDA graph, compile, bf16), keeping every
checkpoint. A thread samples the process's memory once a second (GPU: allocated and reserved by torch's caching
allocator; host: resident set size). Afterwards every checkpoint is read back: its weights, optimizer state, EMA and
LR schedule, each checked for finite values, and the final pipeline is loaded and sampled.
Results go to benchmarks/results/soak-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

RESULTS = Path(__file__).parent / "results"


class MemorySampler(threading.Thread):
    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()
        self.start_time = time.perf_counter()

    def run(self):
        process = psutil.Process()
        while not self.stopped.is_set():
            sample = {"t": time.perf_counter() - self.start_time, "rss_mb": process.memory_info().rss / 2**20}
            if torch.cuda.is_available():
                sample["allocated_mb"] = torch.cuda.memory_allocated() / 2**20
                sample["reserved_mb"] = torch.cuda.memory_reserved() / 2**20
            self.samples.append(sample)
            self.stopped.wait(self.interval)


def check_checkpoint(path: Path) -> dict:
    """Read every file of a checkpoint back; True only if everything loads and every tensor is finite."""
    from safetensors.torch import load_file

    def finite(value) -> bool:
        if isinstance(value, torch.Tensor):
            return bool(torch.isfinite(value.float()).all()) if value.is_floating_point() else True
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(finite(v) for v in value)
        return True

    weights = load_file(path / "model.safetensors")
    optimizer = torch.load(path / "optimizer.bin", map_location="cpu", weights_only=True)
    scheduler = torch.load(path / "scheduler.bin", map_location="cpu", weights_only=True)
    ema = torch.load(path / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=True)
    state = json.loads((path / "training_state.json").read_text())
    return {
        "step": state["global_step"],
        "ok": finite(weights) and finite(optimizer["state"]) and finite(ema["shadow_params"]) and bool(scheduler),
        "ema_step": ema["optimization_step"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training time to aim for (default 5)")
    parser.add_argument("--steps_per_second", type=float, default=None, help="expected rate (GPU 95, CPU 5)")
    parser.add_argument("--checkpointing_steps", type=int, default=None, help="default: 1,000 (GPU), 20 (CPU)")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: 4,000 sprites, batch 64")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    rate = args.steps_per_second or (95.0 if cuda else 5.0)
    steps = max(10, int(args.minutes * 60 * rate))
    every = args.checkpointing_steps or (1000 if cuda else 20)

    from hfdiff import SpriteDiffusionPipeline
    from hfdiff.training import parse_config, train

    sampler = MemorySampler()
    with tempfile.TemporaryDirectory() as output_dir:
        flags = [
            "--output_dir", output_dir,
            "--max_train_steps", str(steps),
            "--checkpointing_steps", str(every),
            "--checkpoints_total_limit", "none",
            "--validation_steps", str(max(every, steps // 5)),
            "--logging_steps", str(max(1, every // 10)),
        ]  # fmt: skip
        if args.quick:
            flags += ["--num_train_images", "4000", "--train_batch_size", "64"]
        sampler.start()
        start = time.perf_counter()
        result = train(parse_config(flags), conditional=True)
        seconds = time.perf_counter() - start
        sampler.stopped.set()
        sampler.join()
        checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        checks = [check_checkpoint(path) for path in checkpoints]
        pipe = SpriteDiffusionPipeline.from_pretrained(output_dir)
        images = pipe(batch_size=2, class_labels=["hero", "food"], num_inference_steps=50, output_type="pt").images
        pipeline_ok = bool(torch.isfinite(images).all())

    samples = sampler.samples
    settled = [s for s in samples if s["t"] >= samples[-1]["t"] * 0.2] or samples  # after compile and capture

    def spread(key):
        values = [s[key] for s in settled if key in s]
        return {"min": min(values), "max": max(values), "first": values[0], "last": values[-1]} if values else None

    record = {
        "command": "python " + " ".join(["benchmarks/soak_training.py", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "seconds": seconds,
        "steps": result.global_step,
        "images_per_second": result.images_per_second,
        "step_setup_seconds": result.step_setup_seconds,
        "checkpoints": len(checks),
        "checkpoints_ok": sum(c["ok"] for c in checks),
        "checkpoint_steps": [c["step"] for c in checks],
        "pipeline_ok": pipeline_ok,
        "memory_after_first_fifth": {key: spread(key) for key in ("allocated_mb", "reserved_mb", "rss_mb")},
        "memory_samples": samples,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"soak-{'cuda' if cuda else 'cpu'}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        f"# Training soak on {record['device']}",
        "",
        f"`{record['command']}` (torch {torch.__version__}): {result.global_step:,} steps in {seconds:.0f} s "
        f"({result.images_per_second or 0:,.0f} images/s after warm-up; step built in {result.step_setup_seconds:.1f} s), "
        f"a checkpoint every {every} steps, all kept.",
        "",
        f"- checkpoints read back, every tensor finite: {record['checkpoints_ok']} of {record['checkpoints']}",
        f"- final pipeline loads and samples finite images: {pipeline_ok}",
        "",
        "| memory (MiB), after the first fifth of the run | first | min | max | last |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, value in record["memory_after_first_fifth"].items():
        if value:
            lines.append(
                f"| {key} | {value['first']:.1f} | {value['min']:.1f} | {value['max']:.1f} | {value['last']:.1f} |"
            )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
