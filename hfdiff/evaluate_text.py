"""Does a text model follow its prompt? Offline: the sprite classifier checks the class, an attribute probe (a small
multi-head CNN trained on the generator's ground truth) checks the kind and the colour the prompt names.

    from hfdiff import evaluate as ev, evaluate_text as et

    probe, accuracy = et.train_attribute_classifier_on_sprites()           # ~1 min on a CPU; held-out accuracy too
    et.save_attribute_classifier(probe, "sprite-text-model/attribute_classifier")
    metrics = et.evaluate_text_pipeline(pipe, classifier, probe, guidance_scales=(1.0, 3.0),
                                        held_out=[{"kind": "slime", "colour": "purple"}])
    print(et.text_report_markdown(metrics))

Five prompt sets, each sampled at every guidance scale from the same seed:
- "prompts": generator captions (sprite_captions of a seed training never uses), `prompts_per_class` per class: the
  training phrasing. Class accuracy (sprite classifier) and named-attribute accuracy (probe: kind and colour of the
  captioned part).
- "held_out": captions of hand-made attributes for combinations the training run left out (e.g. purple slimes).
- "plain": short prompts as people type them, in words training uses (caption_grammar.plain_prompts): each kind
  alone ("a sword", kind scored, colour not) and with a colour ("a red apple", "a knight in gold armor").
- "unseen_words": the same shapes in the grammar's evaluation-only nouns, colour words and frames
  (caption_grammar.unseen_word_prompts, "a jade ooze for my game"): words no training caption contains.
- "paraphrases": PARAPHRASES, wordings outside sprite_captions' templates ("a small emerald blob"); the caption grammar
  trains on some of their words, so "unseen_words" is the held-out measure and this row stays for comparison.
"all named" is the share of images whose class, kind and colour all match the prompt. A probe that is itself wrong
on x% of real sprites cannot measure beyond 100 - x%: its held-out accuracy is reported beside the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hfdiff.evaluate import HELDOUT_SEED, _to_uint8, conv_body, fit, read_module, save_module, to_model_input

ATTRIBUTE_CLASSIFIER_WEIGHTS = "attribute_classifier.safetensors"
ATTRIBUTE_CLASSIFIER_CONFIG = "attribute_classifier_config.json"
PROBE_HEADS = ("class", "kind", "colour")  # what the probe predicts; "colour" is that of the captioned part
PIXEL_COLOURS = (
    "black",
    "blue",
    "brown",
    "cyan",
    "green",
    "grey",
    "orange",
    "pink",
    "purple",
    "red",
    "white",
    "yellow",
)
PROMPT_SEED = 2_000_003  # seed of the attribute sets behind the "prompts" set (training uses small seeds)

# Wordings the caption templates never use -> what the sprite must show (class, kind, colour of the captioned part).
PARAPHRASES = (
    ("a small emerald blob", "non-hero", "slime", "green"),
    ("a crimson bat flapping its wings", "non-hero", "bat", "red"),
    ("a spooky pale ghost", "non-hero", "ghost", "white"),
    ("a one-eyed beast the colour of cobalt", "non-hero", "cyclops", "blue"),
    ("a ripe scarlet apple", "food", "apple", "red"),
    ("a crunchy carrot to snack on", "food", "carrot", "orange"),
    ("a birthday cake topped with rosy frosting", "food", "cake", "pink"),
    ("a gleaming steel sword", "spell/weapon", "sword", "steel"),
    ("a flask of violet elixir", "spell/weapon", "potion", "purple"),
    ("a ball of azure flame", "spell/weapon", "fireball", "blue"),
    ("a brave adventurer facing us in a scarlet tunic", "hero", "hero", "red"),
    ("a wanderer shown in profile wearing a lime robe", "side-facing", "traveller", "green"),
)


# ----------------------------------------------------------------------------------------------------------------
# The attribute probe
# ----------------------------------------------------------------------------------------------------------------


class AttributeClassifier(nn.Module):
    """SpriteClassifier's trunk with one head per attribute: (B, C, H, W) in [-1, 1] -> {head: logits (B, K_head)}.

    `heads` maps each head ("class", "kind", "colour") to its label names, in logit order."""

    def __init__(
        self,
        heads: Mapping[str, Sequence[str]],  # head name -> its label names
        image_size: int = 16,  # height and width of the images it was trained on
        in_channels: int = 3,  # image channels
        feature_dim: int = 64,  # width of the shared trunk's output
    ):
        super().__init__()
        self.config = {
            "heads": {name: list(labels) for name, labels in heads.items()},
            "image_size": image_size,
            "in_channels": in_channels,
            "feature_dim": feature_dim,
        }
        self.body = conv_body(in_channels + len(PIXEL_COLOURS), feature_dim)
        self.heads = nn.ModuleDict(
            {name: nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, len(labels))) for name, labels in heads.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size, channels = self.config["image_size"], self.config["in_channels"]
        if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != (size, size):
            raise ValueError(
                f"The attribute classifier takes (B, {channels}, {size}, {size}) images but got {tuple(x.shape)}; "
                "evaluate a model of the same image size."
            )
        features = self.body(torch.cat([x, pixel_colour_names(x)], dim=1))
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 500) -> dict[str, np.ndarray]:
        """(N, H, W, C) uint8 images -> {head: (N,) object array of predicted label names}."""
        self.eval()
        device = next(self.parameters()).device
        found = {name: [] for name in self.heads}
        for start in range(0, len(images), batch_size):
            logits = self(to_model_input(images[start : start + batch_size]).to(device))
            for name, value in logits.items():
                found[name].append(value.argmax(dim=1).cpu())
        return {
            name: np.asarray(self.config["heads"][name], dtype=object)[torch.cat(found[name]).numpy()]
            for name in self.heads
        }


def pixel_colour_names(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, len(PIXEL_COLOURS), H, W) one-hot colour name of every pixel (colour_names).

    Colour names have hard hue boundaries that a small CNN learns only approximately from RGB; given each pixel's name, it only has to find the captioned part, and names it as the captions do."""
    from hfdiff.data import colour_names

    rgb = np.rint((x.detach().float().permute(0, 2, 3, 1).cpu().numpy() + 1.0) * 127.5)  # the uint8 values
    index = np.searchsorted(np.asarray(PIXEL_COLOURS, dtype=object), colour_names(rgb))
    one_hot = nn.functional.one_hot(torch.from_numpy(index), len(PIXEL_COLOURS))  # (B, H, W, V)
    return one_hot.permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)


def attribute_targets(labels: np.ndarray, attributes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """generate_sprites' labels and attributes -> {head: (N,) object array of names} for PROBE_HEADS."""
    from hfdiff.data import SPRITE_CLASSES

    return {
        "class": np.asarray(SPRITE_CLASSES, dtype=object)[np.asarray(labels)],
        "kind": np.asarray(attributes["kind"], dtype=object),
        "colour": np.asarray(attributes["colour"], dtype=object),
    }


def train_attribute_classifier(
    images: np.ndarray,
    targets: Mapping[str, np.ndarray],
    epochs: int = 4,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> AttributeClassifier:
    """Train an AttributeClassifier on (N, H, W, C) uint8 images and {head: (N,) names}; the loss is the sum of the
    heads' cross-entropies. Each head's labels are the sorted distinct names in its targets."""
    heads = {name: sorted(set(np.asarray(values).tolist())) for name, values in targets.items()}
    short = [name for name, values in targets.items() if len(values) != len(images)]
    if short:
        raise ValueError(f"targets {short} do not hold one name per image ({len(images)}); give one each.")
    torch.manual_seed(seed)
    model = AttributeClassifier(heads, image_size=images.shape[1], in_channels=images.shape[3]).to(device)
    indices = {
        name: torch.from_numpy(np.searchsorted(np.asarray(labels, dtype=object), np.asarray(targets[name]))).to(device)
        for name, labels in heads.items()
    }

    def loss_fn(logits, index):
        return sum(nn.functional.cross_entropy(logits[name], indices[name][index]) for name in heads)

    return fit(model, images, loss_fn, epochs, batch_size, learning_rate, seed, progress, desc="attribute probe")


def attribute_accuracy(predicted: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> dict[str, float]:
    """{head: share of images whose predicted name equals the target}, over the heads both have; "" targets (an
    attribute the prompt does not name) are left out; NaN when a head has no named target."""
    result = {}
    for name in predicted:
        if name in targets:
            target = np.asarray(targets[name], dtype=object)
            named = target != ""
            result[name] = float((predicted[name][named] == target[named]).mean()) if named.any() else float("nan")
    return result


def train_attribute_classifier_on_sprites(
    num_train: int = 20_000, num_heldout: int = 5_000, epochs: int = 4, device="cpu", progress: bool = True
) -> tuple[AttributeClassifier, dict[str, float]]:
    """A probe trained on `num_train` procedural sprites (seed 0), with its accuracy per head on `num_heldout`
    others (HELDOUT_SEED). 20,000 sprites x 4 epochs take about a minute on one CPU core."""
    from hfdiff.data import generate_sprites

    images, labels, attributes = generate_sprites(num_train, seed=0, return_attributes=True)
    probe = train_attribute_classifier(
        images, attribute_targets(labels, attributes), epochs=epochs, device=device, progress=progress
    )
    images, labels, attributes = generate_sprites(num_heldout, seed=HELDOUT_SEED, return_attributes=True)
    return probe, attribute_accuracy(probe.predict(images), attribute_targets(labels, attributes))


def save_attribute_classifier(model: AttributeClassifier, folder, trained_on: str = "", accuracy=None) -> None:
    """`folder`/attribute_classifier.safetensors + attribute_classifier_config.json (heads, input size, data, and
    the held-out accuracy per head when given)."""
    config = {**model.config, "trained_on": trained_on, "heldout_accuracy": dict(accuracy or {})}
    save_module(model, folder, ATTRIBUTE_CLASSIFIER_WEIGHTS, ATTRIBUTE_CLASSIFIER_CONFIG, config)


def load_attribute_classifier(folder, device="cpu") -> tuple[AttributeClassifier, dict[str, float]]:
    """(probe, its stored held-out accuracy per head) from save_attribute_classifier's folder; safetensors only."""
    config, state = read_module(
        folder, ATTRIBUTE_CLASSIFIER_WEIGHTS, ATTRIBUTE_CLASSIFIER_CONFIG, "hfdiff train-classifier --attributes"
    )
    config.pop("trained_on", None)
    accuracy = config.pop("heldout_accuracy", {})
    model = AttributeClassifier(**config)
    model.load_state_dict(state)
    return model.to(device).eval(), accuracy


# ----------------------------------------------------------------------------------------------------------------
# Prompt sets
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PromptSet:
    """Prompts and what each one asks for: expected[head] (len(prompts),) names, "" where the prompt names none."""

    name: str
    prompts: list[str]
    expected: dict[str, np.ndarray]


def parse_combination(text: str | Mapping[str, str]) -> dict[str, str]:
    """ "kind=slime,colour=purple" (or a dict) -> {"kind": "slime", "colour": "purple"}; keys of SPRITE_ATTRIBUTES."""
    from hfdiff.data import SPRITE_ATTRIBUTES

    if isinstance(text, Mapping):
        combination = {str(key): str(value) for key, value in text.items()}
    else:
        pairs = [item.split("=", 1) for item in str(text).split(",") if item.strip()]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"A held-out combination is KEY=VALUE[,KEY=VALUE], e.g. kind=slime,colour=purple; "
                             f"got {text!r}.")  # fmt: skip
        combination = {key.strip(): value.strip() for key, value in pairs}
    unknown = [key for key in combination if key not in SPRITE_ATTRIBUTES or key == "colour_rgb"]
    if unknown:
        keys = [key for key in SPRITE_ATTRIBUTES if key != "colour_rgb"]
        raise ValueError(f"Held-out combination {combination} has unknown keys {unknown}; use keys of {keys}.")
    return combination


def _matches(attributes: Mapping[str, np.ndarray], combination: Mapping[str, str]) -> np.ndarray:
    rows = np.ones(len(attributes["kind"]), dtype=bool)
    for key, value in combination.items():
        rows &= np.asarray(attributes[key], dtype=object) == value
    return rows


def _attribute_pool(size: int = 5_000):
    from hfdiff.data import generate_sprites

    _, labels, attributes = generate_sprites(size, seed=PROMPT_SEED, return_attributes=True)
    attributes.pop("colour_rgb")
    return labels, attributes


def caption_prompts(prompts_per_class: int = 20, held_out: Sequence[Mapping[str, str]] = ()) -> PromptSet:
    """`prompts_per_class` generator captions per class, of attribute sets that match no held-out combination."""
    from hfdiff.data import SPRITE_CLASSES, sprite_captions

    labels, attributes = _attribute_pool(max(5_000, 10 * prompts_per_class * len(SPRITE_CLASSES)))
    allowed = np.ones(len(labels), dtype=bool)
    for combination in held_out:
        allowed &= ~_matches(attributes, combination)
    rows = np.concatenate(
        [np.flatnonzero((labels == k) & allowed)[:prompts_per_class] for k in range(len(SPRITE_CLASSES))]
    )
    chosen = {key: value[rows] for key, value in attributes.items()}
    prompts = sprite_captions(labels[rows], chosen, seed=PROMPT_SEED)
    return PromptSet("prompts", prompts, attribute_targets(labels[rows], chosen))


def held_out_prompts(held_out: Sequence[Mapping[str, str]], per_combination: int = 20) -> PromptSet:
    """Captions for each held-out combination: generator attribute sets that agree with it on every key but
    "colour", given the combination's values (e.g. slimes made purple), captioned by sprite_captions."""
    from hfdiff.data import sprite_captions

    labels, attributes = _attribute_pool()
    rows, made = [], {key: [] for key in attributes}
    for combination in held_out:
        found = np.flatnonzero(_matches(attributes, {k: v for k, v in combination.items() if k != "colour"}))
        if not len(found):
            raise ValueError(f"No generated sprite has {combination} apart from its colour; check the spelling "
                             "against generate_sprites(..., return_attributes=True).")  # fmt: skip
        found = found[:per_combination]
        rows.append(found)
        for key, value in attributes.items():
            made[key].append(np.where(key in combination, combination.get(key, ""), value[found]).astype(object))
    if not rows:
        return PromptSet("held_out", [], {head: np.array([], dtype=object) for head in PROBE_HEADS})
    rows = np.concatenate(rows)
    made = {key: np.concatenate(parts) for key, parts in made.items()}
    return PromptSet(
        "held_out", sprite_captions(labels[rows], made, seed=PROMPT_SEED), attribute_targets(labels[rows], made)
    )


def paraphrase_prompts(
    paraphrases: Sequence[tuple[str, str, str, str]] = PARAPHRASES, name: str = "paraphrases"
) -> PromptSet:
    """PromptSet of (prompt, class, kind, colour) rows such as PARAPHRASES; "" where a prompt names no colour."""
    columns = list(zip(*paraphrases)) if paraphrases else [[], [], [], []]
    expected = {head: np.asarray(column, dtype=object) for head, column in zip(PROBE_HEADS, columns[1:])}
    return PromptSet(name, list(columns[0]), expected)


def plain_prompt_set(per_kind: int = 2) -> PromptSet:
    """Short prompts in training words, every kind alone and with `per_kind` colours (caption_grammar.plain_prompts)."""
    from hfdiff.data.caption_grammar import plain_prompts

    return paraphrase_prompts(plain_prompts(per_kind), name="plain")


def unseen_word_prompt_set(per_kind: int = 2) -> PromptSet:
    """Prompts in words no training caption contains (caption_grammar.unseen_word_prompts)."""
    from hfdiff.data.caption_grammar import unseen_word_prompts

    return paraphrase_prompts(unseen_word_prompts(per_kind), name="unseen_words")


# ----------------------------------------------------------------------------------------------------------------
# Generating and scoring
# ----------------------------------------------------------------------------------------------------------------


def generate_from_prompts(
    pipe,
    prompts: Sequence[str],
    images_per_prompt: int = 5,
    guidance_scale: float | None = None,
    batch_size: int = 250,
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> np.ndarray:
    """`images_per_prompt` images of each prompt, in prompt order: (len(prompts) * images_per_prompt, H, W, C)
    uint8, as a saved PNG holds them. Prompts go to the pipeline in batches of about `batch_size` images."""
    per_call = max(1, batch_size // images_per_prompt)
    pipe.set_progress_bar_config(disable=True)
    chunks = []
    for start in tqdm(range(0, len(prompts), per_call), desc="sampling", disable=not progress, leave=False):
        images = pipe(
            prompt=list(prompts[start : start + per_call]),
            num_images_per_prompt=images_per_prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="np",
        ).images
        chunks.append(_to_uint8(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, 16, 16, 3), dtype=np.uint8)


def score_prompt_set(images: np.ndarray, prompt_set: PromptSet, images_per_prompt: int, classifier, probe) -> dict:
    """Accuracy of images generated for `prompt_set` (images_per_prompt per prompt, in order): "class" by the
    sprite classifier, "kind" and "colour" by the probe, "all named" (each named attribute right), per prompt too."""
    expected = {head: np.repeat(values, images_per_prompt) for head, values in prompt_set.expected.items()}
    if not len(images):
        return {"images": 0, "class": float("nan"), "kind": float("nan"), "colour": float("nan"),
                "all named": float("nan"), "per_prompt": {}}  # fmt: skip
    predicted = probe.predict(images)
    labels, _ = classifier.predict(images)
    predicted["class"] = np.asarray(classifier.class_names, dtype=object)[labels]
    right = np.stack([(predicted[h] == expected[h]) | (expected[h] == "") for h in PROBE_HEADS])  # (3, N)
    scores = {"images": int(len(images)), **attribute_accuracy(predicted, expected)}
    scores["all named"] = float(right.all(axis=0).mean())
    per_prompt = right.all(axis=0).reshape(len(prompt_set.prompts), images_per_prompt).mean(axis=1)
    scores["per_prompt"] = dict(zip(prompt_set.prompts, per_prompt.tolist()))
    # By the class each prompt asks for: where the misses are (heroes' several colours, say), not only how many.
    scores["per_class"] = {}
    for name in dict.fromkeys(prompt_set.expected["class"].tolist()):
        mine = expected["class"] == name
        by_class = {"images": int(mine.sum()), "all named": float(right[:, mine].all(axis=0).mean())}
        colour = attribute_accuracy({"colour": predicted["colour"][mine]}, {"colour": expected["colour"][mine]})
        scores["per_class"][name] = {**by_class, **colour}
    return scores


def evaluate_text_pipeline(
    pipe,
    classifier,
    probe: AttributeClassifier,
    guidance_scales: Sequence[float] = (1.0, 3.0),
    prompts_per_class: int = 20,
    images_per_prompt: int = 5,
    held_out: Sequence[str | Mapping[str, str]] = (),
    per_held_out: int = 20,
    colours_per_kind: int = 2,
    batch_size: int = 250,
    num_inference_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Sample every prompt set at every guidance scale (each from torch.Generator("cpu").manual_seed(seed)) and
    score it. The "plain" and "unseen_words" sets ask for every kind alone and with `colours_per_kind` colours.
    Returns {"guidance": [{"guidance_scale", "prompts", "held_out", "paraphrases"} of score_prompt_set
    dicts for each of "prompts", "held_out", "plain", "unseen_words" and "paraphrases"], "held_out_combinations",
    "images_per_prompt", "probe_heads"}."""
    if getattr(pipe, "text_encoder", None) is None:
        raise ValueError("evaluate_text_pipeline needs a text model (pipe.text_encoder is None); use "
                         "hfdiff.evaluate.evaluate_pipeline for class-conditional models.")  # fmt: skip
    combinations = [parse_combination(c) for c in held_out]
    _check_probe_knows(probe, combinations)
    sets = [
        caption_prompts(prompts_per_class, combinations),
        held_out_prompts(combinations, per_held_out),
        plain_prompt_set(colours_per_kind),
        unseen_word_prompt_set(colours_per_kind),
        paraphrase_prompts(),
    ]
    rows = []
    for scale in guidance_scales:
        row = {"guidance_scale": float(scale)}
        for prompt_set in sets:
            images = generate_from_prompts(
                pipe,
                prompt_set.prompts,
                images_per_prompt,
                guidance_scale=float(scale),
                batch_size=batch_size,
                num_inference_steps=num_inference_steps,
                generator=torch.Generator("cpu").manual_seed(seed),
                progress=progress,
            )
            row[prompt_set.name] = score_prompt_set(images, prompt_set, images_per_prompt, classifier, probe)
        rows.append(row)
    return {
        "guidance": rows,
        "held_out_combinations": combinations,
        "images_per_prompt": images_per_prompt,
        "probe_heads": {head: len(labels) for head, labels in probe.config["heads"].items()},
    }


def _check_probe_knows(probe: AttributeClassifier, combinations: Sequence[Mapping[str, str]]) -> None:
    """A held-out kind or colour the probe has no label for could never be scored right: say so up front."""
    for combination in combinations:
        for head in ("kind", "colour"):
            known = probe.config["heads"].get(head, [])
            if head in combination and combination[head] not in known:
                raise ValueError(
                    f"Held-out combination {combination} asks for {head} {combination[head]!r}, which the attribute "
                    f"classifier does not know; use one of {known}."
                )


def text_report_markdown(metrics: dict, probe_accuracy: Mapping[str, float] | None = None) -> str:
    """A markdown table of evaluate_text_pipeline's result: a row per (prompt set, guidance scale)."""
    lines = [
        "| prompts | guidance | images | class | kind | colour | all named |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {
        "prompts": "captions (training phrasing)",
        "plain": "plain short prompts",
        "unseen_words": "words no caption uses",
        "held_out": "held-out combinations",
        "paraphrases": "paraphrases",
    }
    for name, title in titles.items():
        for row in metrics["guidance"]:
            if name not in row:  # metrics written before a prompt set existed
                continue
            s = row[name]
            cells = " | ".join(_percent(s[key]) for key in ("class", "kind", "colour", "all named"))
            lines.append(f"| {title} | {row['guidance_scale']:g} | {s['images']} | {cells} |")
    for row in metrics["guidance"]:
        per_class = row["prompts"].get("per_class", {})
        shown = ", ".join(
            f"{name} {_percent(s['colour'])} / {_percent(s['all named'])}" for name, s in per_class.items()
        )
        if shown:
            lines += ["", f"Captions at guidance {row['guidance_scale']:g}, colour / all named by class: {shown}."]
    combinations = ", ".join(",".join(f"{k}={v}" for k, v in c.items()) for c in metrics["held_out_combinations"])
    lines += ["", f"{metrics['images_per_prompt']} images per prompt. Held out: {combinations or 'none'}."]
    if probe_accuracy:
        shown = ", ".join(f"{head} {value:.1%}" for head, value in probe_accuracy.items())
        lines.append(f"Attribute classifier on held-out real sprites: {shown} (the ceiling of what it can measure).")
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"  # NaN: a set without images, or a head nothing names
