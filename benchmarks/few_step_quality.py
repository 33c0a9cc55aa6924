"""How good is each sampler on a trained model, and why are the deterministic ones worse?

For every model (label=folder) and every sampler of SAMPLER_TABLE asked for (or a named sampler of hfdiff.samplers:
fast, ddpm, ddim, dpm++, built by `with_sampler` exactly as the CLI's --sampler and the demo build it), 1,000 images
(per_class x classes) are sampled from one seed and scored with hfdiff.evaluate: an independent sprite classifier's
accuracy and the Fréchet distance in its features (with its floor, real vs held-out real). Beside the scores, the
colour statistics that show the deterministic samplers' failure: mean brightness, mean saturation and the spread of
per-image mean brightness, for the samples and for the real images. With --guidance_scales, the first two samplers are
also swept over guidance.

    python benchmarks/few_step_quality.py --models course=sprite-model zsnr=sprite-zsnr \\
        --samplers ddpm-500 ddim-50 ddim-25 dpmpp-2m-sde-20 dpm++ --output benchmarks/results/few-step-quality

Writes OUTPUT.json and OUTPUT.md (and prints the table). Absolute times only mean something from one GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
import torch

from hfdiff.samplers import SAMPLERS, with_sampler

# sampler name -> (scheduler class, scheduler config overrides, num_inference_steps (None = T), eta)
SAMPLER_TABLE = {
    "ddpm-500": ("SpriteDDPMScheduler", {}, None, 0.0),
    "ddim-50": ("SpriteDDIMScheduler", {}, 50, 0.0),
    "ddim-25": ("SpriteDDIMScheduler", {}, 25, 0.0),
    "ddim-10": ("SpriteDDIMScheduler", {}, 10, 0.0),
    # near the exact probability-flow ODE: is the deterministic gap the solver's steps, or the ODE of this model?
    "ddim-500": ("SpriteDDIMScheduler", {}, 500, 0.0),
    "ddim-50-trailing": ("SpriteDDIMScheduler", {"timestep_spacing": "trailing"}, 50, 0.0),
    "ddim-25-eta1": ("SpriteDDIMScheduler", {}, 25, 1.0),
    "ddim-25-eta1-trailing": ("SpriteDDIMScheduler", {"timestep_spacing": "trailing"}, 25, 1.0),
    "dpmpp-2m-20": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, 20, 0.0),
    "dpmpp-2m-10": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, 10, 0.0),
    "dpmpp-2m-sde-20": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 20, 0.0),
    "dpmpp-2m-sde-25": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 25, 0.0),
    "dpmpp-2m-sde-15": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 15, 0.0),
    "dpmpp-2m-sde-10": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 10, 0.0),
    "dpmpp-3m-sde-20": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        20,
        0.0,
    ),
    "ddim-25-eta0.5": ("SpriteDDIMScheduler", {}, 25, 0.5),
    "ddim-50-eta1": ("SpriteDDIMScheduler", {}, 50, 1.0),
    "ddpm-25": ("SpriteDDPMScheduler", {}, 25, 0.0),
    "unipc-20": ("UniPCMultistepScheduler", {}, 20, 0.0),
    # deterministic second-order solvers not measured yet (the DDIM-50 target): Heun (Karras et al. 2022's
    # sampler; two UNet calls a step but the last, so 13 steps = 25 calls), DEIS, DPM-Solver++ 2S (single step)
    "heun-13": ("HeunDiscreteScheduler", {}, 13, 0.0),
    "heun-25": ("HeunDiscreteScheduler", {}, 25, 0.0),
    "heun-100": ("HeunDiscreteScheduler", {}, 100, 0.0),
    "deis-20": ("DEISMultistepScheduler", {}, 20, 0.0),
    "dpmpp-2s-20": ("DPMSolverSinglestepScheduler", {}, 20, 0.0),
    "euler-a-25": ("EulerAncestralDiscreteScheduler", {}, 25, 0.0),
}
DEFAULT_SAMPLERS = list(SAMPLER_TABLE)  # the named samplers below repeat rows of these: chosen only by name
# hfdiff.samplers' named samplers, by their names (fast, ddpm, ddim, dpm++); `with_scheduler` builds them with
# `with_sampler`, so a row is what the CLI and the demo sample with
SAMPLER_TABLE.update(
    {name: (s.scheduler, dict(s.overrides), s.num_inference_steps, 0.0) for name, s in SAMPLERS.items()}
)


def scheduler_class(name: str):
    import diffusers

    import hfdiff

    return getattr(hfdiff, name, None) or getattr(diffusers, name)


def with_scheduler(pipe, sampler: str):
    """`pipe` with the sampler's scheduler, built from the model's own scheduler config (same schedule)."""
    if sampler in SAMPLERS:
        other = with_sampler(pipe, sampler)
    else:
        class_name, overrides, _, _ = SAMPLER_TABLE[sampler]
        scheduler = scheduler_class(class_name).from_config({**pipe.scheduler.config, **overrides})
        other = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    other.set_progress_bar_config(disable=True)
    return other


def colour_stats(images: np.ndarray) -> dict:
    """(N, H, W, 3) uint8 -> mean brightness in [0, 1], mean HSV saturation, spread (std) of per-image brightness."""
    x = images.astype(np.float64) / 255.0
    brightness = x.mean(axis=(1, 2, 3))
    high, low = x.max(axis=-1), x.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)
    return {
        "brightness": float(brightness.mean()),
        "saturation": float(saturation.mean()),
        "brightness_spread": float(brightness.std()),
    }


@torch.no_grad()
def first_step_diagnosis(pipe, real, count: int, seed: int) -> dict:
    """Where the first step of a sampler starts, and what the model makes of it: the mean brightness of x0_hat at the
    schedule's last timestep, from pure noise N(0, I) (where every sampler starts) and from x_T ~ q(x_T | x_0) of real
    sprites (what training showed the model at that timestep), beside the real mean. A schedule whose abar_T > 0
    leaves sqrt(abar_T) x_0 in training's x_T (the mean colour, mostly) that pure noise lacks."""
    from hfdiff.schedulers._math import x0_and_eps_from_model_output

    scheduler, unet = pipe.scheduler, pipe.unet
    t = scheduler.config.num_train_timesteps - 1
    abar = scheduler.alphas_cumprod[t].to(torch.float64)
    generator = torch.Generator("cpu").manual_seed(seed)
    x0 = torch.from_numpy(real.train_images[:count]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    labels = torch.from_numpy(real.train_labels[:count])
    noise = torch.randn(x0.shape, generator=generator)
    starts = {"pure noise": noise, "q(x_T | x_0)": abar.sqrt().float() * x0 + (1 - abar).sqrt().float() * noise}
    context = torch.eye(unet.config.context_dim)[labels] if unet.config.context_dim else None
    real_per_image = x0.add(1).div(2).mean(dim=(1, 2, 3))
    result = {
        "t": t,
        "sqrt_abar_T": float(abar.sqrt()),
        "real": {"brightness": float(real_per_image.mean()), "spread": float(real_per_image.std())},
    }
    for name, x_t in starts.items():
        x_t = x_t.to(pipe.device, unet.dtype)
        model_context = None if context is None else context.to(pipe.device, unet.dtype)
        out = unet(x_t, torch.full((count,), t, device=pipe.device), context=model_context).sample
        abar_t = scheduler.alphas_cumprod[t].to(pipe.device)
        x0_hat, _ = x0_and_eps_from_model_output(out.float(), x_t.float(), abar_t, scheduler.config.prediction_type)
        per_image = x0_hat.clamp(-1, 1).add(1).div(2).mean(dim=(1, 2, 3))
        result[name] = {"brightness": float(per_image.mean()), "spread": float(per_image.std())}
    return result


def evaluate_row(pipe, sampler, classifier, real, per_class, guidance_scale, seed, batch_size) -> dict:
    from hfdiff import evaluate as ev

    _, _, steps, eta = SAMPLER_TABLE[sampler]
    sampling_pipe = with_scheduler(pipe, sampler)
    sampling_pipe(batch_size=2, num_inference_steps=2 if steps else None, output_type="np")  # untimed warm-up
    images, labels, seconds = ev.generate_images(
        sampling_pipe,
        per_class,
        num_classes=len(classifier.class_names),
        batch_size=batch_size,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        eta=eta,
        generator=torch.Generator("cpu").manual_seed(seed),
        progress=False,
    )
    scores = ev.score_images(pipe, classifier, real, images, labels)
    return {
        "sampler": sampler,
        "steps": steps or pipe.scheduler.config.num_train_timesteps,
        "eta": eta,
        "guidance_scale": guidance_scale,
        "accuracy": scores["accuracy"],
        "frechet": scores["frechet"],
        "seconds": seconds,
        **colour_stats(images),
    }


def load_or_train_classifier(folder: str, real, device):
    from hfdiff import evaluate as ev

    if ev.classifier_trained_on(folder) is not None:
        return ev.load_classifier(folder, device)
    classifier = ev.train_classifier(
        real.train_images, real.train_labels, real.class_names, epochs=3, device=device, progress=False
    )
    ev.save_classifier(classifier, folder, trained_on=real.description)
    return classifier


def markdown(result: dict) -> str:
    lines = [
        f"# Few-step quality ({result['device']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['images_per_row']} images per row, seed {result['seed']}; real data: {result['real']}. Fréchet "
        f"distance in the classifier's features; floor (real vs held-out real): {result['frechet_floor']:.2f}. "
        f"Real images: brightness {result['real_colour']['brightness']:.3f}, saturation "
        f"{result['real_colour']['saturation']:.3f}, spread {result['real_colour']['brightness_spread']:.3f}.",
        "",
        "| model | sampler | steps | w | accuracy | FD | FD / DDPM | brightness | saturation | spread | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines[-2:-2] = [
        "First step (the schedule's last timestep): the model's x0_hat from pure noise and from noised real sprites, "
        "beside the real images: mean brightness / spread (std) of the per-image mean brightness.",
        "",
        "| model | sqrt(abar_T) | x0_hat from N(0, I) | x0_hat from q(x_T given x_0) | real |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {label} | {d['sqrt_abar_T']:.3f} | "
            + " | ".join(
                f"{d[k]['brightness']:.3f} / {d[k]['spread']:.3f}" for k in ("pure noise", "q(x_T | x_0)", "real")
            )
            + " |"
            for label, d in result.get("first_step", {}).items()
        ),
        "",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['sampler']} | {row['steps']} | {row['guidance_scale']:g} | "
            f"{row['accuracy']:.1%} | {row['frechet']:.2f} | {row['fd_ratio']:.2f} | {row['brightness']:.3f} | "
            f"{row['saturation']:.3f} | {row['brightness_spread']:.3f} | {row['seconds']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="label=pipeline_folder, one per model.")
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, choices=list(SAMPLER_TABLE))
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="w of the sampler rows.")
    parser.add_argument(
        "--guidance_scales", type=float, nargs="*", default=[], help="Also sweep these w for the first two samplers."
    )
    parser.add_argument("--per_class", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", default="few-step-classifier", help="Classifier folder (trained if missing).")
    parser.add_argument("--output", default="benchmarks/results/few-step-quality")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from hfdiff import SpriteDiffusionPipeline
    from hfdiff import evaluate as ev

    device = torch.device(args.device)
    real = ev.real_sprites(num_train=20_000, num_heldout=5_000)
    classifier = load_or_train_classifier(args.classifier, real, device)
    count = args.per_class * len(real.class_names)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        "images_per_row": count,
        "seed": args.seed,
        "real": real.description,
        "frechet_floor": ev.frechet_floor(classifier, real, count),
        "real_colour": colour_stats(real.train_images[:count]),
        "rows": [],
    }
    jobs = [(sampler, args.guidance_scale) for sampler in args.samplers]
    jobs += [(sampler, w) for sampler in args.samplers[:2] for w in args.guidance_scales if w != args.guidance_scale]
    for spec in args.models:
        label, _, folder = spec.partition("=")
        pipe = SpriteDiffusionPipeline.from_pretrained(folder or label).to(device)
        ddpm_fd = None
        diagnosis = first_step_diagnosis(pipe, real, min(count, 1000), args.seed)
        result.setdefault("first_step", {})[label] = diagnosis
        print(f"{label:>12} first step: {diagnosis}", flush=True)
        for sampler, w in jobs:
            row = evaluate_row(pipe, sampler, classifier, real, args.per_class, w, args.seed, args.batch_size)
            if sampler == args.samplers[0] and w == args.guidance_scale:
                ddpm_fd = row["frechet"]
            row.update(model=label, fd_ratio=row["frechet"] / ddpm_fd if ddpm_fd else float("nan"))
            result["rows"].append(row)
            print(f"{label:>12} {sampler:>22} w={w:<4g} acc {row['accuracy']:.1%} FD {row['frechet']:.2f}", flush=True)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(args.output + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
