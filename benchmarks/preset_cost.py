"""Time per pixel of each UNet preset's training step (forward and backward) relative to sprite-small at 16x16.

hfdiff.training.config.PRESET_COST holds these ratios: the first log line of a run turns an assumed sprite-small speed
into the run's expected time with them. Ratios are taken in one run on one thread, so load shared with other work
moves them less than it moves the absolute speed.

    python benchmarks/preset_cost.py --out benchmarks/results/preset-cost-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from hfdiff.models import ContextUNet2DModel

CASES = [("sprite-small", 16), ("sprite-small", 32), ("sprite-base", 16), ("sprite-64", 32), ("sprite-64", 64)]


def seconds_per_image(preset: str, size: int, batch: int, repeats: int) -> float:
    model = ContextUNet2DModel.from_preset(preset, sample_size=size, context_dim=10)
    x, c = torch.randn(batch, 3, size, size), torch.zeros(batch, 10)
    t = torch.randint(0, 500, (batch,))
    for _ in range(2):  # warm-up
        model(x, t, c).sample.square().mean().backward()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, t, c).sample.square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/preset-cost-cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for preset, size in CASES:
        per_image = seconds_per_image(preset, size, args.batch, args.repeats)
        rows.append({"preset": preset, "size": size, "images_per_second": 1 / per_image,
                     "seconds_per_16x16": per_image / (size * size / 256)})  # fmt: skip
    base = rows[0]["seconds_per_16x16"]
    for row in rows:
        row["cost"] = row["seconds_per_16x16"] / base
    lines = [
        f"# Preset cost per pixel ({platform.processor() or platform.machine()}, 1 thread, batch {args.batch})",
        "",
        f"Command: `python benchmarks/preset_cost.py --out {args.out}`",
        "",
        "| preset | size | images/s | cost per pixel vs sprite-small 16x16 |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['preset']} | {r['size']} | {r['images_per_second']:.1f} | {r['cost']:.2f} |" for r in rows]
    with open(args.out + ".json", "w") as file:
        json.dump(rows, file, indent=1)
        file.write("\n")
    with open(args.out + ".md", "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
