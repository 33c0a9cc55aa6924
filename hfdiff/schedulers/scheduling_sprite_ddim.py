"""SpriteDDIMScheduler: diffusers' DDIMScheduler with the sprite course's defaults and its step written as the paper.

Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (DDIM): equation numbers below refer to it. Imports only
torch, numpy, diffusers and `._math`, so this file can be exported as code next to a saved pipeline.
"""

from typing import Literal

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ._math import (
    add_sprite_compatibles,
    check_choices,
    check_config_limits,
    finish_init,
    init_arguments,
    keep_x0_in_range,
    x0_and_eps_from_model_output,
)

# The schedules DDIMScheduler builds itself; the others in BETA_SCHEDULES come from DDPMScheduler.
_DDIM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class SpriteDDIMScheduler(DDIMScheduler):
    """DDIM sampling (eq. 12) with the sprite defaults: T = 500, linear betas 1e-4 .. 0.02.

    Everything except `step`, the argument checks and the extra beta schedules is DDIMScheduler's, so the sprite and
    diffusers DDPM/DDIM classes load each other's configs with `from_config`. Beyond the parent it accepts every
    schedule DDPMScheduler builds ("sigmoid" too), so any DDPM config can be swapped to DDIM.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["SpriteDDPMScheduler", "SpriteDDIMScheduler"]
    # Where the pipeline's loader finds the size check, run on scheduler_config.json before anything is built.
    check_config_limits = staticmethod(check_config_limits)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 500,  # T, the length of the forward chain; the sprite course trains with 500
        beta_start: float = 0.0001,  # beta_1 of the "linear", "scaled_linear" and "sigmoid" schedules
        beta_end: float = 0.02,  # beta_T of those schedules
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear",  # beta_t's shape
        trained_betas: np.ndarray | list[float] | None = None,  # explicit beta_1..beta_T; None = use beta_schedule
        clip_sample: bool = False,  # clamp x0_hat to +-clip_sample_range; off: the course (and Alg. 2) do not clip, and
        # clipping x0_hat without recomputing eps pulls the sampler off course, the further the more steps it takes
        set_alpha_to_one: bool = True,  # abar before t = 0: True = 1 (the last step returns x0_hat), False = abar_0
        steps_offset: int = 0,  # added to "leading" timesteps; 0 = none
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",  # the network's target: eps, x_0, v
        thresholding: bool = False,  # dynamic thresholding of x0_hat (Saharia et al. 2022); overrides clip_sample
        dynamic_thresholding_ratio: float = 0.995,  # percentile of |x0_hat| taken as the threshold s
        clip_sample_range: float = 1.0,  # bound used by clip_sample
        sample_max_value: float = 1.0,  # largest s dynamic thresholding may use
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",  # how set_timesteps strides 0..T-1
        rescale_betas_zero_snr: bool = False,  # rescale betas so abar_T = 0 (Lin et al. 2024); False = as built
    ):
        config = init_arguments(locals())
        check_choices(type(self).__name__, config)
        built_by_ddim = trained_betas is not None or beta_schedule in _DDIM_BETA_SCHEDULES
        super().__init__(**{**config, "beta_schedule": beta_schedule if built_by_ddim else "linear"})  # replaced below
        if not built_by_ddim:
            # Take the betas from DDPMScheduler, the one place diffusers builds them, so DDPM and DDIM agree exactly.
            self.register_to_config(beta_schedule=beta_schedule)
            self.betas = DDPMScheduler(
                num_train_timesteps=num_train_timesteps,
                beta_start=beta_start,
                beta_end=beta_end,
                beta_schedule=beta_schedule,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
            ).betas
            self.alphas = 1.0 - self.betas
            self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
            self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        finish_init(self, config)

    @classmethod
    def _get_compatibles(cls):
        return add_sprite_compatibles(cls, super()._get_compatibles(), SchedulerMixin)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """Choose `num_inference_steps` timesteps out of 0..T-1, strided by `timestep_spacing` (DDIMScheduler's, with
        a clearer error)."""
        num_train_timesteps = self.config.num_train_timesteps
        if num_inference_steps is None or not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is outside 1..{num_train_timesteps}: this scheduler has "
                f"num_train_timesteps={num_train_timesteps}, so DDIM can take between 1 and {num_train_timesteps} "
                "denoising steps (25 to 50 is usual)."
            )
        super().set_timesteps(num_inference_steps, device=device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One DDIM step x_t -> x_{t'} (eq. 12) from timestep t to the previous one t' of the strided schedule.

        Key, code name -> paper symbol (the paper writes alpha for what DDPM calls abar; here abar, as in DDPM):
            sample -> x_t                       prev_sample -> x_{t-1} (x_{tau_{i-1}} of sec. 4.2)
            model_output -> eps_theta^(t)(x_t)  (or x_0 / v, per prediction_type)
            alpha_bar_t, alpha_bar_prev -> alpha_t, alpha_{t-1} of the paper (abar_t, abar_{t'})
            x0_hat -> "predicted x_0"           eps_hat -> eps_theta^(t)(x_t)
            direction -> "direction pointing to x_t"   sigma -> sigma_t(eta), eq. 16   variance_noise -> eps_t

        Args:
            model_output: (B, C, H, W), the network's prediction.
            timestep: t, an entry of `self.timesteps`.
            sample: x_t, (B, C, H, W).
            eta: the noise scale in [0, 1]: 0 is deterministic DDIM, 1 gives DDPM's posterior variance beta~_t.
            use_clipped_model_output: recompute eps_hat from the clipped x0_hat, so both terms of eq. 12 agree.
            generator: draws the noise when eta > 0; the same draws as DDIMScheduler.step with the same generator.
            variance_noise: the noise itself (B, C, H, W) instead of a generator (e.g. CycleDiffusion).
            return_dict: return a DDIMSchedulerOutput; False returns the tuple (prev_sample, pred_original_sample).

        Returns:
            DDIMSchedulerOutput: prev_sample x_{t'} and pred_original_sample x0_hat, both (B, C, H, W).
        """
        self._check_step_inputs(eta)

        # 1. previous timestep t' = t - T // n. This is DDIMScheduler's rule, kept so a model samples the same under
        #    either class; it is the next entry of self.timesteps for "leading" spacing and for "trailing" when n
        #    divides T, a close neighbour of it otherwise.
        prev_t = timestep - self.config.num_train_timesteps // self.num_inference_steps

        # 2. abar_t and abar_{t'}; before t = 0 it is 1 (set_alpha_to_one) or abar_0 (final_alpha_cumprod)
        alpha_bar_t = self.alphas_cumprod[timestep]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

        # 3. "predicted x_0" of eq. 12, x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), and eps_hat (the
        #    network's own eps, or recomputed from its x_0 or v prediction: see _math)
        x0_hat, eps_hat = x0_and_eps_from_model_output(model_output, sample, alpha_bar_t, self.config.prediction_type)

        # 4. keep x0_hat in the data range: dynamic thresholding (Saharia et al. 2022), a clamp, or neither
        x0_hat = keep_x0_in_range(self, x0_hat)

        # 5. sigma_t(eta) = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'}), eq. 16
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)) ** 0.5

        # 6. with clipping, eps_hat no longer matches x0_hat; optionally recompute it from x_t and the clipped x0_hat
        if use_clipped_model_output:
            _, eps_hat = x0_and_eps_from_model_output(x0_hat, sample, alpha_bar_t, "sample")

        # 7. "direction pointing to x_t" of eq. 12: sqrt(1 - abar_{t'} - sigma_t^2) eps_hat. From pure noise
        #    (abar_t = 0, a zero-terminal-SNR schedule) eta = 1 gives sigma_t^2 = 1 - abar_{t'} exactly, and rounding
        #    can leave the difference a hair below 0, whose square root is NaN (diffusers' DDIMScheduler returns NaN
        #    images there); it is a variance, so clamp it at 0.
        direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0) ** 0.5 * eps_hat

        # 8. x_{t'} = sqrt(abar_{t'}) x0_hat + direction + sigma_t eps_t, eq. 12 (the noise term only when eta > 0)
        prev_sample = alpha_bar_prev**0.5 * x0_hat + direction
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Both generator and variance_noise were given; pass one: variance_noise is the noise itself, "
                    "generator draws it."
                )
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + sigma * variance_noise

        if not return_dict:
            return (prev_sample, x0_hat)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_hat)

    def _check_step_inputs(self, eta: float) -> None:
        """set_timesteps has run (DDIM strides the chain) and eta is in [0, 1]."""
        if self.num_inference_steps is None:
            raise ValueError(
                f"{type(self).__name__}.step() was called before set_timesteps(): DDIM strides the chain, so it must "
                "know how many steps it takes. Call scheduler.set_timesteps(num_inference_steps) first (e.g. 25) "
                "and loop over scheduler.timesteps."
            )
        if not 0.0 <= eta <= 1.0:
            raise ValueError(
                f"eta={eta} is outside [0, 1]. eta scales sigma_t (eq. 16): 0 is deterministic DDIM, 1 matches DDPM's "
                "posterior variance; above 1, sigma_t^2 can exceed 1 - abar_{t-1} and eq. 12's direction term has no "
                "real square root. Pass an eta between 0 and 1."
            )
