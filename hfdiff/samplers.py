"""Named samplers: which scheduler, how many steps and what guidance, chosen by one word in Python, the CLI, the demo
and the reports. `with_sampler(pipe, name)` is the one way they are built: its scheduler carries the sampler's recipe
(steps, eta, guidance) in its config, which the pipeline's call uses for every keyword it is not given, and which
save_pretrained keeps. Training saves the recommended sampler, so `pipe()` on a trained model runs it.

Every sampler is built from the model's own scheduler config (`from_config`), so it uses the schedule, prediction
type and timestep spacing the model was trained with. "dpm++" is recommended because on 25 steps it reached full
500-step DDPM's Fréchet distance on the default models, where `fast` and DDIM stayed above it; the measurements per
sampler and training are in docs/sampling.md ("Few steps, full quality"), from
benchmarks/results/few-step-quality-h200-*.md.

Every sampler here runs on the CUDA-graph path (`FastSampler`): DDPM's and DDIM's steps are affine in (x_t, model
output, noise), and "dpm++" (diffusers' DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++", solver_order=2)
adds only the previous step's x_t and output, which the graph carries over. No deterministic sampler is offered
beyond DDIM: on these models they stay off DDPM-500 however many steps they take (DDIM-500 as far as DDIM-50,
benchmarks/results/few-step-quality-h200-deterministic.md), as the gap is the model's probability-flow ODE.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # class name in hfdiff.schedulers, else in diffusers
    num_inference_steps: int | None  # None = every training step
    description: str
    # config entries set over the model's own (which keep its schedule, prediction type, spacing and zero-SNR rescale)
    overrides: tuple[tuple[str, object], ...] = ()
    eta: float = 0.0  # DDIM's noise scale; 0 for schedulers whose step takes no eta
    # w of classifier-free guidance on a model with a context (a no-op without one); 1 = plain conditional sampling
    guidance_scale: float = 1.0


RECOMMENDED = "dpm++"  # what a pipeline saved by training samples with, and the CLI's and the demo's default
SAMPLERS = {  # the recommended one first (the demo's dropdown follows this order)
    "dpm++": Sampler(
        "DPMSolverMultistepScheduler",
        25,
        "DPM-Solver++ 2M SDE on 25 steps at guidance 1.5: second-order and stochastic, at full-DDPM quality in 20x "
        "fewer steps",
        # diffusers' defaults otherwise (final_sigmas_type="zero": the last step lands on x0_hat; no Karras sigmas),
        # as measured; with rescale_betas_zero_snr it starts at alphas_cumprod = 2**-24, not 0, so sigma stays finite
        (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2)),
        # FD is lowest at w = 1.5-2 for this solver and for DDPM-500 alike (docs/guidance_sweep.png, drawn from
        # benchmarks/results/few-step-quality-h200-*.md); the course's samplers below keep plain w = 1
        guidance_scale=1.5,
    ),
    "fast": Sampler("SpriteDDPMScheduler", 25, "DDPM on 25 strided steps: the course's sampler, 20x fewer steps"),
    "ddpm": Sampler("SpriteDDPMScheduler", None, "DDPM over every training step (the course's sampler)"),
    "ddim": Sampler("SpriteDDIMScheduler", 50, "DDIM, deterministic with eta = 0 (eta = 1 adds DDPM-like noise)"),
}

# `hfdiff report`'s rows (hfdiff.evaluate.ddpm_vs_ddim): label -> (a name above, whose scheduler and guidance the
# row uses; eta). Each row runs the step counts asked for; "full" is every training step, or `step_limit`'s count.
REPORT_SAMPLERS = {
    RECOMMENDED: (RECOMMENDED, 0.0),
    "DDPM": ("ddpm", 0.0),
    "DDIM eta=0": ("ddim", 0.0),
    "DDIM eta=1": ("ddim", 1.0),
}


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(repr(n) for n in SAMPLERS)}.")
    return SAMPLERS[name]


def sampler_scheduler(config, name: str):
    """A fresh scheduler for sampler `name` built from a model's scheduler `config` (its schedule, prediction type,
    spacing and zero-SNR rescale kept), carrying the sampler's recipe in its config (`SAMPLING_RECIPE`: steps, eta,
    guidance), which the pipeline's call uses for every keyword it is not given and which save_pretrained writes
    into scheduler_config.json, so that the folder samples the same way when loaded again (with diffusers alone too:
    the entry is an ordinary config entry, kept by every scheduler's from_config)."""
    import diffusers

    from hfdiff import schedulers
    from hfdiff.pipelines.pipeline_sprite_diffusion import SAMPLING_RECIPE

    sampler = get_sampler(name)
    scheduler_class = getattr(schedulers, sampler.scheduler, None) or getattr(diffusers, sampler.scheduler)
    scheduler = scheduler_class.from_config(config, **dict(sampler.overrides))
    recipe = {
        "sampler": name,
        "scheduler": type(scheduler).__name__,  # the recipe holds for this class only (`sampling_defaults`)
        "num_inference_steps": default_steps(name, scheduler.config.num_train_timesteps),
        "eta": sampler.eta,
        "guidance_scale": sampler.guidance_scale,
    }
    scheduler.register_to_config(**{SAMPLING_RECIPE: recipe})
    return scheduler


def with_sampler(pipe, name: str):
    """A pipeline sharing every component of `pipe` (UNet, text encoder, tokenizer) with a fresh scheduler for sampler
    `name` (`sampler_scheduler`); `pipe` itself is left as it is. Its call runs the sampler's steps, eta and guidance
    unless the caller passes others:

        with_sampler(pipe, "dpm++")(batch_size=5, class_labels="food")   # 25 steps, guidance 1.5
        with_sampler(pipe, "ddpm")(batch_size=5, class_labels="food")    # every training step, guidance 1
    """
    other = type(pipe)(**{**pipe.components, "scheduler": sampler_scheduler(pipe.scheduler.config, name)})
    other.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return other


def step_limit(name: str, num_train_timesteps: int) -> int:
    """The most steps sampler `name` can take on a model trained with `num_train_timesteps` steps: all of them, but
    one fewer for dpm++ (diffusers' DPMSolverMultistepScheduler with "leading" spacing, the course recipe's, puts
    every step at t = 0 when asked for all of them)."""
    dpm = get_sampler(name).scheduler == "DPMSolverMultistepScheduler"
    return num_train_timesteps - 1 if dpm else num_train_timesteps


def default_steps(name: str, num_train_timesteps: int) -> int:
    """The sampler's step count for a model trained with `num_train_timesteps` steps (never more than `step_limit`)."""
    sampler = get_sampler(name)
    limit = step_limit(name, num_train_timesteps)
    return limit if sampler.num_inference_steps is None else min(sampler.num_inference_steps, limit)
