"""hfdiff.data: the procedural sprite set (balance, determinism, variety, looks) and the course .npy loader."""

import numpy as np
import pytest

from hfdiff.data import SPRITE_CLASSES, generate_sprites, load_npy_sprites, make_contact_sheet, sprite_dataset

PER_CLASS = 2_000
WHITE = 255


@pytest.fixture(scope="module")
def sprites():
    return generate_sprites(PER_CLASS * len(SPRITE_CLASSES), seed=7)


def silhouettes(images):
    """Everything that is not background, outline included: (N, 16, 16) bool."""
    return (images != WHITE).any(axis=-1)


def asymmetry(mask):
    """Share of a silhouette's pixels that its left-right mirror image (about the bounding box) does not cover."""
    cols = np.flatnonzero(mask.any(axis=0))
    box = mask[:, cols.min() : cols.max() + 1]
    return (box & ~box[:, ::-1]).sum() / box.sum()


def test_class_names_follow_the_course():
    assert SPRITE_CLASSES == ("hero", "non-hero", "food", "spell/weapon", "side-facing")


@pytest.mark.parametrize("num_images", [0, 1, 7, 1003])
def test_shapes_dtypes_and_balance(num_images):
    images, labels = generate_sprites(num_images, seed=1)
    assert images.shape == (num_images, 16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (num_images,) and labels.dtype == np.int64
    assert labels.min(initial=0) >= 0 and labels.max(initial=0) < len(SPRITE_CLASSES)
    expected = [num_images // 5 + (c < num_images % 5) for c in range(5)]
    assert np.bincount(labels, minlength=5).tolist() == expected


def test_label_order_is_shuffled_so_a_prefix_is_roughly_balanced():
    _, labels = generate_sprites(5_000, seed=0)
    assert not np.array_equal(labels, np.sort(labels))
    prefix = np.bincount(labels[:500], minlength=5)
    assert prefix.min() >= 70 and prefix.max() <= 130, prefix


def test_deterministic_by_seed():
    images, labels = generate_sprites(200, seed=3)
    again_images, again_labels = generate_sprites(200, seed=3)
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    other_images, _ = generate_sprites(200, seed=4)
    assert not np.array_equal(images, other_images)


@pytest.mark.parametrize("kwargs", [{"num_images": -1}, {"num_images": 2.5}, {"num_images": 4, "seed": -1}])
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError, match="non-negative integer"):
        generate_sprites(**kwargs)


def test_thousands_of_distinct_sprites_per_class(sprites):
    images, labels = sprites
    for label, name in enumerate(SPRITE_CLASSES):
        flat = images[labels == label].reshape(PER_CLASS, -1)
        distinct = len(np.unique(flat, axis=0))
        assert distinct > PER_CLASS // 2, f"{name}: only {distinct} distinct sprites among {PER_CLASS}"


def test_front_view_is_symmetric_and_profile_is_not(sprites):
    images, labels = sprites
    masks = silhouettes(images)
    hero = np.array([asymmetry(m) for m in masks[labels == SPRITE_CLASSES.index("hero")][:500]])
    side = np.array([asymmetry(m) for m in masks[labels == SPRITE_CLASSES.index("side-facing")][:500]])
    assert np.median(hero) < 0.02 and np.median(side) > 0.08, (np.median(hero), np.median(side))
    assert (side > 0.05).mean() > 0.9


def test_weapons_and_spells_are_the_thinnest_class(sprites):
    images, labels = sprites
    area = silhouettes(images).sum(axis=(1, 2))
    means = np.array([area[labels == label].mean() for label in range(len(SPRITE_CLASSES))])
    thin = SPRITE_CLASSES.index("spell/weapon")
    assert means[thin] < 0.8 * np.delete(means, thin).min(), means


def test_silhouettes_have_a_dark_outline(sprites):
    images, _ = sprites
    mask = silhouettes(images)
    background = np.pad(~mask, ((0, 0), (1, 1), (1, 1)), constant_values=True)  # outside the tile counts too
    touches = background[:, :-2, 1:-1] | background[:, 2:, 1:-1] | background[:, 1:-1, :-2] | background[:, 1:-1, 2:]
    border = mask & touches
    assert border.sum() > 20 * len(images)
    assert (images[border].max(axis=-1) < 80).all()


def test_figures_sit_near_the_centre_on_white(sprites):
    images, _ = sprites
    mask = silhouettes(images)
    assert (~mask).mean(axis=(1, 2)).min() > 0.2  # plenty of background in every tile
    assert (images[~mask] == WHITE).all()
    for axis in (1, 2):  # rows, then columns
        hit = mask.any(axis=3 - axis)
        first, last = hit.argmax(axis=1), 15 - hit[:, ::-1].argmax(axis=1)
        offset = (first + last) / 2 - 7.5
        assert np.abs(offset).max() <= 2.0 and abs(offset.mean()) < 0.3, (axis, offset.mean())


def test_sprite_dataset_matches_the_arrays():
    import datasets

    ds = sprite_dataset(12, seed=5)
    images, labels = generate_sprites(12, seed=5)
    assert len(ds) == 12
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == list(SPRITE_CLASSES)
    row = ds[3]
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), images[3])
    assert row["label"] == labels[3]


def test_contact_sheet_layout():
    per_class, scale = 3, 2
    sheet = make_contact_sheet(per_class=per_class, seed=2, scale=scale)
    cell = 16 * scale + scale
    assert sheet.size == (per_class * cell + scale, 5 * cell + scale)
    pixels = np.asarray(sheet)
    images, labels = generate_sprites(per_class * 5, seed=2)
    for label in range(5):
        first = images[labels == label][0].repeat(scale, axis=0).repeat(scale, axis=1)
        top = scale + label * cell
        assert np.array_equal(pixels[top : top + 16 * scale, scale : scale + 16 * scale], first)
    assert (pixels[:scale] == pixels[0, 0]).all() and pixels[0, 0].tolist() != [WHITE] * 3  # a visible gap


# ---------------------------------------------------------------------------------------------------------------
# load_npy_sprites
# ---------------------------------------------------------------------------------------------------------------


def save(tmp_path, images, labels):
    sprites_path, labels_path = tmp_path / "sprites.npy", tmp_path / "labels.npy"
    np.save(sprites_path, images)
    np.save(labels_path, labels)
    return sprites_path, labels_path


def test_npy_round_trip_of_the_course_layout(tmp_path):
    images, labels = generate_sprites(20, seed=0)
    one_hot = np.eye(5, dtype=np.float64)[labels]  # the course's labels: (N, 5) one-hot float
    loaded_images, loaded_labels = load_npy_sprites(*save(tmp_path, images, one_hot))
    assert loaded_images.dtype == np.uint8 and np.array_equal(loaded_images, images)
    assert loaded_labels.dtype == np.int64 and np.array_equal(loaded_labels, labels)


def test_npy_accepts_integer_labels_grey_images_and_integral_floats(tmp_path):
    grey = np.arange(4 * 8 * 8).reshape(4, 8, 8) % 256
    images, labels = load_npy_sprites(*save(tmp_path, grey.astype(np.float32), np.array([0, 2, 1, 2])))
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
    assert np.array_equal(images[..., 0], grey)
    assert labels.tolist() == [0, 2, 1, 2]


def test_npy_missing_file_names_the_path(tmp_path):
    sprites_path, _ = save(tmp_path, np.zeros((2, 16, 16, 3), np.uint8), np.eye(5)[:2])
    missing = tmp_path / "nowhere" / "labels.npy"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_npy_sprites(sprites_path, missing)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((3, 16, 16, 3), np.uint8), np.eye(5)[:2], "3 images but .* 2 labels"),
        (np.zeros((2, 16, 16, 4), np.uint8), np.eye(5)[:2], "4 channels"),
        (np.zeros((2, 48), np.uint8), np.eye(5)[:2], r"expected images \(N, H, W, C\)"),
        (np.full((2, 16, 16, 3), 0.5), np.eye(5)[:2], "uint8"),
        (np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 5, 1)), r"expected one-hot \(N, K\)"),
        (np.zeros((2, 16, 16, 3), np.uint8), np.array([[1.0, 0, 0], [0.5, 0.5, 0]]), "not one-hot: row 1"),
        (np.zeros((2, 16, 16, 3), np.uint8), np.array([0, -1]), "non-negative integers"),
    ],
    ids=["count-mismatch", "channels", "rank", "float-pixels", "label-rank", "not-one-hot", "negative-class"],
)
def test_npy_bad_arrays_are_explained(tmp_path, images, labels, message):
    with pytest.raises(ValueError, match=message):
        load_npy_sprites(*save(tmp_path, images, labels))


def test_npy_refuses_pickled_objects(tmp_path):
    sprites_path = tmp_path / "sprites.npy"
    np.save(sprites_path, np.array([{"not": "an image"}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "labels.npy", np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="plain NumPy array"):
        load_npy_sprites(sprites_path, tmp_path / "labels.npy")
