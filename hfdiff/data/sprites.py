"""Procedural 16x16 pixel-art sprites in the course's five categories: hfdiff's embedded default data set.

No download and no shipped files: every sprite is drawn from a seed, so `generate_sprites(n, seed)` gives the same
bytes on every machine. A sprite is made in four vectorised steps that each run on a whole class at once (no Python
loop over images or pixels, which is what keeps 89,400 sprites at about a second):

1. Slot map: an (n, 16, 16) uint8 array of palette slots, 0 being background. Parts are small hand-drawn pieces
   (the ASCII art below), chosen per image and stamped at per-image positions; the layer order decides what covers
   what (a cape behind the body, a shield in front of it).
2. Pose: random mirroring, then a shift that centres the silhouette's bounding box and adds a small random offset.
3. Outline: the silhouette dilated by one pixel, minus the silhouette, becomes slot 1 (a dark colour).
4. Colour: a per-image palette (n, S, 3) picked by fancy indexing. The colours of a sprite's parts (clothes, slime,
   potion, ...) are drawn from continuous hue ranges, which is where most of the variety comes from.

Art legend, shared by all classes: `.` background, `o` outline colour (inner lines), `e` eye/ink, `w` off-white
(eye whites, shine). Each class names its colour roles with upper-case letters (e.g. hero "S" = skin); the lower-case
letter is that role's shade and the role's digit (1 for the first role, ...) its highlight.
"""

from __future__ import annotations

import io

import numpy as np

SPRITE_CLASSES = ("hero", "non-hero", "food", "spell/weapon", "side-facing")

SIZE = 16
BACKGROUND = (255, 255, 255)  # the course sprites sit on white
_OUTLINE = (34, 28, 44)
_INK = (26, 22, 34)
_WHITE = (238, 236, 226)  # not pure white, so that eye whites are never mistaken for background
_FIXED_SLOTS = 4  # background, outline, ink, white; role r then owns slots 4 + 3r (base), +1 (shade), +2 (highlight)
_MAX_OFFSET = 1  # random offset of the centred figure, in pixels
_GAP = 200  # grey between the cells of a contact sheet


# ----------------------------------------------------------------------------------------------------------------
# Art: ASCII pieces -> slot arrays
# ----------------------------------------------------------------------------------------------------------------


def _legend(roles: str) -> dict[str, int]:
    table = {".": 0, "o": 1, "e": 2, "w": 3}
    for r, letter in enumerate(roles):
        table[letter] = _FIXED_SLOTS + 3 * r
        table[letter.lower()] = _FIXED_SLOTS + 3 * r + 1
        table[str(r + 1)] = _FIXED_SLOTS + 3 * r + 2
    return table


def _piece(art: str, roles: str) -> np.ndarray:
    """One ASCII piece (rows of equal length) -> (h, w) uint8 slots."""
    table = _legend(roles)
    rows = [row.strip() for row in art.strip().splitlines()]
    if len({len(row) for row in rows}) != 1:
        raise RuntimeError(f"ragged sprite art:\n{art}")  # a typo in this file, not a user error
    return np.array([[table[ch] for ch in row] for row in rows], dtype=np.uint8)


def _bank(arts: list[str], roles: str, top: int = 0, left: int = 0) -> np.ndarray:
    """Pieces placed at (top, left) on empty 16x16 canvases -> (V, 16, 16) uint8, ready to be chosen per image."""
    bank = np.zeros((len(arts), SIZE, SIZE), dtype=np.uint8)
    for v, art in enumerate(arts):
        piece = _piece(art, roles)
        bank[v, top : top + piece.shape[0], left : left + piece.shape[1]] = piece
    return bank


# ----------------------------------------------------------------------------------------------------------------
# Vectorised drawing on (n, 16, 16) slot maps
# ----------------------------------------------------------------------------------------------------------------

_Y, _X = np.mgrid[0:SIZE, 0:SIZE]  # (16, 16) pixel coordinates


def _layer(canvas: np.ndarray, layer: np.ndarray, where: np.ndarray | None = None) -> None:
    """Paint the non-background pixels of `layer` (n, 16, 16) over `canvas`, in place, where `where` (n,) is True."""
    paint = layer > 0
    if where is not None:
        paint &= where[:, None, None]
    np.copyto(canvas, layer, where=paint)


def _variant(bank: np.ndarray, rng: np.random.Generator, n: int, p=None) -> np.ndarray:
    """A random variant index of `bank` (V, 16, 16) per image -> (n,) ints; the caller keeps it for the caption."""
    return rng.choice(len(bank), size=n, p=p)


def _shift(canvas: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Move each image by (dy, dx) (n,) ints; pixels moved in from outside are background."""
    n = len(canvas)
    src_y = _Y[None] - dy[:, None, None]
    src_x = _X[None] - dx[:, None, None]
    inside = (src_y >= 0) & (src_y < SIZE) & (src_x >= 0) & (src_x < SIZE)
    out = canvas[np.arange(n)[:, None, None], src_y.clip(0, SIZE - 1), src_x.clip(0, SIZE - 1)]
    return np.where(inside, out, 0).astype(np.uint8)


def _stamp(canvas, pieces, choice, top, left, where=None) -> None:
    """Paint piece `choice` of `pieces` (V, h, w) at per-image (top, left) (n,) ints over `canvas`, in place.

    `where` (n,) bool leaves the images where it is False untouched.
    """
    _, h, w = pieces.shape
    py = _Y[None] - top[:, None, None]
    px = _X[None] - left[:, None, None]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    values = pieces[choice[:, None, None], py.clip(0, h - 1), px.clip(0, w - 1)]
    paint = inside & (values > 0)
    if where is not None:
        paint &= where[:, None, None]
    np.copyto(canvas, values, where=paint)


def _ellipse(cy, cx, ry, rx) -> np.ndarray:
    """Filled ellipses from per-image centres and radii (n,) floats -> (n, 16, 16) bool."""
    dy = (_Y[None] - np.asarray(cy, dtype=np.float32)[:, None, None]) / np.asarray(ry, dtype=np.float32)[:, None, None]
    dx = (_X[None] - np.asarray(cx, dtype=np.float32)[:, None, None]) / np.asarray(rx, dtype=np.float32)[:, None, None]
    return dy * dy + dx * dx <= 1.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbour dilation of (n, 16, 16) bool masks; nothing wraps around the edges."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def _mirror(canvas: np.ndarray, flip: np.ndarray) -> np.ndarray:
    return np.where(flip[:, None, None], canvas[:, :, ::-1], canvas)


def _centre(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre each silhouette's bounding box plus a random offset, keeping a 1-px rim free for the outline."""
    mask = canvas > 0
    shifts = []
    for axis in (2, 1):  # rows (dy) then columns (dx)
        hit = mask.any(axis=axis)  # (n, 16)
        first = hit.argmax(axis=1)
        last = SIZE - 1 - hit[:, ::-1].argmax(axis=1)
        low, high = 1 - first, SIZE - 2 - last  # the shifts that keep the figure inside rows/cols 1..14
        # When the free space is odd, the spare pixel goes to a random side rather than always the same one.
        centred = np.floor((SIZE - 1 - first - last) / 2 + rng.random(len(canvas)))
        jitter = rng.integers(-_MAX_OFFSET, _MAX_OFFSET + 1, size=len(canvas))
        shifts.append(np.clip(centred + jitter, low, np.maximum(low, high)).astype(np.int64))
    return _shift(canvas, shifts[0], shifts[1])


def _hsv(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB: h, s, v (n,) floats in [0, 1] -> (n, 3) floats in [0, 255]."""
    h, s, v = (np.asarray(a, dtype=np.float64) for a in (h, s, v))
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb * 255.0


def _pick(colours, rng: np.random.Generator, n: int) -> np.ndarray:
    """One of a list of RGB colours per image -> (n, 3) floats."""
    colours = np.asarray(colours, dtype=np.float64)
    return colours[rng.integers(len(colours), size=n)]


def _random_hue(rng, n, hue=(0.0, 1.0), sat=(0.45, 0.85), val=(0.55, 0.95)) -> np.ndarray:
    """Colours with hue, saturation and value uniform in the given ranges (hue wraps around 1) -> (n, 3)."""
    h = rng.uniform(*hue, size=n) % 1.0
    return _hsv(h, rng.uniform(*sat, size=n), rng.uniform(*val, size=n))


def _base_rgb(roles: np.ndarray) -> np.ndarray:
    """Role colours (..., 3) floats -> the uint8 RGB that _finish paints for the role's base slot."""
    return roles.round().clip(0, 255).astype(np.uint8)


def colour_names(rgb) -> np.ndarray:
    """Plain colour names of RGB colours: (..., 3) in [0, 255] -> (...,) object array of str.

    The names a caption uses for a part ("green", "purple", "brown", "white", ...), from hue, saturation and value
    with hand-set boundaries; the same function names the generator's colours and can name any pixel, so a colour
    probe can check a generated image against its prompt. Metals and natural hair colours are named by the generator
    from the palette entry it picked instead ("golden", "blonde", "steel").
    """
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    sat = np.where(value > 0, chroma / np.maximum(value, 1e-12), 0.0)
    c = np.maximum(chroma, 1e-12)
    hue = 60.0 * np.select([value == r, value == g], [((g - b) / c) % 6.0, (b - r) / c + 2.0], (r - g) / c + 4.0)
    names = np.select(
        [
            value < 0.25,
            (sat < 0.2) & (value > 0.75),
            sat < 0.2,
            (hue < 15) | (hue >= 340),
            hue < 40,
            hue < 70,
            hue < 165,
            hue < 200,
            hue < 255,
            hue < 290,
        ],
        [
            "black",
            "white",
            "grey",
            np.where((sat < 0.5) & (value > 0.75), "pink", "red"),  # light reds read as pink
            np.where(value < 0.62, "brown", "orange"),  # dark orange is brown
            "yellow",
            "green",
            "cyan",
            "blue",
            "purple",
        ],
        np.where(value < 0.6, "purple", "pink"),  # magenta
    )
    return names.astype(object)


def _finish(canvas: np.ndarray, roles: np.ndarray, rng: np.random.Generator, flip: np.ndarray) -> np.ndarray:
    """Slot maps (n, 16, 16) + role colours (n, R, 3) -> images (n, 16, 16, 3) uint8 with outline and background."""
    n, num_roles = roles.shape[:2]
    canvas = _centre(_mirror(canvas, flip), rng)
    silhouette = canvas > 0
    canvas[_dilate(silhouette) & ~silhouette] = 1

    palette = np.empty((n, _FIXED_SLOTS + 3 * num_roles, 3), dtype=np.float64)
    palette[:, :_FIXED_SLOTS] = [BACKGROUND, _OUTLINE, _INK, _WHITE]
    palette[:, _FIXED_SLOTS::3] = roles
    palette[:, _FIXED_SLOTS + 1 :: 3] = roles * 0.68  # shade
    palette[:, _FIXED_SLOTS + 2 :: 3] = roles + (255.0 - roles) * 0.5  # highlight
    palette = palette.round().clip(0, 255).astype(np.uint8)
    return palette[np.arange(n)[:, None, None], canvas]


# ----------------------------------------------------------------------------------------------------------------
# 0: hero, front view
# ----------------------------------------------------------------------------------------------------------------

_HERO_ROLES = "SHCPBKDM"  # skin, hair, clothes, pants, boots/belt, cape, shield, metal

_HERO_FACE = _bank(
    [
        """
        .....SSSSSS.....
        ....SSSSSSSS....
        ....SSSSSSSS....
        ....SSeSSeSS....
        ....SSeSSeSS....
        ....sSSSSSSs....
        .....ssSSss.....
        """,
        """
        .....SSSSSS.....
        ....SSSSSSSS....
        ....SSSSSSSS....
        ....SwesSweS....
        ....SSSSSSSS....
        ....sSSooSSs....
        .....ssSSss.....
        """,
    ],
    _HERO_ROLES,
    top=2,
)

_HERO_BODY = _bank(
    [
        # tunic and belt
        """
        ....CCCCCCCC....
        ...cCCCCCCCCc...
        ...cCCCCCCCCc...
        ...SBBBMMBBBS...
        .....PP..PP.....
        ....BBB..BBB....
        """,
        # breastplate
        """
        ....MMMMMMMM....
        ...cM8MMMMmMc...
        ...cMMMMMMmMc...
        ...SBBBMMBBBS...
        .....PP..PP.....
        ....BBB..BBB....
        """,
        # robe down to the feet
        """
        ....CCCCCCCC....
        ...cCCCCCCCCc...
        ...cCCCC3CCCc...
        ...SCCCC3CCCS...
        ....CCCCCCCC....
        ....cBBccBBc....
        """,
        # shirt with a v-neck, shorts
        """
        ....CCCSSCCC....
        ...cCCCCCCCCc...
        ...cCCCCCCCCc...
        ...SPPPPPPPPS...
        .....SS..SS.....
        ....BBB..BBB....
        """,
        # arms raised to the shoulders
        """
        ..ScCCCCCCCCcS..
        ..ScCCCCCCCCcS..
        ....CCCCCCCC....
        ....BBBMMBBB....
        .....PP..PP.....
        ....BBB..BBB....
        """,
    ],
    _HERO_ROLES,
    top=9,
)

_HERO_HAIR = _bank(
    [
        # short
        """
        ................
        .....HHHHHH.....
        ....HHHHHHHH....
        ....HhHHHHhH....
        """,
        # long, over the shoulders
        """
        ................
        .....HHHHHH.....
        ....HHHHHHHH....
        ...HHHHHHHHHH...
        ...HH......HH...
        ...HH......HH...
        ...hH......Hh...
        ...hh......hh...
        """,
        # spiky
        """
        ....H.H..H.H....
        ....HHHHHHHH....
        ...HHHHHHHHHH...
        ....HhHhhHhH....
        """,
        # cap with a brim
        """
        ................
        .....CCCCCC.....
        ....CCC33CCC....
        ...cccccccccc...
        """,
        # pointed wizard hat
        """
        .......KK.......
        ......KKKK......
        .....KKKKKK.....
        ...kkkkkkkkkk...
        """,
        # helmet with cheek guards
        """
        ................
        .....MMMMMM.....
        ....M8MMMMMM....
        ....MMMMMMMM....
        ....M......M....
        ....m......m....
        """,
        # crown on short hair
        """
        .....M.MM.M.....
        .....MMMMMM.....
        ....HHHHHHHH....
        ....HhHHHHhH....
        """,
        # pigtails
        """
        ................
        .....HHHHHH.....
        ..HHHHHHHHHHHH..
        ..HHHhHHHHhHHH..
        ..hH........Hh..
        """,
        # bald with a headband
        """
        ................
        ................
        ....CCCCCCCC....
        ................
        """,
    ],
    _HERO_ROLES,
    top=1,
)

_HERO_CAPE = _bank(
    [
        """
        ....KKKKKKKK....
        ..KKKKKKKKKKKK..
        ..KKKKKKKKKKKK..
        ..kKKKKKKKKKKk..
        ..kkKKKKKKKKkk..
        """
    ],
    _HERO_ROLES,
    top=9,
)[0]

_HERO_SHIELD = _bank(
    [
        """
        DDDDD
        DDMDD
        DMMMD
        dDMDd
        .ddd.
        """,
        """
        .DDD.
        DDMDD
        DMMMD
        DDMDD
        .ddd.
        """,
        """
        MMMMM
        MDDDM
        MDMDM
        mDDDm
        .mmm.
        """,
    ],
    _HERO_ROLES,
    top=9,
    left=1,
)

_SKIN_TONES = [(255, 220, 178), (244, 196, 142), (226, 170, 112), (196, 134, 84), (150, 96, 58), (110, 70, 44)]
_HAIR_COLOURS = [(44, 34, 30), (96, 58, 32), (150, 96, 46), (232, 196, 92), (198, 84, 40), (214, 214, 220)]
_METALS = [(226, 184, 62), (186, 192, 204), (196, 126, 70)]  # gold, silver, bronze
_LEATHER = [(112, 72, 44), (84, 56, 40), (140, 92, 52), (60, 52, 50)]


_HAIR_NAMES = np.array(["black", "brown", "brown", "blonde", "red", "white"], dtype=object)  # of _HAIR_COLOURS
_METAL_NAMES = np.array(["golden", "silver", "bronze"], dtype=object)  # of _METALS


def _person_colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Colours of _HERO_ROLES for heroes and side-facing walkers alike -> (n, 8, 3) and their names (n, 8)."""
    natural = rng.integers(len(_HAIR_COLOURS), size=n)  # the draw _pick makes, kept to name the colour
    fantasy_hair = _random_hue(rng, n, sat=(0.5, 0.8), val=(0.6, 0.9))
    skin = _pick(_SKIN_TONES, rng, n)
    fantasy = rng.random((n, 1)) < 0.2
    clothes = _random_hue(rng, n)
    pants = _random_hue(rng, n, sat=(0.2, 0.6), val=(0.3, 0.6))  # muted
    boots = _pick(_LEATHER, rng, n)
    cape = _random_hue(rng, n, sat=(0.6, 0.9), val=(0.5, 0.85))  # cape, pointed hat, hood
    shield = _random_hue(rng, n, sat=(0.5, 0.9), val=(0.45, 0.8))  # shield, backpack
    metal = rng.integers(len(_METALS), size=n)
    hair = np.where(fantasy, fantasy_hair, np.asarray(_HAIR_COLOURS, dtype=np.float64)[natural])
    roles = np.stack([skin, hair, clothes, pants, boots, cape, shield, np.asarray(_METALS, np.float64)[metal]], axis=1)
    names = colour_names(_base_rgb(roles))
    names[:, 1] = np.where(fantasy[:, 0], names[:, 1], _HAIR_NAMES[natural])  # "blonde" reads better than "yellow"
    names[:, 7] = _METAL_NAMES[metal]
    return roles, names


# Per variant of _HERO_HAIR / _SIDE_HAIR: the hair style ("" where the hair is hidden), the headwear ("" for none)
# and the role (index into _HERO_ROLES) that colours the headwear.
_HERO_HAIRSTYLES = np.array(["short", "long", "spiky", "", "", "", "short", "pigtailed", ""], dtype=object)
_HERO_HEADWEAR = np.array(["", "", "", "cap", "pointed hat", "helmet", "crown", "", "headband"], dtype=object)
_HERO_HEADWEAR_ROLE = np.array([0, 0, 0, 2, 5, 7, 7, 0, 2])
_HERO_OUTFITS = np.array(["tunic", "armour", "robe", "shirt", "tunic"], dtype=object)  # of _HERO_BODY


def _person_attributes(roles, names, outfit, hair, hairstyles, headwear, headwear_role) -> dict[str, np.ndarray]:
    """Outfit, hair and headwear of a person (see SPRITE_ATTRIBUTES) from the variants drawn and the role colours."""
    rows = np.arange(len(roles))
    armour = outfit == "armour"  # armour shows the metal colour, every other outfit the clothes colour
    main = np.where(armour, 7, 2)
    style, worn = hairstyles[hair], headwear[hair]
    return {
        "part": outfit,
        "colour": names[rows, main],
        "colour_rgb": _base_rgb(roles)[rows, main],
        "hairstyle": style,
        "hair": np.where(style != "", names[:, 1], ""),
        "headwear": worn,
        "headwear_colour": np.where(worn != "", names[rows, headwear_role[hair]], ""),
    }


def _hero(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    canvas = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    cape = rng.random(n) < 0.3
    _layer(canvas, np.broadcast_to(_HERO_CAPE, canvas.shape), where=cape)
    body = _variant(_HERO_BODY, rng, n)
    _layer(canvas, _HERO_BODY[body])
    _layer(canvas, _HERO_FACE[_variant(_HERO_FACE, rng, n, p=[0.7, 0.3])])
    hair = _variant(_HERO_HAIR, rng, n)
    _layer(canvas, _HERO_HAIR[hair])
    shield_variant = _variant(_HERO_SHIELD, rng, n)
    shield = rng.random(n) < 0.3
    _layer(canvas, _HERO_SHIELD[shield_variant], where=shield)

    roles, names = _person_colours(rng, n)
    attributes = _person_attributes(
        roles, names, _HERO_OUTFITS[body], hair, _HERO_HAIRSTYLES, _HERO_HEADWEAR, _HERO_HEADWEAR_ROLE
    )
    attributes["kind"] = np.full(n, "hero", dtype=object)
    attributes["held"] = np.where(shield, "shield", "")
    attributes["held_colour"] = np.where(shield, names[:, 6], "")
    attributes["back"] = np.where(cape, "cape", "")
    attributes["back_colour"] = np.where(cape, names[:, 5], "")
    return _finish(canvas, roles, rng, flip=rng.random(n) < 0.5), attributes


# ----------------------------------------------------------------------------------------------------------------
# 4: side-facing, a profile walking to the right (mirrored half the time)
# ----------------------------------------------------------------------------------------------------------------

_SIDE_FACE = _bank(
    [
        """
        .....SSSSS......
        ....SSSSSSSS....
        ....SSSSSSSS....
        ....SSSsSSeS....
        ....SSSsSSeSS...
        ....sSSSSSSS....
        .....ssSSSs.....
        """,
        """
        .....SSSSS......
        ....SSSSSSSS....
        ....SSSSSSSS....
        ....SSSsSSweS...
        ....SSSsSSSSS...
        ....sSSSSSoS....
        .....ssSSSs.....
        """,
    ],
    _HERO_ROLES,
    top=2,
)

_SIDE_BODY = _bank(
    [
        # mid-stride, arm hanging
        """
        .....CCCCCC.....
        .....CCcCCC.....
        .....CCcCCC.....
        .....BBSBBB.....
        ....PP...PP.....
        ...BBB...BBB....
        """,
        # legs passing, arm swung forward
        """
        .....CCCCCC.....
        .....CCCCccc....
        .....CCCCCCS....
        .....BBBBBB.....
        ......PPPP......
        ......BBBBB.....
        """,
        # long stride, arm swung back
        """
        .....CCCCCC.....
        ....cCCCCCC.....
        ...ScCCCCCC.....
        .....BBBBBB.....
        ....PP....PP....
        ..BBB.....BBB...
        """,
        # robe, striding
        """
        .....CCCCCC.....
        .....CCcCCC.....
        .....CCcCCC.....
        ....CCCSCCCC....
        ....CCCCCCCCC...
        ....BBB..BBB....
        """,
        # armour, mid-stride
        """
        .....MMMMMM.....
        .....M8mMMM.....
        .....MMmMMM.....
        .....BBSBBB.....
        ....PP...PP.....
        ...BBB...BBB....
        """,
    ],
    _HERO_ROLES,
    top=9,
)

_SIDE_HAIR = _bank(
    [
        # short
        """
        ................
        .....HHHHH......
        ....HHHHHHHH....
        ....HHHHHH......
        ....HHH.........
        ....HH..........
        ....hh..........
        """,
        # ponytail
        """
        ................
        .....HHHHH......
        ....HHHHHHHH....
        ...HHHHHHH......
        ..HHHHH.........
        ..HHHH..........
        ..hh............
        ..h.............
        """,
        # spikes swept back
        """
        ..HH.HH.........
        ...HHHHHHH......
        ..HHHHHHHHHH....
        ...HHHHHHH......
        ...HHHH.........
        ....Hh..........
        """,
        # cap, brim forward
        """
        ................
        .....CCCCC......
        ....CCC33CC.....
        ....CCCCcccccc..
        ....HHH.........
        ....hh..........
        """,
        # pointed hat, tip blown back
        """
        ..KK............
        ...KKKK.........
        ....KKKKKK......
        ...kkkkkkkkkk...
        """,
        # helmet
        """
        ................
        .....MMMMMM.....
        ....M8MMMMMM....
        ....MMMMMMMM....
        ....MMMM........
        ....mmm.........
        """,
        # hood
        """
        ................
        .....KKKKK......
        ...KKKKKKKKK....
        ...KKKKKkk......
        ...KKKK.........
        ...KKK..........
        ...kkk..........
        """,
    ],
    _HERO_ROLES,
    top=1,
)

_SIDE_BACK = _bank(
    [
        # backpack
        """
        ...DDD..........
        ..DDMD..........
        ..DDDD..........
        ..dddd..........
        """,
        # cape trailing behind
        """
        ...KKK..........
        ..KKKK..........
        .KKKKK..........
        .kKKK...........
        kkk.............
        """,
    ],
    _HERO_ROLES,
    top=9,
)


_SIDE_HAIRSTYLES = np.array(["short", "ponytailed", "spiky", "short", "", "", ""], dtype=object)
_SIDE_HEADWEAR = np.array(["", "", "", "cap", "pointed hat", "helmet", "hood"], dtype=object)
_SIDE_HEADWEAR_ROLE = np.array([0, 0, 0, 2, 5, 7, 5])
_SIDE_OUTFITS = np.array(["tunic", "tunic", "tunic", "robe", "armour"], dtype=object)  # of _SIDE_BODY
_SIDE_BACKS = np.array(["backpack", "cape"], dtype=object)  # of _SIDE_BACK
_SIDE_BACK_ROLE = np.array([6, 5])


def _side_facing(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    canvas = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    back = _variant(_SIDE_BACK, rng, n)
    carried = rng.random(n) < 0.35
    _layer(canvas, _SIDE_BACK[back], where=carried)
    body = _variant(_SIDE_BODY, rng, n)
    _layer(canvas, _SIDE_BODY[body])
    _layer(canvas, _SIDE_FACE[_variant(_SIDE_FACE, rng, n, p=[0.7, 0.3])])
    hair = _variant(_SIDE_HAIR, rng, n)
    _layer(canvas, _SIDE_HAIR[hair])

    roles, names = _person_colours(rng, n)
    flip = rng.random(n) < 0.5
    attributes = _person_attributes(
        roles, names, _SIDE_OUTFITS[body], hair, _SIDE_HAIRSTYLES, _SIDE_HEADWEAR, _SIDE_HEADWEAR_ROLE
    )
    attributes["kind"] = np.full(n, "traveller", dtype=object)
    attributes["back"] = np.where(carried, _SIDE_BACKS[back], "")
    attributes["back_colour"] = np.where(carried, names[np.arange(n), _SIDE_BACK_ROLE[back]], "")
    attributes["facing"] = np.where(flip, "left", "right")  # the art walks to the right; a flip turns it round
    return _finish(canvas, roles, rng, flip=flip), attributes


# ----------------------------------------------------------------------------------------------------------------
# 1: non-hero, creatures and monsters
# ----------------------------------------------------------------------------------------------------------------

_MONSTER_ROLES = "BAM"  # body, accent (horns, wings, legs, spikes), mouth


def _pieces(arts: list[str], roles: str) -> tuple[np.ndarray, np.ndarray]:
    """Pieces of different sizes, padded to one (V, h, w) bank for _stamp -> (bank, widths (V,))."""
    pieces = [_piece(art, roles) for art in arts]
    h = max(p.shape[0] for p in pieces)
    w = max(p.shape[1] for p in pieces)
    bank = np.zeros((len(pieces), h, w), dtype=np.uint8)
    for v, p in enumerate(pieces):
        bank[v, : p.shape[0], : p.shape[1]] = p
    return bank, np.array([p.shape[1] for p in pieces])


_EYES, _EYES_W = _pieces(
    [
        "e..e",
        "e...e",
        "e....e",
        "we..we\nwe..we",
        "ew...ew\nee...ee",
        ".www.\nwweww\n.www.",
        "e.e.e",
        "o....o\n.e..e.",
        "w.w\ne.e",
    ],
    _MONSTER_ROLES,
)
_MOUTHS, _MOUTHS_W = _pieces(
    ["o..o\n.oo.", "oooo\n.MM.", "owwo", "ooo", "w..w\noooo", ".oo.\noMMo\n.oo.", "...."],
    _MONSTER_ROLES,
)

_MONSTER_ART = {
    "ghost": """
        ......BBBB......
        ....BBBBBBBB....
        ...BBBBBBBBBB...
        ..BB1BBBBBBBBB..
        ..BB1BBBBBBBBB..
        ..BBBBBBBBBBBB..
        .BBBBBBBBBBBBBB.
        ..BBBBBBBBBBBB..
        ..bBBBBBBBBBBb..
        ..bBBbBBBbBBBb..
        ..bb.bbb..bbbb..
        ..b...b.....bb..
        """,
    "bat": """
        ................
        .....A....A.....
        .....AB..BA.....
        .A...BBBBBB...A.
        .AA..BBBBBB..AA.
        .AAAABBBBBBAAAA.
        .AAAAABBBBAAAAA.
        .AA.AaBBBBaA.AA.
        .A...a.bb.a...A.
        ................
        ................
        ................
        """,
    "spiky critter": """
        .......A........
        ..A....A....A...
        ...A.BBBBB.A....
        ....BBBBBBB.....
        ...BBBBBBBBB....
        .AABBBBBBBBBAA..
        ...BBBBBBBBB....
        ...bBBBBBBBb....
        ....bBBBBBb.....
        ...A.bbbbb.A....
        ..A....A....A...
        .......A........
        """,
    "cyclops": """
        ..A........A....
        ..AA......AA....
        ...ABBBBBBA.....
        ..BBBBBBBBBB....
        .BBBBBBBBBBBB...
        .BBBBBBBBBBBB...
        .BBBBBBBBBBBB...
        .bBBBBBBBBBBb...
        ..bBBBBBBBBb....
        ...bbbbbbbb.....
        ...AA....AA.....
        ..AAA....AAA....
        """,
    "spider": """
        ................
        ................
        ......BBBB......
        .....BBBBBB.....
        ..A.BBBBBBBB.A..
        ...ABBBBBBBBA...
        .AAABBBBBBBBAAA.
        .A..bBBBBBBb..A.
        ...A.bbbbbb.A...
        ..A..A....A..A..
        ................
        ................
        """,
}
_MONSTER_BANK = _bank(list(_MONSTER_ART.values()), _MONSTER_ROLES, top=2)
# Where each body's face goes: (eye row, mouth row, 2 * centre column); slimes are drawn, and placed, per image.
_MONSTER_FACES = np.array([[6, 9, 15], [6, 8, 15], [6, 9, 14], [7, 10, 13], [7, 9, 15]])
_MONSTER_ODDS = [0.15, 0.15, 0.15, 0.15, 0.12, 0.28]  # the bodies above, then slimes


def _slimes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Domes of random width and height on a flat bottom (row 12), darker below, with a shine at the top left.

    Returns slot maps (n, 16, 16) and each dome's eye and mouth rows (n,), from its height.
    """
    slots = _legend(_MONSTER_ROLES)
    rx, ry = rng.uniform(4.2, 6.4, size=n), rng.uniform(4.6, 6.2, size=n)
    cy, cx = 13.0 - ry * 0.55, np.full(n, 7.5)
    dome = _ellipse(cy, cx, ry, rx) & (_Y[None] <= 12)
    canvas = np.where(dome, slots["B"], 0).astype(np.uint8)
    canvas[dome & ~np.roll(dome, -2, axis=1)] = slots["b"]  # the two lowest rows of every column
    canvas[dome & _ellipse(cy - ry * 0.45, cx - rx * 0.5, np.full(n, 0.8), np.full(n, 0.8))] = slots["1"]
    eye_row = np.round((np.ceil(cy - ry) + 12.0) / 2.0).astype(np.int64)  # mid-way down: the top rows are narrow
    return canvas, eye_row, eye_row + 2


_MONSTER_KINDS = np.array([*_MONSTER_ART, "slime"], dtype=object)  # in _MONSTER_ODDS order


def _non_hero(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    kind = rng.choice(len(_MONSTER_ODDS), size=n, p=_MONSTER_ODDS)
    slime = kind == len(_MONSTER_BANK)
    body_kind = np.minimum(kind, len(_MONSTER_BANK) - 1)
    slimes, slime_eyes, slime_mouth = _slimes(n, rng)
    canvas = np.where(slime[:, None, None], slimes, _MONSTER_BANK[body_kind])

    eyes = rng.integers(len(_EYES), size=n)
    mouth = rng.integers(len(_MOUTHS), size=n)
    eye_h = (_EYES[eyes] > 0).any(axis=2).sum(axis=1)
    mouth_h = (_MOUTHS[mouth] > 0).any(axis=2).sum(axis=1)
    eye_row, mouth_row, centre2 = _MONSTER_FACES[body_kind].T
    eye_row = np.where(slime, slime_eyes, eye_row)
    mouth_row = mouth_row + (eye_h > 2)  # below tall eyes
    mouth_row = np.where(slime, np.minimum(slime_mouth + (eye_h > 2), 12 - mouth_h), mouth_row)  # above the bottom
    _stamp(canvas, _EYES, eyes, eye_row - eye_h // 2, (centre2 - _EYES_W[eyes] + 1) // 2)
    _stamp(canvas, _MOUTHS, mouth, mouth_row, (centre2 - _MOUTHS_W[mouth] + 1) // 2)

    body = _random_hue(rng, n, sat=(0.35, 0.85), val=(0.6, 1.0))
    ghost = (kind == list(_MONSTER_ART).index("ghost"))[:, None]
    body = np.where(ghost, _random_hue(rng, n, sat=(0.05, 0.3), val=(0.85, 1.0)), body)
    accent = np.where(rng.random((n, 1)) < 0.5, body * 0.6, _random_hue(rng, n, sat=(0.3, 0.8), val=(0.3, 0.8)))
    mouth_colour = _pick([(200, 50, 60), (230, 110, 130), (150, 30, 60)], rng, n)
    roles = np.stack([body, accent, mouth_colour], axis=1)
    body_rgb = _base_rgb(body)
    attributes = {
        "kind": _MONSTER_KINDS[kind],
        "part": np.full(n, "body", dtype=object),
        "colour": colour_names(body_rgb),
        "colour_rgb": body_rgb,
    }
    return _finish(canvas, roles, rng, flip=rng.random(n) < 0.5), attributes


# ----------------------------------------------------------------------------------------------------------------
# 2: food
# ----------------------------------------------------------------------------------------------------------------

_FOOD_ROLES = "ABCD"  # what each role is depends on the dish: see _FOOD_COLOURS

_FOOD_ART = {
    "apple": """
        ........B.CC....
        ........BCCc....
        ....AAA.BAAA....
        ...AAAAAAAAAA...
        ..AA11AAAAAAAA..
        ..A11AAAAAAAAA..
        ..A1AAAAAAAAAA..
        ..AAAAAAAAAAAa..
        ..AAAAAAAAAAAa..
        ...AAAAAAAAAa...
        ...aaAAAAAaaa...
        ....aaa..aaa....
        """,
    "cherries": """
        .........CC.....
        ........BCc.....
        .......BB.......
        ......B..B......
        .....B....B.....
        ..AAAA...AAAA...
        .AA1AAA.AA1AAA..
        .A1AAAA.A1AAAA..
        .AAAAAA.AAAAAA..
        .aAAAAa.aAAAAa..
        ..aaaa...aaaa...
        ................
        """,
    "drumstick": """
        ...AAAA.........
        ..AAAAAAA.......
        .AA11AAAAA......
        .A11AAAAAAA.....
        .A1AAAAAAAA.....
        .AAAAAAAAAa.....
        .AAAAAAAAAa.....
        ..aAAAAAAa......
        ...aaaaaBB......
        ........BBB.....
        .........BBBBB..
        .........BBBBB..
        ..........BBb...
        """,
    "bread": """
        ................
        ................
        ....AAAAAAAA....
        ..AAAAAAAAAAAA..
        .AA1AAA1AAA1AAA.
        .AAA1AAA1AAA1AA.
        .AAAAAAAAAAAAAA.
        .AAAAAAAAAAAAAA.
        .aAAAAAAAAAAAAa.
        ..aaaaaaaaaaaa..
        ................
        """,
    "cake": """
        ...........DD...
        ..........DD1D..
        ........AAAADDA.
        .....AAAAAAAAAA.
        ..AAAAAAAAAAAAA.
        .BBBBBBBBBBBBBB.
        .BBBBBBBBBBBBBB.
        .CCCCCCCCCCCCCC.
        .BBBBBBBBBBBBBB.
        .bbbbbbbbbbbbbb.
        """,
    "mushroom": """
        .....AAAAAA.....
        ...AAwAAAAwAA...
        ..AAwwAAAAAAAA..
        .AAAAAAAwwAAAAA.
        .AAwAAAAwwAAAwA.
        .aaaaaaaaaaaaaa.
        .....BBBBBB.....
        .....BBBBBB.....
        .....BBBBBb.....
        ....bBBBBBbb....
        """,
    "donut": """
        .....BBBBBB.....
        ...BBBBCBBBBB...
        ..BBDBBBBBBCBB..
        ..BBBBB..BBBBB..
        .BBCBB....BBDBB.
        .BBBBB....BBBBB.
        .ABBBBB..BBBCBA.
        .AABBDBBBBBBBAA.
        ..AAABBBBBBAAA..
        ...aAAAAAAAAa...
        .....aaaaaa.....
        """,
    "carrot": """
        ..........C.C...
        .........CCC....
        ........CCCCC...
        .......AAAC.....
        ......AAAAA.....
        .....AAaAAA.....
        .....AAAAA......
        ....AAAAa.......
        ....AaAAA.......
        ...AAAAA........
        ...AAAA.........
        ..AAA...........
        ..A.............
        """,
    "strawberry": """
        .....CC.CC......
        ....AACCCAAA....
        ...AAAAAAAAAA...
        ..AABAAABAAAA...
        ..AAAAAAAAABA...
        ..ABAAABAAAAA...
        ...AAAAAAABA....
        ...AABAAAAAA....
        ....AAAABAA.....
        .....AAAAA......
        ......aaa.......
        """,
    "ice cream": """
        ......CCCC......
        .....CC3CCC.....
        .....CCCCCC.....
        ....AAccccAA....
        ...AA1AAAAAAA...
        ...AAAAAAAAAA...
        ...aAaAAaAAaA...
        ....BBBBBBBB....
        ....BbBbBbBB....
        .....BBbBbB.....
        .....BbBbBB.....
        ......BBbB......
        .......BB.......
        """,
    "cheese": """
        ................
        .........AAAA...
        ......AAAAAAAA..
        ...AAAAAAAAAAA..
        .AAAAAAAAAAAAA..
        .AaaAAAAAAAaAA..
        .AaaAAAaAAAAAA..
        .AAAAAAAAAaaAA..
        .aaaaaaaaaaaaa..
        """,
    "burger": """
        .....AAAAAA.....
        ...AA1A1AAAAA...
        ..AAAAAAAAAAAA..
        ..aaaaaaaaaaaa..
        .CCcCCcCCcCCcCC.
        ..DDDDDDDDDDDDD.
        ..BBBBBBBBBBBB..
        ..bbbbbbbbbbbb..
        ..AAAAAAAAAAAA..
        ...aaaaaaaaaa...
        """,
}
_FOOD_BANK = _bank(list(_FOOD_ART.values()), _FOOD_ROLES, top=2)

# Per dish, per role (A, B, C, D): an (hue, saturation, value) range triple, or a list of RGB colours.
_BROWN = [(120, 78, 40), (98, 64, 36), (140, 96, 52)]
_LEAF = ((0.24, 0.38), (0.55, 0.85), (0.5, 0.8))
_CREAM = [(240, 226, 190), (236, 214, 170), (246, 236, 212)]
_PASTEL = ((0.0, 1.0), (0.2, 0.5), (0.85, 1.0))
_BRIGHT = ((0.0, 1.0), (0.6, 0.9), (0.7, 1.0))
_TAN = ((0.07, 0.11), (0.45, 0.75), (0.7, 0.9))
_FOOD_COLOURS = {
    "apple": [((-0.03, 0.3), (0.65, 0.9), (0.7, 0.95)), _BROWN, _LEAF, _LEAF],
    "cherries": [((-0.06, 0.01), (0.7, 0.9), (0.6, 0.9)), ((0.1, 0.3), (0.4, 0.7), (0.4, 0.6)), _LEAF, _LEAF],
    "drumstick": [((0.04, 0.1), (0.5, 0.8), (0.55, 0.85)), _CREAM, _LEAF, _LEAF],
    "bread": [_TAN, _CREAM, _LEAF, _LEAF],
    "cake": [_PASTEL, ((0.08, 0.14), (0.3, 0.6), (0.5, 0.95)), _PASTEL, ((-0.04, 0.02), (0.7, 0.9), (0.7, 0.9))],
    "mushroom": [((-0.03, 0.1), (0.6, 0.9), (0.6, 0.9)), _CREAM, _LEAF, _LEAF],
    "donut": [_TAN, _PASTEL, _BRIGHT, _BRIGHT],
    "carrot": [((0.05, 0.1), (0.8, 0.95), (0.85, 1.0)), _BROWN, _LEAF, _LEAF],
    "strawberry": [((-0.04, 0.01), (0.7, 0.9), (0.75, 0.95)), [(250, 226, 120), (244, 240, 180)], _LEAF, _LEAF],
    "ice cream": [_PASTEL, [(216, 160, 90), (200, 140, 80)], _PASTEL, _LEAF],
    "cheese": [((0.12, 0.15), (0.5, 0.8), (0.9, 1.0)), _BROWN, _LEAF, _LEAF],
    "burger": [((0.07, 0.1), (0.6, 0.8), (0.75, 0.92)), [(110, 62, 40), (92, 52, 34)], _LEAF, [(250, 200, 60)]],
}


def _colour(spec, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(spec, tuple):
        return _random_hue(rng, n, *spec)
    return _pick(spec, rng, n)


_FOOD_KINDS = np.array(list(_FOOD_ART), dtype=object)
# The part whose colour a caption names, per dish ("" for the whole dish), and its role index in _FOOD_ROLES.
_FOOD_PARTS = np.array(
    ["frosting" if k == "cake" else "icing" if k == "donut" else "" for k in _FOOD_ART], dtype=object
)
_FOOD_MAIN_ROLE = np.array([1 if k == "donut" else 0 for k in _FOOD_ART])


def _food(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    dish = rng.integers(len(_FOOD_BANK), size=n)
    canvas = _FOOD_BANK[dish]
    roles = np.zeros((n, len(_FOOD_ROLES), 3))
    for d, specs in enumerate(_FOOD_COLOURS.values()):
        chosen = np.flatnonzero(dish == d)
        for r, spec in enumerate(specs):
            roles[chosen, r] = _colour(spec, rng, len(chosen))
    main_rgb = _base_rgb(roles)[np.arange(n), _FOOD_MAIN_ROLE[dish]]
    attributes = {
        "kind": _FOOD_KINDS[dish],
        "part": _FOOD_PARTS[dish],
        "colour": colour_names(main_rgb),
        "colour_rgb": main_rgb,
    }
    return _finish(canvas, roles, rng, flip=rng.random(n) < 0.5), attributes


# ----------------------------------------------------------------------------------------------------------------
# 3: spell/weapon
# ----------------------------------------------------------------------------------------------------------------

_ITEM_ROLES = "MHGKL"  # metal, handle (wood, leather), glow (gems, magic), glass, liquid

_ITEM_ART = {
    "sword": """
        ................
        .............MM.
        ............1Mm.
        ...........1Mm..
        ..........1Mm...
        .........1Mm....
        ........1Mm.....
        ....G..1Mm......
        ....GG1Mm.......
        ....HGGm........
        ...HH.GG........
        ..HH...G........
        .GG.............
        .GG.............
        """,
    "dagger": """
        ................
        ................
        ................
        ................
        ................
        ..........MM....
        .........1Mm....
        ........1Mm.....
        ....G..1Mm......
        ....GG1Mm.......
        ....HGGm........
        ...HH.GG........
        ..GG...G........
        ..GG............
        """,
    "staff": """
        ......H..H......
        ......HGGH......
        .....HG33GH.....
        .....HGGGGH.....
        ......HGGH......
        .......HH.......
        .......HH.......
        .......Hh.......
        .......HH.......
        .......Hh.......
        .......HH.......
        .......Hh.......
        .......HH.......
        ......hHHh......
        """,
    "wand": """
        ..........G.....
        .........G3G....
        ........GG3GG...
        .........G3G....
        ........H.G.....
        .......Hh.......
        ......Hh........
        .....Hh.........
        ....Hh..........
        ...Hh...........
        ..Hh............
        ................
        """,
    "round potion": """
        ......hHHh......
        ......HHHH......
        .......KK.......
        .......KK.......
        .....KKKKKK.....
        ....K4KKKKKK....
        ...K4KKKKKKKK...
        ...KLLLLLLLLK...
        ...LL5LLLLLLL...
        ...LL5LLLLLLL...
        ....LLLLLLLL....
        .....llllll.....
        """,
    "tall potion": """
        .......HH.......
        ......hHHh......
        .......KK.......
        ......KKKK......
        .....K4KKKK.....
        .....K4KKKK.....
        .....LLLLLL.....
        .....L5LLLL.....
        .....L5LLLL.....
        .....LLLLLL.....
        .....LLLLLL.....
        .....llllll.....
        """,
    "sparkle": """
        .......G........
        .......G........
        ......G3G.......
        ......G3G.......
        ....GG333GG.....
        ..GG3333333GG...
        ....GG333GG.....
        ......G3G.......
        ......G3G.......
        .......G........
        .......G........
        """,
    "fireball": """
        ..........GGG...
        ........GGGGGG..
        .......GG3333GG.
        ......GG33ww33G.
        .....GG33wwww3G.
        ....GGG333ww33G.
        ...GG.GG33333GG.
        ..GG..GGG333GG..
        .G...GG..GGGG...
        ....GG..........
        ...G............
        """,
    "lightning": """
        .........GGGG...
        ........GGGG....
        .......GGGG.....
        ......GGGG......
        .....GGGGGGGG...
        ........GGGG....
        .......GGGG.....
        ......GGGG......
        .....GGG........
        ....GG..........
        ...G............
        """,
    "bow": """
        .....HH.........
        .....o.HH.......
        .....o..HH......
        .....o...H......
        .....o....H.....
        .g...o....H.....
        .ggHHHHHHHHHMM..
        .g...o....H.....
        .....o....H.....
        .....o....H.....
        .....o...H......
        .....o..HH......
        .....o.HH.......
        .....HH.........
        """,
}
_ITEM_BANK = _bank(list(_ITEM_ART.values()), _ITEM_ROLES, top=1)
_SPARKLE, _ = _pieces([".G.\nG3G\n.G.", "G.G\n.3.\nG.G", "3"], _ITEM_ROLES)
_STEEL = ((0.5, 0.7), (0.0, 0.2), (0.65, 0.9))


_ITEM_KINDS = np.array([k.removeprefix("round ").removeprefix("tall ") for k in _ITEM_ART], dtype=object)
# Per item: the role (index into _ITEM_ROLES) whose colour a caption names, and the part it colours ("" for the whole).
_ITEM_MAIN = {
    "sword": (0, "blade"),
    "dagger": (0, "blade"),
    "staff": (2, "orb"),
    "wand": (2, "star"),
    "round potion": (4, ""),
    "tall potion": (4, ""),
    "sparkle": (2, ""),
    "fireball": (2, ""),
    "lightning": (2, ""),
    "bow": (1, ""),
}
_ITEM_MAIN_ROLE = np.array([_ITEM_MAIN[k][0] for k in _ITEM_ART])
_ITEM_PARTS = np.array([_ITEM_MAIN[k][1] for k in _ITEM_ART], dtype=object)


def _spell_weapon(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    kind = rng.integers(len(_ITEM_BANK), size=n)
    canvas = _ITEM_BANK[kind]
    # Magic glitters: a small sparkle in the empty top-right corner of potions and star bursts.
    names = list(_ITEM_ART)
    magic = np.isin(kind, [names.index(k) for k in ("round potion", "tall potion", "sparkle")])
    glitter = magic & (rng.random(n) < 0.5)
    sparkle = rng.integers(len(_SPARKLE), size=n)
    top, left = rng.integers(0, 3, size=n), rng.integers(11, 14, size=n)
    _stamp(canvas, _SPARKLE, sparkle, top, left, where=glitter)

    steel = rng.random((n, 1)) < 0.7
    steel_rgb = _random_hue(rng, n, *_STEEL)
    metal_kind = rng.integers(len(_METALS), size=n)  # the draw _pick makes, kept to name the metal
    metal = np.where(steel, steel_rgb, np.asarray(_METALS, dtype=np.float64)[metal_kind])
    handle = np.where(rng.random((n, 1)) < 0.7, _pick(_LEATHER, rng, n), _random_hue(rng, n, val=(0.3, 0.6)))
    glow = _random_hue(rng, n, sat=(0.6, 0.95), val=(0.8, 1.0))
    glass = _random_hue(rng, n, sat=(0.1, 0.3), val=(0.85, 1.0))
    liquid = _random_hue(rng, n, sat=(0.6, 0.9), val=(0.6, 0.95))
    roles = np.stack([metal, handle, glow, glass, liquid], axis=1)
    rgb = _base_rgb(roles)
    main = _ITEM_MAIN_ROLE[kind]
    names = colour_names(rgb[np.arange(n), main])
    names = np.where(main == 0, np.where(steel[:, 0], "steel", _METAL_NAMES[metal_kind]), names)
    attributes = {
        "kind": _ITEM_KINDS[kind],
        "part": _ITEM_PARTS[kind],
        "colour": names,
        "colour_rgb": rgb[np.arange(n), main],
    }
    return _finish(canvas, roles, rng, flip=rng.random(n) < 0.5), attributes


# ----------------------------------------------------------------------------------------------------------------
# Captions: one sentence per sprite from the attributes the generator recorded
# ----------------------------------------------------------------------------------------------------------------

# Several phrasings per class, picked per image; every one names the class (hero, monster/creature, food, weapon or
# spell, side view) beside the kind. Fields: see _caption_fields.
_CAPTION_TEMPLATES = (
    (  # hero
        "a hero in {outfit}{extras}{held}",
        "pixel-art hero wearing {outfit}{extras}{held}",
        "a front-facing hero dressed in {outfit}{extras}{held}",
    ),
    (  # non-hero
        "{thing} monster",
        "a non-hero creature: {thing}",
        "pixel-art enemy, {thing}",
    ),
    (  # food
        "food: {thing}",
        "{thing}, a food item",
        "a tasty food sprite of {thing}",
    ),
    (  # spell/weapon
        "{group}: {thing}",
        "{thing}, a {group}",
        "a pixel-art {group} sprite showing {thing}",
    ),
    (  # side-facing
        "a traveller seen from the side, facing {facing}, in {outfit}{extras}",
        "side view of a traveller walking {facing} in {outfit}{extras}",
        "a side-facing traveller looking {facing}, wearing {outfit}{extras}",
    ),
)
_ITEM_GROUPS = {"staff": "magic weapon", "wand": "magic weapon", "potion": "magic item", "sparkle": "spell"}
_ITEM_GROUPS |= {"fireball": "spell", "lightning": "spell"}  # the rest: "weapon"
_NOUNS = {"lightning": "lightning bolt", "bread": "loaf of bread", "cheese": "wedge of cheese"}  # "a red bread"
_COUNTABLE_PARTS = ("orb", "star")  # "a staff with a blue orb", but "a cake with pink frosting"


def _a(phrase: str) -> str:
    if phrase.startswith("cherries", phrase.find(" ") + 1):
        return "two " + phrase
    return ("an " if phrase[:1] in ("a", "e", "i", "o", "u") else "a ") + phrase


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _caption_fields(kind, part, colour, hairstyle, hair, headwear, headwear_colour, held, held_colour, back,
                    back_colour, facing) -> dict[str, str]:  # fmt: skip
    """One image's attributes -> the fields of _CAPTION_TEMPLATES (a field a class does not use is harmless)."""
    noun = _NOUNS.get(kind, kind)
    if part in ("", "body", "blade"):
        thing = _a(f"{colour} {noun}")
    else:
        thing = _a(f"{noun} with " + (_a(f"{colour} {part}") if part in _COUNTABLE_PARTS else f"{colour} {part}"))
    extras = [f"{hairstyle} {hair} hair"] if hair else []
    extras += [_a(f"{headwear_colour} {headwear}")] if headwear else []
    extras += [_a(f"{back_colour} {back}")] if back else []
    return {
        "thing": thing,
        "group": _ITEM_GROUPS.get(kind, "weapon"),
        "outfit": f"{colour} armour" if part == "armour" else _a(f"{colour} {part}"),
        "extras": " with " + _listed(extras) if extras else "",
        "held": f", holding {_a(f'{held_colour} {held}')}" if held else "",
        "facing": facing,
    }


_CAPTION_KEYS = ("kind", "part", "colour", "hairstyle", "hair", "headwear", "headwear_colour", "held", "held_colour")
_CAPTION_KEYS += ("back", "back_colour", "facing")


def sprite_captions(labels: np.ndarray, attributes: dict[str, np.ndarray], seed: int = 0) -> list[str]:
    """One sentence per sprite, e.g. "a green slime monster" or "a hero in a red tunic with long blonde hair".

    Args:
        labels: (N,) class indices into SPRITE_CLASSES.
        attributes: what each image shows, as generate_sprites(..., return_attributes=True) returns it (the keys
            of SPRITE_ATTRIBUTES except colour_rgb; arrays of N strings). Hand-made attributes work too, e.g. to
            write prompts for combinations the generator rarely draws.
        seed: picks the phrasing of each caption (several templates per class), deterministically.
    """
    labels = np.asarray(labels)
    missing = [key for key in _CAPTION_KEYS if key not in attributes]
    if missing:
        raise ValueError(
            f"attributes lack {missing}; pass the dict generate_sprites(..., return_attributes=True) gives."
        )
    if any(len(attributes[key]) != len(labels) for key in _CAPTION_KEYS):
        sizes = {key: len(attributes[key]) for key in _CAPTION_KEYS}
        raise ValueError(f"attributes must hold one entry per label ({len(labels)}), got lengths {sizes}.")
    rng = _caption_rng(seed, len(labels))
    captions = [""] * len(labels)
    for label, templates in enumerate(_CAPTION_TEMPLATES):
        where = np.flatnonzero(labels == label)
        choice = rng.integers(len(templates), size=len(where))
        columns = [np.asarray(attributes[key], dtype=object)[where] for key in _CAPTION_KEYS]
        for i, t, row in zip(where, choice, zip(*columns)):
            captions[i] = templates[t].format(**_caption_fields(*row))
    return captions


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------

_GENERATORS = (_hero, _non_hero, _food, _spell_weapon, _side_facing)  # in SPRITE_CLASSES order


# What generate_sprites(..., return_attributes=True) says about each image: (N,) object arrays of str, "" where a key
# does not apply to the image's class, except colour_rgb, (N, 3) uint8.
SPRITE_ATTRIBUTES = {
    "kind": "what it is: hero, traveller (side-facing), slime, bat, ..., apple, ..., sword, potion, fireball, ...",
    "part": "the part that carries `colour`: an outfit (tunic, robe, shirt, armour), body, blade, orb, icing, ...",
    "colour": "colour name of that part (see colour_names), e.g. green, purple, golden, steel",
    "colour_rgb": "the exact RGB of that part's base colour, as painted in the image",
    "hairstyle": "short, long, spiky, pigtailed, ponytailed (people whose hair shows)",
    "hair": "hair colour name (people whose hair shows)",
    "headwear": "cap, pointed hat, helmet, crown, headband, hood",
    "headwear_colour": "its colour name",
    "held": "shield (heroes)",
    "held_colour": "its colour name",
    "back": "cape or backpack",
    "back_colour": "its colour name",
    "facing": "left or right (side-facing)",
}


def generate_sprites(num_images: int, seed: int = 0, return_attributes: bool = False):
    """Draw `num_images` procedural sprites, balanced over SPRITE_CLASSES and deterministic by `seed`.

    Returns:
        images: (N, 16, 16, 3) uint8 RGB on a white background.
        labels: (N,) int64 class indices into SPRITE_CLASSES; class i gets N // 5 images, plus one for the first
            N % 5 classes, in an order shuffled by `seed` (so any prefix of the set is roughly balanced too).
        attributes (only with `return_attributes=True`): dict of what each image shows, keys and meaning in
            SPRITE_ATTRIBUTES; the ground truth behind sprite_captions and for checking generated images.

    The same (num_images, seed) gives byte-identical arrays everywhere; a prefix of a larger set is *not* the same
    as a smaller set drawn with the same seed.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    num_images = int(num_images)
    num_classes = len(SPRITE_CLASSES)
    root = np.random.SeedSequence([int(seed), num_images])
    order_seed, *class_seeds = root.spawn(num_classes + 1)
    labels = np.random.default_rng(order_seed).permutation(np.arange(num_images) % num_classes).astype(np.int64)

    images = np.empty((num_images, SIZE, SIZE, 3), dtype=np.uint8)
    attributes = {key: np.full(num_images, "", dtype=object) for key in SPRITE_ATTRIBUTES}
    attributes["colour_rgb"] = np.zeros((num_images, 3), dtype=np.uint8)
    for label, (draw, class_seed) in enumerate(zip(_GENERATORS, class_seeds)):
        where = np.flatnonzero(labels == label)
        if len(where):
            images[where], found = draw(len(where), np.random.default_rng(class_seed))
            for key, value in found.items():
                attributes[key][where] = value
    if return_attributes:
        return images, labels, attributes
    return images, labels


def _caption_rng(seed: int, num_images: int) -> np.random.Generator:
    # The child of generate_sprites' SeedSequence after the ones it spawns for the images: the template choices are
    # deterministic by seed and independent of (and invisible to) the image draws.
    entropy = [int(seed), int(num_images)]
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(len(SPRITE_CLASSES) + 1,)))


def generate_sprites_with_captions(num_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """generate_sprites(num_images, seed) plus one caption per image -> (images, labels, captions).

    images and labels are byte-identical to generate_sprites(num_images, seed); captions are sprite_captions of
    its attributes with the same seed. For the attributes too, call those two directly.
    """
    images, labels, attributes = generate_sprites(num_images, seed, return_attributes=True)
    return images, labels, sprite_captions(labels, attributes, seed=seed)


def sprite_dataset(num_images: int, seed: int = 0, captions: bool = False):
    """The procedural sprites as a `datasets.Dataset` with columns "image" (PIL, via `datasets.Image`) and "label".

    Returns:
        datasets.Dataset with features {"image": Image(), "label": ClassLabel(names=list(SPRITE_CLASSES))}; row i
        holds generate_sprites(num_images, seed) image i and label i. With `captions=True` also a "text" column
        (generate_sprites_with_captions' sentence), the column name diffusers' text_to_image example reads.

    This is for people and `datasets` tooling (push_to_hub, map, the dataset viewer). Training does not go through
    it: hfdiff's trainer takes generate_sprites' arrays directly, which skips PNG encoding and decoding. Encoding
    costs about 60 us per image (some 6 s for the course's 89,400 on one core).
    """
    import datasets
    from PIL import Image

    if captions:
        images, labels, texts = generate_sprites_with_captions(num_images, seed)
    else:
        images, labels = generate_sprites(num_images, seed)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # level 1: 16x16 tiles barely shrink
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    columns = {"image": encoded, "label": labels.tolist()}
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SPRITE_CLASSES))}
    if captions:
        columns["text"], features["text"] = texts, datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def make_contact_sheet(per_class: int = 12, seed: int = 0, scale: int = 4):
    """A PIL image of `per_class` sprites of every class: one row per class in SPRITE_CLASSES order.

    Cells are upscaled `scale` times with nearest-neighbour (crisp pixels) and separated by `scale` pixels of grey,
    also around the edge, so the sheet is (per_class * (16 * scale + scale) + scale) pixels wide and
    (5 * (16 * scale + scale) + scale) high. Written with numpy rather than diffusers' make_image_grid, which
    neither leaves gaps nor upscales without blurring, and would pull diffusers into this numpy-only module.
    """
    from PIL import Image

    for name, value in (("per_class", per_class), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    num_classes = len(SPRITE_CLASSES)
    images, labels = generate_sprites(per_class * num_classes, seed)
    rows = np.stack([images[labels == label] for label in range(num_classes)])  # (5, per_class, 16, 16, 3)
    cells = rows.repeat(scale, axis=2).repeat(scale, axis=3)
    cell = SIZE * scale
    # Each cell takes a gap on its right and bottom; the sheet's top and left gap is added last.
    padded = np.full((num_classes, per_class, cell + scale, cell + scale, 3), _GAP, dtype=np.uint8)
    padded[:, :, :cell, :cell] = cells
    sheet = padded.transpose(0, 2, 1, 3, 4).reshape(num_classes * (cell + scale), per_class * (cell + scale), 3)
    sheet = np.pad(sheet, ((scale, 0), (scale, 0), (0, 0)), constant_values=_GAP)
    return Image.fromarray(sheet)
