"""hfdiff.fast_sampling: the precomputed-coefficient step against the schedulers, whole trajectories against the
pipeline's loop (CPU), the fallback decision, graph keys, and on a GPU the recorded graphs against the eager loop."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from tiny import T, make_pipe, seed, tiny_unet

from hfdiff import SpriteDDIMScheduler, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.fast_sampling import FastSampler, carry_update, step_coefficients, step_update

HAS_HOOK = hasattr(SpriteDiffusionPipeline, "enable_fast_sampling")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
needs_hook = pytest.mark.skipif(not HAS_HOOK, reason="the pipeline hook is not applied")

DDPM_CASES = [
    {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small", "prediction_type": "v_prediction"},
    {"variance_type": "fixed_small_log", "prediction_type": "sample"},
    {"variance_type": "fixed_large_log", "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"},
]
DDIM_CASES = [
    {},
    {"timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"prediction_type": "sample", "set_alpha_to_one": False},
    {"beta_schedule": "sigmoid", "timestep_spacing": "linspace"},
]


class ScaledDDIM(SpriteDDIMScheduler):
    """A user's subclass whose step is still affine: it damps every update a little. (It names its keywords: the
    pipeline, like diffusers' prepare_extra_step_kwargs, passes eta and generator only to a step that names them.)"""

    def step(self, model_output, timestep, sample, eta=0.0, generator=None):
        output = super().step(model_output, timestep, sample, eta=eta, generator=generator)
        output.prev_sample = 0.98 * output.prev_sample
        return output


class ClampingDDPM(SpriteDDPMScheduler):
    """A user's subclass whose step is not affine (it clamps the new sample)."""

    def step(self, model_output, timestep, sample, *args, **kwargs):
        output = super().step(model_output, timestep, sample, *args, **kwargs)
        output.prev_sample = output.prev_sample.clamp(-2, 2)
        return output


class MomentumDDIM(SpriteDDIMScheduler):
    """A step that keeps the previous step's output (like a multistep solver): affine in (x_t, m, m_prev)."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self.previous_output = None  # a new trajectory, as diffusers' multistep schedulers reset theirs

    def step(self, model_output, timestep, sample, *args, **kwargs):
        previous = model_output if self.previous_output is None else self.previous_output
        self.previous_output = model_output
        return super().step(0.5 * (model_output + previous), timestep, sample, *args, **kwargs)


def dpm_solver(num_train_timesteps=T, **overrides):
    """diffusers' DPM-Solver++ 2M SDE on a zero-SNR v-prediction schedule (the "dpm++" sampler's configuration)."""
    config = {
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "algorithm_type": "sde-dpmsolver++",
        "solver_order": 2,
        **overrides,
    }
    return DPMSolverMultistepScheduler(num_train_timesteps=num_train_timesteps, **config)


def check_step(scheduler, steps, i, t, **step_kwargs):
    """One derived step against scheduler.step on float32 images, with the noise the step draws from a generator."""
    x, m = torch.randn(2, 3, 4, 4, generator=seed(2 * i)), torch.randn(2, 3, 4, 4, generator=seed(2 * i + 1))
    expected = scheduler.step(m, t, x, generator=seed(100 + i), **step_kwargs).prev_sample
    z = randn_tensor(x.shape, generator=seed(100 + i))  # the step's draw, when it draws
    torch.testing.assert_close(step_update(x, m, z, steps.coefficients[i]), expected, rtol=1e-5, atol=1e-5)


def eager_off(pipe):
    """The pipeline's own step-by-step loop, also once the fast-sampling hook is applied."""
    if HAS_HOOK:
        pipe.enable_fast_sampling(False)
    return pipe


def fast_images(
    pipe,
    sampler,
    batch_size=3,
    class_labels=None,
    guidance_scale=1.0,
    num_inference_steps=None,
    eta=0.0,
    extra_noise=True,
    generator=None,
):
    """The pipeline's steps 2-5 around sampler.sample: what the pipeline hook runs (images (B, C, H, W))."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    context = pipe.prepare_context(class_labels, None, batch_size, device, dtype)
    if context is not None and guidance_scale != 1.0:
        context = torch.cat([torch.zeros_like(context), context])
    pipe.scheduler.set_timesteps(num_inference_steps or pipe.scheduler.config.num_train_timesteps, device=device)
    latents = randn_tensor((batch_size, 3, 16, 16), generator=generator, device=device, dtype=dtype)
    x0 = sampler.sample(
        latents, context, guidance_scale=guidance_scale, eta=eta, extra_noise=extra_noise, generator=generator
    )
    return pipe.postprocess(x0, "pt")


# --- the step math: one precomputed-coefficient step equals the scheduler's step ---------------------------------


@pytest.mark.parametrize("config", DDPM_CASES)
@pytest.mark.parametrize("extra_noise", [True, False])
def test_ddpm_step_equals_scheduler_step(config, extra_noise):
    scheduler = SpriteDDPMScheduler(num_train_timesteps=50, **config)
    scheduler.set_timesteps(10)
    steps = step_coefficients(scheduler, extra_noise=extra_noise)
    assert steps.timesteps.tolist() == scheduler.timesteps.tolist() and steps.coefficients.shape == (10, 5)
    assert torch.all(steps.coefficients[:, 3:] == 0) and steps.noise_dtype is None  # single-step: no carry
    for i, t in enumerate(scheduler.timesteps):
        check_step(scheduler, steps, i, t, extra_noise=extra_noise)
    assert steps.draws_noise == [extra_noise] * 9 + [False]  # Alg. 2: no noise on the step that lands on x_0
    assert steps.coefficients[-1, 2] == 0 and (steps.coefficients[:-1, 2] > 0).all() == extra_noise


@pytest.mark.parametrize("config", DDIM_CASES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_equals_scheduler_step(config, eta):
    scheduler = SpriteDDIMScheduler(num_train_timesteps=50, **config)
    scheduler.set_timesteps(7)
    steps = step_coefficients(scheduler, eta=eta)
    for i, t in enumerate(scheduler.timesteps):
        check_step(scheduler, steps, i, t, eta=eta)
    assert steps.draws_noise == [eta > 0] * 7  # DDIM draws on every step when eta > 0, even where sigma_t = 0
    if eta == 0:
        assert torch.all(steps.coefficients[:, 2] == 0)


@pytest.mark.parametrize(
    "scheduler, step_kwargs",
    [
        (DDPMScheduler(num_train_timesteps=50, clip_sample=False), {}),
        (DDPMScheduler(num_train_timesteps=50, clip_sample=False, timestep_spacing="trailing"), {}),
        (DDIMScheduler(num_train_timesteps=50, clip_sample=False, prediction_type="v_prediction"), {"eta": 0.5}),
        (ScaledDDIM(num_train_timesteps=50), {"eta": 1.0}),
    ],
)
def test_derived_from_other_and_subclassed_schedulers(scheduler, step_kwargs):
    """The derivation knows no scheduler class: diffusers' own DDPM/DDIM (with clip_sample=False) and a user's
    subclass whose step stays affine are read off their `step` like the sprite ones."""
    scheduler.set_timesteps(8)
    steps = step_coefficients(scheduler, **step_kwargs)
    for i, t in enumerate(scheduler.timesteps):
        check_step(scheduler, steps, i, t, **step_kwargs)


def test_step_coefficients_leave_the_scheduler_as_it_was():
    scheduler = MomentumDDIM(num_train_timesteps=T)
    scheduler.set_timesteps(4)
    steps = step_coefficients(scheduler)
    assert scheduler.previous_output is None  # probed on a copy: the user's scheduler kept no state
    # its step takes 0.5 (m_i + m_{i-1}): m_{i-1} enters as a carry with B_i's weight, none out of the last step
    assert torch.all(steps.coefficients[:, 3] == 0) and torch.all(steps.coefficients[-1][3:] == 0)
    torch.testing.assert_close(steps.coefficients[:-1, 4], steps.coefficients[1:, 1])


def multistep_trajectory_error(scheduler, steps, num_steps) -> float:
    """Largest error of the coefficient recurrence (`step_update` with `carry_update`) against scheduler.step over a
    whole trajectory, float64 random model outputs and the step's own noise, relative to the sample's size."""
    x, carry, error = torch.randn(2, 3, 4, 4, generator=seed(0), dtype=torch.float64), None, 0.0
    for i, t in enumerate(scheduler.timesteps):
        m = 2 * torch.randn(2, 3, 4, 4, generator=seed(1 + i), dtype=torch.float64)
        expected = scheduler.step(m, t, x, generator=seed(100 + i)).prev_sample
        z = randn_tensor(x.shape, generator=seed(100 + i), dtype=steps.noise_dtype or torch.float64).double()
        row = steps.coefficients[i].double()
        got, carry = step_update(x, m, z, row, carry), carry_update(x, m, row)
        error = max(error, ((got - expected).abs().max() / (1 + expected.abs().max())).item())
        x = expected
    assert i == num_steps - 1
    return error


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"prediction_type": "epsilon"},
        {"algorithm_type": "dpmsolver++"},
        {"solver_type": "heun", "timestep_spacing": "leading", "rescale_betas_zero_snr": False},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"euler_at_final": True, "beta_schedule": "squaredcos_cap_v2"},
    ],
)
@pytest.mark.parametrize("num_steps", [7, 20])
def test_multistep_solver_step_equals_scheduler_step(overrides, num_steps):
    """DPM-Solver++ 2M (SDE) reuses the previous step's x0 prediction: the probe's table, carry included, gives
    diffusers' own `step` over a whole trajectory, to the float32 rounding that step computes in."""
    scheduler = dpm_solver(num_train_timesteps=50, **overrides)
    scheduler.set_timesteps(num_steps)
    steps = step_coefficients(scheduler)
    sde = scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert steps.draws_noise == [sde] * num_steps and steps.noise_dtype == (torch.float32 if sde else None)
    config = scheduler.config
    # diffusers makes the last step first order (no carry into it) for a "zero" final sigma (it lands on x0_hat, its
    # draw multiplied by 0), euler_at_final, or lower_order_final under 15 steps
    first_order_last = config.final_sigmas_type == "zero" or config.euler_at_final
    first_order_last = first_order_last or (config.lower_order_final and num_steps < 15)
    assert torch.all(steps.coefficients[:-2, 4] != 0) and torch.all(steps.coefficients[-1, 3:] == 0)
    assert (steps.coefficients[-2, 4] == 0) == first_order_last
    assert (steps.coefficients[-1, 2] == 0) == (config.final_sigmas_type == "zero")
    scheduler.set_timesteps(num_steps)  # a fresh trajectory for diffusers' own steps
    assert multistep_trajectory_error(scheduler, steps, num_steps) < 1e-6


def test_step_coefficients_refuse_a_scheduler_part_way_through():
    scheduler = dpm_solver()
    scheduler.set_timesteps(4)
    scheduler.step(torch.zeros(1, 3, 4, 4), scheduler.timesteps[0], torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="step_index=1.*set_timesteps"):
        step_coefficients(scheduler)


@pytest.mark.parametrize(
    "scheduler, words",
    [
        (DDPMScheduler(num_train_timesteps=T), "DDPMScheduler has clip_sample=True"),  # diffusers' default
        (SpriteDDIMScheduler(num_train_timesteps=T, clip_sample=True), "clip_sample=True"),
        (SpriteDDPMScheduler(num_train_timesteps=T, variance_type="learned_range"), "network's output"),
        (SpriteDDIMScheduler(num_train_timesteps=T, thresholding=True), "thresholding"),
        (ClampingDDPM(num_train_timesteps=T), "not a fixed affine map"),
        (
            dpm_solver(solver_order=3, lower_order_final=False),
            "keep state from before the previous step",
        ),  # third order: two steps back
        (dpm_solver(thresholding=True), "thresholding"),
    ],
)
def test_step_coefficients_refuses_what_it_cannot_express(scheduler, words):
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="cannot express") as error:
        step_coefficients(scheduler)
    assert words in str(error.value)


def test_step_coefficients_need_timesteps():
    with pytest.raises(ValueError, match="set_timesteps"):
        step_coefficients(SpriteDDIMScheduler(num_train_timesteps=T))


# --- whole trajectories on the CPU: FastSampler's loop (no graph) against the pipeline's loop ---------------------


@pytest.mark.parametrize(
    "scheduler, kwargs",
    [
        (None, {}),  # full DDPM with noise: the same noise stream as the pipeline's loop
        (None, {"class_labels": ["hero", "food", 2], "guidance_scale": 3.0}),
        (None, {"extra_noise": False, "num_inference_steps": 7}),
        (SpriteDDPMScheduler(num_train_timesteps=T, variance_type="fixed_small_log"), {"num_inference_steps": 10}),
        (
            DDPMScheduler(num_train_timesteps=T, clip_sample=False, timestep_spacing="trailing"),
            {"num_inference_steps": 6},
        ),
        (ScaledDDIM(num_train_timesteps=T), {"num_inference_steps": 5, "eta": 1.0}),  # a user's subclass
        (MomentumDDIM(num_train_timesteps=T), {"num_inference_steps": 5}),  # carries its previous output
        (dpm_solver(), {"num_inference_steps": 8}),  # DPM-Solver++ 2M SDE: noise and the previous x0 prediction
        (dpm_solver(prediction_type="epsilon"), {"num_inference_steps": 20, "class_labels": 1, "guidance_scale": 2.0}),
        (dpm_solver(algorithm_type="dpmsolver++", final_sigmas_type="sigma_min"), {"num_inference_steps": 6}),
        (SpriteDDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", prediction_type="v_prediction"), {}),
        (SpriteDDIMScheduler(num_train_timesteps=T), {"num_inference_steps": 5}),  # deterministic DDIM
        (
            SpriteDDIMScheduler(num_train_timesteps=T),
            {"num_inference_steps": 6, "eta": 0.5, "guidance_scale": 2.0, "class_labels": "hero"},
        ),
    ],
)
def test_cpu_trajectory_equals_pipeline_loop(scheduler, kwargs):
    pipe = eager_off(make_pipe(scheduler=scheduler))
    expected = pipe(batch_size=3, generator=seed(0), output_type="pt", **kwargs).images
    got = fast_images(pipe, FastSampler(pipe), generator=seed(0), **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_cpu_noise_is_the_eager_loops_draw():
    """Each step's noise is randn_tensor(shape, generator, device, dtype), drawn on exactly the steps where the
    scheduler draws: the generator ends where the eager loop leaves it (DDPM: no draw on the last step)."""
    pipe = eager_off(make_pipe())
    pipe.scheduler.set_timesteps(6)
    latents = torch.randn(2, 3, 16, 16)
    generator = seed(4)
    FastSampler(pipe).sample(latents, generator=generator)
    expected = seed(4)
    for _ in range(5):
        randn_tensor(latents.shape, generator=expected, device=latents.device, dtype=latents.dtype)
    assert torch.equal(generator.get_state(), expected.get_state())


def test_cpu_unconditional_model_and_reuse_between_calls():
    pipe = eager_off(make_pipe(context_dim=None))
    sampler = FastSampler(pipe)
    first = fast_images(pipe, sampler, generator=seed(1))
    torch.testing.assert_close(
        first, pipe(batch_size=3, generator=seed(1), output_type="pt").images, rtol=0, atol=2e-5
    )
    pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)  # swapped scheduler, same buffers
    ddim = fast_images(pipe, sampler, generator=seed(1), num_inference_steps=4)
    expected = pipe(batch_size=3, generator=seed(1), output_type="pt", num_inference_steps=4).images
    torch.testing.assert_close(ddim, expected, rtol=0, atol=2e-5)
    assert len(sampler._buffers) == 1 and sampler.stats["captures"] == 0  # CPU: one set of buffers, no graph


@pytest.mark.parametrize(
    "compile_option, expected",
    [(True, {"triton.autotune_pointwise": False}), ({"max_autotune": True}, {"max_autotune": True})],
)
def test_compile_option_reaches_torch_compile(monkeypatch, compile_option, expected):
    """compile=True compiles the step with hfdiff's COMPILE_OPTIONS (those of the training step), a dict with exactly
    those inductor options; either way the step is compiled before the first timed step and gives the uncompiled
    step's images. torch.compile is replaced by a recorder here (compiling on the CPU takes ~30 s; the GPU benchmark
    times the real thing)."""
    import hfdiff.fast_sampling as fast_sampling

    calls = []

    def recording_compile(fn, **kwargs):
        calls.append(kwargs)
        return lambda *args, **kw: fn(*args, **kw)

    monkeypatch.setattr(fast_sampling.torch, "compile", recording_compile)
    pipe = eager_off(make_pipe())
    sampler = FastSampler(pipe, compile=compile_option)
    assert calls == [{"dynamic": False, "options": expected}]
    got = fast_images(pipe, sampler, generator=seed(2), num_inference_steps=4)
    torch.testing.assert_close(got, fast_images(pipe, FastSampler(pipe), generator=seed(2), num_inference_steps=4))
    assert sampler.stats["warmup_s"] > 0  # the first (compiling) call ran before sampling


def test_sample_rejects_what_the_pipeline_must_run():
    pipe = make_pipe()
    pipe.scheduler.set_timesteps(T)
    sampler = FastSampler(pipe)
    latents = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="one generator"):
        sampler.sample(latents, generator=[seed(0), seed(1)])
    with pytest.raises(ValueError, match="rows"):
        sampler.sample(latents, torch.zeros(2, 5), guidance_scale=2.0)  # guidance needs conditional + null rows
    pipe.scheduler = DDIMScheduler(num_train_timesteps=T)  # diffusers' default clip_sample=True
    pipe.scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="DDIMScheduler has clip_sample=True"):
        sampler.sample(latents)


# --- the fallback decision and the graph keys (decisions only: no GPU needed) ------------------------------------


def test_fallback_reason():
    pipe = make_pipe()
    sampler = FastSampler(pipe)
    assert sampler.fallback_reason(device="cuda") is None
    assert sampler.fallback_reason(device="cuda", generator=seed(0)) is None
    assert "cpu" in sampler.fallback_reason(device="cpu")
    assert "callback_on_step_end" in sampler.fallback_reason(device="cuda", callback_on_step_end=lambda *a: {})
    assert "one generator per image" in sampler.fallback_reason(device="cuda", generator=[seed(0), seed(1)])
    pipe.unet._hf_hook = object()  # what accelerate's enable_model_cpu_offload attaches
    assert "hooks" in sampler.fallback_reason(device="cuda")
    del pipe.unet._hf_hook

    for scheduler, expected in (
        (DDPMScheduler(num_train_timesteps=T), "DDPMScheduler has clip_sample=True"),
        (SpriteDDIMScheduler(num_train_timesteps=T, clip_sample=True), "clip_sample=True"),
        (SpriteDDPMScheduler(num_train_timesteps=T, variance_type="learned"), "learned"),
        (SpriteDDPMScheduler(num_train_timesteps=T, thresholding=True), "thresholding"),
        (ClampingDDPM(num_train_timesteps=T), "ClampingDDPM.step at timestep"),
        (dpm_solver(solver_order=3, lower_order_final=False), "DPMSolverMultistepScheduler.step at timestep"),
    ):
        pipe.scheduler = scheduler
        scheduler.set_timesteps(4)
        assert expected in sampler.fallback_reason(device="cuda")
    for scheduler in (
        SpriteDDIMScheduler(num_train_timesteps=T),
        ScaledDDIM(num_train_timesteps=T),  # a subclass whose step is still affine takes the fast path
        DDIMScheduler(num_train_timesteps=T, clip_sample=False),
        dpm_solver(),  # second-order multistep: its carry runs on the graph too
    ):
        pipe.scheduler = scheduler
        pipe.scheduler.set_timesteps(4)
        assert sampler.fallback_reason(device="cuda") is None

    dropout_pipe = make_pipe()
    dropout_pipe.unet = tiny_unet(dropout=0.1).train()
    assert "training mode" in FastSampler(dropout_pipe).fallback_reason(device="cuda")


def test_graph_keys():
    pipe = make_pipe()
    sampler = FastSampler(pipe)
    latents, context = torch.zeros(4, 3, 16, 16), torch.zeros(4, 5)
    key = sampler.graph_key(latents, context, guidance=False)
    # Schedulers, step counts, eta, extra_noise and guidance scales are data: they never enter the key.
    pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)
    assert sampler.graph_key(latents, context, guidance=False) == key
    assert sampler.graph_key(latents, torch.zeros(8, 5), guidance=True) != key  # both guidance halves: 2B rows
    assert sampler.graph_key(torch.zeros(5, 3, 16, 16), torch.zeros(5, 5), guidance=False) != key
    assert sampler.graph_key(latents.half(), context, guidance=False) != key
    assert sampler.graph_key(latents, None, guidance=False) != key
    pipe.scheduler = SpriteDDPMScheduler(num_train_timesteps=2 * T)  # the buffers hold T rows of coefficients
    assert sampler.graph_key(latents, context, guidance=False) != key


@needs_hook
def test_pipeline_hook_decision():
    pipe = make_pipe()
    cuda = torch.device("cuda")
    sampler = pipe._fast_sampler_for(cuda, None, None)
    assert isinstance(sampler, FastSampler)
    assert pipe._fast_sampler_for(cuda, None, None) is sampler  # made once, kept with its graphs
    assert pipe._fast_sampler_for(torch.device("cpu"), None, None) is None
    assert pipe._fast_sampler_for(cuda, None, lambda *a: {}) is None
    pipe.enable_fast_sampling(False)
    assert pipe._fast_sampler_for(cuda, None, None) is None
    pipe.enable_fast_sampling(compile=False, max_graphs=2)
    assert pipe._fast_sampler_for(cuda, None, None).max_graphs == 2


def test_pipeline_and_its_sampler_are_freed_without_the_cycle_collector():
    """Nothing may keep a dropped sampler alive but Python's cycle collector: with the collector off, dropping the
    last reference to a pipeline whose sampler has sampled (buffers and step function made; on a GPU also graphs,
    memory pools and a UNet copy) frees the pipeline, the sampler and the buffers at once."""
    import gc
    import weakref

    pipe = make_pipe()
    sampler = pipe._fast_sampler_for(torch.device("cuda"), None, None)  # made as on a GPU; sampled with below
    assert sampler.pipe.unet is pipe.unet  # the sampler sees the pipeline's current components
    fast_images(pipe, sampler, generator=seed(1))
    refs = [weakref.ref(pipe), weakref.ref(sampler), *(weakref.ref(b) for b in sampler._buffers.values())]
    assert len(refs) == 3
    del sampler
    gc.disable()
    try:
        del pipe
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()


# --- GPU: recorded graphs against the eager loop -------------------------------------------------------------------


def cuda_pipe(scheduler=None, context_dim=5):
    pipe = eager_off(make_pipe(scheduler=scheduler, context_dim=context_dim))
    return pipe.to("cuda")


def bf16_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Images in [0, 1] from bf16 and float32 runs of the same trajectory: bf16 keeps ~3 significant digits. The
    untrained UNet under guidance 3 pushes most pixels past the clip to 0 or 1, and there bf16 rounding can tip a
    pixel from one edge to the other (0.26% of the pixels in the DPM-Solver++ epsilon case on an H200, mean
    difference 0.0026), so the bound is on the mean and on how many pixels are off by more than 0.05 (under 1%)."""
    difference = (got.float() - expected.float()).abs()
    far = (difference > 5e-2).float().mean()
    print(f"bf16 vs float32 images: max {difference.max():.4f}, mean {difference.mean():.5f}, over 0.05: {far:.2%}")
    assert difference.mean() < 5e-3 and far < 1e-2, (difference.mean(), far)


def float32_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """The default fast path against the eager loop, both float32 on the same UNet and cuDNN algorithms: only the
    update's rounding differs (A x + B m + s z against the scheduler's own order of operations), which guidance
    w = 3 amplifies over the steps (2.3e-4 seen on an H200 with DDIM eta = 0.5)."""
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


GPU_CASES = [
    (SpriteDDIMScheduler(num_train_timesteps=T), {"num_inference_steps": 10}),  # deterministic
    (None, {"extra_noise": False}),  # deterministic DDPM
    (None, {}),  # DDPM with noise: the fast path draws the eager loop's noise
    (
        SpriteDDIMScheduler(num_train_timesteps=T),
        {"num_inference_steps": 8, "eta": 0.5, "guidance_scale": 3.0, "class_labels": [0, 1, 2, 3] * 16},
    ),
    (dpm_solver(), {"num_inference_steps": 20}),  # the "dpm++" sampler: noise and a carry on every step
    (dpm_solver(prediction_type="epsilon"), {"num_inference_steps": 10, "guidance_scale": 3.0, "class_labels": 2}),
]


@needs_cuda
@pytest.mark.parametrize("generator_device", ["cuda", "cpu"])
@pytest.mark.parametrize("scheduler, kwargs", GPU_CASES)
def test_gpu_fast_default_matches_eager_in_float32(scheduler, kwargs, generator_device):
    """The default (float32, the pipeline's UNet as is) gives the eager loop's images, with a CUDA generator and with
    a CPU one (diffusers' promise: a CPU generator gives the same images on every device)."""
    pipe = cuda_pipe(scheduler)
    generator = lambda: torch.Generator(generator_device).manual_seed(0)  # noqa: E731
    expected = pipe(batch_size=64, generator=generator(), output_type="pt", **kwargs).images
    sampler = FastSampler(pipe)
    got = fast_images(pipe, sampler, batch_size=64, generator=generator(), **kwargs)
    float32_close(got, expected)
    assert sampler.stats["captures"] == 1 and sampler._unet_copy is pipe.unet  # no copy: the pipeline's weights


@needs_cuda
@pytest.mark.parametrize("scheduler, kwargs", GPU_CASES)
def test_gpu_bf16_matches_eager_within_bf16(scheduler, kwargs):
    pipe = cuda_pipe(scheduler)
    generator = lambda: torch.Generator("cuda").manual_seed(0)  # noqa: E731
    expected = pipe(batch_size=64, generator=generator(), output_type="pt", **kwargs).images
    sampler = FastSampler(pipe, dtype=torch.bfloat16)  # a bf16 copy, channels_last
    got = fast_images(pipe, sampler, batch_size=64, generator=generator(), **kwargs)
    bf16_close(got, expected)
    assert sampler.stats["captures"] == 1 and sampler._unet_copy.dtype == torch.bfloat16
    assert pipe.unet.dtype == torch.float32  # the user's model is never converted


@needs_cuda
def test_gpu_graph_cache_and_reproducibility():
    pipe = cuda_pipe()
    sampler = FastSampler(pipe)
    cuda_generator = lambda: torch.Generator("cuda").manual_seed(3)  # noqa: E731
    first = fast_images(pipe, sampler, batch_size=8, generator=cuda_generator())
    again = fast_images(pipe, sampler, batch_size=8, generator=cuda_generator())
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # same generator -> same images
    fast_images(pipe, sampler, batch_size=8, generator=cuda_generator(), num_inference_steps=5, extra_noise=False)
    pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)
    fast_images(pipe, sampler, batch_size=8, generator=cuda_generator(), num_inference_steps=5, eta=0.3)
    fast_images(pipe, sampler, batch_size=8, class_labels=1, guidance_scale=1.0, generator=cuda_generator())
    assert sampler.stats["captures"] == 1  # schedulers, steps, eta, extra_noise are data
    fast_images(pipe, sampler, batch_size=8, class_labels=1, guidance_scale=4.0, generator=cuda_generator())
    fast_images(pipe, sampler, batch_size=8, class_labels=1, guidance_scale=2.0, generator=cuda_generator())
    assert sampler.stats["captures"] == 2  # guidance on: 2B images per forward pass, one more graph

    # A CPU generator: its draws are copied to the GPU, so the same generator gives the same images again.
    pipe.scheduler = SpriteDDPMScheduler(num_train_timesteps=T)
    one = fast_images(pipe, sampler, batch_size=8, generator=seed(5))
    two = fast_images(pipe, sampler, batch_size=8, generator=seed(5))
    torch.testing.assert_close(one, two, rtol=0, atol=0)


@needs_cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_gpu_new_weights_reach_the_recorded_graph(dtype):
    """New values in the pipeline's tensors reach the graph: read directly (default) or through the refreshed copy."""
    pipe = cuda_pipe(SpriteDDIMScheduler(num_train_timesteps=T))
    sampler = FastSampler(pipe, dtype=dtype)
    fast_images(pipe, sampler, batch_size=8, generator=seed(0), num_inference_steps=6)
    pipe.unet.load_state_dict(tiny_unet(init_seed=7).state_dict())  # new values, same tensors
    generator = lambda: torch.Generator("cuda").manual_seed(0)  # noqa: E731
    expected = pipe(batch_size=8, generator=generator(), output_type="pt", num_inference_steps=6).images
    got = fast_images(pipe, sampler, batch_size=8, generator=generator(), num_inference_steps=6)
    (float32_close if dtype is None else bf16_close)(got, expected)
    assert sampler.stats["captures"] == 1


@needs_cuda
@needs_hook
def test_gpu_pipeline_hook_runs_fast_path_and_falls_back():
    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=T)).to("cuda")
    generator = lambda: torch.Generator("cuda").manual_seed(0)  # noqa: E731
    kwargs = {"batch_size": 16, "num_inference_steps": 6, "output_type": "pt", "class_labels": "hero"}
    fast = pipe(generator=generator(), **kwargs).images
    assert pipe._fast_sampler.stats["captures"] == 1
    recorded = []
    pipe(generator=generator(), callback_on_step_end=lambda p, i, t, kw: recorded.append(i) or {}, **kwargs)
    assert recorded == list(range(6)) and pipe._fast_sampler.stats["captures"] == 1  # ran the eager loop
    pipe.enable_fast_sampling(False)
    float32_close(fast, pipe(generator=generator(), **kwargs).images)  # the default is faithful


@needs_cuda
def test_gpu_memory_stays_flat_over_many_pipelines():
    """A training run builds a new pipeline, sampler and graph for every validation grid: once the first has come and
    gone, building and dropping more must not hold on to GPU memory (a new warm-up stream per recording used to
    leave a cuBLAS workspace behind each time, 32 MiB on an H100)."""
    allocated = []
    for index in range(5):
        pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=T)).to("cuda")
        pipe(batch_size=10, class_labels="food", num_inference_steps=4, generator=seed(index), output_type="pt")
        assert pipe._fast_sampler.stats["captures"] == 1
        del pipe
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
    print(f"allocated after each pipeline (MiB): {[round(a / 2**20, 2) for a in allocated]}")
    assert max(allocated[1:]) - allocated[1] < 2**20, allocated
