"""Training throughput (images/s) of hfdiff's loop beside a course-style PyTorch loop, same UNet, same data, one run.

    python benchmarks/bench_training.py                  # GPU: course scale (89,400 sprites, batch 1,024), 300 steps
    python benchmarks/bench_training.py --quick          # CPU smoke run: 4,000 sprites, batch 64, 40 steps

Rows, each a fresh model trained from the same seed for the same number of steps:
- reference: the course notebook's loop: a DataLoader over float images on the host (shuffle, batch), each batch
  copied to the device, fp32, torch AdamW, loss.item() every step. Same ContextUNet2DModel and DDPM noise.
- hfdiff fp32: hfdiff.training.train with the data on the device, no autocast, no channels_last, no compile.
- hfdiff bf16: hfdiff.training.train as the scripts run it on a GPU (bf16 autocast, fused AdamW; it also keeps an
  EMA, clips gradients and follows a cosine LR schedule, which the reference does not).
- hfdiff bf16 + channels_last + compile: the same with both speed flags on.
images/s counts every process's images and leaves out the first fifth of the steps (warm-up, torch.compile).
Results go to benchmarks/results/training-<device>.{json,md}, with the command line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"


def reference_loop(args, device: torch.device) -> float:
    """The course's training loop, written plainly; returns images/s after the warm-up steps."""
    from hfdiff import SpriteDDPMScheduler
    from hfdiff.data import generate_sprites
    from hfdiff.models import ContextUNet2DModel

    images, labels = generate_sprites(args.num_train_images, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, 16, 16) float on the host
    dataset = torch.utils.data.TensorDataset(x, torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = ContextUNet2DModel.from_preset("sprite-small").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = SpriteDDPMScheduler(num_train_timesteps=500)
    warmup = args.steps // 5
    step, start = 0, None
    while step < args.steps:
        for x0, label in loader:
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            x0, label = x0.to(device), label.to(device)
            context = F.one_hot(label, 5).float() * (torch.rand(x0.shape[0], device=device) >= 0.1)[:, None]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 500, (x0.shape[0],), device=device)
            loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t, context=context).sample, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the course prints the loss; this waits for the GPU every step
            step += 1
            if step == args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (args.steps - warmup) * args.batch_size / (time.perf_counter() - start)


def hfdiff_loop(args, flags: list[str]) -> float:
    from accelerate.state import AcceleratorState

    from hfdiff.training import parse_config, train

    with tempfile.TemporaryDirectory() as output_dir:
        config = parse_config(
            [
                "--output_dir", output_dir,
                "--num_train_images", str(args.num_train_images),
                "--train_batch_size", str(args.batch_size),
                "--max_train_steps", str(args.steps),
                "--logging_steps", str(max(1, args.steps // 5)),  # the meter skips the first interval
                "--checkpointing_steps", "0",
                "--validation_steps", str(10 * args.steps),
                "--num_validation_images", "1",
                *flags,
            ]
        )  # fmt: skip
        result = train(config, conditional=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # the next row may use another mixed precision
    return result.images_per_second


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CPU-sized run: 4,000 sprites, batch 64, 40 steps")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default 300; quick 40)")
    parser.add_argument("--batch_size", type=int, default=None, help="default 1,024 (the GPU default); quick 64")
    parser.add_argument("--num_train_images", type=int, default=None, help="default 89,400; quick 4,000")
    args = parser.parse_args(argv)
    args.steps = args.steps or (40 if args.quick else 300)
    args.batch_size = args.batch_size or (64 if args.quick else 1024)
    args.num_train_images = args.num_train_images or (4_000 if args.quick else 89_400)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    rows = {
        "reference (course loop: DataLoader, fp32)": lambda: reference_loop(args, device),
        "hfdiff fp32 (data on device)": lambda: hfdiff_loop(args, ["--mixed_precision", "no"]),
        "hfdiff bf16": lambda: hfdiff_loop(args, ["--mixed_precision", "bf16"]),
    }
    if device.type == "cuda":  # compiling takes minutes on a CPU
        rows["hfdiff bf16 + channels_last + compile"] = lambda: hfdiff_loop(
            args, ["--mixed_precision", "bf16", "--channels_last", "--compile"]
        )
    results = {}
    for name, run in rows.items():
        results[name] = run()
        print(f"{name}: {results[name]:,.0f} images/s", flush=True)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    record = {
        "command": "python " + " ".join(["benchmarks/bench_training.py", *sys.argv[1:]]),
        "device": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "num_train_images": args.num_train_images,
        "images_per_second": results,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"training-{device.type}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Training throughput on {device_name}",
        "",
        f"`{record['command']}` (torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{args.num_train_images:,} sprites, batch {args.batch_size}, {args.steps} steps per row)",
        "",
        "| loop | images/s | vs reference |",
        "| --- | ---: | ---: |",
    ]
    reference = next(iter(results.values()))
    lines += [f"| {name} | {value:,.0f} | {value / reference:.2f}x |" for name, value in results.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
