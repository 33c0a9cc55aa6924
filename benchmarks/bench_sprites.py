"""Time the embedded sprite generator at the course's scale (89,400 sprites) and, optionally, its Dataset wrapper.

    OMP_NUM_THREADS=1 python benchmarks/bench_sprites.py              # generate_sprites only
    OMP_NUM_THREADS=1 python benchmarks/bench_sprites.py --dataset    # also sprite_dataset (PNG encoding)

generate_sprites is plain numpy and runs on one core; the target is a few seconds, so that the default data set
costs less than the first training step. Results go to benchmarks/results/sprites.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from hfdiff.data import generate_sprites, sprite_dataset

RESULTS = Path(__file__).parent / "results"


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=89_400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", action="store_true", help="also time sprite_dataset (one repeat)")
    args = parser.parse_args(argv)

    rows = {"generate_sprites": timed(lambda: generate_sprites(args.num_images, seed=0), args.repeats)}
    if args.dataset:
        rows["sprite_dataset"] = timed(lambda: sprite_dataset(args.num_images, seed=0), 1)

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    result = {
        "num_images": args.num_images,
        "seconds": {name: {"min": min(t), "median": statistics.median(t), "runs": t} for name, t in rows.items()},
        "machine": machine,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sprites.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Sprite generation, {args.num_images:,} images",
        "",
        "| function | min (s) | median (s) | runs |",
        "|---|---|---|---|",
        *(f"| {name} | {min(t):.2f} | {statistics.median(t):.2f} | {len(t)} |" for name, t in rows.items()),
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "",
    ]
    (RESULTS / "sprites.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
