"""Named samplers (hfdiff.samplers): built from the model's own scheduler config, every other component kept, the
"fast" and the recommended "dpm++" on the CUDA-graph path, and the CLI's --sampler."""

import numpy as np
import PIL.Image
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
    got = pipe(
        batch_size=4,
        class_labels=labels,
        num_inference_steps=20,
        guidance_scale=1.0,
        generator=seed(3),
        output_type="pt",
    )
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


def recorded_calls(monkeypatch) -> list:
    """(scheduler class, steps run, guidance w, whether the null pass ran) of every pipeline call from now on, read
    off the pipeline after the call: what it ran, whoever chose the keywords."""
    calls = []
    real_call = SpriteDiffusionPipeline.__call__

    def recording_call(self, *args, **kwargs):
        output = real_call(self, *args, **kwargs)
        calls.append(
            (type(self.scheduler).__name__, self.num_timesteps, self.guidance_scale, self.do_classifier_free_guidance)
        )
        return output

    monkeypatch.setattr(SpriteDiffusionPipeline, "__call__", recording_call)
    return calls


# What each named sampler runs on a model of T = 500 steps (as the sprites' are), and on the tiny T = 20 one with
# "leading" spacing (dpm++ one fewer: see test_collapsed_spacing_is_refused_and_the_defaults_avoid_it).
EXPECTED = {  # name: (scheduler, steps at T = 500, steps at T = 20, guidance on a model with a context)
    "dpm++": ("DPMSolverMultistepScheduler", 25, 19, 1.5),
    "fast": ("SpriteDDPMScheduler", 25, 20, 1.0),
    "ddpm": ("SpriteDDPMScheduler", 500, 20, 1.0),
    "ddim": ("SpriteDDIMScheduler", 50, 20, 1.0),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_with_sampler_call_runs_the_samplers_steps_and_guidance(name):
    """The README's line `with_sampler(pipe, "dpm++")(batch_size=5, class_labels="food", guidance_scale=1.5)` runs 25
    steps, and each named sampler its own count and guidance without being told; explicit keywords still win."""
    pipe = make_pipe(scheduler=SpriteDDPMScheduler(num_train_timesteps=500))
    other = with_sampler(pipe, name)
    scheduler, steps, _, guidance = EXPECTED[name]
    other(batch_size=2, class_labels="food", output_type="np")
    assert (type(other.scheduler).__name__, other.num_timesteps, other.guidance_scale) == (scheduler, steps, guidance)
    assert other.do_classifier_free_guidance == (guidance != 1.0)
    assert other.sampling_defaults == {
        "sampler": name,
        "num_inference_steps": steps,
        "eta": 0.0,
        "guidance_scale": guidance,
    }
    other(batch_size=5, class_labels="food", guidance_scale=1.5, output_type="np")
    assert other.num_timesteps == steps and other.do_classifier_free_guidance
    other(batch_size=1, class_labels="food", num_inference_steps=3, guidance_scale=1.0, output_type="np")
    assert (other.num_timesteps, other.do_classifier_free_guidance) == (3, False)
    assert pipe.sampling_defaults["sampler"] is None  # the pipeline it came from keeps its scheduler and defaults


def test_guidance_default_is_a_no_op_without_a_context():
    """The recommended recipe's w = 1.5 needs a context: an unconditional model, and a class model called without
    labels, run one plain pass (no error, no doubled batch)."""
    unconditional = with_sampler(make_pipe(context_dim=None), "dpm++")
    assert len(unconditional(batch_size=2).images) == 2
    assert unconditional.guidance_scale == 1.0 and not unconditional.do_classifier_free_guidance
    with pytest.raises(ValueError, match="needs a conditional model"):
        unconditional(batch_size=1, guidance_scale=1.5)  # asked for by name: still refused
    conditional = with_sampler(make_pipe(), "dpm++")
    conditional(batch_size=2)
    assert conditional.guidance_scale == 1.5 and not conditional.do_classifier_free_guidance


def test_a_scheduler_swapped_in_by_hand_does_not_inherit_another_samplers_recipe():
    """diffusers' way of changing sampler, `OtherScheduler.from_config(pipe.scheduler.config)`, copies the recipe
    entry too; the recipe names the scheduler class it was made for, so the new scheduler runs its own defaults."""
    pipe = with_sampler(make_pipe(), "dpm++")
    assert pipe.sampling_defaults["num_inference_steps"] == 19  # 25 capped at T - 1 on the tiny model's T = 20
    pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)
    assert pipe.sampling_defaults == {"sampler": None, "num_inference_steps": 20, "eta": 0.0, "guidance_scale": 1.0}
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # back to the recipe's class
    assert pipe.sampling_defaults["sampler"] == "dpm++" and pipe.sampling_defaults["guidance_scale"] == 1.5


def test_recipe_survives_save_and_load_and_folders_without_one_keep_sampling_as_saved(tmp_path):
    pipe = make_pipe()
    fast = with_sampler(pipe, "fast")
    fast.save_pretrained(tmp_path / "fast")
    loaded = SpriteDiffusionPipeline.from_pretrained(tmp_path / "fast")
    assert type(loaded.scheduler) is SpriteDDPMScheduler and loaded.sampling_defaults == fast.sampling_defaults
    # a folder saved without a recipe (a scheduler built by hand, or hfdiff before recipes): every DDPM step, w = 1
    pipe.save_pretrained(tmp_path / "plain")
    plain = SpriteDiffusionPipeline.from_pretrained(tmp_path / "plain")
    plain.set_progress_bar_config(disable=True)
    plain(batch_size=1, class_labels="hero")
    assert (plain.num_timesteps, plain.guidance_scale) == (20, 1.0)
    assert plain.sampling_defaults == {"sampler": None, "num_inference_steps": 20, "eta": 0.0, "guidance_scale": 1.0}


def test_extra_noise_off_names_the_way_to_ddpm():
    with pytest.raises(ValueError, match='with_sampler\\(pipe, "ddpm"\\)'):
        with_sampler(make_pipe(), "dpm++")(batch_size=1, extra_noise=False)
    assert len(with_sampler(make_pipe(), "dpm++")(batch_size=1, extra_noise=True).images) == 1
    assert len(with_sampler(make_pipe(), "ddpm")(batch_size=1, extra_noise=False).images) == 1


@pytest.mark.parametrize(
    "flag", [[], ["--sampler", "dpm++"], ["--sampler", "fast"], ["--scheduler", "ddim"], ["--sampler", "ddpm"]]
)
def test_cli_and_python_run_the_same_sampler(flag, tmp_path, monkeypatch):
    """`hfdiff sample` with a sampler (default: the recommended one) runs what `with_sampler` runs in Python: the same
    scheduler, steps and guidance, and the same grid pixel for pixel."""
    from hfdiff import cli
    from hfdiff.samplers import RECOMMENDED
    from hfdiff.visualize import class_grid

    make_pipe().save_pretrained(tmp_path / "model")  # T = 20, no recipe
    calls = recorded_calls(monkeypatch)
    output = tmp_path / "grid.png"
    args = ["sample", str(tmp_path / "model"), "--per_class", "2", "--output", str(output), "--device", "cpu"]
    assert cli.main([*args, *flag]) == 0
    name = flag[1] if flag else RECOMMENDED
    scheduler, _, steps, guidance = EXPECTED[name]
    assert calls[-1] == (scheduler, steps, guidance, guidance != 1.0)
    pipe = with_sampler(SpriteDiffusionPipeline.from_pretrained(tmp_path / "model"), name)
    expected = class_grid(pipe, per_class=2, generator=torch.Generator("cpu").manual_seed(0))
    assert calls[-1] == (scheduler, steps, guidance, guidance != 1.0)
    with PIL.Image.open(output) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB")))


def test_cli_model_sampler_runs_the_saved_scheduler_and_recipe(tmp_path, monkeypatch):
    from hfdiff import cli

    with_sampler(make_pipe(), "ddim").save_pretrained(tmp_path / "ddim-model")
    make_pipe().save_pretrained(tmp_path / "plain-model")  # no recipe: every DDPM step at w = 1
    calls = recorded_calls(monkeypatch)
    for model, expected in (
        ("ddim-model", ("SpriteDDIMScheduler", 20, 1.0, False)),
        ("plain-model", ("SpriteDDPMScheduler", 20, 1.0, False)),
    ):
        args = ["sample", str(tmp_path / model), "--per_class", "1", "--output", str(tmp_path / "g.png")]
        assert cli.main([*args, "--device", "cpu", "--sampler", "model"]) == 0 and calls[-1] == expected
    args = ["sample", str(tmp_path / "plain-model"), "--per_class", "1", "--output", str(tmp_path / "g.png")]
    assert (
        cli.main(
            [*args, "--device", "cpu", "--sampler", "model", "--num_inference_steps", "4", "--guidance_scale", "2"]
        )
        == 0
    )
    assert calls[-1] == ("SpriteDDPMScheduler", 4, 2.0, True)
