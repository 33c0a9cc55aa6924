"""Regenerate docs/sprites.png (12 procedural sprites per class, one labelled row per class) and
docs/sprites_captions.png (4 sprites per class, each with its generated caption beneath).

python docs/make_contact_sheet.py
"""

import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hfdiff.data import SPRITE_CLASSES, generate_sprites, generate_sprites_with_captions, make_contact_sheet

PER_CLASS, SEED, SCALE = 12, 0, 4
LABEL_WIDTH = 96
CAPTIONED_PER_CLASS, CELL_WIDTH, CAPTION_LINES, CAPTION_SCALE = 4, 220, 4, 6


def captioned_sheet():
    """4 sprites per class (one row per class), each upscaled 6x with its caption wrapped beneath."""
    images, labels, captions = generate_sprites_with_captions(CAPTIONED_PER_CLASS * len(SPRITE_CLASSES), seed=SEED)
    font = ImageFont.load_default()
    sprite, line = 16 * CAPTION_SCALE, 12
    cell_height = sprite + 8 + CAPTION_LINES * line + 10
    sheet = Image.new("RGB", (CELL_WIDTH * CAPTIONED_PER_CLASS, cell_height * len(SPRITE_CLASSES)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row in range(len(SPRITE_CLASSES)):
        for col, i in enumerate(np.flatnonzero(labels == row)):
            x, y = col * CELL_WIDTH, row * cell_height
            tile = Image.fromarray(images[i]).resize((sprite, sprite), Image.NEAREST)
            sheet.paste(tile, (x + (CELL_WIDTH - sprite) // 2, y + 4))
            for k, text in enumerate(textwrap.wrap(captions[i], width=34)[:CAPTION_LINES]):
                draw.text((x + 6, y + sprite + 8 + k * line), text, fill=(30, 30, 30), font=font)
    return sheet


def main():
    sheet = make_contact_sheet(per_class=PER_CLASS, seed=SEED, scale=SCALE)
    labelled = Image.new("RGB", (LABEL_WIDTH + sheet.width, sheet.height), (255, 255, 255))
    labelled.paste(sheet, (LABEL_WIDTH, 0))
    draw, font = ImageDraw.Draw(labelled), ImageFont.load_default()
    row = 16 * SCALE + SCALE  # a cell and its gap, as laid out by make_contact_sheet
    for i, name in enumerate(SPRITE_CLASSES):
        draw.text((6, SCALE + i * row + row // 2 - 6), name, fill=(40, 40, 40), font=font)
    out = Path(__file__).with_name("sprites.png")
    labelled.save(out)
    captioned = Path(__file__).with_name("sprites_captions.png")
    captioned_sheet().save(captioned)

    start = time.perf_counter()
    generate_sprites(89_400, seed=SEED)
    print(f"wrote {out} and {captioned}; generate_sprites(89_400) took {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
