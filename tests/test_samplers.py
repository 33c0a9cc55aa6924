"""Named samplers (hfdiff.samplers): built from the model's own scheduler config, every other component kept, the
"fast" and the recommended "dpm++" on the CUDA-graph path, and the CLI's --sampler."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from test_text import save_tiny_bert
from test_text_pipeline import make_text_pipe
from tiny import make_pipe, seed

from hfdiff import SpriteDDIMScheduler, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.fast_sampling import FastSampler, step_coefficients
from hfdiff.samplers import SAMPLERS, default_steps, get_sampler, with_sampler


def zero_snr_scheduler():
    return SpriteDDPMScheduler(
        num_train_timesteps=50,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_keeps_schedule_and_components(name, tmp_path):
    pipe = make_text_pipe(save_tiny_bert(tmp_path / "bert"))
    pipe.scheduler = zero_snr_scheduler()
    other = with_sampler(pipe, name)
    assert type(other.scheduler).__name__ == SAMPLERS[name].scheduler
    assert other.scheduler is not pipe.scheduler and pipe.scheduler.config.num_train_timesteps == 50
    for key in ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "beta_schedule"):
        assert other.scheduler.config[key] == pipe.scheduler.config[key]
    assert other.text_encoder is pipe.text_encoder and other.tokenizer is pipe.tokenizer and other.unet is pipe.unet
    images = other(prompt="a red apple", num_inference_steps=default_steps(name, 50), generator=seed(0)).images
    assert len(images) == 1


def test_fast_is_strided_ddpm_on_the_graph_path():
    pipe = make_pipe(scheduler=zero_snr_scheduler())
    fast = with_sampler(pipe, "fast")
    assert isinstance(fast.scheduler, SpriteDDPMScheduler) and default_steps("fast", 500) == 25
    assert default_steps("fast", 20) == 20 and default_steps("ddpm", 500) == 500
    fast.scheduler.set_timesteps(25)
    assert fast.scheduler.timesteps[0] == 49  # trailing: starts where the schedule's pure noise is
    # the step is affine in (x_t, m, z), so CUDA runs it from one recorded graph (the decision needs no GPU)
    assert FastSampler(fast).fallback_reason(device="cuda", generator=seed(0)) is None
    coefficients = step_coefficients(fast.scheduler, eta=0.0).coefficients
    assert coefficients.shape[0] == 25 and torch.isfinite(coefficients).all()
    assert isinstance(with_sampler(pipe, "ddim").scheduler, SpriteDDIMScheduler)


def test_collapsed_spacing_is_refused_and_the_defaults_avoid_it():
    # diffusers' DPMSolverMultistepScheduler with the course recipe's "leading" spacing, asked for every training
    # step, puts all of them at t = 0 (and failed with an IndexError on the second step): a clear error instead, and
    # the named sampler's default (what the demo's page starts with) stays one below.
    dpm = with_sampler(make_pipe(), "dpm++")  # the tiny model: T = 20, leading spacing
    assert dpm.scheduler.config.timestep_spacing == "leading" and default_steps("dpm++", 20) == 19
    with pytest.raises(ValueError, match="repeats timesteps at num_inference_steps=20 of 20 training steps"):
        dpm(batch_size=1, class_labels=0, num_inference_steps=20)
    assert len(dpm(batch_size=1, class_labels=0, num_inference_steps=default_steps("dpm++", 20)).images) == 1
    # second-order schedulers visit each timestep twice by design, and still run
    from diffusers import HeunDiscreteScheduler

    heun = make_pipe(scheduler=HeunDiscreteScheduler(num_train_timesteps=20))
    assert len(heun(batch_size=1, class_labels=0, num_inference_steps=3).images) == 1


def test_dpm_sampler_is_diffusers_solver_on_the_models_schedule_and_on_the_graph_path():
    pipe = make_pipe(scheduler=zero_snr_scheduler())
    dpm = with_sampler(pipe, "dpm++")
    config = dpm.scheduler.config
    assert type(dpm.scheduler) is DPMSolverMultistepScheduler and default_steps("dpm++", 500) == 25
    assert (config.algorithm_type, config.solver_order, config.final_sigmas_type) == ("sde-dpmsolver++", 2, "zero")
    assert not config.use_karras_sigmas and dpm.scheduler.alphas_cumprod[-1] == 2**-24  # zero SNR, clamped
    # round trip: back to DDPM from the solver's config, the model's schedule unchanged
    back = with_sampler(dpm, "ddpm").scheduler
    assert {k: back.config[k] for k in pipe.scheduler.config} == dict(pipe.scheduler.config)
    dpm.scheduler.set_timesteps(20)
    assert FastSampler(dpm).fallback_reason(device="cuda", generator=seed(0)) is None
    steps = step_coefficients(dpm.scheduler)
    assert steps.coefficients.shape == (20, 5) and torch.isfinite(steps.coefficients).all()
    assert steps.noise_dtype == torch.float32 and all(steps.draws_noise)  # SDE: draws on every step


def by_hand(pipe, scheduler, batch_size, class_labels, generator):
    """diffusers' scheduler driven by hand around the UNet (what any diffusers pipeline's loop does)."""
    context = pipe.prepare_context(class_labels, None, batch_size, "cpu", torch.float32)
    scheduler.set_timesteps(20)
    sample = randn_tensor((batch_size, 3, 16, 16), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_output = pipe.unet(scheduler.scale_model_input(sample, t), t, context=context).sample
        sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
    return pipe.postprocess(sample, "pt")


def test_dpm_sampler_gives_diffusers_solver_images_in_the_pipeline_and_on_the_fast_path():
    """The "dpm++" pipeline, its loop and FastSampler's steps (the graph's step function, run on the CPU), against
    DPMSolverMultistepScheduler stepped by hand with the same generator."""
    pipe = with_sampler(make_pipe(scheduler=zero_snr_scheduler()), "dpm++")
    labels = ["hero", "food", 2, 4]
    expected = by_hand(pipe, DPMSolverMultistepScheduler.from_config(pipe.scheduler.config), 4, labels, seed(3))
    got = pipe(batch_size=4, class_labels=labels, num_inference_steps=20, generator=seed(3), output_type="pt")
    torch.testing.assert_close(got.images, expected, rtol=0, atol=1e-6)

    generator = seed(3)
    context = pipe.prepare_context(labels, None, 4, "cpu", torch.float32)
    pipe.scheduler.set_timesteps(20)
    latents = randn_tensor((4, 3, 16, 16), generator=generator)
    fast = pipe.postprocess(FastSampler(pipe).sample(latents, context, generator=generator), "pt")
    torch.testing.assert_close(fast, expected, rtol=0, atol=2e-5)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="Unknown sampler 'dpm'; choose one of 'dpm\\+\\+', 'fast', 'ddpm', 'ddim'"):
        get_sampler("dpm")


def test_cli_sampler_flag_takes_the_named_sampler_and_its_steps(tmp_path, monkeypatch):
    from hfdiff import cli

    pipe = make_pipe(scheduler=zero_snr_scheduler())
    pipe.save_pretrained(tmp_path / "model")
    calls = []
    real_call = type(pipe).__call__

    def recording_call(self, *args, **kwargs):
        calls.append((type(self.scheduler).__name__, kwargs.get("num_inference_steps")))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording_call)
    for flag, expected in (
        (["--sampler", "fast"], ("SpriteDDPMScheduler", 25)),
        (["--scheduler", "ddim"], ("SpriteDDIMScheduler", 50)),
        (["--sampler", "dpm++"], ("DPMSolverMultistepScheduler", 25)),
    ):
        output = tmp_path / f"{flag[1]}.png"
        args = ["sample", str(tmp_path / "model"), "--per_class", "1", "--output", str(output), "--device", "cpu"]
        assert cli.main([*args, *flag]) == 0 and output.exists()
        assert calls[-1] == expected


def test_cli_named_sampler_steps_fit_a_short_schedule(tmp_path, monkeypatch):
    # On a model trained with fewer steps than the sampler's own count, the CLI takes default_steps (as the demo
    # does) instead of refusing its own default: T = 20 with "leading" spacing gives dpm++ 19 steps and fast 20.
    from hfdiff import cli

    make_pipe().save_pretrained(tmp_path / "model")
    calls = []
    real_call = SpriteDiffusionPipeline.__call__

    def recording_call(self, *args, **kwargs):
        calls.append((type(self.scheduler).__name__, kwargs.get("num_inference_steps")))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(SpriteDiffusionPipeline, "__call__", recording_call)
    for name, expected in (("dpm++", ("DPMSolverMultistepScheduler", 19)), ("fast", ("SpriteDDPMScheduler", 20))):
        output = tmp_path / "grid.png"
        args = ["sample", str(tmp_path / "model"), "--per_class", "1", "--output", str(output), "--device", "cpu"]
        assert cli.main([*args, "--sampler", name]) == 0 and calls[-1] == expected
