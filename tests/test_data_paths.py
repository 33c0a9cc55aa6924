"""The two data paths (device-resident and streaming) train on the same batches in the same order, resume exactly on
either, and say which ran; --random_flip and --center_crop; --device_data_budget_mb checks. CPU, tiny runs."""

import logging
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_UNET_JSON

from hfdiff.data import SPRITE_CLASSES
from hfdiff.training import TrainingConfig, load_training_data, parse_config, resolve_defaults, train
from hfdiff.training import data as training_data
from hfdiff.training.decoding import resize_images
from hfdiff.training.loop import EpochBatches
from hfdiff.training.step import draw_step_noise, get_batch
from hfdiff.training.streaming import DataBudget, StreamedImages, batch_loader, warn_direction_dependent

TINY = DataBudget(1, "a test's budget")  # forces the streaming path
TINY_RUN = [
    "--model_config_overrides", TINY_UNET_JSON,
    "--num_train_images", "64",
    "--train_batch_size", "8",
    "--ddpm_num_steps", "20",
    "--validation_inference_steps", "4",
    "--num_validation_images", "1",
    "--validation_steps", "100",
    "--logging_steps", "2",
    "--lr_warmup_steps", "2",
    "--num_cpu_threads", "1",
    "--mixed_precision", "no",
    "--dataloader_num_workers", "1",
]  # fmt: skip


def image_dataset(path, count=24, size=(12, 20)):
    """A save_to_disk set of random non-square RGB PNGs, so that cropping and resizing matter."""
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(count)]}, features).save_to_disk(path)
    return str(path)


# ---- augmentation


def test_flip_draw_comes_last_and_only_with_the_flag():
    def draws(flip):
        return draw_step_noise(torch.Generator().manual_seed(3), 1000, (1, 2, 4), 50, conditional=True, flip=flip)

    plain, flipped = draws(False), draws(True)
    assert plain.flip_draw is None  # a run without --random_flip draws what it always drew
    for name in ("keep_draw", "noise", "timesteps"):
        assert torch.equal(getattr(plain, name), getattr(flipped, name)), name
    images = torch.arange(1000 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(1000, 1, 2, 4)
    indices = torch.arange(1000)
    x0, _ = get_batch(images, None, None, indices, None, 0.0, torch.contiguous_format, flip_draw=flipped.flip_draw)
    x0_plain, _ = get_batch(images, None, None, indices, None, 0.0, torch.contiguous_format)
    mirrored = (x0 == x0_plain.flip(-1)).flatten(1).all(1)
    unchanged = (x0 == x0_plain).flatten(1).all(1)
    assert torch.equal(mirrored, flipped.flip_draw < 0.5) and torch.equal(unchanged, ~mirrored)
    assert 400 < int(mirrored.sum()) < 600  # p = 0.5 per image


def test_random_flip_warns_for_direction_dependent_classes(caplog):
    with caplog.at_level(logging.WARNING, logger="hfdiff.training.streaming"):
        warn_direction_dependent(False, list(SPRITE_CLASSES), None)
        warn_direction_dependent(True, ["cat", "dog"], ["a bright cat", "a dog inside"])
        assert not caplog.records
        warn_direction_dependent(True, list(SPRITE_CLASSES), None)
    assert len(caplog.records) == 1 and "side-facing" in caplog.text and "--random_flip" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hfdiff.training.streaming"):
        warn_direction_dependent(True, None, ["a knight facing left", "a knight facing left", "a cat"])
    assert len(caplog.records) == 1 and "'a knight facing left'" in caplog.text


def test_center_crop_or_whole_image():
    image = torch.zeros(1, 1, 2, 4, dtype=torch.uint8)
    image[..., 1:3] = 255  # a bright centre square between dark sides
    assert resize_images(image, 4).eq(255).all()  # the centre square, upscaled
    whole = resize_images(image, 4, center_crop=False)  # the whole image, stretched to a square
    assert whole.shape == (1, 1, 4, 4) and whole[0, 0].tolist() == [[0, 255, 255, 0]] * 4


# ---- the two paths


@pytest.mark.parametrize("source", ["sprites", "dataset"])
def test_streamed_batches_equal_the_resident_ones_in_order(tmp_path, source, caplog, monkeypatch):
    flags = {"num_train_images": 40} if source == "sprites" else {"dataset_name": image_dataset(tmp_path / "set")}
    config = TrainingConfig(resolution=24, **flags)
    resident = load_training_data(config, conditional=True)

    def decode_everything(*args):
        raise AssertionError("the streaming path decoded the whole set")

    monkeypatch.setattr(training_data, "_decode_images", decode_everything)  # a set larger than host memory would fail
    with caplog.at_level(logging.INFO, logger="hfdiff.training.streaming"):
        streamed = load_training_data(config, conditional=True, budget=TINY)
    assert "streaming data path" in caplog.text and "over the budget" in caplog.text
    assert isinstance(streamed.images, StreamedImages) and streamed.streaming and not resident.streaming
    assert streamed.images.shape == resident.images.shape and torch.equal(streamed.labels, resident.labels)
    batches = EpochBatches(len(resident), 4, 1, seed=5, rank=1, world_size=2, device="cpu")
    expected = [resident.images[indices] for _, _, indices in batches.iterate(0, num_epochs=2)]
    loaded = list(batch_loader(streamed.images, batches, 0, 2, num_workers=1, device="cpu"))  # a real worker
    assert len(loaded) == len(expected) and all(torch.equal(a, b) for a, b in zip(loaded, expected))
    resumed = list(batch_loader(streamed.images, batches, 3, 2, num_workers=0, device="cpu"))
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected[3:])) and len(resumed) == len(expected) - 3


def test_resident_load_is_chosen_within_the_budget(caplog):
    with caplog.at_level(logging.INFO, logger="hfdiff.training.streaming"):
        data = load_training_data(TrainingConfig(num_train_images=10), False, DataBudget(2**20, "1 MB"))
    assert not data.streaming and "device-resident data path" in caplog.text and "within the budget" in caplog.text


def test_streaming_run_resumed_equals_a_resident_run(tmp_path, fresh_accelerate_state, caplog):
    """6 steps with --random_flip on the resident path, on the streaming path (tiny budget), and on the streaming path
    resumed from the step-3 checkpoint: the same batches, flips and noise, so bit-identical final weights."""

    def run(output_dir, *flags):
        cli = [*TINY_RUN, "--output_dir", str(output_dir), "--max_train_steps", "6", "--random_flip", *flags]
        return train(parse_config(cli + ["--checkpointing_steps", "3", "--checkpoints_total_limit", "none"]), True)

    resident, streamed, resumed = tmp_path / "resident", tmp_path / "streamed", tmp_path / "resumed"
    with caplog.at_level(logging.INFO, logger="hfdiff.training"):
        run(resident)
        assert "device-resident data path" in caplog.text
        run(streamed, "--device_data_budget_mb", "0.01")
        assert "streaming data path" in caplog.text and "Streaming batches from 1 DataLoader worker" in caplog.text
    assert "side-facing" in caplog.text  # the sprites' direction-dependent class, warned about with --random_flip
    os.makedirs(resumed)
    os.rename(streamed / "checkpoint-3", resumed / "checkpoint-3")  # as if the streaming run had died after step 3
    result = run(resumed, "--device_data_budget_mb", "0.01", "--resume_from_checkpoint", "latest")
    assert result.global_step == 6
    for weights in ["unet/diffusion_pytorch_model.safetensors", "checkpoint-6/model.safetensors"]:
        a = load_file(resident / weights)
        for other in (streamed, resumed):
            b = load_file(other / weights)
            assert all(torch.equal(a[name], b[name]) for name in a), (other.name, weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_step_streams_what_it_would_gather(tmp_path, fresh_accelerate_state, monkeypatch):
    """The graphed step with --random_flip, resident vs. streaming (batches copied into its static buffer from pinned
    memory): bit-identical weights.

    Eager UNet and deterministic cuDNN, so that the two runs do the same arithmetic: on an H200 two identical compiled
    runs, both resident, ended 1.5e-5 apart (torch.compile's kernels are not deterministic run to run), and the same
    runs uncompiled with deterministic cuDNN ended bit-identical, streamed or not."""
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    weights = {}
    for name, extra in [("resident", []), ("streamed", ["--device_data_budget_mb", "0.01"])]:
        flags = ["--output_dir", str(tmp_path / name), "--max_train_steps", "6", "--checkpointing_steps", "6"]
        train(parse_config([*TINY_RUN, *flags, "--random_flip", "--cuda_graphs", "--no-compile", *extra]), True)
        AcceleratorState._reset_state(reset_partial_state=True)
        weights[name] = load_file(tmp_path / name / "checkpoint-6" / "model.safetensors")
    for key, value in weights["resident"].items():
        assert torch.equal(weights["streamed"][key], value), key


# ---- bad input


@pytest.mark.parametrize("budget", [0, -5.0, float("nan"), float("inf"), "lots", True])
def test_budget_must_be_a_positive_number(budget):
    with pytest.raises(ValueError, match=r"--device_data_budget_mb must be a number of megabytes > 0.*got"):
        resolve_defaults(TrainingConfig(device_data_budget_mb=budget), "cpu", conditional=True)


def test_budget_flag_that_is_not_a_number_is_refused(capsys):
    with pytest.raises(SystemExit) as raised:
        parse_config(["--device_data_budget_mb", "lots"])
    assert raised.value.code == 2 and "--device_data_budget_mb: invalid float value: 'lots'" in capsys.readouterr().err


def test_unreadable_image_on_the_streaming_path_is_named(tmp_path):
    folder = tmp_path / "folder"
    for name in ("a", "b"):
        os.makedirs(folder / name)
        for i in range(3):
            PIL.Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / name / f"{i}.png")
    (folder / "b" / "2.png").write_bytes(b"not a png")
    data = load_training_data(TrainingConfig(train_data_dir=str(folder)), conditional=True, budget=TINY)
    with pytest.raises(ValueError, match=r"2\.png could not be read.*cannot skip it"):
        data.images[torch.arange(6)]
