"""benchmarks/digits_folder.py --write_folder: scikit-learn's digits as an image folder that the training scripts'
loader reads back with the right labels and pixels."""

import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("sklearn")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "digits_folder.py")


def load_script():
    spec = importlib.util.spec_from_file_location("digits_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_folder_reads_back_through_the_training_loader(tmp_path):
    from sklearn.datasets import load_digits

    from hfdiff.training import parse_config
    from hfdiff.training.data import load_training_data

    folder = str(tmp_path / "digits")
    assert load_script().write_digits_folder(folder) == 1797
    assert sorted(os.listdir(folder)) == [str(k) for k in range(10)]

    data = load_training_data(parse_config(["--train_data_dir", folder]), conditional=True)
    assert data.class_names == [str(k) for k in range(10)]
    assert tuple(data.images.shape) == (1797, 1, 8, 8)  # greyscale stays one channel

    digits = load_digits()
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    assert expected.max() == 255 and expected.min() == 0
    loaded = data.images[:, 0].numpy()
    labels = data.labels.numpy()
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(digits.target, minlength=10))
    for k in range(10):  # the same images in each class, whatever order the loader lists the files in
        mine = sorted(image.tobytes() for image in loaded[labels == k])
        theirs = sorted(image.tobytes() for image in expected[digits.target == k])
        assert mine == theirs, f"class {k}"


def test_write_folder_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "old.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        load_script().write_digits_folder(str(tmp_path))


def test_real_digits_is_the_shared_folder_reader(tmp_path):
    from hfdiff import evaluate as ev

    folder = str(tmp_path / "digits")
    script = load_script()
    script.write_digits_folder(folder)
    real = script.real_digits(folder, seed=0)
    shared = ev.real_training_data(train_data_dir=folder, resolution=16, seed=0)
    np.testing.assert_array_equal(real.train_images, shared.train_images)
    assert real.train_images.shape == (1797, 16, 16, 1) and real.class_names == [str(k) for k in range(10)]
    assert not real.flip  # a mirrored digit is not a digit
    half = real.num_classifier_train
    assert half == 898 and len(real.heldout_images) == 899
    np.testing.assert_array_equal(real.train_images[half:], real.heldout_images)  # the classifier's half is apart


def test_digits_at_another_size_and_count(tmp_path):
    # The own-data benchmark's 4,000-image 32x32 folder, smaller: resized digits, then shifted copies up to the count.
    from hfdiff.training import parse_config
    from hfdiff.training.data import load_training_data

    folder = str(tmp_path / "digits")
    assert load_script().write_digits_folder(folder, size=32, count=2000) == 2000
    data = load_training_data(parse_config(["--train_data_dir", folder]), conditional=True)
    assert tuple(data.images.shape) == (2000, 1, 32, 32) and data.class_names == [str(k) for k in range(10)]
    counts = np.bincount(data.labels.numpy(), minlength=10)
    assert counts.sum() == 2000 and counts.min() > 170  # every digit, its 1,797 originals and some copies


def test_own_data_benchmark_reads_the_first_log_line():
    spec = importlib.util.spec_from_file_location("own_data", SCRIPT.replace("digits_folder.py", "own_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    line = "1,977 steps of 1,024 images (659 epochs; auto: ... x (4,000 / 89,400 images)^(1/3)), warm-up 100 steps"
    assert module.STEPS_LINE.search(line).groups() == (
        "1,977",
        "1,024",
        "659",
        "auto: ... x (4,000 / 89,400 images)^(1/3)",
    )
