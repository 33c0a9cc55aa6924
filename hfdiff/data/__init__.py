"""Sprite data: the embedded procedural set (no download) and the course's .npy files.

    images, labels = generate_sprites(89_400, seed=0)       # (N, 16, 16, 3) uint8, (N,) int64: what training uses
    ds = sprite_dataset(1_000)                               # the same as a datasets.Dataset (image, label)
    images, labels, captions = generate_sprites_with_captions(1_000)   # + one sentence per image ("a green slime ...")
    sets = sprite_caption_sets(labels, attributes, per_image=8)        # several true captions per image, in other words
    images, labels, attributes = generate_sprites(1_000, return_attributes=True)  # what each image shows
    images, labels = load_npy_sprites("sprites_1788_16x16.npy", "sprite_labels_nc_1788_16x16.npy")

Only numpy is imported here; PIL and `datasets` are imported by the functions that need them.
"""

from .caption_grammar import sprite_caption_sets
from .npy import load_npy_sprites
from .sprites import (
    SPRITE_ATTRIBUTES,
    SPRITE_CLASSES,
    colour_names,
    generate_sprites,
    generate_sprites_with_captions,
    make_contact_sheet,
    sprite_captions,
    sprite_dataset,
)

__all__ = [
    "SPRITE_CLASSES",
    "SPRITE_ATTRIBUTES",
    "generate_sprites",
    "generate_sprites_with_captions",
    "sprite_captions",
    "sprite_caption_sets",
    "colour_names",
    "sprite_dataset",
    "make_contact_sheet",
    "load_npy_sprites",
]
