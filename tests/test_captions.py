"""Captions and ground-truth attributes of the procedural sprites."""

import numpy as np
import pytest

from hfdiff.data import (
    SPRITE_ATTRIBUTES,
    SPRITE_CLASSES,
    colour_names,
    generate_sprites,
    generate_sprites_with_captions,
    sprite_caption_sets,
    sprite_captions,
    sprite_dataset,
)
from hfdiff.data import caption_grammar as cg


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


# ---- the caption grammar: many true captions per image, and words only evaluation uses


@pytest.fixture(scope="module")
def caption_sets():
    images, labels, attributes = generate_sprites(2_000, seed=5, return_attributes=True)
    return images, labels, attributes, sprite_caption_sets(labels, attributes, seed=5, per_image=8)


def test_caption_sets_leave_the_images_byte_identical():
    import hashlib

    before = hashlib.sha256(generate_sprites(500, seed=9)[0].tobytes()).hexdigest()
    images, labels, attributes = generate_sprites(500, seed=9, return_attributes=True)
    sets = sprite_caption_sets(labels, attributes, seed=9, per_image=8)
    assert hashlib.sha256(images.tobytes()).hexdigest() == before
    assert hashlib.sha256(generate_sprites(500, seed=9)[0].tobytes()).hexdigest() == before
    assert sets == sprite_caption_sets(labels, attributes, seed=9, per_image=8)  # deterministic by seed
    assert sets != sprite_caption_sets(labels, attributes, seed=10, per_image=8)


def test_caption_sets_start_with_the_generator_sentence(caption_sets):
    _, labels, attributes, sets = caption_sets
    assert [options[0] for options in sets] == sprite_captions(labels, attributes, seed=5)
    assert all(len(options) == 8 for options in sets)
    assert sprite_caption_sets(labels, attributes, seed=5, per_image=1) == [
        [c] for c in sprite_captions(labels, attributes, seed=5)
    ]
    with pytest.raises(ValueError, match="per_image must be a positive integer"):
        sprite_caption_sets(labels, attributes, per_image=0)


def test_grammar_captions_are_true_and_varied(caption_sets):
    """Every grammar caption names the kind (in some training word) or its class, and a colour only if the image's;
    short forms ("a sword", "a red apple") are among them, and heroes are also knights, slimes also blobs."""
    _, labels, attributes, sets = caption_sets
    colour_words = {w: name for name, (train, _) in cg.COLOUR_WORDS.items() for w in train}
    for i in range(0, len(sets), 7):
        kind, colour = attributes["kind"][i], attributes["colour"][i]
        for caption in sets[i][1:]:
            words = cg.caption_words(caption)
            nouns = cg.KIND_WORDS[kind][0] + cg.CLASS_WORDS[labels[i]][0]
            assert any(cg.caption_words(noun) <= words for noun in nouns), (kind, caption)
            named = {colour_words[w] for w in words if w in colour_words and w not in ("dark", "pale")}
            named -= {"orange"} if kind == "carrot" else set()
            assert named <= {colour, "steel"} or kind in cg.PEOPLE_KINDS or not named, (colour, caption)
    everything = {c for options in sets for c in options}
    assert {"a sword", "a slime", "a hero"} <= everything
    assert any(c.startswith("a knight") for c in everything) and any("blob" in c for c in everything)
    assert any(c in everything for c in ("a red apple", "a green apple", "a yellow apple"))
    distinct_per_image = np.mean([len(set(options)) for options in sets])
    assert distinct_per_image > 5


def test_distinct_captions_grow_with_the_pools_not_the_images():
    counts = []
    for n in (2_000, 8_000):
        _, labels, attributes = generate_sprites(n, seed=0, return_attributes=True)
        sets = sprite_caption_sets(labels, attributes, seed=0, per_image=8)
        grammar = {c for options in sets for c in options[1:]}
        pools = len(set(zip(labels, *(attributes[k] for k in ("kind", "part", "colour", "facing")))))
        assert len(grammar) <= pools * cg.POOL_SIZE
        counts.append(len(grammar))
    assert counts[1] < 2 * counts[0]  # four times the images, far fewer than four times the captions


def test_no_held_out_word_appears_in_any_training_caption(caption_sets):
    _, _, _, sets = caption_sets
    held_out = cg.held_out_words()
    assert len(held_out) > 100 and {"ooze", "sabre", "jade", "paladin", "crystal"} <= held_out
    seen = set().union(*(cg.caption_words(c) for options in sets for c in options))
    assert not seen & held_out, sorted(seen & held_out)[:20]
    for prompt, _, _, colour in cg.unseen_word_prompts():
        words = cg.caption_words(prompt)
        assert words & held_out, prompt
        if colour:  # the colour itself is named in an evaluation-only word
            assert words & {w for w in cg.COLOUR_WORDS[colour][1] for w in cg.caption_words(w)}, prompt


def test_plain_and_unseen_prompt_rows():
    plain, unseen = cg.plain_prompts(), cg.unseen_word_prompts()
    kinds = set(cg.KIND_WORDS)
    for rows in (plain, unseen):
        assert {kind for _, _, kind, _ in rows} == kinds
        assert {kind for _, _, kind, colour in rows if colour == ""} == kinds  # each kind alone too
        assert all(label in SPRITE_CLASSES for _, label, _, _ in rows)
    assert ("a sword", "spell/weapon", "sword", "") in plain
    assert any(p.startswith("a knight in") and "armor" in p for p, *_ in plain)
