"""Time SpriteDiffusionPipeline's sampling loop beside diffusers' DDPMPipeline with the same UNet and step count.

    python benchmarks/bench_sampling.py                        # CPU: 16 images, 100 of 500 DDPM steps
    python benchmarks/bench_sampling.py --batch_size 1000 --num_inference_steps 500   # GPU, course scale

Both pipelines run the same ContextUNet2DModel ("sprite-small", random weights: speed does not depend on them) and
DDPM schedules of the same length; runs alternate between the two so that drifts of the machine hit both alike.
Rows: diffusers' DDPMPipeline (the reference), SpriteDiffusionPipeline with diffusers' DDPMScheduler (isolates the
pipeline loop), and SpriteDiffusionPipeline with SpriteDDPMScheduler (what users run), unconditional and with class
labels. Results go to benchmarks/results/sampling-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from hfdiff import ContextUNet2DModel, SpriteDDPMScheduler, SpriteDiffusionPipeline

RESULTS = Path(__file__).parent / "results"


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_inference_steps", type=int, default=100)
    parser.add_argument("--num_train_timesteps", type=int, default=500)
    parser.add_argument("--preset", default="sprite-small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    torch.manual_seed(0)
    unet = ContextUNet2DModel.from_preset(args.preset).to(device).eval()
    ddpm = DDPMScheduler(num_train_timesteps=args.num_train_timesteps)
    common = {"batch_size": args.batch_size, "num_inference_steps": args.num_inference_steps, "output_type": "np"}

    reference = DDPMPipeline(unet=unet, scheduler=ddpm)
    ours_diffusers_step = SpriteDiffusionPipeline(unet=unet, scheduler=DDPMScheduler.from_config(ddpm.config))
    ours = SpriteDiffusionPipeline(unet=unet, scheduler=SpriteDDPMScheduler.from_config(ddpm.config))
    labels = [i % 5 for i in range(args.batch_size)]
    runs = {
        "diffusers DDPMPipeline (reference)": lambda: reference(generator=torch.manual_seed(0), **common),
        "SpriteDiffusionPipeline + DDPMScheduler": lambda: ours_diffusers_step(
            generator=torch.manual_seed(0), **common
        ),
        "SpriteDiffusionPipeline + SpriteDDPMScheduler": lambda: ours(generator=torch.manual_seed(0), **common),
        "SpriteDiffusionPipeline + SpriteDDPMScheduler, class labels": lambda: ours(
            generator=torch.manual_seed(0), class_labels=labels, **common
        ),
    }
    for pipe in (reference, ours_diffusers_step, ours):
        pipe.set_progress_bar_config(disable=True)

    with torch.no_grad():
        for fn in runs.values():  # warm-up: kernels, allocator, lazy imports
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, device))

    reference_median = statistics.median(times["diffusers DDPMPipeline (reference)"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "run": name,
                "median_s": round(median, 4),
                "min_s": round(min(values), 4),
                "ratio_to_reference": round(median / reference_median, 3),
            }
        )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "device": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "config": vars(args),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"sampling-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Sampling: SpriteDiffusionPipeline vs diffusers DDPMPipeline ({device_name})",
        "",
        f"`{result['command']}` — torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{args.batch_size} images x {args.num_inference_steps} DDPM steps, preset {args.preset}, "
        f"median of {args.repeats} alternating runs. Ratio < 1 is faster than the reference.",
        "",
        "| run | median s | min s | ratio to reference |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {r['run']} | {r['median_s']} | {r['min_s']} | {r['ratio_to_reference']} |" for r in rows],
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
