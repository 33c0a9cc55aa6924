"""Captions the way people describe sprites: a small grammar over the generator's attributes, split into the words
and frames training sees and the ones only evaluation uses.

    sets = sprite_caption_sets(labels, attributes, seed=0, per_image=8)   # N lists: sprite_captions' + 7 more
    held_out_words()                                                       # words no training caption contains
    plain_prompts(), unseen_word_prompts()                                 # (prompt, class, kind, colour) rows

sprite_captions (sprites.py) gives each image one sentence from three templates per class that name every attribute.
People do not type those: they write "a red apple", "a sword", "a blob of blue goo", "a knight in gold armor". The
grammar gives every kind, part and colour several nouns and synonyms, adjectives, registers (terse, descriptive,
game-designer), word orders, and captions that leave attributes out ("a sword" is a true caption of a steel sword).

Each word list is a pair (training words, evaluation-only words). Training captions are built from the first half
only; `unseen_word_prompts` from the second, so its prompts hold words no training caption contains
(`held_out_words`, checked by a test against generated training captions).

How many distinct captions this adds matters: training embeds each distinct caption once at start-up. So the grammar
captions of an image are drawn from a pool shared by every image of the same (kind, part, colour, facing):
POOL_SIZE captions per pool, a few hundred pools, whatever the number of images. Everything is deterministic by seed
and never touches the generator's image draws.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

POOL_SIZE = 24  # grammar captions per (kind, part, colour, facing); bounds the distinct captions training embeds

# kind -> (nouns training uses, nouns only evaluation uses). The first training noun is the generator's own.
KIND_WORDS = {
    "hero": (("hero", "adventurer", "knight", "warrior", "fighter"), ("champion", "paladin", "protagonist")),
    "traveller": (("traveller", "traveler", "wanderer", "walker"), ("wayfarer", "pilgrim", "hiker")),
    "slime": (("slime", "blob", "goo", "jelly", "slime blob"), ("ooze", "sludge", "gloop")),
    "bat": (("bat", "vampire bat", "flying bat"), ("cave bat", "night flier")),
    "ghost": (("ghost", "spirit", "phantom"), ("spectre", "wraith", "spook")),
    "cyclops": (("cyclops", "one-eyed monster", "one-eyed giant"), ("single-eyed brute", "ogre")),
    "spiky critter": (("spiky critter", "spiky creature", "spiky monster"), ("porcupine", "thorny beast")),
    "spider": (("spider", "creepy spider", "arachnid"), ("tarantula", "eight-legged crawler")),
    "strawberry": (("strawberry", "berry"), ("wild strawberry", "garden berry")),
    "apple": (("apple", "fruit"), ("pippin", "orchard apple")),
    "cherries": (("cherries", "pair of cherries", "cherry"), ("morello cherries", "twin cherries")),
    "carrot": (("carrot", "veggie"), ("root vegetable", "garden carrot")),
    "bread": (("loaf of bread", "bread", "loaf"), ("baguette", "sourdough loaf")),
    "cheese": (("wedge of cheese", "cheese", "cheese wedge"), ("cheddar", "slice of cheddar")),
    "drumstick": (("drumstick", "chicken leg", "meat"), ("turkey leg", "roast chicken")),
    "donut": (("donut", "doughnut"), ("cruller", "glazed ring")),
    "burger": (("burger", "hamburger"), ("sandwich", "patty in a bun")),
    "mushroom": (("mushroom", "toadstool"), ("fungus", "shroom")),
    "cake": (("cake", "birthday cake"), ("gateau", "layer cake")),
    "ice cream": (("ice cream", "ice cream cone"), ("gelato", "frozen treat")),
    "sword": (("sword", "longsword"), ("sabre", "broadsword")),
    "dagger": (("dagger", "knife"), ("stiletto", "dirk")),
    "bow": (("bow", "longbow"), ("recurve bow", "archer's bow")),
    "staff": (("staff", "rod", "magic staff"), ("sceptre", "wizard's cane")),
    "wand": (("wand", "magic wand"), ("fairy wand", "baton")),
    "potion": (("potion", "bottle", "flask"), ("elixir", "vial", "tonic")),
    "fireball": (("fireball", "ball of fire", "fire spell"), ("inferno", "flaming sphere")),
    "lightning": (("lightning bolt", "lightning", "thunderbolt"), ("zap", "shock spell")),
    "sparkle": (("sparkle", "magic sparkle"), ("twinkle", "glimmer")),
}
# part -> (training words, evaluation-only words); body, blade and "" (the whole thing) are not named.
PART_WORDS = {
    "tunic": (("tunic", "top"), ("jerkin", "doublet")),
    "robe": (("robe", "gown"), ("vestments", "mantle")),
    "shirt": (("shirt", "t-shirt"), ("blouse", "jersey")),
    "armour": (("armour", "armor", "plate armour"), ("chainmail", "cuirass")),
    "orb": (("orb", "gem"), ("crystal", "jewel")),
    "star": (("star", "star tip"), ("pentagram", "starry tip")),
    "frosting": (("frosting", "icing"), ("buttercream", "sugar topping")),
    "icing": (("icing", "glaze", "frosting"), ("sugar coating", "buttercream")),
}
# colour name (colour_names and the metals) -> (training words, evaluation-only words); the first is the name.
COLOUR_WORDS = {
    "green": (("green", "emerald", "lime"), ("jade", "verdant")),
    "red": (("red", "crimson", "scarlet"), ("ruby", "vermilion")),
    "blue": (("blue", "cobalt", "navy"), ("sapphire", "azure")),
    "pink": (("pink", "rosy", "rose"), ("fuchsia", "bubblegum")),
    "purple": (("purple", "violet", "lilac"), ("amethyst", "plum")),
    "orange": (("orange", "tangerine"), ("pumpkin", "amber")),
    "yellow": (("yellow", "lemon", "sunny"), ("canary", "mustard")),
    "cyan": (("cyan", "turquoise", "aqua"), ("teal", "aquamarine")),
    "brown": (("brown", "chocolate"), ("chestnut", "hazel")),
    "white": (("white", "snowy", "pale"), ("ivory", "milky")),
    "black": (("black", "dark"), ("ebony", "inky")),
    "golden": (("golden", "gold"), ("gilded", "gilt")),
    "silver": (("silver", "silvery"), ("platinum", "chrome")),
    "bronze": (("bronze",), ("brassy", "copper")),
    "steel": (("steel", "metal", "grey"), ("iron", "gunmetal")),
}
# What a caption may call a sprite when it leaves the kind out, by class (SPRITE_CLASSES order).
CLASS_WORDS = (
    (("character", "hero"), ("protagonist",)),
    (("monster", "creature", "enemy"), ("foe", "baddie")),
    (("food", "snack"), ("meal", "treat")),
    (("weapon", "magic item", "spell"), ("artifact", "relic")),
    (("character seen from the side", "npc"), ("figure in profile",)),
)
ADJECTIVES = (("small", "tiny", "little", "cute", "retro", "simple"), ("wobbly", "chunky", "adorable", "shiny"))
# Frames around a noun phrase {t} ("a red apple"); {c} is a class word. Registers: terse, descriptive, designer's.
FRAMES = (
    (
        "{t}",
        "{t}",
        "{t}",
        "{t}, pixel art",
        "a picture of {t}",
        "sprite of {t}",
        "16x16 sprite: {t}",
        "game asset: {t}",
        "{c}: {t}",
        "{t} ({c} sprite)",
        "this is {t}",
        "pixel-art {c}, {t}",
    ),
    ("draw me {t}", "i'd like {t} please", "{t} for my game", "show me {t}", "imagine {t}", "make {t} now"),
)
PEOPLE_KINDS = ("hero", "traveller")
NAMED_PARTS = ("", "body", "blade")  # parts a noun phrase does not mention ("a red apple", "a green slime")
# Parts named with an article: "a staff with a blue orb", but "a cake with pink frosting".
COUNTABLE_PARTS = ("orb", "star", "star tip", "gem", "crystal", "jewel", "pentagram", "starry tip")


def _words(table, key, split: int) -> tuple[str, ...]:
    return table[key][split]


def _a(phrase: str) -> str:
    """The indefinite article, except for plurals and mass nouns of the grammar."""
    first = phrase.split(" ", 1)[0]
    if first in ("two", "cherries", "pair", "morello", "twin") or phrase.endswith("cherries"):
        return phrase
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _pick(rng: np.random.Generator, words):
    return words[int(rng.integers(len(words)))]


def noun_phrase(kind, part, colour, facing, rng: np.random.Generator, split: int = 0, name_colour=None) -> str:
    """One description of a sprite without its frame, e.g. "a crimson blob", "a knight in gold armor", "a sword".

    split 0 draws training words, 1 evaluation-only words. `name_colour` None decides at random (three in four name
    the colour); False leaves it out, True names it."""
    noun = _pick(rng, _words(KIND_WORDS, kind, split))
    if name_colour is None:
        name_colour = rng.random() < 0.75
    colour_word = _pick(rng, _words(COLOUR_WORDS, colour, split)) if name_colour else ""
    adjective = _pick(rng, ADJECTIVES[split]) + " " if rng.random() < 0.2 else ""
    if kind in PEOPLE_KINDS:
        part_word = _pick(rng, _words(PART_WORDS, part, split))
        if not colour_word:
            phrase = _a(adjective + noun)
        else:
            outfit = f"{colour_word} {part_word}"
            outfit = outfit if part == "armour" else _a(outfit)
            style = int(rng.integers(3))
            if style == 0:
                phrase = _a(f"{adjective}{noun}") + f" in {outfit}"
            elif style == 1:
                phrase = _a(f"{adjective}{noun}") + f" wearing {outfit}"
            else:
                phrase = (
                    _a(f"{adjective}{colour_word}-clad {noun}") if split == 0 else _a(noun) + f" dressed in {outfit}"
                )
        if facing and rng.random() < 0.5:
            phrase += _pick(rng, ((f" walking {facing}", f" facing {facing}"), (f" heading {facing}",))[split])
        return phrase
    if not colour_word:
        return _a(adjective + noun)
    if part in NAMED_PARTS:
        style = int(rng.integers(4))
        if style == 0 and split == 0:
            return f"{noun}, {colour_word}"  # an inventory's order
        if style == 1:
            return _a(f"{adjective}{noun}") + f" that is {colour_word}"
        return _a(f"{adjective}{colour_word} {noun}")
    part_word = _pick(rng, _words(PART_WORDS, part, split))
    detail = _a(f"{colour_word} {part_word}") if part_word in COUNTABLE_PARTS else f"{colour_word} {part_word}"
    return _a(f"{adjective}{noun}") + f" with {detail}"


def grammar_caption(label, kind, part, colour, facing, rng: np.random.Generator, split: int = 0) -> str:
    """A framed caption: a noun phrase (noun_phrase) in one of FRAMES[split]; one in ten names the class instead of
    the kind ("a red monster"), which is true too."""
    frame = _pick(rng, FRAMES[split])
    class_word = _pick(rng, CLASS_WORDS[label][split])
    if rng.random() < 0.1 and kind not in PEOPLE_KINDS:
        colour_word = _pick(rng, _words(COLOUR_WORDS, colour, split))
        phrase = _a(f"{colour_word} {class_word}")
    else:
        phrase = noun_phrase(kind, part, colour, facing, rng, split)
    return frame.format(t=phrase, c=class_word)


def _pool_rng(seed: int, key: tuple) -> np.random.Generator:
    # crc32 of the key, not hash(): Python salts string hashes per process, and the pools must match across runs.
    return np.random.default_rng([int(seed), zlib.crc32("\x1f".join(map(str, key)).encode())])


def caption_pool(label, kind, part, colour, facing, seed: int = 0, size: int = POOL_SIZE) -> list[str]:
    """The grammar captions every image of this (kind, part, colour, facing) draws from, deterministic by seed."""
    rng = _pool_rng(seed, (label, kind, part, colour, facing))
    return [grammar_caption(label, kind, part, colour, facing, rng) for _ in range(size)]


def sprite_caption_sets(labels, attributes, seed: int = 0, per_image: int = 8) -> list[list[str]]:
    """`per_image` true captions per sprite: sprite_captions' sentence first, then `per_image` - 1 drawn (with
    repeats) from its caption_pool. Deterministic by seed; N lists.

    Args:
        labels: (N,) class indices into SPRITE_CLASSES.
        attributes: generate_sprites(..., return_attributes=True)'s dict (or hand-made, as for sprite_captions).
        per_image: captions per image; 1 gives sprite_captions alone.
    """
    from .sprites import sprite_captions

    if isinstance(per_image, bool) or not isinstance(per_image, (int, np.integer)) or per_image < 1:
        raise ValueError(f"per_image must be a positive integer, got {per_image!r}.")
    labels = np.asarray(labels)
    first = sprite_captions(labels, attributes, seed=seed)
    if per_image == 1:
        return [[caption] for caption in first]
    keys = list(zip(labels.tolist(), *(np.asarray(attributes[k], dtype=object) for k in ("kind", "part", "colour"))))
    facing = np.asarray(attributes["facing"], dtype=object)
    keys = [key + (face,) for key, face in zip(keys, facing)]
    pools = {key: caption_pool(*key, seed=seed) for key in dict.fromkeys(keys)}
    picks = np.random.default_rng([int(seed), len(labels), 27]).integers(POOL_SIZE, size=(len(labels), per_image - 1))
    return [[caption] + [pools[key][j] for j in row] for caption, key, row in zip(first, keys, picks.tolist())]


_WORD = re.compile(r"[a-z0-9']+")


def caption_words(text: str) -> set[str]:
    """The lower-case words of a caption ("a one-eyed monster" -> {"a", "one", "eyed", "monster"})."""
    return set(_WORD.findall(text.lower()))


def _vocabulary(split: int) -> set[str]:
    words = set()
    for table in (KIND_WORDS, PART_WORDS, COLOUR_WORDS):
        for pair in table.values():
            words |= set().union(*(caption_words(w) for w in pair[split]))
    for group in (*CLASS_WORDS, ADJECTIVES, FRAMES):
        words |= set().union(*(caption_words(w.replace("{t}", "").replace("{c}", "")) for w in group[split]))
    return words


def held_out_words() -> set[str]:
    """Words of the evaluation-only half of the grammar that its training half never uses."""
    return _vocabulary(1) - _vocabulary(0) - {"a", "an", "in", "with", "of", "that", "is"}


def _combinations(per_kind: int = 2, seed: int = 2_000_003):
    """(label, kind, part, colour, facing) the generator draws: the `per_kind` most common colours of each kind, and
    for people the most common colour of each outfit (tunic, robe, shirt, armour)."""
    from collections import Counter

    from .sprites import generate_sprites

    _, labels, attributes = generate_sprites(5_000, seed=seed, return_attributes=True)
    keys = Counter(zip(labels.tolist(), attributes["kind"], attributes["part"], attributes["colour"]))
    chosen, count = [], Counter()
    for (label, kind, part, colour), _ in keys.most_common():
        key = (kind, part) if kind in PEOPLE_KINDS else kind
        if count[key] < (1 if kind in PEOPLE_KINDS else per_kind):
            count[key] += 1
            chosen.append((label, kind, part, colour, "left" if kind == "traveller" else ""))
    return chosen


def plain_prompts(per_kind: int = 2) -> list[tuple[str, str, str, str]]:
    """Short prompts as typed, in training words: per kind "a sword" (kind alone: colour not scored) and `per_kind`
    "a red apple" / "a knight in gold armor" / "a staff with a green gem" ones. Rows (prompt, class, kind, colour)."""
    from .sprites import SPRITE_CLASSES

    rows, seen = [], set()
    for label, kind, part, colour, _ in _combinations(per_kind):
        noun = KIND_WORDS[kind][0][0]
        if kind not in seen:
            seen.add(kind)
            rows.append((_a(noun), SPRITE_CLASSES[label], kind, ""))
        colour_word = "gold" if colour == "golden" else COLOUR_WORDS[colour][0][0]  # as typed: "gold armor"
        if kind in PEOPLE_KINDS:
            part_word = "armor" if part == "armour" else PART_WORDS[part][0][0]  # "a knight in gold armor"
            outfit = f"{colour_word} {part_word}" if part == "armour" else _a(f"{colour_word} {part_word}")
            prompt = f"a {'knight' if part == 'armour' and kind == 'hero' else noun} in {outfit}"
        elif part in NAMED_PARTS:
            prompt = _a(f"{colour_word} {noun}")
        else:
            part_word = PART_WORDS[part][0][0]
            detail = _a(f"{colour_word} {part_word}") if part_word in COUNTABLE_PARTS else f"{colour_word} {part_word}"
            prompt = _a(noun) + f" with {detail}"
        rows.append((prompt, SPRITE_CLASSES[label], kind, colour))
    return rows


def unseen_word_prompts(per_kind: int = 2, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """Prompts in the evaluation-only words and frames: per kind one naming the kind alone ("draw me a sabre") and
    `per_kind` naming kind and colour ("a jade ooze for my game"). Rows (prompt, class, kind, colour)."""
    from .sprites import SPRITE_CLASSES

    rng = np.random.default_rng([int(seed), 2_700])
    rows, seen = [], set()
    for label, kind, part, colour, facing in _combinations(per_kind):
        frame = _pick(rng, FRAMES[1])
        if kind not in seen:
            seen.add(kind)
            phrase = noun_phrase(kind, part, colour, facing, rng, split=1, name_colour=False)
            rows.append((frame.format(t=phrase), SPRITE_CLASSES[label], kind, ""))
        phrase = noun_phrase(kind, part, colour, facing, rng, split=1, name_colour=True)
        rows.append((frame.format(t=phrase), SPRITE_CLASSES[label], kind, colour))
    return rows
