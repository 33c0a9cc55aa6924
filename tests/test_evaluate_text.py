"""hfdiff.evaluate_text: the attribute probe and the "does it follow the text?" evaluation on a tiny text pipeline."""

import json

import numpy as np
import pytest
import torch
from test_text import save_tiny_bert
from tiny import T, tiny_unet

from hfdiff import SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff import evaluate as ev
from hfdiff import evaluate_text as et
from hfdiff.data import SPRITE_CLASSES, generate_sprites, sprite_captions
from hfdiff.text import load_text_encoder


def make_text_pipe(folder) -> SpriteDiffusionPipeline:
    tokenizer, encoder = load_text_encoder(save_tiny_bert(folder))
    unet = tiny_unet(context_dim=32)
    pipe = SpriteDiffusionPipeline(
        unet=unet, scheduler=SpriteDDPMScheduler(num_train_timesteps=T), text_encoder=encoder, tokenizer=tokenizer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def probe():
    """hfdiff evaluate's recipe on half its data (10,000 sprites, 4 epochs; ~20 s), with its held-out accuracy."""
    return et.train_attribute_classifier_on_sprites(num_train=10_000, num_heldout=2_000, progress=False)


@pytest.fixture(scope="module")
def classifier():
    images, labels = generate_sprites(2_000, seed=0)
    return ev.train_classifier(images, labels, SPRITE_CLASSES, epochs=2, progress=False)


def test_probe_measures_real_sprites_well(probe):
    # What makes the metric trustworthy: on real, held-out sprites the probe names class, kind and the captioned
    # part's colour almost always (the full recipe: class 100%, kind 99.98%, colour 98.2% on 5,000).
    model, accuracy = probe
    assert set(accuracy) == set(et.PROBE_HEADS)
    assert accuracy["class"] > 0.98 and accuracy["kind"] > 0.97 and accuracy["colour"] > 0.93, accuracy
    assert {"green", "purple", "steel", "golden"} <= set(model.config["heads"]["colour"])
    assert {"slime", "bat", "apple", "sword", "hero", "traveller"} <= set(model.config["heads"]["kind"])


def test_probe_save_load_round_trip(probe, tmp_path):
    model, accuracy = probe
    et.save_attribute_classifier(model, tmp_path, trained_on="10000 sprites", accuracy=accuracy)
    expected = sorted([et.ATTRIBUTE_CLASSIFIER_WEIGHTS, et.ATTRIBUTE_CLASSIFIER_CONFIG])
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    assert json.loads((tmp_path / et.ATTRIBUTE_CLASSIFIER_CONFIG).read_text())["trained_on"] == "10000 sprites"
    loaded, stored = et.load_attribute_classifier(tmp_path)
    assert stored == accuracy
    images, _ = generate_sprites(50, seed=5)
    x = ev.to_model_input(images)
    with torch.no_grad():
        for head, logits in model(x).items():
            torch.testing.assert_close(loaded(x)[head], logits, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="--attributes"):
        et.load_attribute_classifier(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.zeros(1, 3, 32, 32))


def test_attribute_accuracy_skips_unnamed_attributes():
    predicted = {"kind": np.array(["slime", "bat", "bat"], dtype=object)}
    targets = {"kind": np.array(["slime", "slime", ""], dtype=object)}
    assert et.attribute_accuracy(predicted, targets) == {"kind": 0.5}


def test_prompt_sets():
    held_out = [et.parse_combination("kind=slime,colour=purple")]
    captions = et.caption_prompts(prompts_per_class=4, held_out=held_out)
    assert len(captions.prompts) == 20 and sorted(set(captions.expected["class"])) == sorted(SPRITE_CLASSES)
    assert not any(
        (k == "slime") & (c == "purple") for k, c in zip(captions.expected["kind"], captions.expected["colour"])
    )
    held = et.held_out_prompts(held_out, per_combination=3)
    assert len(held.prompts) == 3 and all("purple slime" in prompt for prompt in held.prompts), held.prompts
    assert set(held.expected["class"]) == {"non-hero"} and set(held.expected["colour"]) == {"purple"}
    paraphrases = et.paraphrase_prompts()
    # a paraphrase is a wording no template gives: none equals a generator caption of its own attributes
    _, labels, attributes = generate_sprites(3_000, seed=0, return_attributes=True)
    assert not set(paraphrases.prompts) & set(sprite_captions(labels, attributes))
    assert set(paraphrases.expected["class"]) == set(SPRITE_CLASSES)
    for prompt_set in (et.plain_prompt_set(), et.unseen_word_prompt_set()):
        assert set(prompt_set.expected["class"]) == set(SPRITE_CLASSES)
        kind_alone = prompt_set.expected["colour"] == ""  # "a sword": the kind is scored, the colour is not
        assert 0 < kind_alone.sum() < len(prompt_set.prompts)
        assert set(prompt_set.expected["colour"][~kind_alone]) <= set(probe_colours := et.PIXEL_COLOURS) | {
            "golden",
            "silver",
            "bronze",
            "steel",
        }, probe_colours


@pytest.mark.parametrize(
    "text, match",
    [("kind:slime", "KEY=VALUE"), ("flavour=lime", "unknown keys"), ("kind=dragon,colour=red", "No generated")],
)
def test_bad_held_out_combinations(text, match):
    with pytest.raises(ValueError, match=match):
        et.held_out_prompts([et.parse_combination(text)])


def test_text_evaluation_on_a_tiny_text_pipeline(tmp_path, classifier, probe):
    pipe = make_text_pipe(tmp_path / "bert")
    metrics = et.evaluate_text_pipeline(
        pipe,
        classifier,
        probe[0],
        guidance_scales=(1.0, 3.0),
        prompts_per_class=2,
        images_per_prompt=2,
        held_out=["kind=slime,colour=purple", {"kind": "sword", "colour": "golden"}],
        per_held_out=2,
        colours_per_kind=1,
        batch_size=16,
        progress=False,
    )
    assert [row["guidance_scale"] for row in metrics["guidance"]] == [1.0, 3.0]
    assert metrics["held_out_combinations"][1] == {"kind": "sword", "colour": "golden"}
    for row in metrics["guidance"]:
        assert row["prompts"]["images"] == 2 * 5 * 2 and row["held_out"]["images"] == 2 * 2 * 2
        assert row["paraphrases"]["images"] == 2 * len(et.PARAPHRASES)
        assert row["plain"]["images"] == 2 * len(et.plain_prompt_set(1).prompts)
        assert row["unseen_words"]["images"] == 2 * len(et.unseen_word_prompt_set(1).prompts)
        for name in ("prompts", "held_out", "plain", "unseen_words", "paraphrases"):
            for key in ("class", "kind", "colour", "all named"):
                assert 0.0 <= row[name][key] <= 1.0, (name, key, row[name][key])
            assert row[name]["all named"] <= min(row[name][k] for k in ("class", "kind"))
            if name in ("prompts", "held_out", "paraphrases"):  # every prompt names a colour
                assert row[name]["all named"] <= row[name]["colour"]
    assert "a small emerald blob" in metrics["guidance"][0]["paraphrases"]["per_prompt"]
    per_class = metrics["guidance"][0]["prompts"]["per_class"]  # the same images, split by the class asked for
    assert list(per_class) == list(SPRITE_CLASSES) and all(s["images"] == 2 * 2 for s in per_class.values())
    all_named = metrics["guidance"][0]["prompts"]["all named"]
    assert np.isclose(np.mean([s["all named"] for s in per_class.values()]), all_named)
    table = et.text_report_markdown(metrics, probe_accuracy=probe[1])
    assert table.count("| held-out combinations |") == 2 and "kind=slime,colour=purple" in table
    for title in ("captions (training phrasing)", "plain short prompts", "words no caption uses", "paraphrases"):
        assert table.count(f"| {title} |") == 2, title
    assert "a sword" in metrics["guidance"][0]["plain"]["per_prompt"]
    assert "Attribute classifier on held-out real sprites" in table
    assert "Captions at guidance 3, colour / all named by class: hero " in table
    json.dumps(metrics)  # the CLI writes it as JSON


def test_text_evaluation_refuses_class_models_and_unknown_colours(tmp_path, classifier, probe):
    from tiny import make_pipe

    with pytest.raises(ValueError, match="text model"):
        et.evaluate_text_pipeline(make_pipe(), classifier, probe[0])
    with pytest.raises(ValueError, match="does not know"):
        et.evaluate_text_pipeline(make_text_pipe(tmp_path), classifier, probe[0], held_out=["kind=slime,colour=teal"])
