"""Named samplers: which scheduler and how many steps, chosen by one word in the CLI, the demo and the reports.

Every sampler is built from the model's own scheduler config (`from_config`), so it uses the schedule, prediction
type and timestep spacing the model was trained with. "dpm++" is the few-step sampler the measurements recommend
(benchmarks/results/few-step-quality-h200-dpm25.md: one default model, zero-snr recipe, 64 epochs, 1,000 sprites on
one H200, w = 1):

| sampler | steps | FD | FD / DDPM-500 |
| --- | ---: | ---: | ---: |
| DDPM (every step) | 500 | 0.81 | 1.00 |
| dpm++: DPM-Solver++ 2M SDE | 25 | 0.66 | 0.81 |
| DPM-Solver++ 2M SDE (dpm++ before) | 20 | 0.82 | 1.01 |
| fast: DDPM on 25 strided steps | 25 | 1.04 | 1.28 |
| DDIM eta = 0 | 50 | 1.60 | 1.97 |

Over five default models DPM-Solver++ 2M SDE on 20 steps was 1.01-1.25x and `fast` 1.07-1.8x of DDPM-500.

Every sampler here runs on the CUDA-graph path (`FastSampler`): DDPM's and DDIM's steps are affine in (x_t, model
output, noise), and "dpm++" (diffusers' DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++", solver_order=2)
adds only the previous step's x_t and output, which the graph carries over. The deterministic samplers stay 2-3.8x
off DDPM-500 on these models however many steps they take (DDIM-500 as DDIM-50): the gap is the model's ODE.
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


SAMPLERS = {  # the first is the recommended one (the demo's default)
    "dpm++": Sampler(
        "DPMSolverMultistepScheduler",
        25,
        "DPM-Solver++ 2M SDE on 25 steps: second-order and stochastic, at full-DDPM quality in 20x fewer steps",
        # diffusers' defaults otherwise (final_sigmas_type="zero": the last step lands on x0_hat; no Karras sigmas),
        # as measured; with rescale_betas_zero_snr it starts at alphas_cumprod = 2**-24, not 0, so sigma stays finite
        (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2)),
    ),
    "fast": Sampler("SpriteDDPMScheduler", 25, "DDPM on 25 strided steps: the course's sampler, 20x fewer steps"),
    "ddpm": Sampler("SpriteDDPMScheduler", None, "DDPM over every training step (the course's sampler)"),
    "ddim": Sampler("SpriteDDIMScheduler", 50, "DDIM, deterministic with eta = 0 (eta = 1 adds DDPM-like noise)"),
}


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(repr(n) for n in SAMPLERS)}.")
    return SAMPLERS[name]


def with_sampler(pipe, name: str):
    """A pipeline sharing every component of `pipe` (UNet, text encoder, tokenizer) with a fresh scheduler for sampler
    `name` built from `pipe.scheduler.config`; `pipe` itself is left as it is."""
    import diffusers

    from hfdiff import schedulers

    sampler = get_sampler(name)
    scheduler_class = getattr(schedulers, sampler.scheduler, None) or getattr(diffusers, sampler.scheduler)
    scheduler = scheduler_class.from_config(pipe.scheduler.config, **dict(sampler.overrides))
    other = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    other.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return other


def default_steps(name: str, num_train_timesteps: int) -> int:
    """The sampler's step count for a model trained with `num_train_timesteps` steps (never more than that; for
    dpm++ one fewer: diffusers' DPMSolverMultistepScheduler with "leading" spacing, the course recipe's, puts every
    step at t = 0 when asked for all of them)."""
    sampler = get_sampler(name)
    if sampler.num_inference_steps is None:
        return num_train_timesteps
    limit = num_train_timesteps - 1 if sampler.scheduler == "DPMSolverMultistepScheduler" else num_train_timesteps
    return min(sampler.num_inference_steps, limit)
