"""Time `pipe(batch_size=64, class_labels=...)` with a pipeline's sampling defaults against the course's DDPM over
every step, in one run, on one model folder:

    python benchmarks/pipe_defaults.py MODEL [--threads 1] [--device cpu]

The defaults are what training saves (hfdiff.samplers' recommended sampler and its recipe: `with_sampler(pipe,
RECOMMENDED)`); DDPM is `with_sampler(pipe, "ddpm")`, what `pipe()` ran on a folder saved without a recipe. The
defaults run twice (before and after DDPM) and the faster is kept, so that drifting load does not favour them.
"""

import argparse
import time

import torch

from hfdiff import SpriteDiffusionPipeline
from hfdiff.samplers import RECOMMENDED, with_sampler


def timed(pipe, labels, device) -> float:
    start = time.perf_counter()
    pipe(batch_size=len(labels), class_labels=labels, generator=torch.Generator().manual_seed(0))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="A class-conditional pipeline folder.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = SpriteDiffusionPipeline.from_pretrained(args.model).to(args.device)
    defaults, ddpm = with_sampler(loaded, RECOMMENDED), with_sampler(loaded, "ddpm")
    labels = [k % loaded.unet.config.context_dim for k in range(args.batch_size)]
    for pipe in (defaults, ddpm):
        pipe.set_progress_bar_config(disable=True)
        pipe(batch_size=2, class_labels=labels[:2], num_inference_steps=2)  # warm-up
    first = timed(defaults, labels, args.device)
    full = timed(ddpm, labels, args.device)
    second = timed(defaults, labels, args.device)
    print("| run | steps | guidance | seconds |\n| --- | ---: | ---: | ---: |")
    print(
        f"| defaults ({RECOMMENDED}) | {defaults.num_timesteps} | {defaults.guidance_scale:g} | "
        f"{first:.2f}, {second:.2f} |"
    )
    print(f"| ddpm | {ddpm.num_timesteps} | {ddpm.guidance_scale:g} | {full:.2f} |")
    print(f"\nDDPM / defaults: {full / min(first, second):.1f}x")


if __name__ == "__main__":
    main()
