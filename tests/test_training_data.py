"""hfdiff.training.data: every source -> (N, C, H, W) uint8 + labels, and a clear error for every user mistake."""

import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hfdiff.data import SPRITE_CLASSES
from hfdiff.training import TrainingConfig, load_training_data
from hfdiff.training.data import check_image_size
from hfdiff.training.decoding import resize_images


def load(conditional=True, **flags):
    return load_training_data(TrainingConfig(**flags), conditional=conditional)


def write_png(path, size=(16, 16), mode="RGB", colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = colour[0] if mode == "L" else colour + ((128,) if mode == "RGBA" else ())
    PIL.Image.new(mode, size, colour).save(path)


def image_folder(root, classes=("cat", "dog"), per_class=3, **kwargs):
    for name in classes:
        for i in range(per_class):
            write_png(os.path.join(root, name, f"{i}.png"), **kwargs)
    return str(root)


def saved_dataset(path, features=None, **columns):
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(path))
    return str(path)


# ---- sources


def test_procedural_default():
    data = load(num_train_images=12)
    assert data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.labels.shape == (12,) and data.labels.dtype == torch.int64
    assert data.class_names == list(SPRITE_CLASSES)


def test_unconditional_drops_labels():
    data = load(conditional=False, num_train_images=5)
    assert data.labels is None and data.class_names is None


def test_course_npy_pair(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "sprites.npy", rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.eye(5, dtype=np.float64)[[0, 1, 2, 3, 4, 0]])
    data = load(sprites_npy=str(tmp_path / "sprites.npy"), labels_npy=str(tmp_path / "labels.npy"))
    assert data.images.shape == (6, 3, 16, 16)
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 0] and data.class_names == list(SPRITE_CLASSES)
    unlabeled = load(conditional=False, sprites_npy=str(tmp_path / "sprites.npy"))
    assert unlabeled.images.shape == (6, 3, 16, 16) and unlabeled.labels is None


def test_image_folder_classes_from_subfolders(tmp_path):
    data = load(train_data_dir=image_folder(tmp_path / "imgs"))
    assert data.images.shape == (6, 3, 16, 16)
    assert data.class_names == ["cat", "dog"] and sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.images[0, :, 0, 0].tolist() == [200, 30, 30]


def test_grayscale_stays_one_channel(tmp_path):
    data = load(train_data_dir=image_folder(tmp_path / "gray", mode="L"))
    assert data.images.shape == (6, 1, 16, 16)


def test_transparency_composited_on_white(tmp_path):
    data = load(train_data_dir=image_folder(tmp_path / "rgba", mode="RGBA", colour=(0, 0, 0)))
    assert data.images.shape[1] == 3
    assert data.images[0, :, 0, 0].tolist() == [127, 127, 127]  # half-transparent black over white


def test_save_to_disk_dataset_with_class_label(tmp_path):
    images = [PIL.Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    path = saved_dataset(tmp_path / "ds", features=features, image=images, label=[0, 1, 1, 0])
    data = load(dataset_name=path)
    assert data.images.shape == (4, 3, 8, 8) and data.class_names == ["a", "b"]
    assert data.labels.tolist() == [0, 1, 1, 0]


def test_plain_int_and_string_labels(tmp_path):
    images = [np.full((8, 8, 3), k, dtype=np.uint8) for k in range(3)]
    ints = load(dataset_name=saved_dataset(tmp_path / "ints", image=images, y=[2, 0, 1]), label_column="y")
    assert ints.class_names == ["0", "1", "2"] and ints.labels.tolist() == [2, 0, 1]
    strings = load(
        dataset_name=saved_dataset(tmp_path / "str", image=images, y=["dog", "cat", "dog"]), label_column="y"
    )
    assert strings.class_names == ["cat", "dog"] and strings.labels.tolist() == [1, 0, 1]


def test_image_column_auto_detected_for_the_default_name(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    path = saved_dataset(tmp_path / "ds", features=features, img=[PIL.Image.new("RGB", (8, 8))] * 2, label=[0, 1])
    assert load(dataset_name=path).images.shape == (2, 3, 8, 8)


def test_resolution_resizes_once_at_load(tmp_path):
    data = load(train_data_dir=image_folder(tmp_path / "imgs", size=(8, 8)), resolution=32)
    assert data.images.shape == (6, 3, 32, 32)
    assert load(num_train_images=3, resolution=8).images.shape == (3, 3, 8, 8)


def test_mixed_sizes_with_resolution(tmp_path):
    root = image_folder(tmp_path / "imgs", size=(16, 16))
    write_png(os.path.join(root, "cat", "big.png"), size=(40, 32))
    assert load(train_data_dir=root, resolution=16).images.shape == (7, 3, 16, 16)


def test_resize_images_upscales_pixel_art_crisply():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2)
    assert resize_images(images, 4)[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert resize_images(torch.zeros(2, 3, 20, 30, dtype=torch.uint8), 8).shape == (2, 3, 8, 8)


# ---- errors for people


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train_data_dir"):
        load(train_data_dir=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="--dataset_name"):
        load(dataset_name=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        load(sprites_npy=str(tmp_path / "nope.npy"), labels_npy=str(tmp_path / "nope_labels.npy"))
    with pytest.raises(FileNotFoundError, match="--sprites_npy"):
        load(conditional=False, sprites_npy=str(tmp_path / "nope.npy"))


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files"):
        load(train_data_dir=str(tmp_path / "empty"))


def test_unknown_columns(tmp_path):
    path = saved_dataset(tmp_path / "ds", picture=[np.zeros((8, 8, 3), dtype=np.uint8)], label=[0])
    with pytest.raises(ValueError, match="--image_column 'image' is not a column.*picture"):
        load(dataset_name=path)
    with pytest.raises(ValueError, match="--label_column 'kind' is not a column"):
        load(dataset_name=path, image_column="picture", label_column="kind")


def test_labels_missing_in_conditional_mode(tmp_path):
    root = tmp_path / "flat"
    for i in range(2):
        write_png(str(root / f"{i}.png"))
    with pytest.raises(ValueError, match="outside class sub-folders.*sub-folder of its own"):
        load(train_data_dir=str(root))
    assert load(conditional=False, train_data_dir=str(root)).images.shape == (2, 3, 16, 16)
    np.save(tmp_path / "sprites.npy", np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="--labels_npy"):
        load(sprites_npy=str(tmp_path / "sprites.npy"))


def test_mixed_sizes_without_resolution(tmp_path):
    root = image_folder(tmp_path / "imgs", size=(16, 16))
    write_png(os.path.join(root, "cat", "big.png"), size=(32, 32))
    with pytest.raises(ValueError, match="different sizes.*--resolution"):
        load(train_data_dir=root)


def test_resolution_must_survive_the_downsamplings():
    check_image_size((16, 16), (32, 64, 80), "sprites")
    with pytest.raises(ValueError, match="multiples of 4.*--resolution 12"):
        check_image_size((10, 10), (32, 64, 80), "sprites")
