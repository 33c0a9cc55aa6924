"""Training throughput and memory of the two data paths (device-resident and streaming) on the same data, same run.

    python benchmarks/bench_data_paths.py                          # GPU: 300,000 sprites at 64x64, batch 1,024
    python benchmarks/bench_data_paths.py --source dataset         # the same as PNGs in a save_to_disk folder
    python benchmarks/bench_data_paths.py --quick                  # CPU: 3,000 sprites at 64x64, a tiny UNet

Each path trains `hfdiff.training.train` (conditional, sprite-small unless --quick, every speed default of the device)
in a child process of its own, so that its peak memory is its own: the resident path with the default budget (the
whole set on the device), the streaming path with --device_data_budget_mb 1 (DataLoader workers decode each batch).
The data: procedural sprites upscaled to --resolution, either the generated array itself (--source sprites: the
streaming path keeps the 16x16 array and upscales per batch) or PNGs in a `datasets` save_to_disk folder (--source
dataset: every batch is decoded from PNG, as for a real image set).

Reported per path: images/s after the first logging interval (warm-up, compile, graph capture), the peak resident
set of the training process and of its largest DataLoader worker (ru_maxrss), and the peak device memory
(torch.cuda.max_memory_allocated). The target: streaming >= 70% of resident images/s at 64x64 on one H200.
Results go to benchmarks/results/data_paths-<device>.{json,md}, with the command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TINY_UNET = {
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "layers_per_block": 1,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU scale: 3,000 images, batch 32, a tiny UNet.")
    parser.add_argument("--source", choices=["sprites", "dataset"], default="sprites")
    parser.add_argument("--num_images", type=int, default=None, help="default: 300,000 (3,000 with --quick)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=None, help="default: 1,024 (32 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per path (default 300, 30 quick)")
    parser.add_argument("--workers", type=int, default=None, help="--dataloader_num_workers (default: auto)")
    parser.add_argument("--child", choices=["resident", "streaming"], help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.num_images = args.num_images or (3_000 if args.quick else 300_000)
    args.batch_size = args.batch_size or (32 if args.quick else 1024)
    args.steps = args.steps or (30 if args.quick else 300)
    return args


def training_flags(args, path: str, output_dir: str) -> list[str]:
    flags = [
        "--output_dir", output_dir, "--resolution", str(args.resolution), "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--logging_steps", str(max(1, args.steps // 5)),
        "--validation_steps", str(10 * args.steps), "--checkpointing_steps", "0", "--num_validation_images", "1",
        "--validation_inference_steps", "2", "--ddpm_num_steps", "50",  # the final samples.png: 50 DDPM steps
    ]  # fmt: skip
    if args.source == "dataset":
        flags += ["--dataset_name", args.data_dir]
    else:
        flags += ["--num_train_images", str(args.num_images)]
    if args.quick:
        flags += ["--model_config_overrides", json.dumps(TINY_UNET)]
    if args.workers is not None:
        flags += ["--dataloader_num_workers", str(args.workers)]
    if path == "streaming":
        flags += ["--device_data_budget_mb", "1"]
    return flags


def run_child(args) -> None:
    """One path's training run; prints its figures as one JSON line."""
    from hfdiff.training import parse_config, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the data path's choice, for `measure`
    with tempfile.TemporaryDirectory() as output_dir:
        result = train(parse_config(training_flags(args, args.child, output_dir)), conditional=True)
    gc.collect()  # the DataLoader's workers are joined, so RUSAGE_CHILDREN holds the largest of them
    figures = {
        "path": args.child,
        "images_per_second": result.images_per_second,
        "final_loss": result.final_loss,
        "peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }
    print("RESULT " + json.dumps(figures))


def write_dataset(num_images: int, folder: str) -> None:
    from hfdiff.data import sprite_dataset

    sprite_dataset(num_images, seed=0).save_to_disk(folder)


def measure(args, path: str) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--child", path]
    if args.data_dir:
        command += ["--data_dir", args.data_dir]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {path} run failed:\n{result.stderr[-4000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    figures = json.loads(line.removeprefix("RESULT "))
    chosen = [line for line in result.stderr.splitlines() if "data path:" in line]
    figures["log"] = chosen[-1] if chosen else None  # which path ran, and why
    return figures


def write_results(args, rows: list[dict]) -> None:
    device = torch.cuda.get_device_name().replace(" ", "-").lower() if torch.cuda.is_available() else "cpu"
    name = f"data_paths-{device}-{args.source}"
    command = "python benchmarks/bench_data_paths.py " + " ".join(sys.argv[1:])
    ratio = rows[1]["images_per_second"] / rows[0]["images_per_second"]
    record = {"command": command, "machine": platform.processor() or platform.machine(), "args": vars(args)}
    record.update(rows=rows, streaming_over_resident=ratio)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Data paths: {args.num_images:,} {args.source} images at {args.resolution}x{args.resolution}, batch "
        f"{args.batch_size}, {args.steps} steps ({device})",
        "",
        f"`{command}`",
        "",
        "| path | images/s | peak host RSS (MB) | largest child process RSS (MB) | peak device memory (MB) | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        device_mb = "-" if row["peak_device_mb"] is None else f"{row['peak_device_mb']:,.0f}"
        lines.append(
            f"| {row['path']} | {row['images_per_second']:,.0f} | {row['peak_host_rss_mb']:,.0f} | "
            f"{row['peak_worker_rss_mb']:,.0f} | {device_mb} | {row['final_loss']:.4f} |"
        )
    lines += ["", f"streaming / resident images/s: {ratio:.2f}", ""]
    lines += [f"- {row['path']}: {row['log']}" for row in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    args = parse_args()
    if args.child:
        return run_child(args)
    with tempfile.TemporaryDirectory() as data_dir:
        if args.source == "dataset":
            args.data_dir = data_dir
            write_dataset(args.num_images, data_dir)
        rows = [measure(args, "resident"), measure(args, "streaming")]
    write_results(args, rows)


if __name__ == "__main__":
    main()
