"""SpriteDDPMScheduler: diffusers' DDPMScheduler with the sprite course's defaults and its step written as the paper.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM): equation numbers below refer to it unless
another paper is named. Imports only torch, numpy, diffusers and `._math`, so this file can be exported as code next to
a saved pipeline.
"""

from typing import Literal

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
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

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class SpriteDDPMScheduler(DDPMScheduler):
    """DDPM sampling (Alg. 2) with the sprite defaults: T = 500, linear betas 1e-4 .. 0.02 and sigma_t^2 = beta_t.

    Everything except `step` and the argument checks is DDPMScheduler's (timesteps, `add_noise`, `get_velocity`,
    save/load), so the two classes load each other's configs with `from_config`. `step` adds `extra_noise`.
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
        variance_type: Literal[
            "fixed_small",
            "fixed_small_log",
            "fixed_large",
            "fixed_large_log",
            "learned",
            "learned_range",
        ] = "fixed_large",  # sigma_t^2: beta_t (the course's, the parent defaults to the posterior "fixed_small")
        clip_sample: bool = False,  # clamp x0_hat to +-clip_sample_range; off: the course (and Alg. 2) do not clip, and
        # clipping x0_hat without recomputing eps pulls the sampler off course, the further the more steps it takes
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",  # the network's target: eps, x_0, v
        thresholding: bool = False,  # dynamic thresholding of x0_hat (Saharia et al. 2022); overrides clip_sample
        dynamic_thresholding_ratio: float = 0.995,  # percentile of |x0_hat| taken as the threshold s
        clip_sample_range: float = 1.0,  # bound used by clip_sample
        sample_max_value: float = 1.0,  # largest s dynamic thresholding may use
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",  # how set_timesteps strides 0..T-1
        steps_offset: int = 0,  # added to "leading" timesteps; 0 = none
        rescale_betas_zero_snr: bool = False,  # rescale betas so abar_T = 0 (Lin et al. 2024); False = as built
    ):
        config = init_arguments(locals())
        check_choices(type(self).__name__, config, VARIANCE_TYPES)
        super().__init__(**config)
        finish_init(self, config)

    @classmethod
    def _get_compatibles(cls):
        return add_sprite_compatibles(cls, super()._get_compatibles(), SchedulerMixin)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ):
        """Choose the timesteps to sample with: `num_inference_steps` of them, strided by `timestep_spacing`, or an
        explicit descending `timesteps` list (DDPMScheduler.set_timesteps, with a clearer error)."""
        num_train_timesteps = self.config.num_train_timesteps
        if timesteps is None and (num_inference_steps is None or not 1 <= num_inference_steps <= num_train_timesteps):
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is outside 1..{num_train_timesteps}: this scheduler has "
                f"num_train_timesteps={num_train_timesteps}, so it can take between 1 and {num_train_timesteps} "
                f"denoising steps. Pass num_inference_steps={num_train_timesteps} for the full DDPM chain, or fewer "
                "to stride it."
            )
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device, timesteps=timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        extra_noise: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """One reverse step x_t -> x_{t'} (Alg. 2), through the predicted x_0 and the posterior q(x_{t'} | x_t, x_0).

        Key, code name -> paper symbol (t' = the previous timestep: t - 1, or the next entry of a strided schedule):
            sample -> x_t                       prev_sample -> x_{t'} (x_{t-1} in the paper)
            model_output -> eps_theta(x_t, t)   (or x_0 / v, per prediction_type)
            alpha_bar_t, alpha_bar_prev -> abar_t, abar_{t'}
            alpha_t, beta_t -> alpha_t = abar_t / abar_{t'}, beta_t = 1 - alpha_t (the paper's values when t' = t - 1)
            x0_hat -> x_0 predicted by eq. 15   mu -> mu~_t(x_t, x0_hat), eq. 7
            posterior_variance -> beta~_t, eq. 7
            sigma -> sigma_t                    z -> z ~ N(0, I)

        Args:
            model_output: (B, C, H, W), or (B, 2C, H, W) for variance_type "learned"/"learned_range" (the second half
                is the network's variance output).
            timestep: t, an entry of `self.timesteps`.
            sample: x_t, (B, C, H, W).
            generator: draws z; the same draws as DDPMScheduler.step with the same generator state.
            return_dict: return a DDPMSchedulerOutput; False returns the tuple (prev_sample, pred_original_sample).
            extra_noise: False sets z = 0 at every step, so sampling follows the posterior means only and the samples
                collapse to blurry averages (the course's demonstration of why the noise is added back).

        Returns:
            DDPMSchedulerOutput: prev_sample x_{t'} and pred_original_sample x0_hat, both (B, C, H, W).
        """
        t = timestep
        prev_t = self.previous_timestep(t)
        model_output, predicted_variance = self._split_variance(model_output, sample.shape[1])

        # 1. abar_t and abar_{t'}; before the first forward step abar = 1 (x_{t'} is x_0 itself). alpha_t and beta_t
        #    are the single forward step t' -> t of eq. 2 (equal to the schedule's own when t' = t - 1).
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1 - alpha_t

        # 2. x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t), eq. 15 (x_0 and v predictions: see _math)
        x0_hat, _ = x0_and_eps_from_model_output(model_output, sample, alpha_bar_t, self.config.prediction_type)

        # 3. keep x0_hat in the data range: dynamic thresholding (Saharia et al. 2022), a clamp, or neither
        x0_hat = keep_x0_in_range(self, x0_hat)

        # 4. posterior mean, eq. 7: mu~_t = sqrt(abar_{t'}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t'}) /
        #    (1 - abar_t) x_t. Without clipping, putting eq. 15's x0_hat in gives Alg. 2's line 4 (eq. 11): the x_t
        #    terms add to [beta_t + alpha_t (1 - abar_{t'})] / [(1 - abar_t) sqrt(alpha_t)] = 1 / sqrt(alpha_t), and
        #    the eps term is -beta_t sqrt(1 - abar_t) / [(1 - abar_t) sqrt(alpha_t)], so
        #    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t) + sigma_t z.
        x0_coeff = alpha_bar_prev**0.5 * beta_t / (1 - alpha_bar_t)
        xt_coeff = alpha_t**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        mu = x0_coeff * x0_hat + xt_coeff * sample

        # 5. sigma_t (see `_sigma`)
        sigma = self._sigma(alpha_bar_t, alpha_bar_prev, beta_t, predicted_variance)

        # 6. x_{t'} = mu~_t + sigma_t z, with z = 0 on the step that lands on x_0 (Alg. 2: "z = 0 if t = 1") and on
        #    every step when extra_noise is False.
        prev_sample = mu
        if prev_t >= 0 and extra_noise:
            z = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            prev_sample = mu + sigma * z

        if not return_dict:
            return (prev_sample, x0_hat)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_hat)

    def _sigma(self, alpha_bar_t, alpha_bar_prev, beta_t, predicted_variance):
        """sigma_t of the reverse step t -> t', by variance_type (predicted_variance: the network's variance output,
        (B, C, H, W), for the learned types; None otherwise)."""
        # Sec. 3.2: sigma_t^2 = beta_t ("fixed_large", best for x_0 ~ N(0, I)) or beta~_t ("fixed_small",
        #    best for a fixed x_0); "_log" variants compute through the log (GLIDE's "max_log" is fixed_large_log);
        #    "learned" takes sigma_t^2 from the network directly (diffusers' convention); "learned_range" is
        #    exp(v log beta_t + (1 - v) log beta~_t), v = (network output + 1) / 2 (Nichol & Dhariwal 2021, eq. 15).
        posterior_variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t
        posterior_variance = torch.clamp(posterior_variance, min=1e-20)  # beta~_t = 0 when t' < 0; the logs need > 0
        if self.variance_type == "fixed_small":
            sigma = posterior_variance**0.5
        elif self.variance_type == "fixed_small_log":
            sigma = torch.exp(0.5 * torch.log(posterior_variance))
        elif self.variance_type == "fixed_large":
            sigma = beta_t**0.5
        elif self.variance_type == "fixed_large_log":
            sigma = torch.exp(0.5 * torch.log(beta_t))
        elif self.variance_type == "learned":
            sigma = predicted_variance**0.5
        else:  # "learned_range"
            frac = (predicted_variance + 1) / 2
            log_variance = frac * torch.log(beta_t) + (1 - frac) * torch.log(posterior_variance)
            sigma = torch.exp(0.5 * log_variance)
        return sigma

    def _split_variance(self, model_output, channels: int):
        """(prediction, variance output) for the learned variance types, whose model output has 2 x C channels
        (the prediction, then the variance); (model_output, None) for the fixed ones."""
        if self.variance_type not in ("learned", "learned_range"):
            return model_output, None
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"variance_type={self.variance_type!r} needs a model output with 2 x {channels} channels (the "
                f"prediction, then the variance), but it has {model_output.shape[1]}. Give the UNet "
                f"out_channels={2 * channels}, or use a fixed variance_type such as 'fixed_large'."
            )
        return torch.split(model_output, channels, dim=1)
