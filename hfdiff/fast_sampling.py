"""Fast sampling for SpriteDiffusionPipeline: one denoising step recorded as a CUDA graph and replayed.

A sprite UNet is small (16x16 images, ~1.4M parameters for "sprite-small", ~250 kernels a step), so the pipeline's
eager loop pays for launching those kernels from Python on every step, and at 1,000 sprites it also pays for
running them unfused in float32. `FastSampler` records one whole step (UNet forward in bf16, classifier-free
guidance, scheduler update) once as a CUDA graph and replays it for every step; `compile=True` also fuses the
GroupNorm/SiLU/add chains with torch.compile before recording. benchmarks/NOTES-sampling.md has the measurements and
where the remaining time goes.
Three things make one recording serve every step:

1. The scheduler update is rewritten with per-step coefficients (`step_coefficients`) computed on the host for the
   chosen timesteps and gathered on the device by a step counter that the graph advances itself. DDPM or DDIM, the
   number of steps, eta, extra_noise, clipping and the guidance scale are data in fixed buffers, not graph structure:
   one graph per (batch, image shape, guidance on/off, dtype) serves them all.
2. The noise z of each step is drawn between replays into a fixed buffer, from the same generator, with the same
   shape and dtype and in the same order as the pipeline's own loop (see "Reproducibility").
3. The UNet runs as the sampler's own copy in bf16 (channels_last by default), refreshed in place when the
   pipeline's weights change, so the user's model is never converted.

Reproducibility: the same generator gives the same images on every call. With a generator on the latents' device (a
`torch.Generator("cuda")`) or `generator=None` (the global CUDA generator), the noise is exactly the stream the
pipeline's eager loop draws, so the two differ only by bf16 rounding. With a CPU generator on CUDA latents, the eager
loop draws each step's noise on the CPU and copies it over (about 4 ms a step for 1,000 sprites); here one 63-bit seed
is drawn from it instead to seed a private CUDA generator: same generator -> same images still, but not the eager
loop's images. On the CPU the sampler runs the same step function without graphs, in the pipeline's dtype, and
reproduces the eager loop's noise stream exactly.

What is cached on the sampler between calls: the UNet copy (bf16) and, per graph key, the fixed
buffers, the CUDA graph with its memory pool and (with `compile=True`) the compiled step. Each call copies in x_T,
the context, the coefficients (N x 10 floats) and the guidance scale, draws the noise and replays N times.

When the pipeline should not use it, `FastSampler.fallback_reason` says why in words (not CUDA, a scheduler other
than the sprite DDPM/DDIM ones, learned variances, dynamic thresholding, a step callback, one generator per image,
offload hooks, an autocast around the call); the pipeline then runs its own loop, which is the same math in full
precision.
"""

from __future__ import annotations

import copy
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schedulers import SpriteDDIMScheduler, SpriteDDPMScheduler
from .schedulers._math import x0_and_eps_from_model_output

__all__ = ["FastSampler", "StepCoefficients", "side_stream", "step_coefficients", "step_update"]

# Columns of StepCoefficients.coefficients, in order; the update they define is written out in `step_update`.
COEFFICIENT_NAMES = (
    "x0_from_sample",  # a: x0_hat = a x_t + b m (then clipped)
    "x0_from_output",  # b
    "eps_from_sample",  # c: eps_hat = c x_t + d m
    "eps_from_output",  # d
    "prev_from_x0",  # p: x_{t'} = p x0_hat + q eps_hat + r x_t + s z
    "prev_from_eps",  # q
    "prev_from_sample",  # r
    "prev_from_noise",  # s (0 on steps that draw no noise)
    "clip_min",  # x0_hat is clamped to [clip_min, clip_max]; -inf/+inf without clip_sample
    "clip_max",
)
SUPPORTED_SCHEDULERS = (SpriteDDPMScheduler, SpriteDDIMScheduler)
FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


@dataclass
class StepCoefficients:
    """The scheduler's update for each chosen timestep, as numbers.

    timesteps: (N,) int64, the scheduler's timesteps t_i, in sampling order.
    coefficients: (N, 10) float32, one row per step, columns as COEFFICIENT_NAMES.
    draws_noise: N booleans: whether the scheduler's step i draws z (the fast path draws exactly when it does).
    """

    timesteps: torch.Tensor
    coefficients: torch.Tensor
    draws_noise: list[bool]


def scheduler_fallback_reason(scheduler) -> str | None:
    """Why `step_coefficients` cannot express this scheduler's step (None when it can)."""
    if type(scheduler) not in SUPPORTED_SCHEDULERS:
        return (
            f"the scheduler is {type(scheduler).__name__}; the fast path knows SpriteDDPMScheduler and "
            "SpriteDDIMScheduler (swap one in with SpriteDDIMScheduler.from_config(pipe.scheduler.config))"
        )
    if scheduler.config.thresholding:
        return "dynamic thresholding (thresholding=True) takes a per-image quantile of x0_hat at every step"
    variance_type = getattr(scheduler.config, "variance_type", "fixed_large")
    if variance_type not in FIXED_VARIANCE_TYPES:
        return f"variance_type={variance_type!r} takes sigma_t from the network's output, not from the schedule"
    return None


def step_coefficients(scheduler, eta: float = 0.0, extra_noise: bool = True) -> StepCoefficients:
    """The sprite schedulers' step for every timestep in `scheduler.timesteps`, as ten numbers per step.

    Every sprite step is affine in the sample x_t, the network output m and the noise z, up to the clamp of x0_hat:
        x0_hat  = clamp(a x_t + b m)       Ho et al. 2020 eq. 15; Song et al. 2021 eq. 12 "predicted x_0"
        eps_hat = c x_t + d m              (x_0 and v targets: Salimans & Ho 2022, see schedulers/_math.py)
        x_{t'}  = p x0_hat + q eps_hat + r x_t + s z
    with DDPM's posterior mean (eq. 7: q = 0, p and r its two weights, s = sigma_t) or DDIM's eq. 12 (p =
    sqrt(abar_{t'}), q = sqrt(1 - abar_{t'} - sigma^2), r = 0, s = sigma_t(eta) of eq. 16). The numbers are computed
    in float64 and stored in float32, so a step agrees with `scheduler.step` to float32 rounding (tests check it).
    """
    reason = scheduler_fallback_reason(scheduler)
    if reason is not None:
        raise ValueError(f"step_coefficients cannot express this scheduler's step: {reason}.")
    if scheduler.num_inference_steps is None:
        raise ValueError("Call scheduler.set_timesteps(num_inference_steps) first: the coefficients are per timestep.")
    config = scheduler.config
    timesteps = scheduler.timesteps.detach().to("cpu", torch.int64)  # (N,)
    alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)  # (T,)
    ddim = isinstance(scheduler, SpriteDDIMScheduler)

    # 1. the previous timestep t' and abar_{t'}, by each scheduler's own rule
    if ddim:
        # DDIMScheduler.step: t' = t - T // n; before t = 0, abar is final_alpha_cumprod (1 with set_alpha_to_one)
        prev_timesteps = timesteps - config.num_train_timesteps // scheduler.num_inference_steps
        alpha_bar_start = float(scheduler.final_alpha_cumprod)
    else:
        # DDPMScheduler.previous_timestep once set_timesteps has run: the next entry, -1 after the last one
        prev_timesteps = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
        alpha_bar_start = 1.0
    alpha_bar_t = alphas_cumprod[timesteps]
    alpha_bar_prev = torch.where(
        prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], torch.tensor(alpha_bar_start).double()
    )

    # 2. x0_hat and eps_hat are linear in (x_t, m) for every prediction type: read a, b, c, d off the schedulers'
    #    own parameterisation at the unit vectors, so that piece of math stays in one place (_math.py)
    ones, zeros = torch.ones_like(alpha_bar_t), torch.zeros_like(alpha_bar_t)
    x0_from_sample, eps_from_sample = x0_and_eps_from_model_output(zeros, ones, alpha_bar_t, config.prediction_type)
    x0_from_output, eps_from_output = x0_and_eps_from_model_output(ones, zeros, alpha_bar_t, config.prediction_type)

    # 3. the update x_{t'} = p x0_hat + q eps_hat + r x_t + s z
    if ddim:
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()  # eq. 16
        prev_from_x0 = alpha_bar_prev.sqrt()
        prev_from_eps = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt()  # "direction pointing to x_t", eq. 12
        prev_from_sample = zeros
        draws_noise = torch.full_like(timesteps, eta > 0, dtype=torch.bool)  # DDIM draws on every step when eta > 0
    else:
        alpha_t = alpha_bar_t / alpha_bar_prev  # the single forward step t' -> t
        beta_t = 1 - alpha_t
        prev_from_x0 = alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar_t)  # posterior mean mu~_t, eq. 7
        prev_from_eps = zeros
        prev_from_sample = alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        posterior_variance = ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t).clamp(min=1e-20)  # beta~_t
        sigma = {
            "fixed_small": posterior_variance.sqrt(),
            "fixed_small_log": torch.exp(0.5 * torch.log(posterior_variance)),
            "fixed_large": beta_t.sqrt(),
            "fixed_large_log": torch.exp(0.5 * torch.log(beta_t)),
        }[config.variance_type]
        draws_noise = (prev_timesteps >= 0) & extra_noise  # Alg. 2: z = 0 on the step that lands on x_0
    prev_from_noise = torch.where(draws_noise, sigma, zeros)

    bound = config.clip_sample_range if config.clip_sample else float("inf")
    columns = (
        x0_from_sample,
        x0_from_output,
        eps_from_sample,
        eps_from_output,
        prev_from_x0,
        prev_from_eps,
        prev_from_sample,
        prev_from_noise,
        torch.full_like(alpha_bar_t, -bound),
        torch.full_like(alpha_bar_t, bound),
    )
    coefficients = torch.stack([column.expand_as(alpha_bar_t) for column in columns], dim=1).float()  # (N, 10)
    return StepCoefficients(timesteps=timesteps, coefficients=coefficients, draws_noise=draws_noise.tolist())


def step_update(
    sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    """x_t -> x_{t'} with one row of `step_coefficients` (10,): the sprite schedulers' step, rearranged.

    sample x_t, model_output m (the guided prediction), noise z: (B, C, H, W). Returns x_{t'}: (B, C, H, W).
    """
    a, b, c, d, p, q, r, s, clip_min, clip_max = coefficients.unbind()
    x0_hat = (a * sample + b * model_output).clamp(clip_min, clip_max)
    eps_hat = c * sample + d * model_output
    return p * x0_hat + q * eps_hat + r * sample + s * noise


def denoise(
    unet: torch.nn.Module,
    sample: torch.Tensor,
    noise: torch.Tensor,
    context: torch.Tensor | None,
    coefficients: torch.Tensor,
    timestep: torch.Tensor,
    guidance_scale: torch.Tensor,
    guidance: bool,
    channels_last: bool,
) -> torch.Tensor:
    """One whole denoising step: the UNet on x_t (both guidance halves in one batch), guidance, `step_update`.

    sample, noise: (B, C, H, W) in the sampler's state dtype; context: (B, D), (2B, D) with guidance, or None;
    coefficients: (10,); timestep: (1,) int64; guidance_scale: () float32. Returns x_{t'}: (B, C, H, W).
    """
    model_input = torch.cat([sample, sample]) if guidance else sample
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model_input = model_input.to(unet.dtype, memory_format=memory_format)
    model_output = unet(model_input, timestep, context=context).sample.to(sample.dtype)
    if guidance:
        # classifier-free guidance (Ho & Salimans 2022, eq. 6)
        cond, null = model_output.chunk(2)
        model_output = null + guidance_scale * (cond - null)
    return step_update(sample, model_output, noise, coefficients)


def _denoise_in_place(
    denoise_fn, unet, sample, noise, context, coefficients, timesteps, step, guidance_scale, *, guidance, channels_last
) -> None:
    """One step on the fixed buffers (see `_StepBuffers`), all kernels: the step index `step` selects this step's
    coefficients and timestep on the device, and is advanced by one."""
    x_prev = denoise_fn(
        unet,
        sample,
        noise,
        context,
        coefficients.index_select(0, step)[0],
        timesteps.index_select(0, step),
        guidance_scale,
        guidance,
        channels_last,
    )
    sample.copy_(x_prev)
    step.add_(1)


@functools.cache
def side_stream(device_index: int) -> torch.cuda.Stream:
    """The one stream per device on which every recording in this process warms up (and training captures).

    One, not a new stream per recording: cuBLAS keeps a workspace for every stream it has run on (32 MiB each on an
    H100) for the life of the process, so a fresh stream per graph grew a training run's GPU memory by ~33 MB at every
    validation grid (benchmarks/NOTES-training.md, "Soak")."""
    return torch.cuda.Stream(device_index)


@dataclass
class _StepBuffers:
    """The fixed tensors one captured step reads and writes, and its graph (None when steps run eagerly)."""

    sample: torch.Tensor  # (B, C, H, W) x_t, updated in place to x_{t'} by each step
    noise: torch.Tensor  # (B, C, H, W) z of the current step
    context: torch.Tensor | None  # (B, D) or (2B, D), in the UNet copy's dtype
    coefficients: torch.Tensor  # (T, 10) float32, rows 0..N-1 used
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
        dtype: dtype of the sampler's UNet copy on CUDA; None keeps the pipeline UNet's dtype. bf16 halves the bytes
            every kernel moves; outputs then match the float32 loop to bf16 tolerance.
        channels_last: run the copy in channels_last (NHWC). With cuDNN's own choice of algorithms it records in
            ~0.03 s; NCHW with cudnn_benchmark=True ran 14% faster on an H200 but spends ~2 s timing algorithms
            per graph key, too much for the default of one-off calls.
        compile: torch.compile the step (UNet + guidance + update) before recording it, fusing the GroupNorm/SiLU/add
            chains: 2.7x faster replays on an H200, for ~13 s of compiling per graph key and process on first use.
            A dict compiles with those inductor options (`torch.compile(options=...)`), e.g.
            `{"max_autotune": True}` to time Triton convolution templates against cuDNN for every shape.
        cuda_graphs: record and replay the step (False runs the same step function eagerly, e.g. to profile it).
        cudnn_benchmark: let cuDNN time its algorithms for these shapes once, before recording (the choice is
            frozen into the graph; the global flag is restored). False: cuDNN's heuristics, no timing.
        max_graphs: graph keys kept (least recently used dropped); each holds its buffers and memory pool.
    """

    def __init__(
        self,
        pipe,
        dtype: torch.dtype | None = torch.bfloat16,
        channels_last: bool = True,
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
        if isinstance(compile, dict):
            self._denoise = torch.compile(denoise, dynamic=False, options=dict(compile))
        else:
            self._denoise = torch.compile(denoise, dynamic=False) if compile else denoise
        self._buffers: OrderedDict[tuple, _StepBuffers] = OrderedDict()
        self._unet_copy: torch.nn.Module | None = None
        self._unet_source: torch.nn.Module | None = None
        self._unet_fingerprint: tuple | None = None
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

        Every eta, extra_noise, guidance scale and step count is supported (they are data in the graph). Checks only
        what decides the choice (no GPU needed), so it is tested on the CPU with device="cuda".
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
            return "an autocast region is open around the call; the fast path picks its own dtype"
        return scheduler_fallback_reason(self.pipe.scheduler)

    def graph_key(self, latents: torch.Tensor, context: torch.Tensor | None, guidance: bool) -> tuple:
        """What one graph is recorded for: shapes, dtypes, device and guidance on/off. Schedulers, step counts,
        eta, extra_noise, clipping and guidance scales are data, so they share graphs."""
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
            context: what the UNet is called with, as the pipeline's step 1 builds it: (B, D), or (2B, D) --
                conditional rows, then null rows -- when guidance_scale != 1; None for unconditional models.
            guidance_scale, eta, extra_noise, generator: as in `SpriteDiffusionPipeline.__call__`.

        Returns:
            x_0: (B, C, H, W) in about [-1, 1], in the latents' dtype (a new tensor).
        """
        if isinstance(generator, (list, tuple)):
            raise ValueError("FastSampler takes one generator (or None), not a list; the pipeline's loop takes lists.")
        reason = scheduler_fallback_reason(self.pipe.scheduler)
        if reason is not None:
            raise ValueError(f"FastSampler cannot run this call: {reason}. Sample with the pipeline's own loop.")
        guidance = context is not None and guidance_scale != 1.0
        batch_size = latents.shape[0]
        if context is not None and context.shape[0] != (2 * batch_size if guidance else batch_size):
            raise ValueError(
                f"context has {context.shape[0]} rows for {batch_size} latents with guidance_scale={guidance_scale}; "
                f"expected {2 * batch_size if guidance else batch_size} (with guidance: conditional rows, then null)."
            )
        steps = step_coefficients(self.pipe.scheduler, eta=eta, extra_noise=extra_noise)
        num_steps = len(steps.draws_noise)
        buffers = self._get_buffers(latents, context, guidance)

        buffers.sample.copy_(latents)
        if context is not None:
            buffers.context.copy_(context)
        buffers.coefficients[:num_steps].copy_(steps.coefficients)
        buffers.timesteps[:num_steps].copy_(steps.timesteps)
        buffers.step.zero_()
        buffers.guidance_scale.fill_(guidance_scale)
        noise_generator = self._noise_generator(generator, latents.device)
        for i in range(num_steps):
            if steps.draws_noise[i]:
                # the same draw as the scheduler's randn_tensor(shape, generator, device, dtype): empty + normal_
                buffers.noise.normal_(generator=noise_generator)
            if buffers.graph is not None:
                buffers.graph.replay()
            else:
                buffers.step_fn()
        return buffers.sample.clone()

    @staticmethod
    def _noise_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
        if generator is None or generator.device.type == device.type:
            return generator  # the eager loop's own stream (None: the device's global generator)
        # A CPU generator with CUDA latents: one seed from it for a generator on the device (module docstring).
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
        return torch.Generator(device).manual_seed(seed)

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
            context=None if context is None else torch.zeros(context.shape, dtype=unet.dtype, device=device),
            coefficients=torch.zeros(num_train_timesteps, len(COEFFICIENT_NAMES), device=device),
            timesteps=torch.zeros(num_train_timesteps, dtype=torch.int64, device=device),
            step=torch.zeros(1, dtype=torch.int64, device=device),
            guidance_scale=torch.ones((), device=device),
            step_fn=lambda: None,
        )
        channels_last = self.channels_last and device.type == "cuda"
        # The step function holds the tensors, not `buffers` or `self`: a closure over either would be a reference
        # cycle (buffers -> step_fn -> buffers), keeping a dropped sampler's graphs, memory pools and UNet copy alive
        # until Python's cycle collector happened to run.
        buffers.step_fn = functools.partial(
            _denoise_in_place,
            self._denoise,
            unet,
            *(buffers.sample, buffers.noise, buffers.context, buffers.coefficients, buffers.timesteps),
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

    def _get_unet(self, device: torch.device) -> torch.nn.Module:
        """The UNet the steps run: on CUDA a copy in `dtype` and channels_last, refreshed in place when the
        pipeline's weights change (the recorded graphs hold the copy's addresses); otherwise the pipeline's UNet."""
        source = self.pipe.unet
        tensors = [*source.parameters(), *source.buffers()]
        addresses = tuple(t.data_ptr() for t in tensors)
        versions = tuple(t._version for t in tensors)  # bumped by every in-place write (load_state_dict, optimizers)
        dtype = self.dtype if self.dtype is not None else source.dtype
        if device.type != "cuda" or (dtype == source.dtype and not self.channels_last):
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
            memory_format = torch.channels_last if self.channels_last else torch.preserve_format
            unet_copy = copy.deepcopy(source).eval().requires_grad_(False)
            # nn.Module.to: ModelMixin.to warns about modules to keep in float32 on every cast, and names none here
            torch.nn.Module.to(unet_copy, device=device, dtype=dtype, memory_format=memory_format)
            self._buffers.clear()
        self.stats["unet_copy_s"] = time.perf_counter() - start
        self._unet_copy, self._unet_source, self._unet_fingerprint = unet_copy, source, fingerprint
        return unet_copy
