"""Named samplers: which scheduler and how many steps, chosen by one word in the CLI, the demo and the reports.

Every sampler is built from the model's own scheduler config (`from_config`), so it uses the schedule, prediction
type and timestep spacing the model was trained with. "fast" is the few-step sampler the measurements recommend
(benchmarks/results/few-step-quality-h200-*.md, 1,000 sprites on one H200, zero-snr recipe, 64 epochs):

| sampler | steps | FD | FD / DDPM-500 |
| --- | ---: | ---: | ---: |
| DDPM (every step) | 500 | 0.62 | 1.00 |
| fast: DDPM on 25 strided steps | 25 | 0.74 | 1.19 |
| DDIM eta = 1, 25 steps | 25 | 0.77 | 1.25 |
| DPM-Solver++ 2M SDE, 20 steps | 20 | 0.77 | 1.24 |
| DDIM eta = 0, 50 / 25 steps | 50 / 25 | 1.42 / 1.57 | 2.3 / 2.6 |

DDPM's step is affine in (x_t, model output, noise), so "fast" runs on the CUDA-graph path (`FastSampler`), which the
multistep DPM-Solver does not; the deterministic samplers stay about 2.3x off DDPM-500 on these models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # class name in hfdiff.schedulers
    num_inference_steps: int | None  # None = every training step
    description: str


SAMPLERS = {
    "fast": Sampler("SpriteDDPMScheduler", 25, "DDPM on 25 strided steps: near full-DDPM quality, 20x fewer steps"),
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
    from hfdiff import schedulers

    scheduler_class = getattr(schedulers, get_sampler(name).scheduler)
    other = type(pipe)(**{**pipe.components, "scheduler": scheduler_class.from_config(pipe.scheduler.config)})
    other.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return other


def default_steps(name: str, num_train_timesteps: int) -> int:
    """The sampler's step count for a model trained with `num_train_timesteps` steps (never more than that)."""
    steps = get_sampler(name).num_inference_steps
    return num_train_timesteps if steps is None else min(steps, num_train_timesteps)
