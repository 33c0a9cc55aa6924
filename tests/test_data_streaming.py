"""--dataset_streaming: a `datasets` stream (load_dataset(..., streaming=True), no length) trains, resumes exactly
and shards by rank; its bad inputs are refused in one line. CPU, tiny runs on a local image folder."""

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
from test_data_paths import TINY_RUN

from hfdiff.training import TrainingConfig, load_training_data, parse_config, resolve_defaults, train
from hfdiff.training.streaming import IterableImages, stream_loader, worker_errors_raised

ROOT = Path(__file__).resolve().parents[1]
STREAM_RUN = [flag for flag in TINY_RUN if flag not in ("--num_train_images", "64")]


def image_folder(path, per_class=12, size=(12, 20)):
    """An image folder of random non-square RGB PNGs in three classes, so that cropping and resizing matter."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        os.makedirs(path / name)
        for i in range(per_class):
            PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path / name / f"{i:02d}.png")
    return str(path)


def stream_config(folder, **flags):
    return TrainingConfig(train_data_dir=folder, dataset_streaming=True, max_train_steps=4, resolution=8, **flags)


def test_stream_order_is_a_function_of_seed_epoch_and_rank(tmp_path, caplog):
    folder = image_folder(tmp_path / "folder")
    with caplog.at_level(logging.INFO, logger="hfdiff.training"):
        data = load_training_data(stream_config(folder), conditional=True)
    assert "--dataset_streaming" in caplog.text and "streaming data path" in caplog.text
    assert isinstance(data.images, IterableImages) and data.streaming and not data.has_length
    assert data.class_names == ["a", "b", "c"] and data.images.shape[1:] == (3, 8, 8)

    def batches(rank, world_size, skip=0, workers=0, count=12):
        loader = stream_loader(data.images, 4, 7, rank, world_size, skip, workers, "cpu")
        return [item for item, _ in zip(worker_errors_raised(loader), range(count))]

    whole = batches(0, 1)
    assert [(epoch, micro) for epoch, micro, _, _ in whole] == [(e, m) for e in range(2) for m in range(9)][:12]
    again, from_worker, skipped = batches(0, 1), batches(0, 1, workers=1), batches(0, 1, skip=5, count=7)
    for a, b, c in zip(whole, again, from_worker):
        assert a[:2] == b[:2] == c[:2] and torch.equal(a[2], c[2])
        assert torch.equal(a[3], b[3]) and torch.equal(a[3], c[3])  # worker processes do not change the order
    assert all(torch.equal(a[3], b[3]) and torch.equal(a[2], b[2]) for a, b in zip(whole[5:], skipped))
    assert not torch.equal(whole[0][3], whole[9][3])  # epoch 1 is shuffled anew (set_epoch)
    labels = torch.cat([labels for _, micro, labels, _ in whole[:9]])
    assert sorted(labels.tolist()) == sorted([0, 1, 2] * 12)  # epoch 0 is every image once
    rank0, rank1 = batches(0, 2, count=4), batches(1, 2, count=4)
    assert not any(torch.equal(a[3], b[3]) for a in rank0 for b in rank1)  # disjoint shares


def test_streamed_run_resumed_equals_an_uninterrupted_one(tmp_path, fresh_accelerate_state, caplog):
    """6 steps with --random_flip from a stream, and the same resumed from the step-3 checkpoint (replaying and
    skipping the first 3 micro-batches): bit-identical final weights."""
    folder = image_folder(tmp_path / "folder")

    def run(output_dir, *flags):
        cli = [*STREAM_RUN, "--output_dir", str(output_dir), "--train_data_dir", folder, "--dataset_streaming"]
        cli += ["--resolution", "8", "--max_train_steps", "6", "--random_flip", "--train_batch_size", "4"]
        return train(
            parse_config([*cli, "--checkpointing_steps", "3", "--checkpoints_total_limit", "none", *flags]), True
        )

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    with caplog.at_level(logging.INFO, logger="hfdiff.training"):
        run(whole)
        assert "streaming data path (--dataset_streaming)" in caplog.text and "a stream of images" in caplog.text
        os.makedirs(resumed)
        os.rename(whole / "checkpoint-3", resumed / "checkpoint-3")  # as if the run had died after step 3
        result = run(resumed, "--resume_from_checkpoint", "latest")
    assert result.global_step == 6 and "replaying its first 3 micro-batches and skipping them" in caplog.text
    for weights in ["unet/diffusion_pytorch_model.safetensors", "checkpoint-6/model.safetensors"]:
        a, b = load_file(whole / weights), load_file(resumed / weights)
        assert all(torch.equal(a[name], b[name]) for name in a), weights


# ---- bad input


def test_stream_needs_max_train_steps():
    with pytest.raises(ValueError, match=r"--dataset_streaming reads a stream without a length.*--max_train_steps"):
        resolve_defaults(TrainingConfig(dataset_name="x", dataset_streaming=True), "cpu", conditional=True)
    with pytest.raises(ValueError, match=r"neither --dataset_name nor --train_data_dir"):
        resolve_defaults(TrainingConfig(dataset_streaming=True, max_train_steps=5), "cpu", conditional=True)


def test_stream_with_text_conditioning_is_refused(tmp_path):
    config = stream_config(str(tmp_path), conditioning="text")
    with pytest.raises(
        ValueError, match=r"--conditioning text needs the table of distinct captions.*--dataset_stream"
    ):
        load_training_data(config, conditional=True)


def test_unreadable_image_in_a_worker_is_one_line(tmp_path):
    folder = image_folder(tmp_path / "folder", per_class=2)
    (tmp_path / "folder" / "c" / "01.png").write_bytes(b"not a png")
    data = load_training_data(stream_config(folder), conditional=True)
    loader = stream_loader(data.images, 6, 0, 0, 1, 0, 1, "cpu")  # a real worker process raises it
    with pytest.raises(ValueError) as raised:
        list(zip(worker_errors_raised(loader), range(3)))
    message = str(raised.value)
    assert "\n" not in message and "01.png could not be read" in message and "cannot skip it" in message


def test_unreadable_image_in_a_worker_reaches_the_cli_as_one_line(tmp_path):
    """The map-style streaming path (tiny budget) through train_conditional.py: the worker's ValueError is the one
    line printed, and the exit status is not 0."""
    folder = image_folder(tmp_path / "folder", per_class=4)
    (tmp_path / "folder" / "b" / "01.png").write_bytes(b"not a png")
    flags = ["--output_dir", str(tmp_path / "run"), "--train_data_dir", folder, "--resolution", "8"]
    flags += ["--max_train_steps", "2", "--train_batch_size", "4", "--device_data_budget_mb", "0.0001"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "train_conditional.py", *STREAM_RUN, *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "01.png could not be read" in result.stderr and "DataLoader worker" not in result.stderr, result.stderr


def test_two_process_ddp_stream(tmp_path):
    """Two CPU processes (accelerate launch --multi_gpu): split_dataset_by_node gives each its share, both take the
    same number of steps and end with the same weights."""
    folder = image_folder(tmp_path / "folder")
    out, dump = tmp_path / "run", tmp_path / "dump"
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29523"]
    flags = ["--output_dir", str(out), "--train_data_dir", folder, "--dataset_streaming", "--resolution", "8"]
    flags += ["--max_train_steps", "3", "--train_batch_size", "4", "--dataloader_num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(
        [*launcher, "tests/train_and_dump.py", str(dump), *STREAM_RUN, *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    ranks = [load_file(dump / f"rank-{r}.safetensors") for r in range(2)]
    assert [len(rank.pop("indices")) for rank in ranks] == [12, 12]  # 3 steps of 4 images on each process
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])  # DDP kept the weights in sync
    assert (out / "samples.png").is_file()
