"""The optional keywords of a scheduler's `step`, read from its signature (as diffusers' pipelines'
`prepare_extra_step_kwargs` does), shared by the pipeline's loop and hfdiff's fast sampler.

Imports only the standard library, so it travels next to a saved pipeline as stand-alone code (the pipeline module
imports it relatively).
"""

from __future__ import annotations

import inspect


def scheduler_step_kwargs(scheduler, generator, eta: float, extra_noise: bool) -> dict:
    """The keywords of generator, eta (DDIM) and extra_noise (sprite DDPM) that `scheduler.step` takes, by its
    signature: what the pipeline's loop passes, and what hfdiff's fast sampler probes the step with."""
    parameters = inspect.signature(scheduler.step).parameters
    candidates = {"generator": generator, "eta": eta, "extra_noise": extra_noise}
    return {name: value for name, value in candidates.items() if name in parameters}
