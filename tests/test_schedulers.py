"""Tests for hfdiff.schedulers: parity with diffusers' DDPM/DDIM step by step, full loops on fixed seeds with stored
numbers, config round trips and class swaps, the course's closed form, and the errors users see."""

import inspect
import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from hfdiff.schedulers import SpriteDDIMScheduler, SpriteDDPMScheduler

SHAPE = (2, 3, 8, 8)  # (B, C, H, W)
ATOL = 1e-6
RTOL = 1e-6  # only matters for the unclipped cosine runs, whose x0_hat reaches ~1e4 at t = T - 1

BETA_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
# (num_inference_steps, timestep_spacing): the full chain, then strided ones
SCHEDULES = [(500, "leading"), (10, "trailing"), (25, "linspace"), (50, "leading"), (30, "trailing")]


def fake_model(sample: torch.Tensor, t, num_train_timesteps: int, out_channels: int | None = None) -> torch.Tensor:
    """A deterministic stand-in for the UNet: a fixed random 1x1 'conv' of the sample, scaled with t / T."""
    channels = sample.shape[1]
    out_channels = out_channels or channels
    weight = torch.randn(out_channels, channels, generator=torch.Generator().manual_seed(1234)) * 0.3
    scale = 0.5 + float(t) / num_train_timesteps
    return scale * torch.einsum("oc,bchw->bohw", weight, sample) + 0.1 * sample[:, :1]


def ddpm_model_output(sample, t, scheduler) -> torch.Tensor:
    """fake_model output shaped for the scheduler's variance_type: learned types get a second C-channel half."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    variance_type = scheduler.config.variance_type
    if variance_type not in ("learned", "learned_range"):
        return fake_model(sample, t, num_train_timesteps)
    out = fake_model(sample, t, num_train_timesteps, out_channels=2 * sample.shape[1])
    prediction, variance = out.chunk(2, dim=1)
    # "learned" predicts sigma^2 itself (must be > 0), "learned_range" an interpolation weight in [-1, 1]
    variance = 1e-3 + 0.01 * torch.sigmoid(variance) if variance_type == "learned" else torch.tanh(variance)
    return torch.cat([prediction, variance], dim=1)


def initial_sample(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def assert_close(actual, expected, what: str):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# DDPM parity
# ----------------------------------------------------------------------------------------------------------------


def check_ddpm_parity(sprite: SpriteDDPMScheduler, parent: DDPMScheduler, own_chains=True, **set_timesteps_kwargs):
    """Run both schedulers' own chains from the same x_T with identically seeded generators and compare every step
    (own_chains=False: both step the parent's x_t, for schedulers that agree per step only to float rounding).

    One documented difference: on a final step that lands on x_0 from t > 0 (trailing spacing, custom timesteps),
    the parent still adds sigma_t z; the sprite scheduler sets z = 0 as Alg. 2 does. There the sprite result must be
    the posterior mean, which the parent returns with "fixed_small" (beta~_t = 0 there, so its noise is ~1e-10 z).
    """
    sprite.set_timesteps(**set_timesteps_kwargs)
    parent.set_timesteps(**set_timesteps_kwargs)
    assert torch.equal(sprite.timesteps, parent.timesteps)
    sprite_generator = torch.Generator().manual_seed(7)
    parent_generator = torch.Generator().manual_seed(7)
    x_sprite = x_parent = initial_sample()
    timesteps = sprite.timesteps
    for i, t in enumerate(timesteps):
        out_sprite = sprite.step(ddpm_model_output(x_sprite, t, sprite), t, x_sprite, generator=sprite_generator)
        model_output = ddpm_model_output(x_parent, t, parent)
        out_parent = parent.step(model_output, t, x_parent, generator=parent_generator)
        expected_prev = out_parent.prev_sample
        last_from_noisy = i == len(timesteps) - 1 and t > 0
        if last_from_noisy and parent.config.variance_type not in ("fixed_small", "fixed_small_log"):
            mean_only = DDPMScheduler.from_config(parent.config, variance_type="fixed_small")
            mean_only.set_timesteps(**set_timesteps_kwargs)
            prediction = model_output[:, : x_parent.shape[1]]
            expected_prev = mean_only.step(prediction, t, x_parent, generator=torch.Generator().manual_seed(0))
            expected_prev = expected_prev.prev_sample
        assert_close(out_sprite.pred_original_sample, out_parent.pred_original_sample, f"x0_hat at t={int(t)}")
        assert_close(out_sprite.prev_sample, expected_prev, f"prev_sample at t={int(t)}")
        x_sprite, x_parent = out_sprite.prev_sample, out_parent.prev_sample
        if last_from_noisy:
            x_parent = expected_prev
        if not own_chains:
            x_sprite = x_parent
    assert torch.isfinite(x_sprite).all()


def ddpm_pair(**config):
    sprite = SpriteDDPMScheduler(**config)
    return sprite, DDPMScheduler.from_config(sprite.config)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddpm_parity_schedules_and_predictions_full_chain(beta_schedule, prediction_type):
    # T = 100 keeps the 12 full chains quick; T = 500 full chains run in the variance-type test below
    sprite, parent = ddpm_pair(num_train_timesteps=100, beta_schedule=beta_schedule, prediction_type=prediction_type)
    check_ddpm_parity(sprite, parent, num_inference_steps=100)


@pytest.mark.parametrize("num_inference_steps,timestep_spacing", SCHEDULES)
@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
)
def test_ddpm_parity_variance_types_and_spacings(variance_type, num_inference_steps, timestep_spacing):
    sprite, parent = ddpm_pair(variance_type=variance_type, timestep_spacing=timestep_spacing)
    check_ddpm_parity(sprite, parent, num_inference_steps=num_inference_steps)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(
    "config",
    [
        {"clip_sample": False},
        {"clip_sample": False, "beta_schedule": "squaredcos_cap_v2"},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"clip_sample_range": 0.5},
    ],
)
def test_ddpm_parity_clipping_and_thresholding(config, prediction_type):
    sprite, parent = ddpm_pair(prediction_type=prediction_type, **config)
    check_ddpm_parity(sprite, parent, num_inference_steps=50)


@pytest.mark.parametrize(
    "config,set_timesteps_kwargs",
    [
        ({"variance_type": "fixed_small"}, {"timesteps": [450, 300, 299, 120, 20, 3]}),
        ({"variance_type": "fixed_large"}, {"timesteps": [499, 250, 100, 0]}),
        ({"variance_type": "learned_range"}, {"timesteps": [400, 200, 7]}),
        ({"steps_offset": 1}, {"num_inference_steps": 20}),
        ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, {"num_inference_steps": 25}),
        ({"trained_betas": torch.linspace(2e-4, 0.03, 500).tolist()}, {"num_inference_steps": 500}),
        ({"num_train_timesteps": 1000, "variance_type": "fixed_small"}, {"num_inference_steps": 100}),
    ],
)
def test_ddpm_parity_custom_timesteps_and_other_options(config, set_timesteps_kwargs):
    sprite, parent = ddpm_pair(**config)
    check_ddpm_parity(sprite, parent, **set_timesteps_kwargs)


def test_ddpm_fixed_large_log_is_fixed_large():
    # GLIDE's "max_log" is log sigma_t^2 = log beta_t, i.e. the same sigma_t as "fixed_large". (diffusers 0.42's
    # DDPMScheduler takes the square root of that log, a NaN, so the parent cannot be the reference here.) Going
    # through exp(log) rounds differently from sqrt, so the two are compared step by step on the same x_t.
    sprite_log = SpriteDDPMScheduler(variance_type="fixed_large_log")
    parent_large = DDPMScheduler.from_config(sprite_log.config, variance_type="fixed_large")
    check_ddpm_parity(sprite_log, parent_large, own_chains=False, num_inference_steps=50)


# ----------------------------------------------------------------------------------------------------------------
# DDIM parity
# ----------------------------------------------------------------------------------------------------------------


def check_ddim_parity(sprite, parent, num_inference_steps, pass_noise=False, **step_kwargs):
    sprite.set_timesteps(num_inference_steps)
    parent.set_timesteps(num_inference_steps)
    assert torch.equal(sprite.timesteps, parent.timesteps)
    sprite_generator = torch.Generator().manual_seed(7)
    parent_generator = torch.Generator().manual_seed(7)
    x_sprite = x_parent = initial_sample()
    T = sprite.config.num_train_timesteps
    for i, t in enumerate(sprite.timesteps):
        if pass_noise:
            noise = initial_sample(seed=100 + i)
            kwargs_sprite = kwargs_parent = {"variance_noise": noise}
        else:
            kwargs_sprite, kwargs_parent = {"generator": sprite_generator}, {"generator": parent_generator}
        out_sprite = sprite.step(fake_model(x_sprite, t, T), t, x_sprite, **step_kwargs, **kwargs_sprite)
        out_parent = parent.step(fake_model(x_parent, t, T), t, x_parent, **step_kwargs, **kwargs_parent)
        assert_close(out_sprite.pred_original_sample, out_parent.pred_original_sample, f"x0_hat at t={int(t)}")
        assert_close(out_sprite.prev_sample, out_parent.prev_sample, f"prev_sample at t={int(t)}")
        x_sprite, x_parent = out_sprite.prev_sample, out_parent.prev_sample
    assert torch.isfinite(x_sprite).all()


def ddim_pair(**config):
    sprite = SpriteDDIMScheduler(**config)
    if config.get("beta_schedule") == "sigmoid":
        # DDIMScheduler does not build "sigmoid"; give it DDPMScheduler's betas, which the sprite DDIM uses
        parent = DDIMScheduler.from_config(sprite.config, beta_schedule="linear", trained_betas=sprite.betas.tolist())
        assert torch.equal(sprite.betas, DDPMScheduler.from_config(sprite.config).betas)
    else:
        parent = DDIMScheduler.from_config(sprite.config)
    return sprite, parent


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_parity_schedules_and_predictions(beta_schedule, prediction_type):
    sprite, parent = ddim_pair(beta_schedule=beta_schedule, prediction_type=prediction_type)
    check_ddim_parity(sprite, parent, 25, eta=0.5)


@pytest.mark.parametrize("num_inference_steps,timestep_spacing", SCHEDULES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_parity_eta_and_spacings(eta, num_inference_steps, timestep_spacing):
    sprite, parent = ddim_pair(timestep_spacing=timestep_spacing)
    check_ddim_parity(sprite, parent, num_inference_steps, eta=eta)


@pytest.mark.parametrize(
    "config,step_kwargs",
    [
        ({"set_alpha_to_one": False}, {"eta": 0.0}),
        ({"set_alpha_to_one": False}, {"eta": 1.0}),
        ({"steps_offset": 1}, {"eta": 0.5}),
        ({"clip_sample": False}, {"eta": 0.0}),
        ({"clip_sample": False, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"}, {"eta": 1.0}),
        ({"clip_sample_range": 0.5}, {"eta": 0.5, "use_clipped_model_output": True}),
        ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, {"eta": 0.5}),
        ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, {"eta": 0.0}),
        ({"num_train_timesteps": 1000}, {"eta": 1.0}),
    ],
)
def test_ddim_parity_other_options(config, step_kwargs):
    sprite, parent = ddim_pair(**config)
    check_ddim_parity(sprite, parent, 20, **step_kwargs)


def test_ddim_eta_one_from_pure_noise_is_finite():
    """Zero terminal SNR, trailing spacing: the first step starts at abar_t = 0, where eta = 1 makes sigma_t^2 equal
    1 - abar_{t'} and rounding once gave a negative variance, a NaN square root and black images. From pure noise
    x_{t'} is then sqrt(abar_{t'}) x0_hat + sigma_t z."""
    scheduler = SpriteDDIMScheduler(
        num_train_timesteps=50,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )
    for steps in (7, 10, 25, 50):
        scheduler.set_timesteps(steps)
        t = scheduler.timesteps[0]
        assert scheduler.alphas_cumprod[t] == 0
        sample, v = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        noise = torch.randn(2, 3, 8, 8)
        prev = scheduler.step(v, t, sample, eta=1.0, variance_noise=noise).prev_sample
        abar_prev = scheduler.alphas_cumprod[t - 50 // steps]
        assert prev.isfinite().all()
        # the leftover direction term is sqrt(float32 rounding of 1 - abar_{t'} - sigma_t^2), up to ~3e-4
        expected = abar_prev.sqrt() * -v + (1 - abar_prev).sqrt() * noise
        torch.testing.assert_close(prev, expected, atol=2e-3, rtol=0)


def test_ddim_parity_with_variance_noise():
    sprite, parent = ddim_pair()
    check_ddim_parity(sprite, parent, 25, pass_noise=True, eta=0.8)


# ----------------------------------------------------------------------------------------------------------------
# Full loops on fixed seeds, against stored numbers
# ----------------------------------------------------------------------------------------------------------------


def full_loop(scheduler, num_inference_steps, **step_kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 3, 16, 16, generator=generator)
    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        model_output = fake_model(sample, t, scheduler.config.num_train_timesteps)
        sample = scheduler.step(model_output, t, sample, generator=generator, **step_kwargs).prev_sample
    return sample


@pytest.mark.parametrize(
    "cls,config,num_inference_steps,step_kwargs,expected_sum,expected_mean_abs",
    [
        (SpriteDDPMScheduler, {"clip_sample": True}, 500, {}, -39.8298, 0.732303),
        (SpriteDDPMScheduler, {"clip_sample": True, "variance_type": "fixed_small"}, 500, {}, -39.5669, 0.735363),
        (SpriteDDIMScheduler, {"clip_sample": True}, 25, {"eta": 0.0}, -12.6749, 0.615696),
        # the defaults do not clip x0_hat; the fake model is no denoiser, so without the clamp the loop drifts far
        (SpriteDDPMScheduler, {}, 500, {}, 185.539, 82.200668),
        (SpriteDDIMScheduler, {}, 25, {"eta": 0.0}, 346.9507, 15.732442),
    ],
    ids=["ddpm_fixed_large", "ddpm_fixed_small", "ddim_eta0_25_steps", "ddpm_default_unclipped", "ddim_default"],
)
def test_full_loop_stored_numbers(cls, config, num_inference_steps, step_kwargs, expected_sum, expected_mean_abs):
    # Stored from one run of this code (torch 2.13, CPU); they change if the step's math or its noise draws change.
    sample = full_loop(cls(**config), num_inference_steps, **step_kwargs)
    assert sample.sum().item() == pytest.approx(expected_sum, rel=1e-3)
    assert sample.abs().mean().item() == pytest.approx(expected_mean_abs, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# The course's closed form and extra_noise
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [499, 250, 37, 1, 0])
def test_ddpm_step_is_course_closed_form(t):
    # Alg. 2, line 4: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t.
    # Run in float64 (abar rebuilt from the betas): in float32, beta_t = 1 - abar_t / abar_{t-1} loses ~3 digits to
    # cancellation near t = 0, which would blur a check of the formula.
    scheduler = SpriteDDPMScheduler(variance_type="fixed_large", clip_sample=False)
    scheduler.set_timesteps(500)
    betas = scheduler.betas.double()
    scheduler.alphas_cumprod, scheduler.one = torch.cumprod(1 - betas, dim=0), scheduler.one.double()
    x_t, eps = initial_sample(seed=1).double(), initial_sample(seed=2).double()
    beta_t = betas[t]
    alpha_t, alpha_bar_t = 1 - beta_t, torch.prod(1 - betas[: t + 1])
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = (x_t - beta_t / (1 - alpha_bar_t).sqrt() * eps) / alpha_t.sqrt() + (beta_t.sqrt() * z if t > 0 else 0)
    out = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(3)).prev_sample
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_extra_noise_false_is_deterministic_and_differs():
    def run(seed, extra_noise):
        scheduler = SpriteDDPMScheduler()
        scheduler.set_timesteps(50)
        sample, generator = initial_sample(0), torch.Generator().manual_seed(seed)
        for t in scheduler.timesteps:
            model_output = fake_model(sample, t, 500)
            sample = scheduler.step(model_output, t, sample, generator=generator, extra_noise=extra_noise).prev_sample
        return sample

    quiet_a, quiet_b = run(1, extra_noise=False), run(2, extra_noise=False)
    assert torch.equal(quiet_a, quiet_b)
    noisy_a, noisy_b = run(1, extra_noise=True), run(2, extra_noise=True)
    assert not torch.allclose(noisy_a, noisy_b)
    assert (quiet_a - noisy_a).abs().mean() > 1e-2


def test_extra_noise_false_step_is_posterior_mean():
    scheduler = SpriteDDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(500)
    mean_only = DDPMScheduler.from_config(scheduler.config, variance_type="fixed_small")
    mean_only.set_timesteps(500)
    x_t, eps = initial_sample(1), initial_sample(2)
    quiet = scheduler.step(eps, 0, x_t, extra_noise=False).prev_sample
    torch.testing.assert_close(quiet, mean_only.step(eps, 0, x_t).prev_sample)
    quiet = scheduler.step(eps, 300, x_t, extra_noise=False).prev_sample
    noisy = scheduler.step(eps, 300, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy - quiet, scheduler.betas[300].sqrt() * z, atol=1e-6, rtol=1e-5)


def test_return_tuple():
    for scheduler in (SpriteDDPMScheduler(), SpriteDDIMScheduler()):
        scheduler.set_timesteps(10)
        t = scheduler.timesteps[0]
        out = scheduler.step(fake_model(initial_sample(), t, 500), t, initial_sample(), return_dict=False)
        assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == SHAPE


# ----------------------------------------------------------------------------------------------------------------
# Configs: defaults, save/load round trips, class swaps
# ----------------------------------------------------------------------------------------------------------------


def test_sprite_defaults():
    for cls in (SpriteDDPMScheduler, SpriteDDIMScheduler):
        config = cls().config
        assert config.num_train_timesteps == 500
        assert (config.beta_schedule, config.beta_start, config.beta_end) == ("linear", 1e-4, 0.02)
        scheduler = cls()
        torch.testing.assert_close(scheduler.betas, torch.linspace(1e-4, 0.02, 500))
        assert config.clip_sample is False  # as the course and Alg. 2; clipping drags long DDIM runs off course
    assert SpriteDDPMScheduler().config.variance_type == "fixed_large"


@pytest.mark.parametrize("cls,parent", [(SpriteDDPMScheduler, DDPMScheduler), (SpriteDDIMScheduler, DDIMScheduler)])
def test_init_mirrors_parent_signature(cls, parent):
    # every parent argument, explicitly and in the parent's order (no **kwargs), or configs would not round-trip
    sprite_params = list(inspect.signature(cls.__init__).parameters)
    assert sprite_params == list(inspect.signature(parent.__init__).parameters)
    assert not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def test_exports():
    import hfdiff
    import hfdiff.schedulers

    assert set(hfdiff.schedulers.__all__) == {"SpriteDDPMScheduler", "SpriteDDIMScheduler"}
    assert hfdiff.SpriteDDPMScheduler is SpriteDDPMScheduler and hfdiff.SpriteDDIMScheduler is SpriteDDIMScheduler


NON_DEFAULT_DDPM = [
    {"num_train_timesteps": 1000},
    {"beta_start": 2e-4, "beta_end": 0.03},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear"},
    {"beta_schedule": "sigmoid"},
    {"trained_betas": [0.01] * 500},
    {"variance_type": "fixed_small"},
    {"variance_type": "learned_range"},
    {"clip_sample": False},
    {"prediction_type": "v_prediction"},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0},
    {"clip_sample_range": 2.0},
    {"timestep_spacing": "trailing"},
    {"steps_offset": 1},
    {"rescale_betas_zero_snr": True},
]
NON_DEFAULT_DDIM = [
    {"num_train_timesteps": 1000},
    {"beta_start": 2e-4, "beta_end": 0.03},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "sigmoid"},
    {"trained_betas": [0.01] * 500},
    {"clip_sample": False},
    {"set_alpha_to_one": False},
    {"steps_offset": 1},
    {"prediction_type": "sample"},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0},
    {"clip_sample_range": 2.0},
    {"timestep_spacing": "linspace"},
    {"rescale_betas_zero_snr": True},
]


def public(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@pytest.mark.parametrize(
    "cls,config",
    [(SpriteDDPMScheduler, c) for c in NON_DEFAULT_DDPM] + [(SpriteDDIMScheduler, c) for c in NON_DEFAULT_DDIM],
)
def test_save_load_round_trip(tmp_path, cls, config):
    scheduler = cls(**config)
    for key, value in config.items():
        assert scheduler.config[key] == value
    scheduler.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == cls.__name__
    reloaded = cls.from_pretrained(tmp_path)
    assert type(reloaded) is cls
    assert public(reloaded.config) == public(scheduler.config)
    assert torch.equal(reloaded.alphas_cumprod, scheduler.alphas_cumprod)


@pytest.mark.parametrize(
    "source_cls,target_cls",
    [
        (SpriteDDPMScheduler, DDPMScheduler),
        (DDPMScheduler, SpriteDDPMScheduler),
        (SpriteDDIMScheduler, DDIMScheduler),
        (DDIMScheduler, SpriteDDIMScheduler),
        (SpriteDDPMScheduler, SpriteDDIMScheduler),
        (SpriteDDIMScheduler, SpriteDDPMScheduler),
        (SpriteDDPMScheduler, DDIMScheduler),
        (DDPMScheduler, SpriteDDIMScheduler),
        (DDIMScheduler, SpriteDDPMScheduler),
    ],
)
def test_from_config_swaps_keep_shared_values(source_cls, target_cls):
    shared = {
        "num_train_timesteps": 300,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "clip_sample": False,
        "timestep_spacing": "trailing",
    }
    source = source_cls(**shared)
    target = target_cls.from_config(source.config)
    back = source_cls.from_config(target.config)  # and back again, from the swapped config
    for swapped in (target, back):
        assert {key: swapped.config[key] for key in shared} == shared
        assert torch.equal(swapped.alphas_cumprod, source.alphas_cumprod)
    assert type(target) is target_cls and type(back) is source_cls


def test_from_config_of_default_sprite_keeps_sprite_values():
    # A sprite scheduler left at its defaults must still hand T = 500 (and fixed_large) to the parents: diffusers would
    # otherwise treat untouched arguments as "use the target's defaults" and give a T = 500 model a T = 1000 chain.
    ddpm = DDPMScheduler.from_config(SpriteDDPMScheduler().config)
    assert (ddpm.config.num_train_timesteps, ddpm.config.variance_type) == (500, "fixed_large")
    for cls in (DDIMScheduler, SpriteDDIMScheduler):
        assert cls.from_config(SpriteDDPMScheduler().config).config.num_train_timesteps == 500
    assert DDIMScheduler.from_config(SpriteDDIMScheduler().config).config.num_train_timesteps == 500
    assert DDPMScheduler.from_config(SpriteDDIMScheduler().config).config.num_train_timesteps == 500


def test_from_config_of_parent_defaults_and_saved_parent(tmp_path):
    # An in-memory default parent config marks every value as a default, so the sprite class keeps its own (diffusers'
    # rule); a saved parent config (what pipelines on disk hold) carries every value.
    assert SpriteDDPMScheduler.from_config(DDPMScheduler().config).config.num_train_timesteps == 500
    assert SpriteDDIMScheduler.from_config(DDIMScheduler().config).config.num_train_timesteps == 500
    DDPMScheduler().save_pretrained(tmp_path)
    loaded = SpriteDDPMScheduler.from_pretrained(tmp_path)
    assert (loaded.config.num_train_timesteps, loaded.config.variance_type) == (1000, "fixed_small")


def test_sigmoid_ddpm_config_swaps_to_ddim():
    ddpm = DDPMScheduler(beta_schedule="sigmoid", num_train_timesteps=200)
    ddim = SpriteDDIMScheduler.from_config(ddpm.config)
    assert ddim.config.beta_schedule == "sigmoid"
    assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod)
    ddim.set_timesteps(10)
    t = ddim.timesteps[0]
    assert torch.isfinite(ddim.step(fake_model(initial_sample(), t, 200), t, initial_sample()).prev_sample).all()


def test_compatibles_list_both_sprite_schedulers():
    for scheduler in (SpriteDDPMScheduler(), SpriteDDIMScheduler()):
        names = {cls.__name__ for cls in scheduler.compatibles}
        assert {"SpriteDDPMScheduler", "SpriteDDIMScheduler", "DDPMScheduler", "DDIMScheduler"} <= names


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [1.5, -0.1])
def test_ddim_eta_outside_unit_interval(eta):
    scheduler = SpriteDDIMScheduler()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[0]
    with pytest.raises(ValueError, match=rf"eta={eta} is outside \[0, 1\]"):
        scheduler.step(initial_sample(), t, initial_sample(), eta=eta)


@pytest.mark.parametrize("cls", [SpriteDDPMScheduler, SpriteDDIMScheduler])
@pytest.mark.parametrize("num_inference_steps", [0, 501, -3])
def test_num_inference_steps_out_of_range(cls, num_inference_steps):
    with pytest.raises(ValueError, match=rf"num_inference_steps={num_inference_steps} is outside 1\.\.500"):
        cls().set_timesteps(num_inference_steps)


@pytest.mark.parametrize("cls", [SpriteDDPMScheduler, SpriteDDIMScheduler])
def test_unknown_prediction_type(cls):
    with pytest.raises(ValueError, match=r"prediction_type='noise' is not supported; choose one of 'epsilon'"):
        cls(prediction_type="noise")


@pytest.mark.parametrize(
    "cls,config,match",
    [
        (SpriteDDPMScheduler, {"variance_type": "large"}, "variance_type='large'"),
        (SpriteDDPMScheduler, {"beta_schedule": "cosine"}, "beta_schedule='cosine'"),
        (SpriteDDIMScheduler, {"timestep_spacing": "even"}, "timestep_spacing='even'"),
    ],
)
def test_unknown_config_values(cls, config, match):
    with pytest.raises(ValueError, match=match):
        cls(**config)


def test_ddim_step_before_set_timesteps():
    with pytest.raises(ValueError, match=r"called before set_timesteps\(\).*set_timesteps\(num_inference_steps\)"):
        SpriteDDIMScheduler().step(initial_sample(), 400, initial_sample())


def test_ddim_generator_and_variance_noise_together():
    scheduler = SpriteDDIMScheduler()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[0]
    with pytest.raises(ValueError, match="Both generator and variance_noise"):
        scheduler.step(
            initial_sample(),
            t,
            initial_sample(),
            eta=0.5,
            generator=torch.Generator(),
            variance_noise=initial_sample(),
        )


def test_learned_variance_needs_twice_the_channels():
    scheduler = SpriteDDPMScheduler(variance_type="learned_range")
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"needs a model output with 2 x 3 channels.*out_channels=6"):
        scheduler.step(initial_sample(), scheduler.timesteps[0], initial_sample())
