"""Regenerate docs/sprites.png: 12 procedural sprites per class, one labelled row per class.

python docs/make_contact_sheet.py
"""

import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from hfdiff.data import SPRITE_CLASSES, generate_sprites, make_contact_sheet

PER_CLASS, SEED, SCALE = 12, 0, 4
LABEL_WIDTH = 96


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

    start = time.perf_counter()
    generate_sprites(89_400, seed=SEED)
    print(f"wrote {out}; generate_sprites(89_400) took {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
