"""Bad input the other test files do not already cover: unreadable files in an image folder, empty data, labels out of
range, an output folder that cannot be written, pipeline folders with a missing file or config entry. Each gives an
error that names the input and the fix (or, for unreadable images, a warning that counts them), and nothing already
saved is changed. A full disk is tested with real training runs in test_crash_safety.py."""

import json
import logging
import os
import shutil

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from tiny import make_pipe

from hfdiff import SpriteDiffusionPipeline
from hfdiff.training import TrainingConfig, load_training_data, resolve_defaults


def load(conditional=True, **flags):
    return load_training_data(TrainingConfig(**flags), conditional=conditional)


def write_png(path, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.new("RGB", (16, 16), colour).save(path)


# ---- training data


def test_unreadable_files_in_an_image_folder_are_skipped_with_a_counting_warning(tmp_path, caplog):
    root = tmp_path / "imgs"
    for name, red in [("cat", 10), ("dog", 200)]:
        for i in range(2):
            write_png(str(root / name / f"{i}.png"), (red, 0, 0))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")  # hidden: expected, not counted
    (root / "cat" / "broken.png").write_bytes(b"garbage" * 20)
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "fake.jpg").write_text("<html>a web page saved as .jpg</html>")

    with caplog.at_level(logging.WARNING, logger="hfdiff"):
        data = load(train_data_dir=str(root))

    assert data.images.shape == (4, 3, 16, 16) and data.class_names == ["cat", "dog"]
    assert [int(image[0, 0, 0]) for image in data.images] == [[10, 200][label] for label in data.labels.tolist()]
    messages = [record.getMessage() for record in caplog.records]
    skipped = next(message for message in messages if "could not be read" in message)
    assert skipped.startswith(f"Skipped 3 of 7 images of --train_data_dir {root}")
    assert all(name in skipped for name in ("broken.png", "truncated.png", "fake.jpg")) and "delete" in skipped
    ignored = next(message for message in messages if "not images by their extension" in message)
    assert ignored.startswith("Skipped 1 file(s)") and "notes.txt" in ignored and ".DS_Store" not in ignored


def test_corrupt_images_of_a_saved_dataset_are_skipped_too(tmp_path, caplog):
    good = tmp_path / "good.png"
    write_png(str(good), (0, 0, 255))
    rows = [{"bytes": good.read_bytes(), "path": None}, {"bytes": b"not a png", "path": None}] * 2
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 1, 0]}, features=features).save_to_disk(tmp_path / "d")
    with caplog.at_level(logging.WARNING, logger="hfdiff"):
        data = load(dataset_name=str(tmp_path / "d"))
    assert data.images.shape == (2, 3, 16, 16) and data.labels.tolist() == [0, 1]  # rows 0 and 2
    assert "Skipped 2 of 4 images" in caplog.text and "row 1" in caplog.text


def test_a_folder_of_only_unreadable_images_is_refused(tmp_path):
    for name in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / name)
        (tmp_path / "imgs" / name / "0.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"None of the 2 images of --train_data_dir .*imgs could be read"):
        load(train_data_dir=str(tmp_path / "imgs"))


def test_empty_data_sets(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).save_to_disk(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"--dataset_name .*empty: the save_to_disk folder could not be .*empty"):
        load(dataset_name=str(tmp_path / "empty"))  # datasets itself fails to load an empty save (IndexError)
    np.save(tmp_path / "sprites.npy", np.zeros((0, 16, 16, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((0, 5)))
    with pytest.raises(ValueError, match=r"--sprites_npy .*sprites.npy holds no images"):
        load(sprites_npy=str(tmp_path / "sprites.npy"), labels_npy=str(tmp_path / "labels.npy"))
    with pytest.raises(ValueError, match="holds no images"):
        load(conditional=False, sprites_npy=str(tmp_path / "sprites.npy"))


def test_a_sprites_file_that_is_not_npy(tmp_path):
    (tmp_path / "broken.npy").write_bytes(b"PK\3\4 a damaged zip file, not an array")
    np.savez(tmp_path / "archive.npz", images=np.zeros((2, 16, 16, 3), np.uint8))
    for name in ("broken.npy", "archive.npz"):
        with pytest.raises(ValueError, match=rf"--sprites_npy .*{name} is not a plain .npy array.*np.save"):
            load(conditional=False, sprites_npy=str(tmp_path / name))


@pytest.mark.parametrize(
    "labels, feature, message",
    [
        ([0, -1, 1], datasets.ClassLabel(names=["a", "b"]), r"1 label\(s\) outside 0..1 \(row 1: -1; .*-1 .*missing"),
        ([0, -2, 1], datasets.Value("int64"), "has negative labels"),
    ],
    ids=["missing-class-label", "negative-int"],
)
def test_labels_out_of_range(tmp_path, labels, feature, message):
    features = datasets.Features({"image": datasets.Image(), "label": feature})
    images = [PIL.Image.new("RGB", (8, 8))] * len(labels)
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=message):
        load(dataset_name=str(tmp_path / "d"))
    assert load(conditional=False, dataset_name=str(tmp_path / "d")).labels is None  # no labels needed, no error


def test_image_size_the_unet_cannot_take():
    from hfdiff.training.loop import build_unet

    data = load(num_train_images=2, resolution=10)  # 10 = 2 x 5: one downsampling fits, two do not
    overrides = '{"block_out_channels": [8, 16, 16], "norm_num_groups": 4}'
    with pytest.raises(ValueError, match=r"images are 10x10.*multiples of 4; pass e.g. --resolution 12"):
        build_unet(TrainingConfig(model_config_overrides=overrides), data, conditional=True)


# ---- where the results go


def test_an_output_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=rf"--output_dir {blocker}/run cannot be created: {blocker} is a file"):
        resolve_defaults(TrainingConfig(output_dir=str(blocker / "run")), "cpu", conditional=True)
    with pytest.raises(ValueError, match=rf"--output_dir {blocker} is a file"):
        resolve_defaults(TrainingConfig(output_dir=str(blocker)), "cpu", conditional=True)
    with pytest.raises(OSError, match=rf"Cannot save the pipeline to {blocker}/pipe: the folder cannot be created"):
        make_pipe().save_pretrained(blocker / "pipe")
    assert blocker.read_text() == "not a folder"


def test_an_output_dir_without_write_permission(tmp_path, monkeypatch):
    # The tests may run as root, whom permission bits do not stop: os.access answers as it would for a user.
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(tmp_path))
    with pytest.raises(PermissionError, match=rf"--output_dir {tmp_path}/run cannot be written: no write permission"):
        resolve_defaults(TrainingConfig(output_dir=str(tmp_path / "run")), "cpu", conditional=True)


# ---- loading a pipeline folder


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "pipe"
    make_pipe().save_pretrained(folder)
    return folder


def edit_json(path, change):
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "file, key",
    [
        ("unet/config.json", "block_out_channels"),
        ("unet/config.json", "context_dim"),  # the default, 5, would silently make an unconditional model conditional
        ("scheduler/scheduler_config.json", "num_train_timesteps"),  # the default, 500, would silently misread T=20
    ],
)
def test_missing_config_entry(saved, file, key):
    edit_json(saved / file, lambda config: config.pop(key))
    with pytest.raises(ValueError, match=rf"{saved / file} lacks {key}: .*save the pipeline again"):
        SpriteDiffusionPipeline.from_pretrained(saved)


def test_missing_or_damaged_files(saved):
    shutil.copytree(saved, saved.parent / "copy")
    (saved / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{saved}/unet/config.json does not exist.*save_pretrained"):
        SpriteDiffusionPipeline.from_pretrained(saved)

    saved = saved.parent / "copy"
    (saved / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet has no weights: expected diffusion_pytorch_model.safetensors"):
        SpriteDiffusionPipeline.from_pretrained(saved)
    edit_json(saved / "model_index.json", lambda index: index.pop("unet"))
    with pytest.raises(ValueError, match=r"model_index.json has no \[library, class\] entry for 'unet'"):
        SpriteDiffusionPipeline.from_pretrained(saved)
    (saved / "model_index.json").write_text('{"unet": ["unet_context", ')
    with pytest.raises(ValueError, match=r"model_index.json is not valid JSON .*Save the pipeline again"):
        SpriteDiffusionPipeline.from_pretrained(saved)
    (saved / "model_index.json").unlink()  # what a save cut short between its first and last rename leaves
    with pytest.raises(FileNotFoundError, match="has pipeline components: a save that was cut short"):
        SpriteDiffusionPipeline.from_pretrained(saved)


def test_a_failed_save_changes_nothing(saved, monkeypatch):
    """A write error while the new pipeline is staged (here: safetensors failing as on a full disk) is reported with
    the folder and the fix; the saved pipeline and its folder stay exactly as they were."""
    import safetensors.torch

    before = {path: path.read_bytes() for path in saved.rglob("*") if path.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    pipe = make_pipe(init_seed=1)
    with pytest.raises(OSError, match=rf"Could not save the pipeline to {saved} .*No space left.*free space, or save"):
        pipe.save_pretrained(saved)
    assert {path: path.read_bytes() for path in saved.rglob("*") if path.is_file()} == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["pipe"]  # no staging folder left beside it
    assert torch.equal(
        load_file(saved / "unet" / "diffusion_pytorch_model.safetensors")["conv_out.bias"],
        make_pipe().unet.conv_out.bias,
    )


# ---- sampling arguments not covered in test_pipeline.py


def test_negative_eta():
    from hfdiff import SpriteDDIMScheduler

    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=20))
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\].*got -0.5"):
        pipe(num_inference_steps=2, eta=-0.5)
