"""Fast sampling for SpriteDiffusionPipeline: one denoising step recorded as a CUDA graph and replayed.

A sprite UNet is small (16x16 images, ~1.4M parameters for "sprite-small", ~250 kernels a step), so the pipeline's
eager loop pays for launching those kernels from Python on every step. `FastSampler` records one whole step (UNet
forward, classifier-free guidance, scheduler update) once as a CUDA graph and replays it for every step;
`compile=True` also fuses the GroupNorm/SiLU/add chains with torch.compile before recording, and `dtype=torch.bfloat16`
runs a bf16 copy of the UNet (channels_last), which moves half the bytes. benchmarks/NOTES-sampling.md has the
measurements.

By default a call returns what the pipeline's step-by-step loop returns, up to float rounding of the same dtype: the
graph runs the pipeline's own UNet in its own dtype and memory format, and draws the same noise from the same
generator (SpriteDiffusionPipeline turns this path on by default on CUDA, so it must not change what comes out).
bf16 and torch.compile are switches: `pipe.enable_fast_sampling(dtype=torch.bfloat16, compile=True)`.

Three things make one recording serve every step:

1. The scheduler's update is written as x_{t'} = A_t x_t + B_t m + s_t z + c_t, with the carry c_t = C x + D m of
   the previous step's x and m (second-order multistep solvers reuse the previous x0 prediction; 0 for single-step
   schedulers): five numbers per step, gathered on the device by a step counter that the graph advances itself. The
   numbers are not written out here: `step_coefficients` reads them off the scheduler's own `step`, evaluated on a
   small float64 probe, so DDPM, DDIM, subclasses of either, diffusers' DDPMScheduler/DDIMScheduler (clip_sample=False)
   and DPMSolverMultistepScheduler (solver_order=2, "dpmsolver++" or "sde-dpmsolver++") all work, and a step that is
   not of that form (clipping, thresholding, learned variances, state older than one step such as third order) sends
   the call back to the pipeline's loop with the reason in words. The number of steps, eta, extra_noise and the
   guidance scale are data in fixed buffers, not graph structure: one graph per (batch, image shape, guidance on/off,
   dtype) serves them all.
2. The noise z of each step is drawn between replays into a fixed buffer exactly as the scheduler draws it
   (diffusers' `randn_tensor(shape, generator, device, dtype)`), on exactly the steps where it draws, so a generator
   gives the eager loop's noise stream. A CPU `torch.Generator` gives the same images on every device, as diffusers
   promises, but each draw then runs on the CPU and is copied over, which for a batch of sprites takes longer than a
   compiled step. A `torch.Generator("cuda")` (or None) draws on the GPU and is the fast choice.
3. With `dtype` other than the UNet's (e.g. bf16), the UNet runs as the sampler's own copy (channels_last by
   default), refreshed in place when the pipeline's weights change, so the user's model is never converted.
   Otherwise the graph reads the pipeline's own weights.

What is cached on the sampler between calls: the derived coefficients (per scheduler, timesteps, eta, extra_noise),
the UNet copy (bf16 only) and, per graph key, the fixed buffers, the CUDA graph with its memory pool and (with
`compile=True`) the compiled step. Each call copies in x_T, the context, the coefficients (N x 5 floats) and the
guidance scale, draws the noise and replays N times. On the CPU the sampler runs the same step function without graphs.

When the pipeline should not use it, `FastSampler.fallback_reason` says why in words (not CUDA, a scheduler step that
is not affine in (x_t, m, z) and the previous step's (x_t, m), a scheduler that rescales the UNet's input, a step
callback, one generator per image, offload hooks, an autocast around the call); the pipeline then runs its own loop.
"""

from __future__ import annotations

import copy
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from .cuda import COMPILE_OPTIONS, side_stream
from .pipelines.scheduler_steps import scheduler_step_kwargs

__all__ = ["FastSampler", "StepCoefficients", "carry_update", "step_coefficients", "step_update"]

# Columns of StepCoefficients.coefficients, in order (see `step_update` and `carry_update`):
# x_{t'} = A x_t + B m + s z + c, with c the carry the previous step left, and this step's carry for the next one
# c' = C x_t + D m (multistep solvers such as DPM-Solver++ 2M reuse the previous step's x0 prediction; C = D = 0 for
# single-step schedulers and on the last step).
COEFFICIENT_NAMES = (
    "prev_from_sample",  # A
    "prev_from_output",  # B: m is the (guided) network output
    "prev_from_noise",  # s: 0 on steps that draw no noise
    "carry_from_sample",  # C: what x_t adds to the next step's update
    "carry_from_output",  # D: what m adds to the next step's update
)
FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
# The probe the step is evaluated on: a few images' worth of random numbers, enough that a step which mixes pixels,
# clamps (inputs x 3 leave [-1, 1]) or adds a constant cannot pass for an affine one.
PROBE_SHAPE = (4, 2, 3, 3)
# The dtypes a step may draw its noise in: the model output's (DDPM, DDIM) or float32 whatever the output's dtype
# (diffusers' DPM-Solver schedulers); the probe keeps the one that fits.
NOISE_DTYPES = (None, torch.float32)


@dataclass
class StepCoefficients:
    """The scheduler's update for each chosen timestep, as numbers.

    timesteps: (N,) int64, the scheduler's timesteps t_i, in sampling order.
    coefficients: (N, 5) float32, one row (A, B, s, C, D) per step, columns as COEFFICIENT_NAMES.
    draws_noise: N booleans: whether the scheduler's step i draws z (the fast path draws exactly when it does).
    noise_dtype: the dtype the step draws z in; None: the sample's dtype.
    """

    timesteps: torch.Tensor
    coefficients: torch.Tensor
    draws_noise: list[bool]
    noise_dtype: torch.dtype | None = None


def config_fallback_reason(scheduler) -> str | None:
    """Why the scheduler's config makes its step non-affine in (x_t, m, z), in words (None when nothing does)."""
    name, config = type(scheduler).__name__, scheduler.config
    if config.get("thresholding", False):
        return f"{name} has thresholding=True: dynamic thresholding takes a per-image quantile of x0_hat every step"
    if config.get("clip_sample", False):
        return (
            f"{name} has clip_sample=True, which clamps x0_hat at every step; load it with clip_sample=False for the "
            "fast path (the sprite schedulers' default)"
        )
    variance_type = config.get("variance_type", None)
    if variance_type is not None and variance_type not in FIXED_VARIANCE_TYPES:
        return f"{name} has variance_type={variance_type!r}, which takes sigma_t from the network's output"
    return None


def step_coefficients(scheduler, eta: float = 0.0, extra_noise: bool = True) -> StepCoefficients:
    """The scheduler's step for every timestep in `scheduler.timesteps`, read off `scheduler.step` itself.

    Without clipping or thresholding every DDPM/DDIM step is affine in the sample x_t, the network output m and the
    noise z: x_{t'} = A x_t + B m + s z (DDPM's posterior mean, Ho et al. 2020 eq. 7 with eq. 15's x0_hat; DDIM's
    eq. 12 of Song et al. 2021; x_0 and v targets are linear too, see schedulers/_math.py). A second-order multistep
    step (DPM-Solver++ 2M, Lu et al. 2022 Alg. 2, and its SDE variant) also takes the previous step's x0 prediction,
    itself affine in that step's x_t and m, so it adds C' x_{t_prev} + D' m_prev: the carry, whose weights are stored
    on the previous step's row. So the math stays in the scheduler: its `step` runs once per timestep, on a copy of the
    scheduler (multistep schedulers keep state), with float64 random x_t and m and a generator; the coefficients are
    the least-squares fit of the output on (x_t, m, z, x_{t_prev}, m_prev), z being the generator's draw, and the fit
    must be exact to float32 rounding (diffusers' DPM-Solver computes in float32; the table is float32) or the step is
    refused: a clamp, a quantile or state older than one step misses by far more. Whether a step draws at all is read
    off the generator's state, the dtype it draws in (NOISE_DTYPES) off which one fits.

    Raises a ValueError with the reason in words when the step is not of that form.
    """
    reason = config_fallback_reason(scheduler)
    if reason is not None:
        raise ValueError(f"step_coefficients cannot express this scheduler's step: {reason}.")
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("Call scheduler.set_timesteps(num_inference_steps) first: the coefficients are per timestep.")
    if getattr(scheduler, "step_index", None) is not None:
        raise ValueError(
            f"{type(scheduler).__name__} is part-way through a trajectory (step_index={scheduler.step_index}); call "
            "scheduler.set_timesteps(num_inference_steps) again to start from its first step."
        )
    probe_scheduler = copy.deepcopy(scheduler)
    timesteps = scheduler.timesteps.detach().to("cpu", torch.int64)  # (N,)
    inputs = torch.Generator().manual_seed(0)
    # fresh x_t and m at every step (with the same ones, a step that mixes in earlier steps' outputs would pass), and
    # a pair before the first step that the scheduler never sees; noise the steps that draw none never see
    samples, outputs = 3 * torch.randn((2, len(timesteps) + 1, *PROBE_SHAPE), generator=inputs, dtype=torch.float64)
    unseen_noise = 3 * torch.randn((len(timesteps), *PROBE_SHAPE), generator=inputs, dtype=torch.float64)
    noises = [unseen_noise.clone() for _ in NOISE_DTYPES]
    prev_samples = torch.zeros_like(unseen_noise)  # (N, *PROBE_SHAPE)
    kwargs = scheduler_step_kwargs(scheduler, None, eta, extra_noise)
    draws_noise = []
    for i, t in enumerate(timesteps.tolist()):
        step_noises = [noise[i] for noise in noises]
        prev_samples[i], draws = _probe_step(probe_scheduler, t, samples[i + 1], outputs[i + 1], step_noises, kwargs)
        draws_noise.append(draws)

    for noise, noise_dtype in zip(noises, NOISE_DTYPES):
        solution, off, residual = _fit_steps(samples, outputs, noise, prev_samples, draws_noise)
        if not off:
            break
    else:
        solution, off, residual = _fit_steps(samples, outputs, noises[0], prev_samples, draws_noise)
        raise ValueError(
            f"step_coefficients cannot express this scheduler's step: {type(scheduler).__name__}.step at timestep "
            f"{timesteps[off[0]].item()} is not a fixed affine map of (sample, model output, its noise, the previous "
            f"step's sample and model output) (off by {residual[off[0]].item():.2g}); it may clip, threshold, keep "
            "state from before the previous step or draw its noise another way."
        )
    # row i: (A_i, B_i, s_i) and the carry weights of step i + 1, which multiply step i's (x_t, m)
    coefficients = torch.cat([solution[:, :3], torch.cat([solution[1:, 3:], solution[:1, 3:] * 0])], dim=1)
    return StepCoefficients(timesteps, coefficients.float(), draws_noise, noise_dtype)


def _fit_steps(samples, outputs, noises, prev_samples, draws_noise) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Least squares of each step's x_{t'} on (x_t, m, z, x_{t_prev}, m_prev) over the probe's numbers.

    samples, outputs: (N + 1, *PROBE_SHAPE), step i saw entry i + 1 (entry 0 precedes the first step); noises,
    prev_samples: (N, *PROBE_SHAPE). Returns the (N, 5) solution (A, B, s, C, D) in float64, where C, D weigh the
    previous step's x_t and m, the steps whose fit is not exact to float32 rounding, and the residuals (N,)."""
    design = torch.stack([samples[1:], outputs[1:], noises, samples[:-1], outputs[:-1]], dim=-1).flatten(1, -2)
    target = prev_samples.flatten(1)  # (N, n); design: (N, n, 5)
    solution = torch.linalg.lstsq(design, target.unsqueeze(-1)).solution.squeeze(-1)  # (N, 5)
    # Columns a step never saw (z where it drew nothing, the pair before the first step) come out ~0: set to 0.
    solution[:, 2] *= torch.tensor(draws_noise, dtype=torch.float64)
    solution[0, 3:] = 0
    # Weights below float32's resolution of their row (a lower-order last step's carry, a single-step scheduler's)
    # are rounding of an absent term: 0, so such steps add exactly nothing.
    solution[solution.abs() < 1e-12 * solution.abs().amax(dim=1, keepdim=True)] = 0
    residual = ((design @ solution.unsqueeze(-1)).squeeze(-1) - target).abs().amax(dim=1)  # (N,)
    tolerance = 1e3 * torch.finfo(torch.float32).eps * (1 + target.abs().amax(dim=1))
    off = (~(residual <= tolerance)).nonzero().flatten().tolist()  # also catches NaN
    return solution, off, residual


def _probe_step(scheduler, t: int, sample, model_output, noises: list, kwargs: dict) -> tuple[torch.Tensor, bool]:
    """scheduler.step(model_output, t, sample) with a generator of its own; when it draws, the same draw in each of
    NOISE_DTYPES goes into `noises`. Returns x_{t'} and whether the step drew noise."""
    if not torch.equal(scheduler.scale_model_input(sample, t), sample):
        raise ValueError(
            f"step_coefficients cannot express this scheduler's step: {type(scheduler).__name__}.scale_model_input "
            f"rescales the UNet's input (at timestep {t}), and the fast path gives the UNet x_t as it is."
        )
    generator = torch.Generator().manual_seed(t)
    state = generator.get_state()
    if "generator" in kwargs:
        kwargs = {**kwargs, "generator": generator}
    prev_sample = scheduler.step(model_output, t, sample, **kwargs).prev_sample
    draws = not torch.equal(generator.get_state(), state)
    for noise, noise_dtype in zip(noises, NOISE_DTYPES) if draws else ():
        generator.set_state(state)  # the step's own draw again (randn_tensor is how diffusers' schedulers draw)
        noise.copy_(randn_tensor(model_output.shape, generator=generator, dtype=noise_dtype or model_output.dtype))
    return prev_sample, draws


def step_update(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    noise: torch.Tensor,
    coefficients: torch.Tensor,
    carry: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_t -> x_{t'} = A x_t + B m + s z + c with one row of `step_coefficients`: the scheduler's step.

    sample x_t, model_output m (the guided prediction), noise z, carry c (what the previous step's `carry_update`
    left; None or zeros on the first step): (B, C, H, W). Returns x_{t'}: (B, C, H, W).
    """
    prev_from_sample, prev_from_output, prev_from_noise = coefficients[:3].unbind()
    prev_sample = prev_from_sample * sample + prev_from_output * model_output + prev_from_noise * noise
    return prev_sample if carry is None else prev_sample + carry


def carry_update(sample: torch.Tensor, model_output: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """What step i's x_t and m add to step i + 1's update (C x_t + D m, with row i of `step_coefficients`): a
    multistep solver's use of the previous x0 prediction; zeros for single-step schedulers. (B, C, H, W)."""
    carry_from_sample, carry_from_output = coefficients[3:].unbind()
    return carry_from_sample * sample + carry_from_output * model_output


def denoise(
    unet: torch.nn.Module,
    sample: torch.Tensor,
    noise: torch.Tensor,
    carry: torch.Tensor,
    context: torch.Tensor | None,
    coefficients: torch.Tensor,
    timestep: torch.Tensor,
    guidance_scale: torch.Tensor,
    guidance: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole denoising step: the UNet on x_t (both guidance halves in one batch), guidance, `step_update`.

    sample, noise, carry: (B, C, H, W) in the sampler's state dtype; context: (B, D), (2B, D) with guidance, or None;
    coefficients: (5,); timestep: (1,) int64; guidance_scale: () float32. Returns x_{t'} and the next step's carry:
    (B, C, H, W) each.
    """
    model_input = torch.cat([sample, sample]) if guidance else sample
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model_input = model_input.to(unet.dtype, memory_format=memory_format)
    model_output = unet(model_input, timestep, context=context).sample.to(sample.dtype)
    if guidance:
        # classifier-free guidance (Ho & Salimans 2022, eq. 6)
        null, cond = model_output.chunk(2)
        model_output = null + guidance_scale * (cond - null)
    prev_sample = step_update(sample, model_output, noise, coefficients, carry)
    return prev_sample, carry_update(sample, model_output, coefficients)


def _denoise_in_place(
    denoise_fn,
    unet,
    sample,
    noise,
    carry,
    context,
    coefficients,
    timesteps,
    step,
    guidance_scale,
    *,
    guidance,
    channels_last,
) -> None:
    """One step on the fixed buffers (see `_StepBuffers`), all kernels: the step index `step` selects this step's
    coefficients and timestep on the device, and is advanced by one."""
    prev_sample, next_carry = denoise_fn(
        unet,
        sample,
        noise,
        carry,
        context,
        coefficients.index_select(0, step)[0],
        timesteps.index_select(0, step),
        guidance_scale,
        guidance,
        channels_last,
    )
    sample.copy_(prev_sample)
    carry.copy_(next_carry)
    step.add_(1)


@dataclass
class _StepBuffers:
    """The fixed tensors one captured step reads and writes, and its graph (None when steps run eagerly)."""

    sample: torch.Tensor  # (B, C, H, W) x_t, updated in place to x_{t'} by each step
    noise: torch.Tensor  # (B, C, H, W) z of the current step
    carry: torch.Tensor  # (B, C, H, W) what the previous step adds to this one's update (multistep solvers)
    context: torch.Tensor | None  # (B, D) or (2B, D), in the UNet copy's dtype
    coefficients: torch.Tensor  # (T, 5) float32, rows 0..N-1 used
    timesteps: torch.Tensor  # (T,) int64
    step: torch.Tensor  # (1,) int64, the index i of the current step; each step adds 1
    guidance_scale: torch.Tensor  # () float32
    step_fn: Callable[[], None]
    graph: torch.cuda.CUDAGraph | None = None


class FastSampler:
    """The denoising loop of a SpriteDiffusionPipeline as replays of one CUDA graph (the module docstring says how).

    ```py
    >>> sampler = FastSampler(pipe)
    >>> pipe.scheduler.set_timesteps(25)
    >>> x0 = sampler.sample(latents, context, guidance_scale=3.0, generator=generator)  # (B, C, H, W) in [-1, 1]
    ```

    Args:
        pipe: the pipeline; its current `unet` and `scheduler` are read on every call (swapping either is fine).
        dtype: dtype the UNet runs in on CUDA; None (the default) keeps the pipeline UNet's own, so images match the
            step-by-step loop to float rounding and the graph reads the pipeline's weights. torch.bfloat16 runs a bf16
            copy (~2x faster replays: half the bytes every kernel moves); images then match the float32 loop to bf16
            tolerance. Loading the pipeline with torch_dtype=torch.bfloat16 also samples in bf16, eager loop too.
        channels_last: run the UNet in channels_last (NHWC), as a copy. None (the default): only when `dtype` asks
            for a copy anyway, since another memory format picks other cuDNN algorithms and so rounds differently
            from the eager loop (with TF32 convolutions, by more than float32 rounding). With cuDNN's own choice of
            algorithms it records at once; NCHW with cudnn_benchmark=True can replay faster in bf16 but spends
            seconds timing algorithms per graph key, too much for one-off calls.
        compile: torch.compile the step (UNet + guidance + update) before recording it, fusing the GroupNorm/SiLU/add
            chains: several times faster replays, for seconds of compiling per graph key and process on first use.
            True compiles with `COMPILE_OPTIONS`, as training does; a dict compiles with exactly those inductor
            options instead (`torch.compile(options=...)`), e.g.
            `{"max_autotune": True}` to time Triton convolution templates against cuDNN for every shape.
        cuda_graphs: record and replay the step (False runs the same step function eagerly, e.g. to profile it).
        cudnn_benchmark: let cuDNN time its algorithms for these shapes once, before recording (the choice is
            frozen into the graph; the global flag is restored). False: cuDNN's heuristics, no timing.
        max_graphs: graph keys kept (least recently used dropped); each holds its buffers and memory pool.
    """

    def __init__(
        self,
        pipe,
        dtype: torch.dtype | None = None,
        channels_last: bool | None = None,
        compile: bool | dict = False,
        cuda_graphs: bool = True,
        cudnn_benchmark: bool = False,
        max_graphs: int = 4,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}.")
        self.pipe = pipe
        self.dtype = dtype
        self.channels_last = channels_last
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.cudnn_benchmark = cudnn_benchmark
        self.max_graphs = max_graphs
        if compile:
            options = dict(compile) if isinstance(compile, dict) else COMPILE_OPTIONS
            self._denoise = torch.compile(denoise, dynamic=False, options=options)
        else:
            self._denoise = denoise
        self._buffers: OrderedDict[tuple, _StepBuffers] = OrderedDict()
        self._unet_copy: torch.nn.Module | None = None
        self._unet_source: torch.nn.Module | None = None
        self._unet_fingerprint: tuple | None = None
        self._coefficients: OrderedDict[tuple, StepCoefficients] = OrderedDict()
        # What the last calls cost beside the replays (read by benchmarks/bench_fast_sampling.py).
        self.stats = {"captures": 0, "warmup_s": 0.0, "capture_s": 0.0, "unet_copy_s": 0.0}

    def fallback_reason(
        self,
        *,
        device: torch.device | str,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> str | None:
        """Why the pipeline should run its own loop for a call with these options; None when this sampler runs it.

        Every eta, extra_noise, guidance scale and step count is supported (they are data in the graph), and every
        generator (a CPU one costs a copy per step, see the module docstring). Checks only what decides the choice (no
        GPU needed), so it is tested on the CPU with device="cuda". Once `set_timesteps` has run, the scheduler's step
        is probed at those timesteps (with eta=1, so DDIM's noise term is probed too; cached per scheduler state).
        """
        unet = self.pipe.unet
        if torch.device(device).type != "cuda":
            return f"the device is {torch.device(device).type}; CUDA graphs need a CUDA device"
        if callback_on_step_end is not None:
            return "callback_on_step_end must see (and may change) the sample after every step"
        if isinstance(generator, (list, tuple)):
            return "one generator per image draws each image's noise separately"
        if getattr(unet, "_hf_hook", None) is not None:
            return "the UNet has accelerate hooks (model offloading) that move weights during the forward pass"
        if unet.training and unet.config.dropout > 0:
            return "the UNet is in training mode with dropout; call pipe.unet.eval() to sample"
        if torch.is_autocast_enabled("cuda"):
            return "an autocast region is open around the call; the recorded step runs in the sampler's own dtype"
        scheduler = self.pipe.scheduler
        reason = config_fallback_reason(scheduler)
        if reason is not None or getattr(scheduler, "num_inference_steps", None) is None:
            return reason
        try:
            self._step_coefficients(scheduler, eta=1.0, extra_noise=True)
        except ValueError as error:
            return str(error).removeprefix("step_coefficients cannot express this scheduler's step: ").rstrip(".")
        return None

    def _step_coefficients(self, scheduler, eta: float, extra_noise: bool) -> StepCoefficients:
        """`step_coefficients`, cached: probing costs ~0.1 ms a timestep, a noticeable part of a 500-step call."""
        kwargs = scheduler_step_kwargs(scheduler, None, eta, extra_noise)  # only what this step takes enters the key
        key = (
            scheduler,
            repr(scheduler.config),
            tuple(scheduler.timesteps.tolist()),
            kwargs.get("eta"),
            kwargs.get("extra_noise"),
        )
        if key not in self._coefficients:
            self._coefficients[key] = step_coefficients(scheduler, eta=eta, extra_noise=extra_noise)
            while len(self._coefficients) > 8:
                self._coefficients.popitem(last=False)
        self._coefficients.move_to_end(key)
        return self._coefficients[key]

    def graph_key(self, latents: torch.Tensor, context: torch.Tensor | None, guidance: bool) -> tuple:
        """What one graph is recorded for: shapes, dtypes, device and guidance on/off. Schedulers, step counts,
        eta, extra_noise and guidance scales are data, so they share graphs."""
        context_key = None if context is None else tuple(context.shape)
        num_train_timesteps = self.pipe.scheduler.config.num_train_timesteps
        return (str(latents.device), tuple(latents.shape), latents.dtype, context_key, guidance, num_train_timesteps)

    @torch.no_grad()
    def sample(
        self,
        latents: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        extra_noise: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run the denoising loop over `pipe.scheduler.timesteps` (call `set_timesteps` first, as the pipeline does).

        Args:
            latents: x_T, (B, C, H, W), already scaled by init_noise_sigma (1 for the sprite schedulers).
            context: what the UNet is called with, as the pipeline's step 2 builds it: (B, D), or (2B, D) --
                null rows, then conditional rows (diffusers' order) -- when guidance_scale != 1; None for unconditional models.
            guidance_scale, eta, extra_noise, generator: as in `SpriteDiffusionPipeline.__call__`.

        Returns:
            x_0: (B, C, H, W) in about [-1, 1], in the latents' dtype (a new tensor).
        """
        if isinstance(generator, (list, tuple)):
            raise ValueError("FastSampler takes one generator (or None), not a list; the pipeline's loop takes lists.")
        guidance = context is not None and guidance_scale != 1.0
        batch_size = latents.shape[0]
        if context is not None and context.shape[0] != (2 * batch_size if guidance else batch_size):
            raise ValueError(
                f"context has {context.shape[0]} rows for {batch_size} latents with guidance_scale={guidance_scale}; "
                f"expected {2 * batch_size if guidance else batch_size} (with guidance: null rows, then conditional)."
            )
        try:
            steps = self._step_coefficients(self.pipe.scheduler, eta=eta, extra_noise=extra_noise)
        except ValueError as error:
            raise ValueError(
                f"FastSampler cannot run this call: {error} Sample with the pipeline's own loop."
            ) from None
        num_steps = len(steps.draws_noise)
        buffers = self._get_buffers(latents, context, guidance)

        buffers.sample.copy_(latents)
        buffers.carry.zero_()  # the first step has no previous one
        if context is not None:
            buffers.context.copy_(context)
        buffers.coefficients[:num_steps].copy_(steps.coefficients)
        buffers.timesteps[:num_steps].copy_(steps.timesteps)
        buffers.step.zero_()
        buffers.guidance_scale.fill_(guidance_scale)
        for i in range(num_steps):
            if steps.draws_noise[i]:
                # The scheduler's own draw, randn_tensor(model_output.shape, generator, device, dtype), so any generator
                # gives the eager loop's noise; a CPU generator draws on the CPU and copies (the module docstring).
                dtype = steps.noise_dtype or latents.dtype
                noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=dtype)
                buffers.noise.copy_(noise)
            if buffers.graph is not None:
                buffers.graph.replay()
            else:
                buffers.step_fn()
        return buffers.sample.clone()

    def _get_buffers(self, latents: torch.Tensor, context: torch.Tensor | None, guidance: bool) -> _StepBuffers:
        unet = self._get_unet(latents.device)
        key = self.graph_key(latents, context, guidance)
        if key in self._buffers:
            self._buffers.move_to_end(key)
            return self._buffers[key]
        device = latents.device
        num_train_timesteps = self.pipe.scheduler.config.num_train_timesteps
        buffers = _StepBuffers(
            sample=torch.zeros_like(latents, memory_format=torch.contiguous_format),
            noise=torch.zeros_like(latents, memory_format=torch.contiguous_format),
            carry=torch.zeros_like(latents, memory_format=torch.contiguous_format),
            context=None if context is None else torch.zeros(context.shape, dtype=unet.dtype, device=device),
            coefficients=torch.zeros(num_train_timesteps, len(COEFFICIENT_NAMES), device=device),
            timesteps=torch.zeros(num_train_timesteps, dtype=torch.int64, device=device),
            step=torch.zeros(1, dtype=torch.int64, device=device),
            guidance_scale=torch.ones((), device=device),
            step_fn=lambda: None,
        )
        channels_last = self._channels_last() and device.type == "cuda"
        # The step function holds the tensors, not `buffers` or `self`: a closure over either would be a reference
        # cycle (buffers -> step_fn -> buffers), keeping a dropped sampler's graphs, memory pools and UNet copy alive
        # until Python's cycle collector happened to run.
        buffers.step_fn = functools.partial(
            _denoise_in_place,
            self._denoise,
            unet,
            *(buffers.sample, buffers.noise, buffers.carry, buffers.context, buffers.coefficients, buffers.timesteps),
            buffers.step,
            buffers.guidance_scale,
            guidance=guidance,
            channels_last=channels_last,
        )
        if device.type == "cuda" and self.cuda_graphs:
            buffers.graph = self._capture(buffers.step_fn, device)
        elif self._denoise is not denoise:
            start = time.perf_counter()
            buffers.step_fn()  # compiles now, so the first timed step is not the compile
            self.stats["warmup_s"] = time.perf_counter() - start
        self._buffers[key] = buffers
        while len(self._buffers) > self.max_graphs:
            self._buffers.popitem(last=False)
        return buffers

    def _capture(self, step_fn: Callable[[], None], device: torch.device) -> torch.cuda.CUDAGraph:
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark  # the algorithms chosen now are frozen into the graph
        try:
            # Warm up on a side stream first (torch.cuda.graph's documented recipe): cuDNN picks its algorithms and
            # torch.compile compiles here, not inside the capture. The buffers hold zeros, so nothing is drawn.
            start = time.perf_counter()
            stream = side_stream(device.index if device.index is not None else torch.cuda.current_device())
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    step_fn()
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
            self.stats["warmup_s"] = time.perf_counter() - start

            start = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step_fn()
            torch.cuda.synchronize(device)
            self.stats["capture_s"] = time.perf_counter() - start
        finally:
            torch.backends.cudnn.benchmark = benchmark
        self.stats["captures"] += 1
        return graph

    def _unet_dtype(self) -> torch.dtype:
        return self.dtype if self.dtype is not None else self.pipe.unet.dtype

    def _channels_last(self) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return self._unet_dtype() != self.pipe.unet.dtype  # a copy is made anyway: make it the faster layout

    def _get_unet(self, device: torch.device) -> torch.nn.Module:
        """The UNet the steps run: on CUDA with another `dtype` or layout a copy, refreshed in place when the
        pipeline's weights change (the recorded graphs hold the copy's addresses); otherwise the pipeline's UNet."""
        source = self.pipe.unet
        tensors = [*source.parameters(), *source.buffers()]
        addresses = tuple(t.data_ptr() for t in tensors)
        versions = tuple(t._version for t in tensors)  # bumped by every in-place write (load_state_dict, optimizers)
        dtype, channels_last = self._unet_dtype(), self._channels_last()
        if device.type != "cuda" or (dtype == source.dtype and not channels_last):
            # Graphs read the pipeline's own tensors: new values are seen, moved or re-allocated tensors are not.
            if self._unet_source is not source or self._unet_fingerprint != addresses:
                self._buffers.clear()
            self._unet_copy, self._unet_source, self._unet_fingerprint = source, source, addresses
            return source

        fingerprint = (addresses, versions)
        unet_copy = self._unet_copy
        if self._unet_fingerprint == fingerprint and self._unet_source is source and unet_copy.device == device:
            return unet_copy
        start = time.perf_counter()
        copied = [] if unet_copy is None or unet_copy is source else [*unet_copy.parameters(), *unet_copy.buffers()]
        same_layout = self._unet_source is source and unet_copy.device == device and len(copied) == len(tensors)
        if same_layout and all(a.shape == b.shape for a, b in zip(copied, tensors)):
            for target, value in zip(copied, tensors):
                target.copy_(value)  # new values into the addresses the graphs hold
        else:
            memory_format = torch.channels_last if channels_last else torch.preserve_format
            unet_copy = copy.deepcopy(source).eval().requires_grad_(False)
            # nn.Module.to: ModelMixin.to warns about modules to keep in float32 on every cast, and names none here
            torch.nn.Module.to(unet_copy, device=device, dtype=dtype, memory_format=memory_format)
            self._buffers.clear()
        self.stats["unet_copy_s"] = time.perf_counter() - start
        self._unet_copy, self._unet_source, self._unet_fingerprint = unet_copy, source, fingerprint
        return unet_copy
