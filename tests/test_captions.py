"""Captions and ground-truth attributes of the procedural sprites."""

import numpy as np
import pytest

from hfdiff.data import (
    SPRITE_ATTRIBUTES,
    SPRITE_CLASSES,
    colour_names,
    generate_sprites,
    generate_sprites_with_captions,
    sprite_captions,
    sprite_dataset,
)


@pytest.fixture(scope="module")
def drawn():
    images, labels, attributes = generate_sprites(1_000, seed=11, return_attributes=True)
    return images, labels, attributes, sprite_captions(labels, attributes, seed=11)


def test_images_and_labels_do_not_change_with_captions():
    images, labels = generate_sprites(300, seed=2)
    with_attributes = generate_sprites(300, seed=2, return_attributes=True)
    captioned = generate_sprites_with_captions(300, seed=2)
    for other in (with_attributes, captioned):
        np.testing.assert_array_equal(other[0], images)
        np.testing.assert_array_equal(other[1], labels)


def test_captions_are_deterministic_by_seed():
    assert generate_sprites_with_captions(200, seed=4)[2] == generate_sprites_with_captions(200, seed=4)[2]
    assert generate_sprites_with_captions(200, seed=4)[2] != generate_sprites_with_captions(200, seed=5)[2]


def test_attributes_cover_every_image(drawn):
    images, labels, attributes, _ = drawn
    assert set(attributes) == set(SPRITE_ATTRIBUTES)
    assert attributes["colour_rgb"].shape == (len(images), 3) and attributes["colour_rgb"].dtype == np.uint8
    assert all(len(value) == len(images) for value in attributes.values())
    assert (attributes["kind"] != "").all() and (attributes["colour"] != "").all()
    side = labels == SPRITE_CLASSES.index("side-facing")
    assert set(attributes["facing"][side]) == {"left", "right"} and set(attributes["facing"][~side]) == {""}


def test_every_caption_names_its_kind_and_colour(drawn):
    _, labels, attributes, captions = drawn
    for label in range(len(SPRITE_CLASSES)):
        rows = np.flatnonzero(labels == label)
        assert len(rows) > 100
        for i in rows:
            assert attributes["kind"][i] in captions[i], (attributes["kind"][i], captions[i])
            assert attributes["colour"][i] in captions[i], (attributes["colour"][i], captions[i])
            assert attributes["facing"][i] in captions[i]
    held = np.flatnonzero(attributes["held"] == "shield")
    assert len(held) > 0 and all("shield" in captions[i] for i in held)


def test_named_colour_is_painted_in_the_image(drawn):
    images, _, attributes, _ = drawn
    rgb = attributes["colour_rgb"]
    painted = (images == rgb[:, None, None, :]).all(axis=-1).any(axis=(1, 2))
    assert painted.all(), f"{(~painted).sum()} images lack their main colour"
    # the names come from that RGB (metals, steel and natural hair are named by the palette entry instead)
    generic = ~np.isin(attributes["colour"], ["golden", "silver", "bronze", "steel"])
    assert generic.sum() > 500
    np.testing.assert_array_equal(attributes["colour"][generic], colour_names(rgb[generic]))


def test_side_facing_eyes_are_on_the_facing_side(drawn):
    images, labels, attributes, _ = drawn
    side = np.flatnonzero(labels == SPRITE_CLASSES.index("side-facing"))
    figure = (images[side] != 255).any(axis=-1)  # (n, 16, 16)
    ink = (images[side] == (26, 22, 34)).all(axis=-1)  # the eyes' colour
    x = np.arange(16)
    centre = (figure * x).sum(axis=(1, 2)) / figure.sum(axis=(1, 2))
    eyes = (ink * x).sum(axis=(1, 2)) / np.maximum(ink.sum(axis=(1, 2)), 1)
    right = attributes["facing"][side] == "right"
    has_eyes = ink.any(axis=(1, 2))
    agree = np.where(right, eyes > centre, eyes < centre)[has_eyes]
    assert agree.mean() > 0.95


def test_colour_names_of_plain_colours():
    names = colour_names([[220, 30, 30], [40, 180, 60], [40, 60, 200], [140, 60, 190], [250, 250, 250], [10, 10, 10]])
    assert list(names) == ["red", "green", "blue", "purple", "white", "black"]


def test_several_phrasings_per_class(drawn):
    _, labels, _, captions = drawn
    for label in range(len(SPRITE_CLASSES)):
        openings = {captions[i].split()[0] + captions[i].split()[1] for i in np.flatnonzero(labels == label)}
        assert len(openings) >= 3, (SPRITE_CLASSES[label], openings)


def test_hand_made_attributes_give_prompts(drawn):
    _, _, attributes, _ = drawn
    one = {key: np.array([""], dtype=object) for key in SPRITE_ATTRIBUTES}
    one["kind"][0], one["part"][0], one["colour"][0] = "slime", "body", "purple"
    (caption,) = sprite_captions(np.array([1]), one)
    assert "purple slime" in caption
    with pytest.raises(ValueError, match="one entry per label"):
        sprite_captions(np.array([1, 1]), one)


def test_dataset_text_column():
    ds = sprite_dataset(10, seed=3, captions=True)
    assert ds["text"] == generate_sprites_with_captions(10, seed=3)[2]
    assert "text" not in sprite_dataset(3, seed=3).column_names
