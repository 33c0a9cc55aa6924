"""The one training loop behind train_conditional.py and train_unconditional.py.

`train(config, conditional)` reads top to bottom in named steps: `start_accelerator` (resolve the auto defaults, build
the Accelerator), `set_up` (load the data set onto the device, or open it for streaming where it does not fit
--device_data_budget_mb (streaming.py); build the UNet, noise schedule, optimizer, LR schedule and EMA, resume if
asked), `run_steps` (the loop below) and `finish`:

    for each optimizer step (epoch, micro-batch):
        x_0, c   <- images[indices] gathered on the device (or streamed in), scaled to [-1, 1], mirrored with prob.
                    0.5 (--random_flip); c = table[index[indices]] (one-hot class or caption embedding, context.py),
                    zeroed with prob. p_uncond
        t, eps   ~ U{0..T-1}, N(0, I) from a generator seeded by (seed, rank, epoch, micro-batch)
        x_t      =  sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                         (DDPM eq. 4)
        loss     =  ||target - model(x_t, t, c)||^2, target = eps | x_0 | v          (DDPM Alg. 1)
        backward, clip, AdamW, LR schedule, EMA; now and then: log, checkpoint, validation grid

and `finish` saves the EMA pipeline and samples.png to --output_dir. The process-wide state this changes (speed flags,
thread count, global RNGs) is restored when `train` returns or raises (process_state.py). The step itself lives in
step.py: on one CUDA GPU it is replayed from a CUDA graph (`GraphedStep`), elsewhere Accelerate runs it op by op
(`EagerStep`). A NaN or infinite loss stops the run at once (`NonFiniteLossError`), before any checkpoint of the
diverged weights is written.

Data order and noise are pure functions of (seed, epoch, micro-batch, rank), never of how long the process has been
running: that is what makes --resume_from_checkpoint exact without saving any generator state.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, parse_flag_from_env
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..cuda import COMPILE_OPTIONS
from .checkpoint_state import TrainingState, refuse_pickles
from .checkpoints import (
    SaveFailedError,
    check_checkpoints_belong_to_run,
    find_checkpoint,
    list_checkpoints,
    read_training_state,
    remove_set_aside,
    run_identity,
    save_checkpoint,
    save_error,
)
from .config import (
    LONG_RUN_WARNING_SECONDS,
    TrainingConfig,
    TrainingLength,
    batch_for_data,
    cpu_threads,
    format_seconds,
    model_config_overrides,
    preset_for_size,
    resolve_defaults,
    training_length,
)
from .context import Contexts, build_contexts
from .data import TrainingData, check_image_size, load_training_data
from .output_folder import hold_output_dir
from .process_state import RestoredProcessState, use_fast_cuda_kernels
from .sampling import log_image, sample_grid, save_pipeline, weights_copy
from .seeds import stream_seed
from .step import EagerStep, GraphedStep, LossWatch, StepInputs, graphed_step_unsupported
from .streaming import batch_loader, data_budget, stream_loader, warn_direction_dependent, worker_errors_raised

logger = get_logger(__name__)

# UNet config entries that the data decides; --model_config_overrides may not set them.
_DATA_DECIDES = ("sample_size", "in_channels", "out_channels", "context_dim", "class_names")


@dataclass
class TrainingResult:
    output_dir: str  # the saved pipeline
    global_step: int  # optimizer steps done, resumed ones included
    images_per_second: float | None  # all processes together, after the first logging interval (warm-up, compile)
    final_loss: float | None = None  # mean training loss over the last logging interval
    step_setup_seconds: float = 0.0  # building the step: for the CUDA-graph step, warm-up, compile and capture
    seconds: dict = dataclasses.field(default_factory=dict)  # where the time went: see `time_report`


class EpochBatches:
    """Which images each process trains on, without a DataLoader.

    Every epoch draws a permutation of all N images from a generator seeded by (seed, epoch), the same on every
    process; process r of W takes positions r, r + W, r + 2W, ... of it, so the processes see disjoint images. The tail
    that would give processes unequal numbers of steps, or end an epoch inside an accumulation group, is dropped.
    Nothing is stored: resuming at (epoch, micro-batch) draws the same permutation again.
    """

    def __init__(self, num_images, batch_size, accumulation_steps, seed, rank, world_size, device):
        self.num_images, self.batch_size, self.accumulation_steps = num_images, batch_size, accumulation_steps
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        per_process = num_images // world_size
        self.updates_per_epoch = per_process // (batch_size * accumulation_steps)
        self.micro_batches_per_epoch = self.updates_per_epoch * accumulation_steps
        if self.updates_per_epoch == 0:
            needed = batch_size * accumulation_steps * world_size
            raise ValueError(
                f"The data set has {num_images} images, fewer than one optimizer step takes ({batch_size} images x "
                f"{accumulation_steps} accumulation steps x {world_size} processes = {needed}); lower "
                "--train_batch_size or --gradient_accumulation_steps, or use more images."
            )

    def epoch_indices(self, epoch: int, device=None) -> torch.Tensor:
        """(micro_batches_per_epoch, batch_size) int64 image indices of this process, on `device` (default: the
        training device; the streaming path's sampler takes them on the CPU)."""
        # The permutation is drawn on the CPU so that it is the same whatever the device; one randperm per epoch.
        permutation = torch.randperm(
            self.num_images, generator=torch.Generator().manual_seed(stream_seed(self.seed, epoch))
        )
        mine = permutation[self.rank :: self.world_size][: self.micro_batches_per_epoch * self.batch_size]
        return mine.view(self.micro_batches_per_epoch, self.batch_size).to(device or self.device)

    def iterate(self, start_step: int, num_epochs: int, device=None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(epoch, micro-batch, indices (B,)) from optimizer step `start_step` to the end of epoch `num_epochs` - 1."""
        first_epoch, first_update = divmod(start_step, self.updates_per_epoch)
        for epoch in range(first_epoch, num_epochs):
            indices = self.epoch_indices(epoch, device)
            start = first_update * self.accumulation_steps if epoch == first_epoch else 0
            for micro in range(start, self.micro_batches_per_epoch):
                yield epoch, micro, indices[micro]


# ----------------------------------------------------------------------------------------------------------------
# building the pieces
# ----------------------------------------------------------------------------------------------------------------


def make_accelerator(config: TrainingConfig) -> Accelerator:
    if config.logger == "wandb":
        from accelerate.utils import is_wandb_available

        if not is_wandb_available():
            raise ValueError(
                "--logger wandb needs the wandb package: pip install wandb (or use --logger tensorboard)."
            )
    project_config = ProjectConfiguration(
        project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
    )
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=config.logger,
        project_config=project_config,
    )


def build_unet(config: TrainingConfig, data: TrainingData, conditional: bool, contexts: Contexts | None = None):
    """The preset's ContextUNet2DModel, shaped by the data: image size and channels, and when `conditional` the
    context width: the text encoder's for a text model (`contexts` from build_contexts), else one entry per class."""
    from hfdiff.models import UNET_PRESETS, ContextUNet2DModel

    overrides = model_config_overrides(config)
    known = set(inspect.signature(ContextUNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"--model_config_overrides has unknown keys {unknown}; ContextUNet2DModel takes {sorted(known)}."
        )
    fixed = sorted(set(overrides) & set(_DATA_DECIDES))
    if fixed:
        raise ValueError(
            f"--model_config_overrides sets {fixed}, which the data decides (image size and channels, number of "
            "classes); use --resolution, or change the data."
        )
    height, width = data.size
    text = contexts is not None and contexts.text_encoder is not None
    shape = {
        "sample_size": height if height == width else (height, width),
        "in_channels": data.channels,
        "out_channels": data.channels,
        "context_dim": (contexts.context_dim if contexts is not None else len(data.class_names))
        if conditional
        else None,
        "class_names": list(data.class_names) if conditional and not text else None,  # text contexts are not classes
        "context_mlp_dim": config.context_mlp_dim or None,  # 0: the course's width
        "context_time_embedding": bool(config.context_time_embedding),
    }
    preset = config.preset or preset_for_size(data.size, data.description)
    block_out_channels = overrides.get("block_out_channels", UNET_PRESETS[preset]["block_out_channels"])
    check_image_size((height, width), block_out_channels, data.description)
    # The same initial weights on every process and every run, without touching the caller's global RNG. The model
    # is built on the CPU, so the CPU generator is the one seeded: torch.manual_seed would also queue a seed for CUDA.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        return ContextUNet2DModel.from_preset(preset, **shape, **overrides)


def build_noise_scheduler(config: TrainingConfig):
    from hfdiff.schedulers import SpriteDDPMScheduler

    return SpriteDDPMScheduler(
        num_train_timesteps=config.ddpm_num_steps,
        beta_schedule=config.ddpm_beta_schedule,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.rescale_betas_zero_snr,
        # With abar_T = 0 inference must start at t = T - 1, the one step that saw pure noise (Lin et al. 2024, sec.
        # 3.3); "leading" spacing would start at T - T/n. The pipeline's DDIM swap inherits it from this config.
        timestep_spacing="trailing" if config.rescale_betas_zero_snr else "leading",
    )


def build_optimizer(config: TrainingConfig, unet, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        unet.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        # One kernel for all parameters on CUDA; on CPU the multi-tensor path, several times faster than per-tensor.
        fused=device.type == "cuda",
        foreach=device.type != "cuda",
    )


def build_lr_scheduler(config: TrainingConfig, optimizer, max_train_steps: int, world_size: int):
    # The prepared LR scheduler steps once per process at each optimizer step, so its lengths count in those units.
    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * world_size,
        num_training_steps=max_train_steps * world_size,
    )


def build_ema(config: TrainingConfig, unet) -> EMAModel | None:
    if not config.use_ema:
        return None
    # Warmup: decay = 1 - (1 + step / inv_gamma) ** -power, so that early, poor weights fade quickly; with power 3/4
    # the decay is 0.993 after 800 steps and 0.999 after 10k.
    return EMAModel(
        unet.parameters(),
        decay=config.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
        foreach=True,
        model_cls=type(unet),
        model_config=unet.config,
    )


def schedule_length(
    config: TrainingConfig, data: TrainingData, batches: EpochBatches | None, images_per_step: int, accelerator
) -> TrainingLength:
    """The run's length (`training_length`: --max_train_steps wins over --num_epochs, and without either the data's
    size and the device choose). A stream (no `batches`: its length is unknown) has no number of epochs. Warns when
    the run would take longer than LONG_RUN_WARNING_SECONDS at the assumed speed."""
    if batches is not None and config.num_epochs is not None and config.max_train_steps is None:
        warn_dropped_tail(batches)  # counted in epochs, a dropped tail costs updates; counted in steps it does not
    length = training_length(
        config, len(data) if data.has_length else None, data.size,
        batches.updates_per_epoch if batches is not None else None, images_per_step, accelerator.device,
        accelerator.num_processes,
    )  # fmt: skip
    if length.expected_seconds > LONG_RUN_WARNING_SECONDS:
        logger.warning(
            f"{length.max_train_steps:,} steps of {images_per_step:,} images ({length.reason}) would take about "
            f"{format_seconds(length.expected_seconds)} on {accelerator.device} at an assumed "
            f"{length.images_per_second:,.0f} images/s; pass a smaller --max_train_steps, or --resolution to train on "
            "smaller images.",
            main_process_only=True,
        )
    return length


# An epoch drops the images that do not fill a whole optimizer step (EpochBatches); past this share of the set, a
# user's --num_epochs buys far fewer updates than it does on the sprites (1,797 images at the GPU batch of 1,024: one
# update an epoch, 43% of the set unused each time).
DROPPED_TAIL_WARNING = 0.1


def warn_dropped_tail(batches: EpochBatches) -> None:
    per_update = batches.batch_size * batches.accumulation_steps * batches.world_size
    used = batches.updates_per_epoch * per_update
    if batches.num_images - used > DROPPED_TAIL_WARNING * batches.num_images:
        logger.warning(
            f"Each epoch trains on {used} of the {batches.num_images} images ({batches.updates_per_epoch} optimizer "
            f"step(s) of {per_update}); the rest of each epoch's shuffled order is dropped. For a small data set "
            "lower --train_batch_size (e.g. 64), or count steps with --max_train_steps instead of --num_epochs.",
            main_process_only=True,
        )


# ----------------------------------------------------------------------------------------------------------------
# resume, feedback, the end
# ----------------------------------------------------------------------------------------------------------------


def resume(accelerator: Accelerator, config: TrainingConfig, training: TrainingState, expected: dict) -> int:
    """Load the checkpoint --resume_from_checkpoint names (data only: pickles are refused before anything is read);
    returns its optimizer step (0 for a fresh start)."""
    if not config.resume_from_checkpoint:
        return 0
    path = find_checkpoint(config.output_dir, config.resume_from_checkpoint)
    if path is None:
        logger.info(
            f"No checkpoint in {config.output_dir} to resume from; starting a new run.", main_process_only=True
        )
        return 0
    refuse_pickles(path)
    training.load(path, accelerator.process_index, accelerator.device)
    state = read_training_state(path)
    changed = {key: (state.get(key), value) for key, value in expected.items() if state.get(key) != value}
    if changed:
        logger.warning(
            f"Resuming {path} with different {changed} (saved, now): training continues, but the data order differs "
            "from an uninterrupted run.",
            main_process_only=True,
        )
    logger.info(f"Resumed from {path} at step {state['global_step']}.", main_process_only=True)
    return state["global_step"]


class Meter:
    """Loss and throughput between logging steps. The loss stays on the device until it is read, because reading it
    (.item()) waits for the GPU to finish every queued step; doing that every step would stall the pipeline."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.loss_sum, self.micro_batches, self.steps = 0.0, 0, 0
        self.start = time.perf_counter()
        self.steady_images, self.steady_seconds, self.intervals = 0, 0.0, 0

    def add(self, loss: torch.Tensor, finished_step: bool) -> None:
        self.loss_sum = self.loss_sum + loss.detach()
        self.micro_batches += 1
        self.steps += int(finished_step)

    def read(self, accelerator: Accelerator) -> dict:
        """Mean loss over all processes and images/s since the last read; every process must call it."""
        loss = accelerator.reduce(torch.as_tensor(self.loss_sum, device=accelerator.device), "mean").item()
        seconds = time.perf_counter() - self.start  # after .item(), so the GPU's work is included
        images_per_second = self.steps * self.images_per_step / seconds
        if self.intervals > 0:  # the first interval includes warm-up (and torch.compile)
            self.steady_images += self.steps * self.images_per_step
            self.steady_seconds += seconds
        self.intervals += 1
        logs = {"loss": loss / max(self.micro_batches, 1), "images_per_second": images_per_second}
        self.loss_sum, self.micro_batches, self.steps = 0.0, 0, 0
        self.start = time.perf_counter()
        return logs

    def steady_images_per_second(self) -> float | None:
        return self.steady_images / self.steady_seconds if self.steady_seconds > 0 else None


def ema_pipeline(unet, ema, scheduler, contexts: Contexts | None):
    """A SpriteDiffusionPipeline of the EMA weights (fp32 copy) with `scheduler`; a text model's carries its text
    encoder and tokenizer, so that it samples from prompts and saves them. Returns (pipe, prompts of the grid rows or
    None for a class or unconditional model)."""
    from hfdiff import SpriteDiffusionPipeline

    text = contexts is not None and contexts.text_encoder is not None
    encoder = {"text_encoder": contexts.text_encoder, "tokenizer": contexts.tokenizer} if text else {}
    pipe = SpriteDiffusionPipeline(unet=weights_copy(unet, ema), scheduler=scheduler, **encoder)
    return pipe, contexts.validation_prompts if text else None


def validate(accelerator, config, unet, ema, noise_scheduler, step: int, contexts: Contexts | None = None) -> None:
    """A grid from the EMA weights, fixed seed, DDIM: output_dir/validation/step-XXXXXX.png and the trackers."""
    from hfdiff import SpriteDDIMScheduler

    scheduler = SpriteDDIMScheduler.from_config(noise_scheduler.config)
    pipe, prompts = ema_pipeline(unet, ema, scheduler, contexts)
    grid = sample_grid(pipe, config.num_validation_images, config.seed, config.validation_inference_steps, prompts)
    path = os.path.join(config.output_dir, "validation", f"step-{step:06d}.png")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        grid.save(path)
    except OSError as error:
        raise save_error(f"validation grid {path}", config.output_dir, error) from error
    log_image(accelerator, "validation", grid, step)


def save_final(accelerator, config, unet, ema, noise_scheduler, step: int, contexts: Contexts | None = None) -> None:
    """The EMA pipeline (fp32; a text model's with its text encoder and tokenizer) and samples.png beside it, in
    --output_dir. Its scheduler is the recommended sampler (hfdiff.samplers.RECOMMENDED) built from the training
    schedule's config, carrying that sampler's recipe, so that `pipe()` samples well by default, as a diffusers
    text-to-image pipeline's call does; `with_sampler(pipe, "ddpm")` gives back the course's DDPM over every step."""
    from hfdiff.samplers import RECOMMENDED, sampler_scheduler

    scheduler = sampler_scheduler(noise_scheduler.config, RECOMMENDED)
    pipe, prompts = ema_pipeline(unet, ema, scheduler, contexts)
    samples = sample_grid(pipe, config.num_validation_images, config.seed, prompts=prompts)  # the saved recipe
    try:
        save_pipeline(pipe, config.output_dir, samples, training_config=dataclasses.asdict(config))
    except (OSError, ValueError) as error:
        raise final_save_error(config, pipe, step, error) from error
    if config.overwrite_output_dir:
        remove_set_aside(config.output_dir)
    log_image(accelerator, "samples", samples, step)
    logger.info(f"Saved the pipeline and samples.png to {config.output_dir}.", main_process_only=True)
    if config.push_to_hub:
        push_to_hub(config)


def final_save_error(config: TrainingConfig, pipe, step: int, error: BaseException) -> SaveFailedError:
    """The error for a final save that failed, saying truthfully what of the training is kept: where no checkpoint
    holds the last steps, the pipeline is first saved into a new folder of the system's temporary directory (often
    another filesystem than a full --output_dir), and the message names it; otherwise the newest checkpoint to resume
    from, or that the steps are lost."""
    from hfdiff.folder_swap import save_failure_cause

    code, cause = save_failure_cause(error, config.output_dir)
    checkpoints = list_checkpoints(config.output_dir)
    newest = checkpoints[-1] if checkpoints else None
    kept = None
    if newest is None or newest[0] < step:
        import shutil
        import tempfile

        try:
            kept = tempfile.mkdtemp(
                prefix=f"hfdiff-{os.path.basename(os.path.abspath(config.output_dir))}-step{step}-"
            )
            pipe.save_pretrained(kept)
        except Exception:  # the other folder is full too: say so below
            if kept is not None:
                shutil.rmtree(kept, ignore_errors=True)
            kept = None
    if kept is not None:
        outcome = (
            f"The pipeline trained to step {step} was saved to {kept} instead: it loads from there, or move it "
            f"into --output_dir once there is room."
        )
    elif newest is not None:
        lost = f"; steps {newest[0] + 1} to {step} are lost" if newest[0] < step else ""
        outcome = f"Resume from {newest[1]} with --resume_from_checkpoint latest{lost}."
    else:
        outcome = (
            f"No checkpoint was saved (--checkpointing_steps {config.checkpointing_steps}) and no other folder could "
            f"take the pipeline: the {step} steps of training are lost."
        )
    failure = SaveFailedError(  # printed by the training scripts as one line, exit 1
        f"Could not write the final pipeline in {config.output_dir} ({type(error).__name__}: {error})"
        + (f"; {cause}. " if cause else ". ")
        + "Fix that, or pass another --output_dir. "
        + outcome
    )
    failure.errno = code
    return failure


def push_to_hub(config: TrainingConfig) -> None:
    """Upload the saved pipeline folder (model_index.json, components, code, model card, samples.png) to the Hub;
    checkpoints, logs and validation grids that training keeps beside it stay local."""
    from hfdiff.hub import upload_pipeline_folder

    repo_id = config.hub_model_id or os.path.basename(os.path.abspath(config.output_dir))
    url = upload_pipeline_folder(
        config.output_dir, repo_id, private=config.hub_private_repo, commit_message="End of training"
    )
    logger.info(f"Pushed {config.output_dir} to the Hub: {url}", main_process_only=True)


def tracker_config(config: TrainingConfig, data: TrainingData, max_train_steps: int) -> dict:
    """The config as trackers take it: scalars and strings only (tensorboard's hparams refuse None)."""
    values = {**dataclasses.asdict(config), "data": data.description, "num_images": len(data)}
    values["max_train_steps"] = max_train_steps
    values["holdout"] = "; ".join(config.holdout or []) or None  # tensorboard's hparams take no lists
    return {key: "None" if value is None else value for key, value in values.items()}


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


def check_loss(config: TrainingConfig, bad_step: int | None) -> None:
    """Stop at the first non-finite loss, naming the step and the checkpoint to go back to (which is kept)."""
    if bad_step is None:
        return
    checkpoints = list_checkpoints(config.output_dir)
    if checkpoints:
        last_good = (
            f"The last good checkpoint is {checkpoints[-1][1]} (step {checkpoints[-1][0]}); continue from it with "
            "--resume_from_checkpoint latest"
        )
    else:
        last_good = "No checkpoint was saved before it; start again"
    raise NonFiniteLossError(
        f"The training loss became NaN or infinite at step {bad_step}; training stopped there and saved nothing "
        f"after it. {last_good}, after lowering --learning_rate (now {config.learning_rate}), keeping "
        f"--max_grad_norm above 0 (now {config.max_grad_norm}), or training in fp32 with --mixed_precision no."
    )


def make_step(accelerator, config, model, unet, optimizer, lr_scheduler, ema, noise_scheduler, inputs):
    """The CUDA-graph step where it can run (and --cuda_graphs is not off), else the eager one."""
    reason = graphed_step_unsupported(accelerator, config)
    if config.cuda_graphs and reason is not None:
        raise ValueError(f"--cuda_graphs cannot be used with {reason}; drop the flag to train with the eager step.")
    use_graph = reason is None if config.cuda_graphs is None else config.cuda_graphs
    if use_graph:
        return GraphedStep(model, unet, optimizer, lr_scheduler, ema, noise_scheduler, inputs, config.train_batch_size)
    return EagerStep(accelerator, model, unet, optimizer, lr_scheduler, ema, noise_scheduler, inputs)


# ----------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The pieces of one training run, built by `set_up`, stepped by `run_steps`, saved by `finish`."""

    config: TrainingConfig  # resolved: no auto (None) fields left
    conditional: bool
    accelerator: Accelerator
    data: TrainingData
    contexts: Contexts | None  # the context table and index (None when unconditional)
    unet: torch.nn.Module  # the bare UNet (the step may run a compiled, DDP-wrapped view of it)
    noise_scheduler: object
    lr_scheduler: object
    ema: EMAModel | None
    batches: EpochBatches
    max_train_steps: int
    num_epochs: int | None  # None for a stream
    length: TrainingLength  # how the length was chosen, with the time to expect
    run_shape: dict  # what a resumed run must share with the saved one for the data order to continue
    training_state: TrainingState  # what checkpoints save and resume loads
    identity: dict  # the run's identity (checkpoints.run_identity), recorded in each checkpoint
    global_step: int = 0  # optimizer steps done, resumed ones included
    step: EagerStep | GraphedStep | None = None
    seconds: dict = dataclasses.field(default_factory=dict)  # phase -> seconds, for `time_report`

    @property
    def conditioning(self) -> str:
        """ "class", "text" or "none": what checkpoints record, so that a resume with other context is refused."""
        return self.config.conditioning if self.conditional else "none"

    @property
    def images_per_step(self) -> int:
        config = self.config
        return config.train_batch_size * self.accelerator.num_processes * config.gradient_accumulation_steps


def train(config: TrainingConfig, conditional: bool) -> TrainingResult:
    """Train a ContextUNet2DModel as `config` says; one context entry per class of the data when `conditional`.

    The speed flags, thread count and global RNG states it changes are restored when it returns or raises; logging
    is left to the caller (the training scripts' `main` sets it up)."""
    entered = time.perf_counter()
    with RestoredProcessState() as process_state:
        auto_batch = config.train_batch_size is None
        config, accelerator, threads_note = start_accelerator(config, conditional, process_state)
        with hold_output_dir(accelerator, config.output_dir):  # one run per folder, from here to the final save
            run = set_up(accelerator, config, conditional, auto_batch)
            if threads_note:  # logged once set-up has passed, so a user error before it stays the one line printed
                logger.info(threads_note, main_process_only=False)
            steps_start = time.perf_counter()
            meter, logs = run_steps(run)
            run.seconds["steps"] = time.perf_counter() - steps_start
            finish(run)
            run.seconds["final save"] = time.perf_counter() - steps_start - run.seconds["steps"]
            run.seconds["train()"] = time.perf_counter() - entered
        logger.info(time_report(run.seconds), main_process_only=True)
    return TrainingResult(
        config.output_dir, run.global_step, meter.steady_images_per_second(), logs.get("loss"), run.seconds["step"],
        dict(run.seconds),
    )  # fmt: skip


def time_report(seconds: dict) -> str:
    """Where a run's time went, from the process's start (interpreter, imports, the launcher) to the end of train():
    the cold-start cost beside the training itself."""
    import psutil

    since_start = time.time() - psutil.Process().create_time()
    before = since_start - seconds["train()"]
    steps = seconds["steps"] - seconds.get("checkpoints", 0.0) - seconds.get("validation", 0.0)
    return (
        f"Time: {since_start:.1f} s since the process started: {before:.1f} s before train() (interpreter, imports), "
        f"{seconds.get('data', 0.0):.1f} s loading the data, {seconds.get('step', 0.0):.1f} s building the step, "
        f"{steps:.1f} s of training steps, {seconds.get('checkpoints', 0.0):.1f} s saving checkpoints, "
        f"{seconds.get('validation', 0.0):.1f} s on validation grids, {seconds['final save']:.1f} s saving the "
        f"pipeline and samples.png; {seconds['train()'] - sum(seconds.get(k, 0.0) for k in _TIMED):.1f} s other set-up."
    )


_TIMED = ("data", "step", "steps", "final save")  # the phases that add up to train()'s time, with "other set-up"


def start_accelerator(
    config: TrainingConfig, conditional: bool, process_state: RestoredProcessState
) -> tuple[TrainingConfig, Accelerator, str | None]:
    """The resolved config and the Accelerator, with the device's speed settings (restored by `process_state`), and on
    a CPU the thread count chosen and why."""
    # The device picks the auto defaults, and must be known before the Accelerator exists (mixed precision is one).
    # ACCELERATE_USE_CPU is read by the Accelerator, not by PartialState: pass it on, or a CPU DDP run (accelerate
    # launch --multi_gpu with ACCELERATE_USE_CPU=1) would come up as independent single processes.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    config = resolve_defaults(config, state.device, conditional)
    if state.device.type == "cpu":
        threads, reason = cpu_threads(config, int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes)))
        torch.set_num_threads(threads)
    threads_note = f"{threads} CPU thread(s) per process: {reason}." if state.device.type == "cpu" else None
    accelerator = make_accelerator(config)
    if accelerator.device.type == "cuda":
        process_state.keep_cuda_rng()  # before a resume restores a checkpoint's CUDA RNG states
        use_fast_cuda_kernels()
    return config, accelerator, threads_note


def set_up(accelerator: Accelerator, config: TrainingConfig, conditional: bool, auto_batch: bool = False) -> Run:
    """Data on the device, UNet, noise schedule, optimizer, LR schedule and EMA, prepared and resumed; the step.
    What the data decides is filled in here: the preset, the batch when `auto_batch` (--train_batch_size was auto)
    and the data holds less than one, and the run's length with its warm-up."""
    device, world_size = accelerator.device, accelerator.num_processes
    data_start = time.perf_counter()
    with accelerator.main_process_first():  # the first process fills the datasets (and Hub) caches, the others read
        data = load_training_data(config, conditional, data_budget(config.device_data_budget_mb, device))
        contexts_start = time.perf_counter()
        contexts = build_contexts(config, data, conditional, device)
    contexts_seconds = time.perf_counter() - contexts_start  # part of data_seconds: the text encoder's share
    data_seconds = time.perf_counter() - data_start
    if accelerator.is_main_process:
        warn_direction_dependent(config.random_flip, data.class_names, data.captions)
    config = data_defaults(config, data, accelerator, auto_batch)
    unet = build_unet(config, data, conditional, contexts)
    batches = None if not data.has_length else EpochBatches(
        len(data), config.train_batch_size, config.gradient_accumulation_steps, config.seed,
        accelerator.process_index, world_size, device,
    )  # fmt: skip
    images_per_step = config.train_batch_size * world_size * config.gradient_accumulation_steps
    length = schedule_length(config, data, batches, images_per_step, accelerator)
    config = dataclasses.replace(config, lr_warmup_steps=length.lr_warmup_steps)
    max_train_steps, num_epochs = length.max_train_steps, length.num_epochs
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    unet.to(device, memory_format=memory_format)
    optimizer = build_optimizer(config, unet, device)
    lr_scheduler = build_lr_scheduler(config, optimizer, max_train_steps, world_size)
    ema = build_ema(config, unet)
    model = torch.compile(unet, options=COMPILE_OPTIONS) if config.compile else unet
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    run_shape = {
        "world_size": world_size,
        "train_batch_size": config.train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "seed": config.seed,
    }
    if not data.has_length:  # a stream's order also depends on its shuffle buffer
        run_shape["shuffle_buffer_size"] = config.shuffle_buffer_size
    run = Run(
        config=config,
        conditional=conditional,
        accelerator=accelerator,
        data=data,
        contexts=contexts,
        unet=unet,
        noise_scheduler=build_noise_scheduler(config),
        lr_scheduler=lr_scheduler,
        ema=ema,
        batches=batches,
        max_train_steps=max_train_steps,
        num_epochs=num_epochs,
        length=length,
        run_shape=run_shape,
        training_state=TrainingState(unet, optimizer, lr_scheduler, ema),
        identity=run_identity(config, data, "none" if not conditional else config.conditioning),
    )
    check_checkpoints_belong_to_run(config, run.identity)
    accelerator.wait_for_everyone()  # --overwrite_output_dir's move is done before any process looks for checkpoints
    run.global_step = resume(accelerator, config, run.training_state, run_shape)
    if accelerator.is_main_process:
        accelerator.init_trackers(
            "train_conditional" if conditional else "train_unconditional",
            config=tracker_config(config, data, max_train_steps),
        )
    setup_start = time.perf_counter()
    inputs = step_inputs(config, data, contexts, device, memory_format)
    run.step = make_step(accelerator, config, model, unet, optimizer, lr_scheduler, ema, run.noise_scheduler, inputs)
    run.seconds.update(data=data_seconds, contexts=contexts_seconds, step=time.perf_counter() - setup_start)
    log_run(run)
    return run


def data_defaults(config: TrainingConfig, data: TrainingData, accelerator: Accelerator, auto_batch: bool):
    """The config with what the loaded data decides: an auto --preset from the image size, and an auto
    --train_batch_size lowered to fit a set smaller than one batch (both logged)."""
    updates = {}
    if config.preset is None:
        updates["preset"] = preset_for_size(data.size, data.description)
    if auto_batch and data.has_length:
        batch = batch_for_data(
            config.train_batch_size, len(data), config.gradient_accumulation_steps, accelerator.num_processes
        )
        if batch != config.train_batch_size:
            logger.info(
                f"{data.description} has {len(data)} images, fewer than one batch of {config.train_batch_size} per "
                f"process: training in batches of {batch} (--train_batch_size to choose).",
                main_process_only=True,
            )
            updates["train_batch_size"] = batch
    return dataclasses.replace(config, **updates) if updates else config


def step_inputs(config, data: TrainingData, contexts: Contexts | None, device, memory_format) -> StepInputs:
    """The whole data set on the device as uint8 (89,400 sprites = 69 MB), batches gathered there; or, streaming,
    nothing (the batches come from `batch_images`); and the context table and index, on the device either way."""
    images = None if data.streaming else data.images.to(device)
    index, table = (contexts.index, contexts.table) if contexts is not None else (None, None)
    text = contexts is not None and contexts.text_encoder is not None
    return StepInputs(
        images, index, table, config.p_uncond, config.max_grad_norm, memory_format, config.snr_gamma or None,
        random_flip=config.random_flip, streamed_shape=tuple(data.images.shape[1:]) if data.streaming else None,
        caption_noise=config.caption_noise if text else 0.0,
        caption_choices=contexts.choices if text and config.caption_mixup else None,
    )  # fmt: skip


def micro_batches(run: Run) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """(epoch, micro-batch, indices (B,) on the device, images) from run.global_step on. Resident path: run.batches'
    indices and None for the images (the step gathers them on the device); streaming path: the same indices and
    their (B, C, H, W) uint8 images from DataLoader workers (EpochBatchSampler replays run.batches); a stream
    (--dataset_streaming, no run.batches): the workers' class labels as indices (the context index is the identity)
    and their images."""
    config, device = run.config, run.accelerator.device
    if not run.data.has_length:
        micro_batches_done = run.global_step * config.gradient_accumulation_steps
        loader = stream_loader(
            run.data.images, config.train_batch_size, config.seed, run.accelerator.process_index,
            run.accelerator.num_processes, micro_batches_done, config.dataloader_num_workers, device,
        )  # fmt: skip
        for epoch, micro, labels, images in worker_errors_raised(loader):
            yield epoch, micro, labels.to(device, non_blocking=True), images
        return
    images = itertools.repeat(None)
    if run.data.streaming:
        loader = batch_loader(
            run.data.images, run.batches, run.global_step, run.num_epochs, config.dataloader_num_workers, device
        )
        images = worker_errors_raised(loader)
    for (epoch, micro, indices), batch in zip(run.batches.iterate(run.global_step, run.num_epochs), images):
        yield epoch, micro, indices, batch


def log_run(run: Run) -> None:
    """The run's first line: the data, the model, and how long it trains and why, with the time to expect."""
    config, data, accelerator, length = run.config, run.data, run.accelerator, run.length
    epochs = f"{run.num_epochs:,} epochs" if run.num_epochs else "an unknown number of epochs"
    logger.info(
        f"{data.description}: {f'{len(data):,}' if data.has_length else 'a stream of'} images "
        f"{tuple(data.images.shape[1:])} ({'streamed from DataLoader workers' if data.streaming else 'resident on the device'}), "
        f"{context_description(run)}; {config.preset}, {sum(p.numel() for p in run.unet.parameters()):,} parameters; "
        f"{run.max_train_steps:,} steps of {run.images_per_step:,} images ({epochs}; {length.reason}), warm-up "
        f"{config.lr_warmup_steps} steps; expected {format_seconds(length.expected_seconds)} of training at an "
        f"assumed {length.images_per_second:,.0f} images/s; {accelerator.num_processes} process(es), "
        f"{accelerator.device}, mixed precision {config.mixed_precision}, {type(run.step).__name__} "
        f"(built in {run.seconds['step']:.1f} s).",
        main_process_only=True,
    )


def context_description(run: Run) -> str:
    if not run.conditional:
        return "unconditional"
    if run.contexts.text_encoder is None:
        return f"{len(run.data.class_names)} classes"
    name = run.config.text_encoder_name_or_path or "all-MiniLM-L6-v2"
    table = run.contexts.table
    return (
        f"{table.shape[0]} distinct captions embedded by {name} ({run.contexts.context_dim} dims, "
        f"{table.numel() * table.element_size() / 2**20:.0f} MiB, {run.seconds.get('contexts', 0.0):.1f} s)"
    )


def run_steps(run: Run) -> tuple[Meter, dict]:
    """The optimizer steps from run.global_step to the end; returns the meter and the last logged values."""
    config, accelerator = run.config, run.accelerator
    progress = tqdm(
        total=run.max_train_steps, initial=run.global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    generator = torch.Generator(device=accelerator.device)
    meter, watch, logs = Meter(run.images_per_step), LossWatch(accelerator), {}
    captions_epoch = None
    for epoch, micro, indices, images in micro_batches(run):
        if run.global_step >= run.max_train_steps:
            break
        if run.contexts is not None and epoch != captions_epoch:  # each image's caption of this epoch (context.py)
            run.contexts.draw_captions(config.seed, epoch)
            captions_epoch = epoch
        # Noise, timesteps and context dropout of this micro-batch depend only on where it is in the run.
        generator.manual_seed(stream_seed(config.seed, accelerator.process_index, epoch, micro))
        loss, finished_step = run.step(indices, generator, images)
        meter.add(loss, finished_step)
        if not finished_step:
            continue
        run.global_step += 1
        progress.update(1)
        check_loss(config, watch.push(loss, run.global_step))
        logs = log_progress(run, meter, progress, epoch) or logs
        checkpoint_and_validate(run, watch, epoch)
    progress.close()
    check_loss(config, watch.flush())
    return meter, logs


def log_progress(run: Run, meter: Meter, progress, epoch: int) -> dict | None:
    """Every --logging_steps and at the end: loss, images/s, LR and EMA decay to the trackers and the progress bar."""
    step = run.global_step
    if step % run.config.logging_steps != 0 and step != run.max_train_steps:
        return None
    logs = {**meter.read(run.accelerator), "lr": float(run.lr_scheduler.get_last_lr()[0]), "epoch": epoch}
    if run.ema is not None:
        logs["ema_decay"] = run.ema.get_decay(step)  # the EMA steps once per optimizer step, resumed ones included
    progress.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{logs['images_per_second']:.0f}")
    run.accelerator.log(logs, step=step)
    return logs


def checkpoint_and_validate(run: Run, watch: LossWatch, epoch: int) -> None:
    """Every --checkpointing_steps a checkpoint; every --validation_steps and at the end a validation grid. Neither
    from diverged weights: the pending loss checks are read first."""
    config, step = run.config, run.global_step
    if config.checkpointing_steps and step % config.checkpointing_steps == 0:
        check_loss(config, watch.flush())
        start = time.perf_counter()
        state = {"global_step": step, "epoch": epoch, **run.run_shape, "conditioning": run.conditioning}
        state["run"] = run.identity
        save_checkpoint(run.accelerator, config.output_dir, state, config.checkpoints_total_limit, run.training_state)
        if config.overwrite_output_dir and run.accelerator.is_main_process:
            remove_set_aside(config.output_dir)
        run.seconds["checkpoints"] = run.seconds.get("checkpoints", 0.0) + time.perf_counter() - start
    if step % config.validation_steps == 0 or step == run.max_train_steps:
        check_loss(config, watch.flush())
        start = time.perf_counter()
        if run.accelerator.is_main_process:
            validate(run.accelerator, config, run.unet, run.ema, run.noise_scheduler, step, run.contexts)
        run.seconds["validation"] = run.seconds.get("validation", 0.0) + time.perf_counter() - start


def finish(run: Run) -> None:
    """The EMA pipeline and samples.png (main process), the trackers closed."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final(accelerator, run.config, run.unet, run.ema, run.noise_scheduler, run.global_step, run.contexts)
    accelerator.wait_for_everyone()
    accelerator.end_training()
