"""hfdiff.training: config flags, data order, targets, checkpoints; both scripts end to end; real 2-process DDP; exact
resume. The end-to-end runs use a tiny UNet and a few steps, on one CPU thread per process."""

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_UNET_JSON

from hfdiff import SpriteDiffusionPipeline
from hfdiff.data import SPRITE_CLASSES
from hfdiff.training import TrainingConfig, load_training_data, parse_config, resolve_defaults, train
from hfdiff.training.checkpoints import find_checkpoint, list_checkpoints, prune_checkpoints
from hfdiff.training.config import (
    CPU_DEFAULTS,
    GPU_DEFAULTS,
    batch_for_data,
    preset_for_size,
    training_length,
)
from hfdiff.training.loop import EpochBatches
from hfdiff.training.step import diffusion_loss, draw_step_noise

ROOT = Path(__file__).resolve().parents[1]
# A run of a few seconds: 64 sprites, batches of 16, 20-step noise schedule, 2-image validation rows.
TINY_RUN = [
    "--model_config_overrides", TINY_UNET_JSON,
    "--num_train_images", "64",
    "--train_batch_size", "16",
    "--ddpm_num_steps", "20",
    "--validation_inference_steps", "4",
    "--num_validation_images", "2",
    "--lr_warmup_steps", "2",
    "--logging_steps", "2",
]  # fmt: skip


def run_script(args, launcher=(), **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    result = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


# ---- config


def test_flags_from_the_dataclass():
    config = parse_config(
        ["--no-use_ema", "--mixed_precision", "bf16", "--max_train_steps", "5", "--checkpoints_total_limit", "none"]
    )
    assert config.use_ema is False and config.mixed_precision == "bf16" and config.max_train_steps == 5
    assert config.checkpoints_total_limit is None and config.train_batch_size is None  # auto until resolved
    with pytest.raises(SystemExit):
        parse_config(["--prediction_type", "noise"])
    with pytest.raises(SystemExit):  # a testing aid, an argument of train() rather than a flag
        parse_config(["--debug_dump_dir", "dump"])
    assert parse_config(["--ddpm_beta_schedule", "laplace"]).ddpm_beta_schedule == "laplace"


def test_auto_defaults_by_device(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cpu = resolve_defaults(TrainingConfig(), "cpu", conditional=True)
    assert {name: getattr(cpu, name) for name in CPU_DEFAULTS} == CPU_DEFAULTS
    assert cpu.output_dir == "sprite-conditional"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    gpu = resolve_defaults(TrainingConfig(train_batch_size=32), "cuda", conditional=False)
    assert {name: getattr(gpu, name) for name in GPU_DEFAULTS if name != "train_batch_size"} == {
        name: value for name, value in GPU_DEFAULTS.items() if name != "train_batch_size"
    }
    assert gpu.mixed_precision == "bf16"
    assert gpu.train_batch_size == 32 and gpu.output_dir == "sprite-unconditional"  # given values win
    # The context reaches the time embedding too for text, by default; class models keep the course's decoder-only
    # context unless asked.
    assert not cpu.context_time_embedding and not gpu.context_time_embedding
    assert resolve_defaults(TrainingConfig(conditioning="text"), "cpu", conditional=True).context_time_embedding
    assert resolve_defaults(
        TrainingConfig(context_time_embedding=True), "cpu", conditional=True
    ).context_time_embedding
    # The run's length is chosen once the data is loaded (training_length), so no device default fixes epochs.
    assert cpu.num_epochs is None and gpu.num_epochs is None and cpu.max_train_steps is None


def sprites_length(config, device, num_images, batch):
    """training_length for `num_images` 16x16 images in batches of `batch` (one process), as the loop asks it."""
    config = resolve_defaults(config, device, conditional=True)
    return training_length(config, num_images, (16, 16), num_images // batch, batch, device)


def test_sprites_keep_their_default_run_on_each_device():
    # The anchors: 64 epochs of 87 steps of 1,024 on a GPU (96 for text), 4 epochs of 375 of 64 on a CPU (text too).
    gpu = sprites_length(TrainingConfig(), "cuda", 89_400, 1024)
    assert (gpu.max_train_steps, gpu.num_epochs, gpu.lr_warmup_steps) == (5568, 64, 100)
    text = sprites_length(TrainingConfig(conditioning="text"), "cuda", 89_400, 1024)
    assert (text.max_train_steps, text.num_epochs) == (8352, 96)
    for conditioning in ("class", "text"):
        cpu = sprites_length(TrainingConfig(conditioning=conditioning), "cpu", 24_000, 64)
        assert (cpu.max_train_steps, cpu.num_epochs, cpu.lr_warmup_steps) == (1500, 4, 100)
    # About 50 s of training steps on a GPU, as the anchor's measurement says.
    assert 40 < gpu.expected_seconds < 60


def test_training_length_grows_with_the_data_and_flags_win():
    folder = resolve_defaults(TrainingConfig(), "cuda", conditional=True)
    # A 4,000-image 32x32 folder on a GPU: 3 full batches an epoch, so 64 epochs would be 192 steps; by work it gets
    # about 2,000 steps (659 epochs), about 75 s at the assumed speed.
    digits = training_length(folder, 4000, (32, 32), 3, 1024, "cuda")
    assert digits.max_train_steps == 1977 and digits.num_epochs == 659 and digits.expected_seconds < 100
    assert "auto" in digits.reason and "4,000" in digits.reason
    steps = [training_length(folder, n, (32, 32), n // 1024, 1024, "cuda").max_train_steps for n in (1800, 60_000)]
    assert steps[0] < digits.max_train_steps < steps[1] < 5568 * 2
    cpu = resolve_defaults(TrainingConfig(), "cpu", conditional=True)
    assert training_length(cpu, 4000, (32, 32), 62, 64, "cpu").max_train_steps == 825
    # --num_epochs and --max_train_steps win (--max_train_steps over both), and a short run warms up for a tenth.
    given = training_length(dataclasses.replace(folder, num_epochs=5), 4000, (32, 32), 3, 1024, "cuda")
    assert (given.max_train_steps, given.num_epochs, given.reason) == (15, 5, "--num_epochs 5")
    given = training_length(
        dataclasses.replace(folder, num_epochs=5, max_train_steps=30), 4000, (32, 32), 3, 1024, "cuda"
    )
    assert (given.max_train_steps, given.num_epochs, given.lr_warmup_steps) == (30, 10, 3)
    warm = training_length(dataclasses.replace(folder, lr_warmup_steps=7), 4000, (32, 32), 3, 1024, "cuda")
    assert warm.lr_warmup_steps == 7
    # Larger images take longer at the same step count.
    large = training_length(folder, 4000, (64, 64), 3, 1024, "cuda")
    assert large.max_train_steps == digits.max_train_steps and large.expected_seconds >= 4 * digits.expected_seconds


def test_a_run_longer_than_a_day_is_warned_about(caplog, fresh_accelerate_state):
    from types import SimpleNamespace

    from accelerate import PartialState

    from hfdiff.training.loop import schedule_length

    PartialState(cpu=True)  # accelerate's logger asks it which process is the main one

    config = resolve_defaults(TrainingConfig(max_train_steps=10_000_000), "cpu", conditional=True)
    data = load_training_data(dataclasses.replace(config, num_train_images=64), conditional=True)
    device = SimpleNamespace(device=torch.device("cpu"), num_processes=1)  # what schedule_length reads of it
    with caplog.at_level(logging.WARNING, logger="hfdiff"):
        length = schedule_length(config, data, None, 64, device)
    assert length.expected_seconds > 24 * 3600
    assert "would take about" in caplog.text and "--max_train_steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hfdiff"):
        schedule_length(dataclasses.replace(config, max_train_steps=100), data, None, 64, device)
    assert "would take about" not in caplog.text


def test_preset_and_batch_from_the_data():
    assert [preset_for_size((s, s), "x") for s in (16, 28, 32, 48, 64)] == ["sprite-small"] * 3 + ["sprite-64"] * 2
    with pytest.raises(ValueError, match=r"images are 96x96.*--resolution 64.*--preset sprite-64"):
        preset_for_size((96, 96), "image folder x")
    assert batch_for_data(1024, 500, 1, 1) == 256 and batch_for_data(1024, 5000, 1, 1) == 1024
    assert batch_for_data(64, 40, 1, 2) == 16 and batch_for_data(64, 40, 2, 1) == 16


def test_sprite_64_preset_sets_its_resolution_unless_given(tmp_path, fresh_accelerate_state):
    assert resolve_defaults(TrainingConfig(preset="sprite-64"), "cpu", conditional=True).resolution == 64
    assert resolve_defaults(TrainingConfig(preset="sprite-64", resolution=32), "cpu", True).resolution == 32
    assert resolve_defaults(TrainingConfig(), "cpu", conditional=True).resolution is None
    flags = ["--output_dir", str(tmp_path), "--max_train_steps", "1", "--num_train_images", "8"]
    flags += ["--train_batch_size", "4", "--preset", "sprite-64", "--num_cpu_threads", "1", "--resolution", "32"]
    flags += ["--validation_steps", "100", "--num_validation_images", "1", "--validation_inference_steps", "2"]
    train(parse_config(flags), conditional=True)
    pipe = SpriteDiffusionPipeline.from_pretrained(tmp_path)
    assert pipe.unet.config.sample_size == 32 and len(pipe.unet.config.block_out_channels) == 4


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"p_uncond": 1.5}, "--p_uncond"),
        ({"train_batch_size": 0}, "--train_batch_size"),
        ({"sprites_npy": "a.npy", "train_data_dir": "imgs"}, "one data source"),
        ({"labels_npy": "l.npy"}, "without --sprites_npy"),
        ({"model_config_overrides": "{block_out_channels: 3}"}, "not valid JSON"),
        ({"validation_inference_steps": 600}, "--ddpm_num_steps"),
    ],
)
def test_config_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        resolve_defaults(TrainingConfig(**flags), "cpu", conditional=True)


# ---- data order and targets


def test_epoch_batches_shard_and_resume():
    ranks = [EpochBatches(50, 4, 2, seed=3, rank=r, world_size=2, device="cpu") for r in range(2)]
    assert ranks[0].updates_per_epoch == 3 and ranks[0].micro_batches_per_epoch == 6  # 25 per rank -> 24 used
    epoch0 = [b.epoch_indices(0) for b in ranks]
    assert not set(epoch0[0].flatten().tolist()) & set(epoch0[1].flatten().tolist())  # disjoint shards
    assert not torch.equal(ranks[0].epoch_indices(1), epoch0[0])  # a new order every epoch
    full = [(e, m, i.tolist()) for e, m, i in ranks[0].iterate(0, num_epochs=3)]
    assert full[8:] == [(e, m, i.tolist()) for e, m, i in ranks[0].iterate(4, num_epochs=3)]  # step 4 = micro 8
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        EpochBatches(10, 8, 1, seed=0, rank=0, world_size=2, device="cpu")


def test_where_the_time_went_is_logged(tmp_path, fresh_accelerate_state, caplog):
    """The cold-start report: each phase measured, the phases within train()'s time, the log line naming them."""
    flags = ["--output_dir", str(tmp_path), "--max_train_steps", "4", "--checkpointing_steps", "2"]
    flags += ["--validation_steps", "2", "--num_cpu_threads", "1"]
    with caplog.at_level(logging.INFO, logger="hfdiff.training"):
        result = train(parse_config([*TINY_RUN, *flags]), conditional=True)
    seconds = result.seconds
    assert {"data", "step", "steps", "checkpoints", "validation", "final save", "train()"} <= set(seconds)
    assert all(value > 0 for value in seconds.values())
    assert seconds["checkpoints"] + seconds["validation"] < seconds["steps"]
    assert seconds["data"] + seconds["step"] + seconds["steps"] + seconds["final save"] < seconds["train()"]
    line = next(record.message for record in caplog.records if "Time: " in record.message)
    assert "since the process started" in line and "s building the step" in line and "saving checkpoints" in line


def test_a_large_dropped_tail_is_warned_about(tmp_path, fresh_accelerate_state, caplog):
    """28 images at batch 16: one step an epoch, 12 images of each epoch unused; 64 at 16 (TINY_RUN) drop none."""
    flags = ["--output_dir", str(tmp_path), "--num_epochs", "1", "--num_cpu_threads", "1"]
    with caplog.at_level(logging.WARNING, logger="hfdiff.training"):
        train(parse_config([*TINY_RUN, *flags, "--num_train_images", "28"]), conditional=True)
    assert "Each epoch trains on 16 of the 28 images (1 optimizer step(s) of 16)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hfdiff.training"):
        train(parse_config([*TINY_RUN, *flags, "--output_dir", str(tmp_path / "full")]), conditional=True)
    assert "Each epoch trains on" not in caplog.text


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusion_loss_targets(prediction_type):
    from hfdiff import SpriteDDPMScheduler

    scheduler = SpriteDDPMScheduler(num_train_timesteps=50, prediction_type=prediction_type)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1

    def zero_model(sample, timestep, context=None):
        return type("Output", (), {"sample": torch.zeros_like(sample)})

    draws = draw_step_noise(torch.Generator().manual_seed(0), 4, (3, 8, 8), 50, conditional=False)
    loss = diffusion_loss(zero_model, scheduler, x0, None, draws.noise, draws.timesteps, torch.contiguous_format)
    generator = torch.Generator().manual_seed(0)  # the same draws, written out: eps, then t
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, 50, (4,), generator=generator)
    abar = scheduler.alphas_cumprod[t].view(4, 1, 1, 1)
    target = {"epsilon": eps, "sample": x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}
    torch.testing.assert_close(loss, target[prediction_type].pow(2).mean())


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_min_snr_loss_weights_the_x0_error(prediction_type):
    """With --snr_gamma every prediction type weights its error so that, in x_0 terms, timestep t counts
    min(SNR_t, gamma): the eps error is SNR_t times smaller than the x_0 error it implies, the v error SNR_t + 1."""
    from hfdiff import SpriteDDPMScheduler

    scheduler = SpriteDDPMScheduler(num_train_timesteps=50, prediction_type=prediction_type)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1

    def zero_model(sample, timestep, context=None):
        return type("Output", (), {"sample": torch.zeros_like(sample)})

    draws = draw_step_noise(torch.Generator().manual_seed(0), 4, (3, 8, 8), 50, conditional=False)
    args = (zero_model, scheduler, x0, None, draws.noise, draws.timesteps, torch.contiguous_format)
    loss = diffusion_loss(*args, snr_gamma=5.0)
    abar = scheduler.alphas_cumprod[draws.timesteps].double()
    snr = abar / (1 - abar)
    implied = {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[prediction_type]
    target = {"epsilon": draws.noise, "sample": x0}.get(prediction_type)
    if target is None:
        target = scheduler.get_velocity(x0, draws.noise, draws.timesteps)
    per_image = target.double().pow(2).mean(dim=(1, 2, 3))
    expected = (per_image * snr.clamp(max=5.0) / implied).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    assert not torch.allclose(loss, diffusion_loss(*args))  # the weights change the loss


# ---- checkpoints


def test_latest_takes_only_complete_checkpoints(tmp_path):
    for name, complete in [
        ("checkpoint-2", True),
        ("checkpoint-10", True),
        ("checkpoint-12.tmp", True),
        ("checkpoint-14", False),
    ]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "training_state.json").write_text("{}")
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [2, 10]
    assert find_checkpoint(str(tmp_path), "latest") == str(tmp_path / "checkpoint-10")
    assert find_checkpoint(str(tmp_path), "checkpoint-2") == str(tmp_path / "checkpoint-2")
    assert find_checkpoint(str(tmp_path / "empty"), "latest") is None
    with pytest.raises(FileNotFoundError, match="checkpoint-14"):
        find_checkpoint(str(tmp_path), "checkpoint-14")
    prune_checkpoints(str(tmp_path), 1)
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [10]
    assert not (tmp_path / ".checkpoint-2.old").exists()  # retired (renamed) before it was deleted


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    from hfdiff.training.checkpoints import _remove_stale_temporaries

    stale = ["checkpoint-6.tmp", ".checkpoint-4.old"]
    kept = ["checkpoint-8", ".checkpoint-notes.old", "checkpoint-8.tmp.keep", "samples.png"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
    _remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


# ---- end to end


def test_train_conditional_script(tmp_path):
    out = tmp_path / "run"
    args = ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2"]
    run_script([sys.executable, "train_conditional.py", *TINY_RUN, *args, "--checkpoints_total_limit", "1"])

    assert [path.name for path in out.glob("checkpoint-*")] == ["checkpoint-4"]
    with PIL.Image.open(out / "samples.png") as grid:  # a row per class with its name left of it, as the CLI draws
        assert grid.height == 5 * 64 + 4 * 2 and grid.width > 2 * 64 + 30
        assert (np.asarray(grid.convert("L"))[:64, : grid.width - 2 * 64] < 128).any()  # ink of the "hero" label
    assert (out / "validation" / "step-000004.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    pipe = SpriteDiffusionPipeline.from_pretrained(out)
    assert pipe.class_names == list(SPRITE_CLASSES) and pipe.unet.config.context_dim == 5
    # saved with the recommended sampler and its recipe (19 steps: dpm++ on T = 20 with the test's spacing)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.sampling_defaults == {"sampler": "dpm++", "num_inference_steps": 19, "eta": 0.0, "guidance_scale": 1.5}
    images = pipe(batch_size=2, class_labels=["hero", "food"], num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_train_unconditional_script_on_a_grayscale_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(32):
        os.makedirs(tmp_path / "imgs" / "any", exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
            tmp_path / "imgs" / "any" / f"{i}.png"
        )
    out = tmp_path / "run"
    args = ["--output_dir", str(out), "--train_data_dir", str(tmp_path / "imgs"), "--resolution", "8"]
    run_script([sys.executable, "train_unconditional.py", *TINY_RUN, *args, "--max_train_steps", "2"])

    pipe = SpriteDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.context_dim is None and pipe.unet.config.in_channels == 1
    assert pipe(batch_size=2, num_inference_steps=2, output_type="np").images.shape == (2, 8, 8, 1)
    assert (out / "samples.png").is_file()


def test_two_process_ddp_on_cpu(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    args = ["--output_dir", str(out), "--max_train_steps", "3", "--train_batch_size", "8", "--mixed_precision", "no"]
    run_script(["tests/train_and_dump.py", str(dump), *TINY_RUN, *args], launcher=launcher, ACCELERATE_USE_CPU="1")

    ranks = [load_file(dump / f"rank-{r}.safetensors") for r in range(2)]
    indices = [rank.pop("indices") for rank in ranks]
    assert [len(i) for i in indices] == [24, 24]  # 3 steps of 8 images on each process
    assert not set(indices[0].tolist()) & set(indices[1].tolist())  # one epoch of 64: the shards are disjoint
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])  # DDP kept the weights in sync
    assert (out / "samples.png").is_file()


def test_a_checkpoint_that_fails_on_one_ddp_process_stops_every_process(tmp_path):
    """Two gloo processes under a 100 kB file size limit: the main process cannot write the weights while the other
    writes its small RNG state fine. Both stop with the error, the other naming the failed process (before, it waited
    at a barrier until torchrun's agent killed it; a launcher without such an agent would have left it waiting)."""
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))

    out = tmp_path / "run"
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519"]
    args = ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(
        [*launcher, "train_conditional.py", *TINY_RUN, *args, "--train_batch_size", "8", "--mixed_precision", "no"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=limit_file_size,
    )
    assert result.returncode != 0
    assert result.stderr.count(f"Could not write the checkpoint {out / 'checkpoint-2'}") >= 2, result.stderr[-3000:]
    assert "process 0: " in result.stderr  # the other process names the one that failed
    assert not list(out.glob("checkpoint-*"))


def test_resume_is_exact(tmp_path, fresh_accelerate_state):
    """6 steps straight vs. the same run resumed from its step-3 checkpoint (mid-epoch, inside an LR warmup, with
    gradient accumulation and EMA): the final EMA pipeline weights and the raw weights are bit-identical."""

    def config(output_dir, **flags):
        cli = [*TINY_RUN, "--output_dir", str(output_dir), "--train_batch_size", "8", "--max_train_steps", "6"]
        cli += [
            "--gradient_accumulation_steps",
            "2",
            "--checkpointing_steps",
            "3",
            "--checkpoints_total_limit",
            "none",
        ]
        cli += [
            "--lr_warmup_steps",
            "4",
            "--validation_steps",
            "100",
            "--num_cpu_threads",
            "1",
            "--mixed_precision",
            "no",
        ]
        return parse_config(cli + [item for key, value in flags.items() for item in (f"--{key}", value)])

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config(straight), conditional=True)
    os.makedirs(resumed)
    os.rename(straight / "checkpoint-3", resumed / "checkpoint-3")  # as if the run had died after step 3
    result = train(config(resumed, resume_from_checkpoint="latest"), conditional=True)

    assert result.global_step == 6
    for weights in ["unet/diffusion_pytorch_model.safetensors", "checkpoint-6/model.safetensors"]:
        a, b = load_file(straight / weights), load_file(resumed / weights)
        assert all(torch.equal(a[name], b[name]) for name in a), weights


def process_state() -> dict:
    """What train() must leave as it found it: logging, speed flags, thread count, global RNG states."""
    import logging
    import random

    numpy_rng = np.random.get_state()
    return {
        "root handlers": list(logging.getLogger().handlers),
        "root level": logging.getLogger().level,
        "hfdiff level": logging.getLogger("hfdiff").level,
        "matmul tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn tf32": torch.backends.cudnn.allow_tf32,
        "cudnn benchmark": torch.backends.cudnn.benchmark,
        "matmul precision": torch.get_float32_matmul_precision(),
        "threads": torch.get_num_threads(),
        "torch rng": torch.random.get_rng_state().numpy().tobytes(),
        "numpy rng": (numpy_rng[0], numpy_rng[1].tobytes(), *numpy_rng[2:]),
        "python rng": random.getstate(),
    }


def test_train_leaves_the_process_as_it_found_it(tmp_path, fresh_accelerate_state):
    """A fresh run and one resumed from its checkpoint (resuming restores the RNG states saved with
    it), each started from other global seeds and a non-default matmul precision: afterwards the process is as
    before, and the resumed run still ends with the straight run's weights (training reads no global RNG)."""
    import random

    def run(output_dir, global_seed, *flags):
        torch.manual_seed(global_seed), np.random.seed(global_seed), random.seed(global_seed)
        before = process_state()
        cli = [*TINY_RUN, "--output_dir", str(output_dir), "--train_batch_size", "8", "--max_train_steps", "4"]
        cli += ["--checkpointing_steps", "2", "--checkpoints_total_limit", "none", "--validation_steps", "100"]
        train(parse_config([*cli, "--num_cpu_threads", "2", "--mixed_precision", "no", *flags]), conditional=True)
        assert process_state() == before

    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        straight, resumed = tmp_path / "straight", tmp_path / "resumed"
        run(straight, 1)
        os.makedirs(resumed)
        os.rename(straight / "checkpoint-2", resumed / "checkpoint-2")
        run(resumed, 2, "--resume_from_checkpoint", "latest")
    finally:
        torch.set_float32_matmul_precision(precision)
    a, b = (
        load_file(straight / "checkpoint-4" / "model.safetensors"),
        load_file(resumed / "checkpoint-4/model.safetensors"),
    )
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_restored_process_state_restores_on_error():
    """What a GPU run turns on (TF32) and what any run may change is put back, also on an error; cuDNN's autotuning
    stays off (it cost seconds of every start and bought no images/s, `use_fast_cuda_kernels`)."""
    import random

    from hfdiff.training.process_state import RestoredProcessState, use_fast_cuda_kernels

    before = process_state()
    with pytest.raises(RuntimeError, match="stop"), RestoredProcessState():
        use_fast_cuda_kernels()
        assert torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # a caller's setting, put back as well
        torch.set_float32_matmul_precision("medium")
        torch.set_num_threads(torch.get_num_threads() + 1)
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        raise RuntimeError("stop")
    assert process_state() == before


def test_push_to_hub_sends_the_pipeline_without_checkpoints_or_logs(tmp_path, fresh_accelerate_state, fake_hub):
    out = tmp_path / "run"
    cli = [*TINY_RUN, "--output_dir", str(out), "--train_batch_size", "8", "--max_train_steps", "2"]
    cli += [
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "1",
        "--num_cpu_threads",
        "1",
        "--mixed_precision",
        "no",
    ]
    cli += ["--push_to_hub", "--hub_model_id", "me/tiny-sprites", "--hub_private_repo"]
    train(parse_config(cli), conditional=True)

    assert fake_hub["create_repo"] == [{"repo_id": "me/tiny-sprites", "private": True, "token": None}]
    (upload,) = fake_hub["uploads"]
    sent = set(upload["files"])
    assert {"model_index.json", "README.md", "samples.png", "unet/diffusion_pytorch_model.safetensors"} <= sent
    assert not [name for name in sent if name.startswith(("checkpoint-", "logs", "validation", "."))], sent
    assert (out / "checkpoint-2").is_dir() and (out / "validation").is_dir()  # kept locally
    card = (upload["copy"] / "README.md").read_text()
    assert "![samples](samples.png)" in card and '"max_train_steps": 2' in card
    loaded = SpriteDiffusionPipeline.from_pretrained(upload["copy"])
    assert loaded.class_names == list(SPRITE_CLASSES)


def test_model_config_overrides_are_checked():
    from hfdiff.training.data import load_training_data
    from hfdiff.training.loop import build_unet

    data = load_training_data(TrainingConfig(num_train_images=5), conditional=True)
    with pytest.raises(ValueError, match="unknown keys \\['channels'\\]"):
        build_unet(TrainingConfig(model_config_overrides='{"channels": 4}'), data, conditional=True)
    with pytest.raises(ValueError, match="which the data decides"):
        build_unet(TrainingConfig(model_config_overrides='{"in_channels": 1}'), data, conditional=True)
    unet = build_unet(TrainingConfig(model_config_overrides=TINY_UNET_JSON), data, conditional=True)
    assert unet.config.block_out_channels == (8, 16) and unet.config.class_names == list(SPRITE_CLASSES)


def test_wandb_chosen_but_missing(tmp_path):
    from accelerate.utils import is_wandb_available

    from hfdiff.training.loop import make_accelerator

    if is_wandb_available():
        pytest.skip("wandb is installed")
    with pytest.raises(ValueError, match="pip install wandb"):
        make_accelerator(TrainingConfig(logger="wandb", output_dir=str(tmp_path)))


# ---- divergence, and the CUDA-graph step


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, fresh_accelerate_state, monkeypatch):
    """A loss that turns NaN at step 5 (injected into the real loss) stops the run at step 5, names checkpoint-4,
    leaves it loadable, and writes neither a later checkpoint nor a pipeline."""
    from hfdiff.training import step as step_module
    from hfdiff.training.loop import NonFiniteLossError

    real_loss, calls = step_module.diffusion_loss, []

    def diverging_loss(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(step_module, "diffusion_loss", diverging_loss)
    out = tmp_path / "run"
    flags = ["--output_dir", str(out), "--max_train_steps", "8", "--checkpointing_steps", "2"]
    flags += ["--num_cpu_threads", "1", "--no-cuda_graphs"]  # a replayed CUDA graph never calls the Python loss
    with pytest.raises(NonFiniteLossError, match=r"at step 5\b.*checkpoint-4 \(step 4\)"):
        train(parse_config([*TINY_RUN, *flags, "--validation_steps", "100"]), conditional=True)
    # The CPU checks each step's loss at once; a GPU reads the check one step later, so step 6 may have run.
    assert [step for step, _ in list_checkpoints(out)] == [2, 4] and len(calls) == (
        6 if torch.cuda.is_available() else 5
    )
    assert not (out / "model_index.json").exists()
    weights = load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_loss_watch_reports_the_first_bad_step(fresh_accelerate_state):
    """On a GPU the flag of step k is read once step k + 1 is queued, and flush() reads the newest at once."""
    from accelerate import Accelerator

    from hfdiff.training.step import LossWatch

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    watch, device = LossWatch(accelerator), accelerator.device
    assert watch.push(torch.tensor(0.5, device=device), 1) is None
    assert (watch.push(torch.tensor(float("inf"), device=device), 2) or watch.flush()) == 2
    assert watch.push(torch.tensor(0.1, device=device), 3) is None
    assert (
        watch.push(torch.tensor(float("nan"), device=device), 4) or watch.push(torch.ones((), device=device), 5)
    ) == 4


def test_captured_ema_follows_emamodel_step():
    """The CUDA-graph step's EMA update (CapturedEMA), run eagerly on the CPU, against diffusers' EMAModel.step over
    the warmup: the same shadow weights, step count and decay, a frozen parameter included."""
    from diffusers.training_utils import EMAModel

    from hfdiff.training.step import CapturedEMA

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    model[0].bias.requires_grad_(False)
    kwargs = {"decay": 0.999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75, "foreach": True}
    reference, ema = EMAModel(model.parameters(), **kwargs), EMAModel(model.parameters(), **kwargs)
    captured = CapturedEMA(ema, model, torch.device("cpu"))
    trainable = [param for param in model.parameters() if param.requires_grad]
    for _ in range(6):
        with torch.no_grad():
            for param in trainable:  # an optimizer step
                param.add_(torch.randn(param.shape, generator=generator))
        reference.step(model.parameters())
        captured.advance()
        captured.update(trainable)
        assert ema.state_dict()["optimization_step"] == reference.state_dict()["optimization_step"]
        assert ema.cur_decay_value == reference.cur_decay_value
        # no autograd history: the shadows stay plain tensors that checkpoints save and resume copies
        assert not any(shadow.requires_grad or shadow.grad_fn is not None for shadow in ema.shadow_params)
        torch.testing.assert_close(ema.state_dict()["shadow_params"], reference.state_dict()["shadow_params"])
    assert 0 < reference.cur_decay_value < 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_cuda_graph_step_follows_the_eager_step(tmp_path, fresh_accelerate_state, mixed_precision):
    """The same 12 steps (LR warmup, EMA, clipping, context dropout), eager and replayed from a CUDA graph: the raw and
    EMA weights agree within rounding, and the graphed run really used the graph."""
    from accelerate.state import AcceleratorState

    results = {}
    for mode in ["--no-cuda_graphs", "--cuda_graphs"]:
        out = tmp_path / mode.strip("-")
        flags = ["--output_dir", str(out), "--max_train_steps", "12", "--checkpointing_steps", "12"]
        flags += ["--mixed_precision", mixed_precision, "--validation_steps", "100", mode]
        result = train(parse_config([*TINY_RUN, *flags]), conditional=True)
        AcceleratorState._reset_state(reset_partial_state=True)
        assert result.global_step == 12
        results[mode] = {
            "raw": load_file(out / "checkpoint-12" / "model.safetensors"),
            "ema": load_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
        }
    tolerance = {"no": 3e-3, "bf16": 2e-2}[mixed_precision]  # fp32 runs TF32 matmuls; cuDNN may pick other kernels
    for kind in ["raw", "ema"]:
        eager, graphed = results["--no-cuda_graphs"][kind], results["--cuda_graphs"][kind]
        for name in eager:
            error = (eager[name] - graphed[name]).norm() / eager[name].norm().clamp_min(1e-12)
            assert error < tolerance, (kind, name, float(error))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_step_resumes_exactly(tmp_path, fresh_accelerate_state, monkeypatch):
    """Straight 6 graphed steps vs. resumed from the step-3 checkpoint (the capture happens after the load).

    With the eager UNet and cuDNN's deterministic algorithms: on an H200 two identical compiled runs ended 1.5e-5
    apart after 6 steps (torch.compile's kernels are not deterministic run to run), and uncompiled runs with
    deterministic cuDNN matched bit for bit (README, reliability)."""
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)

    def run(output_dir, *extra):
        flags = ["--output_dir", str(output_dir), "--max_train_steps", "6", "--checkpointing_steps", "3"]
        flags += ["--checkpoints_total_limit", "none", "--mixed_precision", "no", "--validation_steps", "100"]
        train(parse_config([*TINY_RUN, *flags, "--cuda_graphs", "--no-compile", *extra]), conditional=True)
        AcceleratorState._reset_state(reset_partial_state=True)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight)
    os.makedirs(resumed)
    os.rename(straight / "checkpoint-3", resumed / "checkpoint-3")
    run(resumed, "--resume_from_checkpoint", "latest")
    for weights in ["unet/diffusion_pytorch_model.safetensors", "checkpoint-6/model.safetensors"]:
        a, b = load_file(straight / weights), load_file(resumed / weights)
        for name in a:
            assert torch.equal(a[name], b[name]), (weights, name)


def test_cuda_graphs_flag_refused_where_it_cannot_run(tmp_path, fresh_accelerate_state):
    flags = ["--output_dir", str(tmp_path), "--max_train_steps", "2", "--cuda_graphs"]
    if torch.cuda.is_available():
        flags += ["--gradient_accumulation_steps", "2"]
    before = process_state()
    with pytest.raises(ValueError, match="--cuda_graphs cannot be used with"):
        train(parse_config([*TINY_RUN, *flags, "--num_cpu_threads", "2"]), conditional=True)
    assert process_state() == before  # restored when train() raises, too


def test_validation_pipelines_are_freed_without_the_cycle_collector(tmp_path, fresh_accelerate_state, monkeypatch):
    """Every validation grid builds a pipeline around a copy of the weights; with Python's cycle collector off, each
    must be gone once its grid is drawn, not kept (with its CUDA graphs and UNet copy) until the collector runs."""
    import gc
    import weakref

    from hfdiff.training import loop

    refs, real_sample_grid = [], loop.sample_grid

    def recording_sample_grid(pipe, *args, **kwargs):
        refs.extend([weakref.ref(pipe), weakref.ref(pipe.unet)])
        return real_sample_grid(pipe, *args, **kwargs)

    monkeypatch.setattr(loop, "sample_grid", recording_sample_grid)
    flags = ["--output_dir", str(tmp_path), "--max_train_steps", "3", "--validation_steps", "1"]
    gc.collect()
    gc.disable()
    try:
        train(parse_config([*TINY_RUN, *flags, "--num_cpu_threads", "1", "--checkpointing_steps", "0"]), True)
        assert len(refs) == 8  # validation at steps 1, 2, 3 and the final samples
        assert [ref() for ref in refs] == [None] * 8
    finally:
        gc.enable()
