"""Bad input the other test files do not already cover: unreadable files in an image folder, folders smaller than one
batch, of one class, of mixed sizes or of grey and colour images mixed, empty data, labels out of range, an output
folder that cannot be written, pipeline folders with a missing file or config entry. Each either trains with the log
saying what was done, or gives an error that names the input and the fix (for unreadable images, a warning that
counts them), and nothing already saved is changed. A full disk is tested with real training runs in test_crash_safety.py."""

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
from hfdiff.data import SPRITE_CLASSES
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


def write_folder(root, classes, size=16, mode="L", count=4):
    """root/<class>/<i>.png: `count` images a class, of `size` px (an int, or a (width, height) a class) in `mode`."""
    for k, name in enumerate(classes):
        side = size[k] if isinstance(size, (list, tuple)) else size
        image_mode = mode[k] if isinstance(mode, (list, tuple)) else mode
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            PIL.Image.new(image_mode, (side, side), 40 * k + i if image_mode == "L" else (40 * k, i, 0)).save(
                root / name / f"{i}.png"
            )
    return root


def test_a_folder_smaller_than_one_batch_trains_in_a_smaller_batch(tmp_path, caplog, fresh_accelerate_state):
    # 12 grey 28x28 images, none of the flags that size a run: the batch drops from the CPU's 64 to 8, the preset and
    # its resolution come from the images, and the first line says what was chosen.
    from hfdiff.training import parse_config, train

    root = write_folder(tmp_path / "imgs", ["a", "b", "c"], size=28)
    flags = ["--train_data_dir", str(root), "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2"]
    flags += ["--ddpm_num_steps", "20", "--validation_inference_steps", "2", "--num_validation_images", "1"]
    with caplog.at_level(logging.INFO, logger="hfdiff"):
        result = train(parse_config(flags), conditional=True)
    assert result.global_step == 2
    assert "has 12 images, fewer than one batch of 64 per process: training in batches of 8" in caplog.text
    first = next(record.getMessage() for record in caplog.records if "steps of" in record.getMessage())
    assert "12 images (1, 28, 28)" in first and "sprite-small" in first and "2 steps of 8 images" in first
    assert "--max_train_steps" in first and "expected" in first
    unet = SpriteDiffusionPipeline.from_pretrained(tmp_path / "out").unet
    assert unet.config.sample_size == 28 and unet.config.in_channels == 1
    assert list(unet.config.block_out_channels) == [32, 64, 80]  # sprite-small's


def test_a_batch_larger_than_the_folder_is_refused_before_training(tmp_path):
    import subprocess
    import sys

    root = write_folder(tmp_path / "imgs", ["a", "b"])
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_conditional.py")
    command = [sys.executable, script, "--train_data_dir", str(root), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, "--train_batch_size", "16"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "8 images, fewer than one optimizer step takes" in errors[0] and "--train_batch_size" in errors[0]
    assert not os.path.exists(tmp_path / "out" / "model_index.json")


def test_a_folder_of_one_class_is_refused_for_conditional_training(tmp_path):
    root = write_folder(tmp_path / "imgs", ["cat"])
    with pytest.raises(ValueError, match=r"one class folder \(cat/\).*two classes.*train_unconditional.py"):
        load(train_data_dir=str(root))
    assert load(conditional=False, train_data_dir=str(root)).images.shape == (4, 1, 16, 16)


def test_mixed_sizes_name_the_files_and_the_fix(tmp_path):
    root = write_folder(tmp_path / "imgs", ["a", "b"], size=[16, 32])
    with pytest.raises(ValueError, match=r"2 different sizes.*16x16: .*a/0.png; 32x32: .*b/0.png.*--resolution 32"):
        load(train_data_dir=str(root))
    assert load(train_data_dir=str(root), resolution=16).images.shape == (8, 1, 16, 16)


def test_grey_and_colour_mixed_train_as_colour_with_a_note(tmp_path, caplog):
    root = write_folder(tmp_path / "imgs", ["a", "b"], mode=["L", "RGB"])
    with caplog.at_level(logging.INFO, logger="hfdiff"):
        data = load(train_data_dir=str(root))
    assert data.images.shape == (8, 3, 16, 16)
    grey = data.images[data.labels == 0]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert "mixes 4 grayscale and 4 colour images" in caplog.text and "a/0.png" in caplog.text


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
        ([0, 1, 999, 1], datasets.Value("int64"), r"largest is 999, so classes 2..998 of 0..999 have no images"),
        ([0, 2, 2, 0], datasets.Value("int64"), r"classes 1 of 0..2 have no images \(classes above the gap: 2 \(2"),
    ],
    ids=["missing-class-label", "negative-int", "outlier-int", "gap-int"],
)
def test_labels_out_of_range(tmp_path, labels, feature, message):
    features = datasets.Features({"image": datasets.Image(), "label": feature})
    images = [PIL.Image.new("RGB", (8, 8))] * len(labels)
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=message):
        load(dataset_name=str(tmp_path / "d"))
    assert load(conditional=False, dataset_name=str(tmp_path / "d")).labels is None  # no labels needed, no error


def save_npy(tmp_path, labels):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "sprites.npy", rng.integers(0, 256, (len(labels), 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.asarray(labels))
    return {"sprites_npy": str(tmp_path / "sprites.npy"), "labels_npy": str(tmp_path / "labels.npy")}


def test_npy_labels_must_be_0_to_k_minus_1_as_declared(tmp_path):
    """K decides the model's width: one outlier label used to make a 1,000-class model, and 3 classes of 5 still got
    the five course names."""
    one_hot = np.eye(5)[[0, 1, 2, 3, 4, 2]]
    data = load(**save_npy(tmp_path, one_hot))
    assert data.class_names == list(SPRITE_CLASSES)
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 2]
    # one-hot declares K by its width: 3 classes used of 5 keep K = 5 (the course's, with its names)
    assert load(**save_npy(tmp_path, np.eye(5)[[0, 1, 2, 0]])).class_names == list(SPRITE_CLASSES)
    with pytest.raises(ValueError, match=r"largest is 999, so classes 5..998 .*above the gap: 999 \(1 image.*relabel"):
        load(**save_npy(tmp_path, [0, 1, 2, 3, 4, 999]))
    with pytest.raises(ValueError, match=r"labels file .*labels.npy.* classes 1, 3 of 0..4 have no images"):
        load(**save_npy(tmp_path, [0, 2, 4, 4]))
    # index labels: K from the data, course names only for exactly 5 classes
    assert load(**save_npy(tmp_path, [0, 2, 1, 2])).class_names == ["0", "1", "2"]
    assert load(**save_npy(tmp_path, np.eye(7)[[0, 6]])).class_names == [str(k) for k in range(7)]
    assert load(**save_npy(tmp_path, [0, 1, 2, 3, 4])).class_names == list(SPRITE_CLASSES)


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


def test_output_dir_checks_before_training(tmp_path, monkeypatch):
    for empty in ("", "  "):
        with pytest.raises(ValueError, match=r"--output_dir is empty .*e.g. --output_dir sprite-model"):
            resolve_defaults(TrainingConfig(output_dir=empty), "cpu", conditional=True)
    # A parent that looks writable (os.access says yes, as it does for root) but is not: the probe finds out.
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    with pytest.raises(
        PermissionError, match=r"--output_dir /proc/hfdiff-run cannot be written: creating a folder in"
    ):
        resolve_defaults(TrainingConfig(output_dir="/proc/hfdiff-run"), "cpu", conditional=True)
    # A good one passes, and the check leaves nothing behind: neither --output_dir nor its probe.
    resolve_defaults(TrainingConfig(output_dir=str(tmp_path / "new" / "run")), "cpu", conditional=True)
    assert os.listdir(tmp_path) == []
    (tmp_path / "old").mkdir()
    resolve_defaults(TrainingConfig(output_dir=str(tmp_path / "old")), "cpu", conditional=True)
    assert os.listdir(tmp_path / "old") == []


def test_push_to_hub_checks_before_training(tmp_path, monkeypatch):
    import huggingface_hub.constants

    out = str(tmp_path / "run")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"--push_to_hub .*HF_HUB_OFFLINE is set.*unset HF_HUB_OFFLINE"):
        resolve_defaults(TrainingConfig(output_dir=out, push_to_hub=True), "cpu", conditional=True)
    resolve_defaults(TrainingConfig(output_dir=out), "cpu", conditional=True)  # offline without a push is fine
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for repo_id in ("not a/valid/repo id", "me/../x", "a" * 97):
        with pytest.raises(ValueError, match=r"--push_to_hub: .* \(--hub_model_id\) is not a valid Hub repo id"):
            resolve_defaults(TrainingConfig(output_dir=out, push_to_hub=True, hub_model_id=repo_id), "cpu", True)
    bad_name = str(tmp_path / "my run!")
    with pytest.raises(ValueError, match=r"'my run!' \(the name of --output_dir .*\) is not a valid Hub repo id"):
        resolve_defaults(TrainingConfig(output_dir=bad_name, push_to_hub=True), "cpu", conditional=True)
    config = TrainingConfig(output_dir=bad_name, push_to_hub=True, hub_model_id="me/tiny-sprites")
    assert resolve_defaults(config, "cpu", conditional=True).hub_model_id == "me/tiny-sprites"


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


def test_noise_schedule_flags_that_cannot_work_together(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(
        ValueError, match="--rescale_betas_zero_snr .* --prediction_type v_prediction.*--recipe course"
    ):
        resolve_defaults(TrainingConfig(output_dir=out, prediction_type="epsilon"), "cpu", conditional=True)
    for gamma in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--snr_gamma must be a finite number > 0"):
            resolve_defaults(TrainingConfig(output_dir=out, snr_gamma=gamma), "cpu", conditional=True)
    config = TrainingConfig(output_dir=out, rescale_betas_zero_snr=True, prediction_type="v_prediction", snr_gamma=5)
    resolve_defaults(config, "cpu", conditional=True)
    course = resolve_defaults(TrainingConfig(output_dir=out, recipe="course"), "cpu", conditional=True)
    assert (course.prediction_type, course.rescale_betas_zero_snr, course.snr_gamma) == ("epsilon", False, 0.0)
    default = resolve_defaults(TrainingConfig(output_dir=out, snr_gamma=0), "cpu", conditional=True)
    assert (default.prediction_type, default.rescale_betas_zero_snr, default.snr_gamma) == ("v_prediction", True, 0)
