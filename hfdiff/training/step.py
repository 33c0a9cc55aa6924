"""One optimizer step of the training loop, two ways: `EagerStep` (any device, DDP, gradient accumulation, fp16) and
`GraphedStep` (one CUDA GPU: the whole step replayed from a CUDA graph).

A step of sprite-small is hundreds of small kernels: launched one by one from Python, the host needs more time to
launch them than the GPU needs to run them, so the step time hardly grows with the batch size. A CUDA
graph records the launches once and replays them with one call, so the host's share shrinks to the few launches
that draw the step's random numbers and move the LR schedule and the EMA decay along.

Both ways compute the same function of the same draws: the random numbers of a micro-batch come from
`draw_step_noise` with a generator the loop seeds from (seed, rank, epoch, micro-batch), in the same order, so
resuming stays exact and a graphed run follows an eager one within floating-point rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cuda import side_stream


@dataclass
class StepNoise:
    """The random numbers of one micro-batch."""

    keep_draw: torch.Tensor | None  # (B,) U[0, 1): the context is kept where keep_draw >= p_uncond (conditional only)
    noise: torch.Tensor  # (B, C, H, W) eps ~ N(0, I)
    timesteps: torch.Tensor  # (B,) t ~ U{0..T-1}
    flip_draw: torch.Tensor | None = None  # (B,) U[0, 1): the image is mirrored where flip_draw < 0.5 (--random_flip)
    context_noise: torch.Tensor | None = None  # (B, D) N(0, I), scaled by --caption_noise
    mix_draw: torch.Tensor | None = None  # (B, 2) U[0, 1): --caption_mixup's lam and its second caption's pick


def draw_step_noise(
    generator, batch_size, image_shape, num_train_timesteps, conditional, out=None, flip=False, context_noise_dim=0,
    mixup=False,
) -> StepNoise:  # fmt: skip
    """Draw a micro-batch's random numbers in a fixed order (context dropout, eps, t, then the flips with `flip`,
    then (B, context_noise_dim) context noise, then the mixup draws with `mixup`); `out` (a StepNoise) receives them
    in place, as a CUDA graph's static inputs must. The optional draws come last and only when asked for, so that
    each flag leaves every other draw of a micro-batch as it is: a run with the flag and one without see the same
    noise, timesteps and dropout."""
    device = generator.device
    keep_draw = None
    if conditional:
        keep_out = None if out is None else out.keep_draw
        keep_draw = torch.rand(batch_size, generator=generator, device=device, out=keep_out)
    noise = torch.randn(
        (batch_size, *image_shape), generator=generator, device=device, out=None if out is None else out.noise
    )
    timesteps = torch.randint(
        0,
        num_train_timesteps,
        (batch_size,),
        generator=generator,
        device=device,
        out=None if out is None else out.timesteps,
    )
    flip_draw = None
    if flip:
        flip_out = None if out is None else out.flip_draw
        flip_draw = torch.rand(batch_size, generator=generator, device=device, out=flip_out)
    context_noise = mix_draw = None
    if context_noise_dim:
        shape, noise_out = (batch_size, context_noise_dim), None if out is None else out.context_noise
        context_noise = torch.randn(shape, generator=generator, device=device, out=noise_out)
    if mixup:
        mix_out = None if out is None else out.mix_draw
        mix_draw = torch.rand((batch_size, 2), generator=generator, device=device, out=mix_out)
    return StepNoise(keep_draw, noise, timesteps, flip_draw, context_noise, mix_draw)


def get_batch(
    images, context_index, context_table, indices, keep_draw, p_uncond, memory_format, batch=None, flip_draw=None,
    context_noise=None, mix_draw=None, caption_choices=None,
):  # fmt: skip
    """Gather a batch on the device: x_0 (B, C, H, W) float in [-1, 1], and the context (B, D) = rows of
    `context_table` picked by `context_index` (context.py: one-hot classes or caption embeddings), each row zeroed
    (the null context) where keep_draw < p_uncond; or None for unconditional training.

    `batch` (B, C, H, W) uint8, when given, holds the images themselves (the streaming path) and `images` is not read.
    With `flip_draw`, the images where it is < 0.5 are mirrored left-right (torchvision's RandomHorizontalFlip, p =
    0.5): one `where` over the batch, without a host sync or a data-dependent shape, so a CUDA graph can replay it.

    For classes the table is the (K, K) identity: a row lookup gives the one-hot vectors without F.one_hot, which
    checks its input's range on the host and so waits for the GPU at every step.

    Caption regularisers (text models; both off by default), applied before the dropout so the null context stays
    exactly zero: with `mix_draw` (B, 2) and `caption_choices` (N, K), the context is lam c + (1 - lam) c' with lam =
    mix_draw[:, 0] and c' another of the image's K captions (mix_draw[:, 1] picks it): a point between two true
    phrasings of one image. With `context_noise` (B, D), already scaled by --caption_noise, each row gets that noise
    times its root-mean-square entry, so the flag means the same for any encoder's scale."""
    x0 = (images[indices] if batch is None else batch).float().div_(127.5).sub_(1.0)  # uint8 -> [-1, 1]
    if flip_draw is not None:
        x0 = torch.where((flip_draw < 0.5)[:, None, None, None], x0.flip(-1), x0)
    x0 = x0.contiguous(memory_format=memory_format)
    if context_index is None:
        return x0, None
    context = context_table[context_index[indices]]  # (B, D)
    if mix_draw is not None:
        options = caption_choices[indices]  # (B, K)
        pick = (mix_draw[:, 1] * options.shape[1]).long().clamp_(max=options.shape[1] - 1)
        other = context_table[options.gather(1, pick[:, None])[:, 0]]  # (B, D)
        lam = mix_draw[:, :1]
        context = lam * context + (1.0 - lam) * other
    if context_noise is not None:
        context = context + context_noise * context.pow(2).mean(dim=1, keepdim=True).sqrt()
    return x0, context * (keep_draw >= p_uncond).to(context.dtype)[:, None]


def diffusion_loss(model, noise_scheduler, x0, context, noise, timesteps, memory_format, snr_gamma=None):
    """DDPM Algorithm 1 for one batch, given eps and t per image: loss = ||target - model(x_t, t, c)||^2 with target
    eps ("epsilon"), x_0 ("sample") or v = sqrt(abar) eps - sqrt(1 - abar) x_0 ("v_prediction"); with `snr_gamma`,
    each image's error weighted by min-SNR-gamma (`min_snr_weights`)."""
    noisy = noise_scheduler.add_noise(x0, noise, timesteps).contiguous(memory_format=memory_format)  # x_t, eq. 4
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = x0
    else:
        target = noise_scheduler.get_velocity(x0, noise, timesteps)
    prediction = model(noisy, timesteps, context=context).sample
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_image * min_snr_weights(noise_scheduler, timesteps, snr_gamma)).mean()


def min_snr_weights(noise_scheduler, timesteps, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): weight the x_0 error at t by min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t).
    An eps error is an x_0 error times 1 / SNR_t, and a v error times 1 / (SNR_t + 1), so those targets divide by it.
    (B,) float32; SNR from diffusers' `compute_snr`, as its training examples' --snr_gamma."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = snr.clamp(max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return weights / snr
    if prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights


@dataclass
class StepInputs:
    """What every step reads and nothing changes: the data on the device and how to turn it into a batch."""

    images: torch.Tensor | None  # (N, C, H, W) uint8, on the device; None on the streaming path (batches come in)
    context_index: torch.Tensor | None  # (N,) int64: each image's row of context_table; None when unconditional
    context_table: torch.Tensor | None  # (U, D) float32: the (K, K) identity for classes, caption embeddings for text
    p_uncond: float
    max_grad_norm: float
    memory_format: torch.memory_format
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None = the plain mean
    random_flip: bool = False  # mirror each image with probability 0.5 (StepNoise.flip_draw)
    streamed_shape: tuple[int, int, int] | None = None  # (C, H, W) of the streamed batches; None when resident
    caption_noise: float = 0.0  # --caption_noise: context noise std per RMS entry; 0 draws none
    caption_choices: torch.Tensor | None = None  # (N, K) table rows of each image's captions, for --caption_mixup

    def draw_options(self) -> dict:
        """draw_step_noise's keywords for the optional draws this run makes."""
        noise_dim = self.context_table.shape[1] if self.caption_noise and self.context_table is not None else 0
        return {"flip": self.random_flip, "context_noise_dim": noise_dim, "mixup": self.caption_choices is not None}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.streamed_shape if self.images is None else tuple(self.images.shape[1:])

    def batch_and_loss(self, model, noise_scheduler, indices, draws: StepNoise, batch=None) -> torch.Tensor:
        """`batch`: the micro-batch's (B, C, H, W) uint8 images on the device (streaming path); None gathers them."""
        x0, context = get_batch(
            self.images,
            self.context_index,
            self.context_table,
            indices,
            draws.keep_draw,
            self.p_uncond,
            self.memory_format,
            batch,
            draws.flip_draw,
            None if draws.context_noise is None else draws.context_noise * self.caption_noise,
            draws.mix_draw,
            self.caption_choices,
        )
        return diffusion_loss(
            model, noise_scheduler, x0, context, draws.noise, draws.timesteps, self.memory_format, self.snr_gamma
        )


class EagerStep:
    """The step as Accelerate runs it anywhere: accumulate, backward (with fp16 loss scaling), clip, AdamW, LR
    schedule, then the EMA once the accumulation group is complete. Returns (loss, finished an optimizer step)."""

    def __init__(self, accelerator, model, unet, optimizer, lr_scheduler, ema, noise_scheduler, inputs: StepInputs):
        self.accelerator, self.model, self.unet = accelerator, model, unet
        self.optimizer, self.lr_scheduler, self.ema = optimizer, lr_scheduler, ema
        self.noise_scheduler, self.inputs = noise_scheduler, inputs
        self.image_shape = inputs.image_shape

    def __call__(self, indices: torch.Tensor, generator: torch.Generator, batch=None) -> tuple[torch.Tensor, bool]:
        """`batch`: the streaming path's (B, C, H, W) uint8 images (pinned host memory); None on the resident path."""
        accelerator = self.accelerator
        draws = draw_step_noise(
            generator,
            indices.shape[0],
            self.image_shape,
            self.noise_scheduler.config.num_train_timesteps,
            conditional=self.inputs.context_index is not None,
            **self.inputs.draw_options(),
        )
        if batch is not None:
            batch = batch.to(accelerator.device, non_blocking=True)
        with accelerator.accumulate(self.model):
            loss = self.inputs.batch_and_loss(self.model, self.noise_scheduler, indices, draws, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.inputs.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), self.inputs.max_grad_norm)
            self.optimizer.step()  # these three do nothing until the last micro-batch of an accumulation group
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients and self.ema is not None:
            self.ema.step(self.unet.parameters())
        return loss, accelerator.sync_gradients


def graphed_step_unsupported(accelerator, config) -> str | None:
    """Why the CUDA-graph step cannot run this configuration (None when it can)."""
    if accelerator.device.type != "cuda":
        return "not a CUDA device"
    if accelerator.num_processes > 1:
        return "several processes (DDP's gradient all-reduce runs outside the graph)"
    if config.gradient_accumulation_steps > 1:
        return "gradient accumulation"
    if config.mixed_precision == "fp16":
        return "fp16 loss scaling (it reads the gradients' finiteness on the host every step)"
    return None


def make_optimizer_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """A CUDA graph replays the optimizer's kernels with the values they had when captured, so the learning rate must
    be a device tensor that the LR schedule fills in place (torch's schedulers do so when the lr is a tensor), and
    the step counts must live on the device (capturable)."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        group["capturable"] = True
    for state in optimizer.state.values():  # a resumed state: make sure its step counts are on the device
        if "step" in state and state["step"].device != device:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


class CapturedEMA:
    """EMAModel's update as a CUDA graph can replay it; the one place in training that reaches past EMAModel's methods.

    EMAModel.step computes the decay on the host and hands it to its kernels as a Python number, which a captured
    graph would replay forever at its first value. So the graph runs the same update, shadow <- shadow - (1 - decay)
    (shadow - param), on EMAModel's own shadow tensors (`shadow_params`, captured by address) with 1 - decay read from
    a device tensor, and `advance` does the rest of EMAModel.step on the host: the decay for the next step and the
    step count that get_decay reads and state_dict checkpoints. Parameters without gradients keep their shadow, as the
    graph's clip and optimizer never change them."""

    def __init__(self, ema, unet, device: torch.device):
        self.ema = ema
        self.trainable = [p.requires_grad for p in unet.parameters()]
        self.one_minus_decay = torch.zeros((), dtype=torch.float32, device=device)  # filled before each replay

    @torch.no_grad()
    def update(self, params: list[torch.Tensor]) -> None:
        """The captured part; `params` are the trainable parameters, in order. Without autograd, as EMAModel.step:
        otherwise the shadow tensors join the parameters' graph (grad_fn), are checkpointed with requires_grad and
        cannot be copied on resume."""
        shadow = [s for s, trainable in zip(self.ema.shadow_params, self.trainable) if trainable]
        difference = torch._foreach_sub(shadow, params)
        torch._foreach_mul_(difference, self.one_minus_decay)
        torch._foreach_sub_(shadow, difference)

    def advance(self) -> None:
        """The host part, before each replay."""
        step = self.ema.optimization_step + 1
        decay = self.ema.get_decay(step)
        self.ema.optimization_step, self.ema.cur_decay_value = step, decay
        self.one_minus_decay.fill_(1.0 - decay)


class GraphedStep:
    """The whole optimizer step (gather, forward, backward, clip, AdamW, EMA) captured once in a CUDA graph and
    replayed every step; only the random draws, the LR schedule and the EMA decay run from Python.

    Capturing needs every kernel to have run once (torch.compile, cuDNN's algorithm choice, the optimizer's state), so
    a few warm-up steps run first; they change the weights, the optimizer state and the EMA, which are then put back,
    so the run is as if they had not happened. The graph's inputs are static buffers: each call copies the step's
    image indices and draws the step's random numbers into them. Nothing may replace the captured tensors afterwards
    (a checkpoint is loaded before the capture, never after).
    """

    warmup_steps = 3

    def __init__(
        self, model, unet, optimizer, lr_scheduler, ema, noise_scheduler, inputs: StepInputs, batch_size: int
    ):
        self.model, self.unet, self.optimizer = model, unet, optimizer
        self.lr_scheduler, self.ema, self.noise_scheduler, self.inputs = lr_scheduler, ema, noise_scheduler, inputs
        self.image_shape = inputs.image_shape
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps
        self.conditional = inputs.context_index is not None
        self.params = [p for p in unet.parameters() if p.requires_grad]
        device = self.params[0].device
        # Static inputs of the graph.
        self.indices = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.batch = None  # the streaming path's images, copied in before each replay
        if inputs.images is None:
            self.batch = torch.zeros((batch_size, *self.image_shape), dtype=torch.uint8, device=device)
        self.draws = draw_step_noise(
            torch.Generator(device=device).manual_seed(0),
            batch_size,
            self.image_shape,
            self.num_train_timesteps,
            self.conditional,
            **inputs.draw_options(),
        )
        self.captured_ema = CapturedEMA(ema, unet, device) if ema is not None else None
        raw_optimizer = getattr(optimizer, "optimizer", optimizer)  # past Accelerate's wrapper: no host bookkeeping
        make_optimizer_capturable(raw_optimizer, device)
        self.raw_optimizer = raw_optimizer
        self.graph = torch.cuda.CUDAGraph()
        self.loss = self._warm_up_and_capture()

    def _step(self) -> torch.Tensor:
        """The captured work: everything of a step that runs on the GPU."""
        loss = self.inputs.batch_and_loss(self.model, self.noise_scheduler, self.indices, self.draws, self.batch)
        loss.backward()
        if self.inputs.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.inputs.max_grad_norm, foreach=True)
        self.raw_optimizer.step()
        if self.captured_ema is not None:
            self.captured_ema.update(self.params)
        return loss.detach()

    def _warm_up_and_capture(self) -> torch.Tensor:
        saved = self._training_state()
        stream = side_stream(torch.cuda.current_device())
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_steps):
                self.raw_optimizer.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self._restore(saved)
        # Gradients are allocated inside the graph, from its private memory pool, and stay there between replays:
        # backward writes them, the optimizer reads them; nothing zeroes them outside.
        self.raw_optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph, stream=stream):  # the warm-up's stream, where autograd met the parameters
            loss = self._step()
        return loss

    def _training_state(self) -> dict:
        """Copies of everything the warm-up changes (the state of a fresh optimizer does not exist yet)."""
        optimizer_state = {
            id(p): {key: value.clone() for key, value in self.raw_optimizer.state[p].items()}
            for p in self.params
            if p in self.raw_optimizer.state
        }
        ema = copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None  # state_dict holds references
        return {"params": [p.detach().clone() for p in self.params], "optimizer": optimizer_state, "ema": ema}

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        for param, value in zip(self.params, saved["params"]):
            param.copy_(value)
        for param in self.params:
            state = self.raw_optimizer.state.get(param, {})
            before = saved["optimizer"].get(id(param))
            for key, value in state.items():
                if before is None:
                    value.zero_()  # a fresh Adam state: zero moments, zero steps taken
                else:
                    value.copy_(before[key])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])  # new shadow tensors, which the capture that follows then uses

    def __call__(self, indices: torch.Tensor, generator: torch.Generator, batch=None) -> tuple[torch.Tensor, bool]:
        self.indices.copy_(indices)
        if batch is not None:  # pinned host memory: the copy overlaps the host's work on the next batch
            self.batch.copy_(batch, non_blocking=True)
        draw_step_noise(
            generator,
            indices.shape[0],
            self.image_shape,
            self.num_train_timesteps,
            self.conditional,
            out=self.draws,
            **self.inputs.draw_options(),
        )
        if self.captured_ema is not None:
            self.captured_ema.advance()
        self.graph.replay()
        self.lr_scheduler.step()  # fills the lr tensor in place for the next replay
        return self.loss, True


class LossWatch:
    """Notices a non-finite loss without making the host wait for the GPU every step.

    The finiteness of step k's loss is copied to pinned host memory as soon as it is computed, and read one step later,
    when step k + 1 is already queued: the GPU never idles for the check. With several processes the flags are
    summed across them first, so every process stops at the same step. `flush` reads the newest flag at once (before
    a checkpoint is written, so that a checkpoint never holds weights from a diverged step)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.cuda = accelerator.device.type == "cuda"
        self.pending: list[tuple[int, torch.Tensor, torch.cuda.Event | None]] = []
        if self.cuda:
            self.host_flags = [torch.zeros((), dtype=torch.float32).pin_memory() for _ in range(2)]

    def push(self, loss: torch.Tensor, step: int) -> int | None:
        """Record step `step`'s loss; returns the step whose loss was not finite, if one is known by now."""
        flag = (~torch.isfinite(loss.detach())).float()
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "sum")
        if not self.cuda:
            return step if flag.item() > 0 else None
        host = self.host_flags[step % 2]
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((step, host, event))
        return self._read(keep=1)

    def flush(self) -> int | None:
        return self._read(keep=0) if self.cuda else None

    def _read(self, keep: int) -> int | None:
        while len(self.pending) > keep:
            step, host, event = self.pending.pop(0)
            event.synchronize()
            if host.item() > 0:
                self.pending.clear()
                return step
        return None
