import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
from tiny import T, make_pipe, seed

from hfdiff import ContextUNet2DModel, SpriteDDIMScheduler, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.data import SPRITE_CLASSES
from hfdiff.pipelines import TrajectoryRecorder


def run(pipe, **kwargs) -> torch.Tensor:
    if "generator" not in kwargs:
        kwargs["generator"] = seed(0)
    return pipe(output_type="pt", **kwargs).images


def manual_loop(pipe, context, guidance_scale=1.0, noise_seed=0, batch_size=None):
    """The sampling loop written plainly: one forward per pass, no batching of the guidance passes."""
    generator = seed(noise_seed)
    batch_size = batch_size or context.shape[0]
    x = torch.randn((batch_size, 3, 16, 16), generator=generator)
    pipe.scheduler.set_timesteps(T)
    for t in pipe.scheduler.timesteps:
        with torch.no_grad():
            eps = pipe.unet(x, t, context=context).sample
            if guidance_scale != 1.0:
                null = pipe.unet(x, t, context=torch.zeros_like(context)).sample
                eps = null + guidance_scale * (eps - null)
        x = pipe.scheduler.step(eps, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def test_output_types():
    pipe = make_pipe()
    pil = pipe(batch_size=2, generator=seed(0)).images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    np_images = pipe(batch_size=2, generator=seed(0), output_type="np").images
    assert np_images.shape == (2, 16, 16, 3) and np_images.min() >= 0 and np_images.max() <= 1
    pt = run(pipe, batch_size=2)
    assert pt.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (np_images[0] * 255).round().astype(np.uint8))
    images, *_ = pipe(batch_size=1, generator=seed(0), return_dict=False)
    assert len(images) == 1


def test_stored_corner_values():
    # A tiny fixed model and seed: guards the whole path (noise, context, guidance, DDPM step, post-processing).
    pipe = make_pipe()
    images = run(pipe, batch_size=2, class_labels=["hero", "food"], guidance_scale=2.0)
    corner = images[0, 0, :3, :3].flatten()
    expected = torch.tensor(STORED_CORNER)
    assert torch.allclose(corner, expected, atol=1e-3), corner.tolist()


STORED_CORNER = [0.0, 0.0, 0.2219, 0.0, 0.0, 0.7656, 0.3733, 0.4464, 0.0]


def test_deterministic_given_generator():
    pipe = make_pipe()
    assert torch.equal(run(pipe, batch_size=2), run(pipe, batch_size=2))
    other = run(pipe, batch_size=2, generator=seed(1))
    assert not torch.allclose(other, run(pipe, batch_size=2))


def test_class_names_indices_and_broadcast():
    pipe = make_pipe()
    by_name = run(pipe, batch_size=3, class_labels=["hero", "food", "side-facing"])
    by_index = run(pipe, batch_size=3, class_labels=[0, 2, 4])
    assert torch.equal(by_name, by_index)
    one_for_all = run(pipe, batch_size=3, class_labels="food")
    repeated = run(pipe, batch_size=3, class_labels=["food"] * 3)
    assert torch.equal(one_for_all, repeated)
    one_hot = run(pipe, batch_size=3, context=torch.eye(5)[[2, 2, 2]])
    assert torch.equal(one_for_all, one_hot)


def test_context_changes_the_images_and_null_context_is_honoured():
    pipe = make_pipe()
    hero = run(pipe, batch_size=2, class_labels="hero")
    food = run(pipe, batch_size=2, class_labels="food")
    assert (hero - food).abs().max() > 1e-3
    null = run(pipe, batch_size=2)
    zeros = run(pipe, batch_size=2, context=torch.zeros(2, 5))
    assert torch.equal(null, zeros)
    assert (null - hero).abs().max() > 1e-3


def test_mixtures_as_nested_lists():
    pipe = make_pipe()
    mixture = [[1.0, 0.0, 0.6, 0.0, 0.0], [0.0, 0.0, 0.6, 0.4, 0.0]]
    assert torch.equal(
        run(pipe, batch_size=2, context=mixture), run(pipe, batch_size=2, context=torch.tensor(mixture))
    )
    single = run(pipe, batch_size=2, context=[1.0, 0.0, 0.6, 0.0, 0.0])  # one context for the whole batch
    assert torch.equal(single, run(pipe, batch_size=2, context=[mixture[0], mixture[0]]))


def test_guidance_scale_one_is_the_plain_conditional_path():
    pipe = make_pipe()
    context = torch.eye(5)[[0, 3]]
    expected = manual_loop(pipe, context)
    assert torch.allclose(run(pipe, batch_size=2, context=context, guidance_scale=1.0), expected, atol=1e-6)


def test_guidance_batches_the_two_passes_and_matches_separate_passes():
    pipe = make_pipe()
    context = torch.eye(5)[[1, 2]]
    expected = manual_loop(pipe, context, guidance_scale=3.0)
    guided = run(pipe, batch_size=2, context=context, guidance_scale=3.0)
    assert torch.allclose(guided, expected, atol=1e-5)
    assert (guided - manual_loop(pipe, context)).abs().max() > 1e-3

    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, kwargs_out: calls.append(args[0].shape[0]))
    run(pipe, batch_size=2, context=context, guidance_scale=3.0)
    hook.remove()
    assert calls == [4] * T  # one forward of 2B images per step


@pytest.mark.parametrize(
    "scheduler_cls", [SpriteDDPMScheduler, SpriteDDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler]
)
def test_any_scheduler_swapped_in_by_from_config(scheduler_cls):
    pipe = make_pipe()
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    images = run(pipe, batch_size=2, class_labels="hero", num_inference_steps=5)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_default_steps():
    pipe = make_pipe()
    steps = []
    pipe(batch_size=1, callback_on_step_end=lambda p, i, t, kw: steps.append(int(t)) or {})
    assert steps == list(range(T - 1, -1, -1))  # DDPM: every training step
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, num_train_timesteps=100)
    steps.clear()
    pipe(batch_size=1, callback_on_step_end=lambda p, i, t, kw: steps.append(int(t)) or {})
    assert len(steps) == 50  # other schedulers: 50 steps


def test_ddim_eta_zero_is_deterministic_given_x_T_and_eta_one_is_not():
    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=T))
    x_T = torch.randn((2, 3, 16, 16), generator=seed(0))
    a = run(pipe, batch_size=2, latents=x_T, num_inference_steps=10, generator=seed(1))
    b = run(pipe, batch_size=2, latents=x_T, num_inference_steps=10, generator=seed(2))
    assert torch.equal(a, b)
    c = run(pipe, batch_size=2, latents=x_T, num_inference_steps=10, eta=1.0, generator=seed(1))
    d = run(pipe, batch_size=2, latents=x_T, num_inference_steps=10, eta=1.0, generator=seed(2))
    assert (c - d).abs().max() > 1e-3


def test_latents_are_x_T():
    pipe = make_pipe()
    generator = seed(0)
    x_T = torch.randn((2, 3, 16, 16), generator=generator)  # what the pipeline itself draws first
    assert torch.equal(run(pipe, batch_size=2, latents=x_T, generator=generator), run(pipe, batch_size=2))
    with pytest.raises(ValueError, match=r"latents have shape \(1, 3, 16, 16\)"):
        run(pipe, batch_size=2, latents=x_T[:1])


def test_extra_noise_false_is_deterministic_given_x_T():
    pipe = make_pipe()
    x_T = torch.randn((2, 3, 16, 16), generator=seed(0))
    a = run(pipe, batch_size=2, latents=x_T, extra_noise=False, generator=seed(1))
    b = run(pipe, batch_size=2, latents=x_T, extra_noise=False, generator=seed(2))
    assert torch.equal(a, b)
    with_noise = run(pipe, batch_size=2, latents=x_T, generator=seed(1))
    assert (with_noise - a).abs().max() > 1e-3


def test_unconditional_model():
    pipe = make_pipe(context_dim=None)
    assert run(pipe, batch_size=3).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="unconditional"):
        run(pipe, batch_size=1, class_labels="hero")
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs a conditional model"):
        run(pipe, batch_size=1, guidance_scale=3.0)


def test_same_unet_as_ddpm_pipeline_gives_the_same_images():
    # With the null context and the same scheduler, the context pipeline is exactly diffusers' DDPMPipeline.
    pipe = make_pipe()
    reference = DDPMPipeline(unet=pipe.unet, scheduler=DDPMScheduler.from_config(pipe.scheduler.config))
    reference.set_progress_bar_config(disable=True)
    expected = reference(batch_size=2, num_inference_steps=T, generator=seed(0), output_type="np").images
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ours = pipe(batch_size=2, num_inference_steps=T, generator=seed(0), output_type="np").images
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = SpriteDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet) is ContextUNet2DModel and type(loaded.scheduler) is SpriteDDPMScheduler
    assert loaded.class_names == list(SPRITE_CLASSES)
    assert dict(loaded.scheduler.config) == dict(pipe.scheduler.config)
    assert torch.equal(run(loaded, batch_size=2, class_labels="food"), run(pipe, batch_size=2, class_labels="food"))


def test_round_trip_with_a_diffusers_scheduler(tmp_path):
    pipe = make_pipe()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    loaded = SpriteDiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler


def test_from_pretrained_of_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        SpriteDiffusionPipeline.from_pretrained(tmp_path)


def test_trajectory_recorder():
    pipe = make_pipe()
    recorder = TrajectoryRecorder(every=5)
    final = run(pipe, batch_size=2, class_labels="hero", callback_on_step_end=recorder)
    assert len(recorder.samples) == len(range(0, T, 5)) + 1  # every 5th step and the last
    assert torch.allclose((recorder.samples[-1] / 2 + 0.5).clamp(0, 1), final)
    frames = recorder.frames(scale=2)
    assert len(frames) == len(recorder.samples) and frames[0].size == (2 * 16 * 2, 16 * 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": "dragon"}, "Unknown class name 'dragon'"),
        ({"class_labels": 7}, "out of range"),
        ({"class_labels": ["hero", "food"], "batch_size": 3}, "one label per image"),
        ({"context": torch.zeros(1, 4)}, "length 5"),
        ({"class_labels": "hero", "context": torch.zeros(1, 5)}, "not both"),
        ({"num_inference_steps": T + 1}, f"outside 1..{T}"),
        ({"num_inference_steps": 0}, "outside 1"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"eta": 1.5}, "eta must be in"),
        ({"eta": 0.5}, "takes no eta"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"latents": torch.full((1, 3, 16, 16), float("nan"))}, "latents holds 768 NaN or infinite value"),
    ],
)
def test_bad_arguments(kwargs, message):
    pipe = make_pipe()
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_inference_steps": 2, **kwargs})


def test_inputs_are_checked_before_any_step():
    pipe = make_pipe()
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels="hero", output_type="jpeg")
    hook.remove()
    assert calls == []


def test_no_context_runs_no_doubled_guidance_batch():
    """Without labels or context both guidance halves would be the same null pass: one pass of B images runs, and
    the images are those of guidance_scale=1."""
    pipe = make_pipe()
    sizes = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    guided = run(pipe, batch_size=2, guidance_scale=3.0)
    hook.remove()
    assert sizes == [2] * T and not pipe.do_classifier_free_guidance
    assert torch.equal(guided, run(pipe, batch_size=2, guidance_scale=1.0))
    run(pipe, batch_size=2, class_labels="food", guidance_scale=3.0)
    assert pipe.do_classifier_free_guidance and pipe.guidance_scale == 3.0 and pipe.num_timesteps == T


def test_interrupt_from_a_callback_skips_the_remaining_steps():
    pipe = make_pipe()
    seen = []

    def stop_after_three(pipe, i, t, callback_kwargs):
        seen.append(i)
        if i == 2:
            pipe._interrupt = True
        return {}

    sizes = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: sizes.append(1))
    pipe(batch_size=1, callback_on_step_end=stop_after_three, output_type="pt")
    hook.remove()
    assert seen == [0, 1, 2] and len(sizes) == 3 and pipe.interrupt


def test_extra_noise_needs_the_sprite_ddpm_scheduler():
    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=T))
    with pytest.raises(ValueError, match="extra_noise=False needs SpriteDDPMScheduler"):
        pipe(extra_noise=False, num_inference_steps=2)
