"""train_conditional.py --conditioning text: captions from each source, the caption table and its gather, --holdout,
a tiny text run end to end (saved pipeline samples from prompts), exact resume, and resumes across conditionings
refused. A tiny random BERT (tests/test_text.py) stands in for MiniLM."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from test_text import save_tiny_bert
from test_training import TINY_RUN

from hfdiff import SpriteDiffusionPipeline
from hfdiff.data import SPRITE_CLASSES, generate_sprites, sprite_captions
from hfdiff.text import encode_text
from hfdiff.training import TrainingConfig, parse_config, resolve_defaults, train
from hfdiff.training.config import TEXT_CONTEXT_MLP_DIM
from hfdiff.training.context import build_contexts
from hfdiff.training.data import load_training_data
from hfdiff.training.step import get_batch


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT whose vocabulary holds the words of 64 sprites' captions, so that captions differ as vectors."""
    _, labels, attributes = generate_sprites(64, seed=0, return_attributes=True)
    words = sorted(
        {word for caption in sprite_captions(labels, attributes) for word in caption.replace(",", " ").split()}
    )
    return str(save_tiny_bert(tmp_path_factory.mktemp("bert"), vocab_words=words, max_positions=64))


def text_config(bert, output_dir, *flags):
    return parse_config(
        [*TINY_RUN, "--output_dir", str(output_dir), "--conditioning", "text", "--text_encoder_name_or_path", bert]
        + ["--num_cpu_threads", "1", "--mixed_precision", "no", *flags]
    )


# ---- captions from each source


def test_embedded_sprites_carry_their_generated_captions():
    data = load_training_data(TrainingConfig(num_train_images=30, conditioning="text", seed=3), conditional=True)
    images, labels, attributes = generate_sprites(30, seed=3, return_attributes=True)
    assert data.captions == sprite_captions(labels, attributes, seed=3)
    assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert load_training_data(TrainingConfig(num_train_images=30), conditional=True).captions is None  # class runs


def write_captioned_folder(folder, metadata_rows):
    """Solid-colour 16x16 PNGs named <colour>.png; metadata.jsonl rows as given."""
    folder.mkdir()
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for name, rgb in colours.items():
        PIL.Image.new("RGB", (16, 16), rgb).save(folder / f"{name}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metadata_rows))
    return colours


@pytest.mark.parametrize("column", ["text", "caption"])
def test_image_folder_captions_from_metadata_jsonl(tmp_path, column):
    rows = [{"file_name": f"{name}.png", column: f"a {name} square"} for name in ("red", "green", "blue")]
    colours = write_captioned_folder(tmp_path / "folder", rows)
    config = TrainingConfig(train_data_dir=str(tmp_path / "folder"), conditioning="text", caption_column=column)
    data = load_training_data(config, conditional=True)
    assert len(data.captions) == 3 and data.labels is None
    for image, caption in zip(data.images, data.captions):  # each caption stays with its own image
        name = caption.split()[1]
        assert tuple(image[:, 0, 0].tolist()) == colours[name]


def test_empty_or_missing_caption_column_is_refused(tmp_path):
    write_captioned_folder(
        tmp_path / "empty", [{"file_name": f"{n}.png", "text": ""} for n in ("red", "green", "blue")]
    )
    with pytest.raises(ValueError, match="'text' of --train_data_dir .* is empty.*\\['image', 'text'\\]"):
        load_training_data(TrainingConfig(train_data_dir=str(tmp_path / "empty"), conditioning="text"), True)
    write_captioned_folder(
        tmp_path / "other", [{"file_name": f"{n}.png", "words": n} for n in ("red", "green", "blue")]
    )
    with pytest.raises(ValueError, match="--caption_column 'text' is not a column .*\\['image', 'words'\\]"):
        load_training_data(TrainingConfig(train_data_dir=str(tmp_path / "other"), conditioning="text"), True)


def test_dataset_caption_column(tmp_path):
    import datasets

    images = [PIL.Image.new("RGB", (16, 16), (10 * i, 0, 0)) for i in range(4)]
    texts = ["one", "two", "three", "four"]
    datasets.Dataset.from_dict({"img": images, "sentence": texts}).save_to_disk(str(tmp_path / "d"))
    config = TrainingConfig(dataset_name=str(tmp_path / "d"), image_column="img", conditioning="text")
    with pytest.raises(ValueError, match="'text' is not a column .*\\['img', 'sentence'\\]"):
        load_training_data(config, conditional=True)
    config = TrainingConfig(
        dataset_name=str(tmp_path / "d"), image_column="img", conditioning="text", caption_column="sentence"
    )
    assert load_training_data(config, conditional=True).captions == texts
    # A missing (None) or blank caption is a gap in the data: refused in one line that names the rows.
    texts = ["one", None, "three", "  ", *["x"] * 8, *[""] * 12]
    images = [PIL.Image.new("RGB", (16, 16), (i, 0, 0)) for i in range(len(texts))]
    datasets.Dataset.from_dict({"img": images, "sentence": texts}).save_to_disk(str(tmp_path / "gaps"))
    config = TrainingConfig(
        dataset_name=str(tmp_path / "gaps"), image_column="img", conditioning="text", caption_column="sentence"
    )
    with pytest.raises(ValueError, match=r"14 empty or missing caption\(s\), rows 1, 3, 12, .* and 4 more") as error:
        load_training_data(config, conditional=True)
    assert "\n" not in str(error.value)


# ---- --holdout


def test_holdout_removes_exactly_the_matching_sprites():
    images, labels, attributes = generate_sprites(200, seed=0, return_attributes=True)
    slime = np.asarray(attributes["kind"]) == "slime"
    colour = str(np.asarray(attributes["colour"])[slime][0])  # a combination this set has
    match = slime & (np.asarray(attributes["colour"]) == colour)
    sword = np.asarray(attributes["kind"]) == "sword"
    flags = [f"kind=slime,colour={colour}", "kind=sword"]
    data = load_training_data(TrainingConfig(num_train_images=200, conditioning="text", holdout=flags), True)
    keep = np.flatnonzero(~(match | sword))
    assert 0 < len(keep) < 200 - match.sum() and len(data) == len(keep)
    assert torch.equal(data.images, torch.from_numpy(images[keep]).permute(0, 3, 1, 2))
    assert data.labels.tolist() == labels[keep].tolist()
    assert data.captions == [sprite_captions(labels, attributes)[i] for i in keep]


@pytest.mark.parametrize(
    "holdout, message",
    [
        (["kind:slime"], "not a list of key=value pairs"),
        (["species=slime"], "unknown attributes \\['species'\\]"),
        (["kind=slme"], "no sprite has kind 'slme'; known values: \\['apple'"),
    ],
)
def test_bad_holdout_is_refused(holdout, message):
    with pytest.raises(ValueError, match=message):
        load_training_data(TrainingConfig(num_train_images=50, conditioning="text", holdout=holdout), True)


@pytest.mark.parametrize(
    "flags, conditional, message",
    [
        (["--holdout", "kind=slime"], True, "only apply to --conditioning text"),
        (["--conditioning", "text", "--sprites_npy", "x.npy"], True, "the course's .npy files have none"),
        (["--conditioning", "text", "--holdout", "kind=bat", "--dataset_name", "d"], True, "filter those data sets"),
        (["--conditioning", "text"], False, "not train_unconditional.py"),
        (["--context_mlp_dim", "64"], False, "train_unconditional.py's has none"),
        (["--context_mlp_dim", "-1"], True, "--context_mlp_dim must be a whole number from 0 to 16384"),
        (["--model_config_overrides", '{"context_mlp_dim": 64}'], True, "pass --context_mlp_dim instead"),
        (["--context_time_embedding"], False, "train_unconditional.py's model has no context"),
        (["--caption_noise", "0.5"], True, "only apply to --conditioning text"),
        (["--conditioning", "text", "--caption_noise", "-1"], True, "--caption_noise must be a finite number >= 0"),
        (
            ["--conditioning", "text", "--captions_per_image", "0"],
            True,
            "--captions_per_image must be a whole number from 1 to 256",
        ),
        (["--conditioning", "text", "--caption_mixup", "--captions_per_image", "1"], True, "one caption per image"),
        (["--conditioning", "text", "--caption_mixup", "--train_data_dir", "d"], True, "one caption per image"),
        (["--model_config_overrides", '{"context_time_embedding": true}'], True, "pass --context_time_embedding"),
    ],
)
def test_text_flag_errors(flags, conditional, message):
    with pytest.raises(ValueError, match=message):
        resolve_defaults(parse_config(flags), "cpu", conditional=conditional)


def test_holdout_flag_repeats():
    config = parse_config(["--conditioning", "text", "--holdout", "kind=slime,colour=purple", "--holdout", "kind=bat"])
    assert config.holdout == ["kind=slime,colour=purple", "kind=bat"]


# ---- the caption table


def test_table_gather_equals_encoding_each_caption(bert):
    config = TrainingConfig(
        num_train_images=64, conditioning="text", text_encoder_name_or_path=bert, captions_per_image=1
    )
    data = load_training_data(config, conditional=True)
    data.captions[5] = ""  # an empty caption is the null context, as the pipeline's empty prompt
    contexts = build_contexts(config, data, conditional=True, device="cpu")
    assert contexts.table.shape == (len(set(data.captions)), 32) and contexts.index.shape == (64,)
    indices = torch.tensor([5, 0, 63, 17, 17, 40])
    _, context = get_batch(
        data.images, contexts.index, contexts.table, indices, torch.ones(6), 0.1, torch.contiguous_format
    )
    direct = encode_text(contexts.tokenizer, contexts.text_encoder, [data.captions[i] for i in indices.tolist()])
    direct[0] = 0.0
    torch.testing.assert_close(context, direct, atol=1e-5, rtol=1e-5)
    dropped = get_batch(
        data.images, contexts.index, contexts.table, indices, torch.zeros(6), 0.1, torch.contiguous_format
    )
    assert not dropped[1].any()  # caption dropout: the --p_uncond draw zeroes the whole row
    assert contexts.validation_prompts == [
        next(c for c, label in zip(data.captions, data.labels.tolist()) if label == k and c) for k in range(5)
    ]


def test_several_captions_per_image_are_one_table_and_an_index_drawn_per_epoch(bert):
    from hfdiff.data import sprite_caption_sets

    config = TrainingConfig(num_train_images=64, conditioning="text", text_encoder_name_or_path=bert, seed=2)
    data = load_training_data(config, conditional=True)
    _, labels, attributes = generate_sprites(64, seed=2, return_attributes=True)
    assert data.caption_sets == sprite_caption_sets(labels, attributes, seed=2, per_image=8)  # the default 8
    contexts = build_contexts(config, data, conditional=True, device="cpu")
    distinct = {caption for options in data.caption_sets for caption in options}
    assert contexts.table.shape == (len(distinct), 32) and contexts.choices.shape == (64, 8)
    assert torch.equal(contexts.index, contexts.choices[:, 0])  # the generator's sentence until the first draw
    address, drawn = contexts.index.data_ptr(), []
    for epoch in (0, 1, 0):
        contexts.draw_captions(seed=2, epoch=epoch)
        assert contexts.index.data_ptr() == address  # in place: a captured CUDA graph gathers the new rows
        assert (contexts.choices == contexts.index[:, None]).any(dim=1).all()  # always one of the image's own
        drawn.append(contexts.index.clone())
    assert torch.equal(drawn[0], drawn[2]) and not torch.equal(drawn[0], drawn[1])  # a function of (seed, epoch)
    indices = torch.tensor([0, 9, 63])
    _, context = get_batch(
        data.images, contexts.index, contexts.table, indices, torch.ones(3), 0.1, torch.contiguous_format
    )
    rows = drawn[2][indices].tolist()
    chosen = [data.caption_sets[i][contexts.choices[i].tolist().index(r)] for i, r in zip(indices.tolist(), rows)]
    direct = encode_text(contexts.tokenizer, contexts.text_encoder, chosen)
    torch.testing.assert_close(context, direct, atol=1e-5, rtol=1e-5)

    one = TrainingConfig(
        num_train_images=64, conditioning="text", text_encoder_name_or_path=bert, captions_per_image=1
    )
    single = load_training_data(one, conditional=True)
    assert single.caption_sets is None and build_contexts(one, single, True, "cpu").choices is None


def test_caption_noise_and_mixup_keep_the_null_context_and_stay_between_captions():
    table = torch.randn(6, 4)
    index, choices = torch.tensor([0, 2]), torch.tensor([[0, 1, 2], [2, 3, 5]])
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    indices, keep = torch.tensor([0, 1]), torch.tensor([1.0, 0.0])
    mix = torch.tensor([[0.25, 0.5], [0.5, 0.99]])  # image 0 blends with its caption 1, image 1 with its caption 5
    _, context = get_batch(
        images, index, table, indices, keep, 0.1, torch.contiguous_format, mix_draw=mix, caption_choices=choices
    )
    torch.testing.assert_close(context[0], 0.25 * table[0] + 0.75 * table[1])
    assert not context[1].any()  # dropped: the null context stays exactly zero
    noise = torch.ones(2, 4)
    _, noisy = get_batch(images, index, table, indices, torch.ones(2), 0.1, torch.contiguous_format, None, None, noise)
    rms = table[index].pow(2).mean(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(noisy, table[index] + rms)


@pytest.mark.parametrize("flags", [[], ["--caption_noise", "0.5", "--caption_mixup"]])
def test_resume_across_epochs_with_caption_draws_is_exact(bert, tmp_path, fresh_accelerate_state, flags):  # noqa: F811
    """64 images in batches of 16: 4 steps an epoch, so the resumed run redraws epoch 0's captions, then epoch 1's."""
    flags = ["--max_train_steps", "6", "--checkpointing_steps", "3", "--checkpoints_total_limit", "none", *flags]
    flags += ["--validation_steps", "100", "--captions_per_image", "4"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(text_config(bert, straight, *flags), conditional=True)
    os.makedirs(resumed)
    os.rename(straight / "checkpoint-3", resumed / "checkpoint-3")
    train(text_config(bert, resumed, *flags, "--resume_from_checkpoint", "latest"), conditional=True)
    a, b = (load_file(run / "unet/diffusion_pytorch_model.safetensors") for run in (straight, resumed))
    assert all(torch.equal(a[name], b[name]) for name in a)


# ---- end to end


def test_text_run_saves_a_pipeline_that_samples_from_prompts(bert, tmp_path, fresh_accelerate_state):  # noqa: F811
    out = tmp_path / "out"
    config = text_config(bert, out, "--max_train_steps", "3", "--holdout", "kind=slime,colour=green")
    train(config, conditional=True)
    pipe = SpriteDiffusionPipeline.from_pretrained(out)
    assert pipe.text_encoder is not None and pipe.tokenizer is not None
    assert pipe.unet.config.context_dim == 32 and pipe.class_names is None
    assert pipe.unet.config.context_mlp_dim == TEXT_CONTEXT_MLP_DIM  # the text defaults; class models keep None
    assert pipe.unet.config.context_time_embedding and pipe.unet.context_embedding is not None  # and False
    images = pipe(
        prompt=["a green slime", "a red sword"],
        num_images_per_prompt=2,
        guidance_scale=2.0,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert len(images) == 4 and images[0].size == (16, 16)
    card = (out / "README.md").read_text()
    assert "text-to-image" in card and "kind=slime,colour=green" in card  # the evaluation reads the holdout there
    samples = PIL.Image.open(out / "samples.png")
    # one row per class's prompt, 2 images per row, the prompt written left of its row (as the CLI's grids)
    rows = len(SPRITE_CLASSES)
    assert samples.height == rows * 64 + (rows - 1) * 2 and samples.width > 2 * 64 + 30
    assert len(os.listdir(out / "validation")) == 1


def test_text_resume_is_exact_and_other_conditioning_is_refused(bert, tmp_path, fresh_accelerate_state):  # noqa: F811
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "none"]
    flags += ["--validation_steps", "100", "--train_batch_size", "8"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(text_config(bert, straight, *flags), conditional=True)
    os.makedirs(resumed)
    os.rename(straight / "checkpoint-2", resumed / "checkpoint-2")
    result = train(text_config(bert, resumed, *flags, "--resume_from_checkpoint", "latest"), conditional=True)
    assert result.global_step == 4
    for weights in ["unet/diffusion_pytorch_model.safetensors", "checkpoint-4/model.safetensors"]:
        a, b = load_file(straight / weights), load_file(resumed / weights)
        assert all(torch.equal(a[name], b[name]) for name in a), weights

    # The text checkpoint under a class run, and a class checkpoint under a text run: refused before loading.
    class_flags = [*TINY_RUN, "--num_cpu_threads", "1", "--mixed_precision", "no", *flags]
    with pytest.raises(ValueError, match=r"belongs to another run \(.*conditioning: 'text' -> 'class'"):
        train(parse_config([*class_flags, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"]), True)
    class_run = tmp_path / "class"
    train(parse_config([*class_flags, "--output_dir", str(class_run), "--max_train_steps", "2"]), conditional=True)
    with pytest.raises(ValueError, match=r"belongs to another run \(.*conditioning: 'class' -> 'text'"):
        train(text_config(bert, class_run, *flags, "--resume_from_checkpoint", "latest"), conditional=True)


def test_captions_per_image_is_part_of_the_run_identity():
    """How many captions each image has, and the caption noise and mixup, define a run: a one-caption checkpoint is
    refused under the default, naming the flag; class runs are unaffected."""
    from hfdiff.training.checkpoints import identity_differences, run_identity, same_run

    def identity(**flags):
        config = TrainingConfig(num_train_images=20, conditioning="text", **flags)
        return run_identity(config, load_training_data(config, conditional=True), "text")

    one = identity(captions_per_image=1)
    assert same_run(one, identity(captions_per_image=1))
    assert "captions_per_image: 1 -> 8" in identity_differences(one, identity())
    assert "caption_noise: 0.0 -> 0.5" in identity_differences(one, identity(captions_per_image=1, caption_noise=0.5))
    assert "caption_mixup: False -> True" in identity_differences(one, identity(caption_mixup=True))
    config = TrainingConfig(num_train_images=20)  # a class run: one "caption" per image whatever the flag says
    assert run_identity(config, load_training_data(config, conditional=True), "class")["captions_per_image"] == 1
