"""SpriteDiffusionPipeline with a text encoder: prompts, negative prompts, precomputed embeddings, guidance, the null
context, bad input, and save/load with the encoder and tokenizer (with hfdiff, and with diffusers alone)."""

import json

import numpy as np
import pytest
import torch
from test_hub import run_without_hfdiff
from test_text import save_tiny_bert
from tiny import T, seed, tiny_unet

from hfdiff import SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.hub import pipeline_files
from hfdiff.text import encode_text, load_text_encoder


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def make_text_pipe(encoder_folder, **unet_config) -> SpriteDiffusionPipeline:
    tokenizer, text_encoder = load_text_encoder(encoder_folder)
    unet = tiny_unet(context_dim=32, **unet_config)
    pipe = SpriteDiffusionPipeline(
        unet=unet, scheduler=SpriteDDPMScheduler(num_train_timesteps=T), text_encoder=text_encoder, tokenizer=tokenizer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs) -> torch.Tensor:
    return pipe(generator=seed(0), output_type="pt", **kwargs).images


def forward_batch_sizes(pipe, **kwargs) -> list[int]:
    sizes = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    run(pipe, **kwargs)
    hook.remove()
    return sizes


def test_prompts_are_contexts(encoder_folder):
    pipe = make_text_pipe(encoder_folder)
    prompts = ["a green slime", "a red sword"]
    images = run(pipe, prompt=prompts, num_images_per_prompt=2)
    assert images.shape == (4, 3, 16, 16)
    embeds = encode_text(pipe.tokenizer, pipe.text_encoder, prompts)
    # the prompt's vector is the context, row for row: the same images as passing it directly
    same = run(pipe, context=embeds.repeat_interleave(2, dim=0), batch_size=4)
    torch.testing.assert_close(images, same)
    torch.testing.assert_close(run(pipe, prompt_embeds=embeds, num_images_per_prompt=2), images)
    assert not torch.allclose(images[0], images[2])  # different prompts, different images
    one = run(pipe, prompt="a green slime", batch_size=3)  # one prompt for the whole batch
    assert one.shape == (3, 3, 16, 16)


def test_the_empty_prompt_is_the_null_context(encoder_folder):
    pipe = make_text_pipe(encoder_folder)
    torch.testing.assert_close(run(pipe, prompt=""), run(pipe, context=torch.zeros(1, 32)))
    torch.testing.assert_close(run(pipe, prompt=""), run(pipe))


def test_guidance_with_prompts_and_negative_prompts(encoder_folder):
    pipe = make_text_pipe(encoder_folder)
    assert forward_batch_sizes(pipe, prompt=["a slime", "a bat"], guidance_scale=3.0) == [4] * T
    assert pipe.do_classifier_free_guidance
    plain = run(pipe, prompt="a slime", guidance_scale=3.0)
    embeds = encode_text(pipe.tokenizer, pipe.text_encoder, ["a slime"])
    # no negative prompt: the null context (zeros) is the unconditional pass, as with context vectors
    torch.testing.assert_close(plain, run(pipe, context=embeds, guidance_scale=3.0))
    negative = run(pipe, prompt="a slime", negative_prompt="a red sword", guidance_scale=3.0)
    assert not torch.allclose(plain, negative)
    negative_embeds = encode_text(pipe.tokenizer, pipe.text_encoder, ["a red sword"])
    torch.testing.assert_close(
        negative, run(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, guidance_scale=3.0)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ["a", "b"], "batch_size": 3}, "Got 2 prompts for batch_size=3"),
        ({"prompt": "a slime", "class_labels": "hero"}, "instead of class_labels"),
        ({"class_labels": 0}, "instead of class_labels"),
        ({"prompt": "a", "prompt_embeds": torch.zeros(1, 32)}, "prompt or prompt_embeds, not both"),
        ({"prompt": "a", "context": torch.zeros(1, 32)}, "not both"),
        ({"negative_prompt": "a bat"}, "negative_prompt needs a prompt"),
        ({"prompt": [], "batch_size": 1}, "non-empty list of strings"),
        ({"prompt": "a", "num_images_per_prompt": 0}, "num_images_per_prompt must be a positive integer"),
        ({"prompt_embeds": torch.zeros(2, 7)}, r"expected \(N, 32\)"),
        ({"prompt": "a", "negative_prompt": ["b", "c"], "guidance_scale": 2.0}, "2 negative prompts for 1 prompts"),
    ],
)
def test_bad_text_input(encoder_folder, kwargs, message):
    pipe = make_text_pipe(encoder_folder)
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=2, **kwargs)


def test_prompts_need_a_text_model_and_the_widths_must_agree(encoder_folder):
    from tiny import make_pipe

    with pytest.raises(ValueError, match="has no text encoder"):
        make_pipe()(prompt="a green slime", num_inference_steps=2)
    tokenizer, text_encoder = load_text_encoder(encoder_folder)
    with pytest.raises(ValueError, match="vectors of length 32 but the UNet takes context_dim=5"):
        SpriteDiffusionPipeline(tiny_unet(), SpriteDDPMScheduler(), text_encoder=text_encoder, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="text_encoder and tokenizer together"):
        SpriteDiffusionPipeline(tiny_unet(context_dim=32), SpriteDDPMScheduler(), text_encoder=text_encoder)


DIFFUSERS_ONLY_TEXT = """
import json, sys
sys.modules["hfdiff"] = None
sys.path = [p for p in sys.path if p not in ("", ".") and not p.endswith("/tests")]
import numpy as np, torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(prompt=["a green slime", "a red sword"], generator=torch.Generator().manual_seed(0), output_type="np")
np.save(sys.argv[2], images.images)
print(json.dumps({"text_encoder": type(pipe.text_encoder).__name__, "tokenizer": type(pipe.tokenizer).__name__}))
"""


def test_save_and_load_with_the_encoder_and_tokenizer(encoder_folder, tmp_path):
    pipe = make_text_pipe(encoder_folder)
    folder = tmp_path / "text-model"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["tokenizer"][0] == "transformers"
    assert (folder / "text_encoder" / "model.safetensors").is_file() and (
        folder / "text_encoder_vocab"
    ).exists() is False
    assert (folder / "text_encoding.py").is_file()  # the pipeline's relative import travels with it
    assert {"text_encoding.py", "tokenizer/tokenizer_config.json", "text_encoder/config.json"} <= set(
        pipeline_files(folder)
    )
    loaded = SpriteDiffusionPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder.config.hfdiff_pooling == "mean" and not loaded.text_encoder.training
    expected = run(pipe, prompt=["a green slime", "a red sword"])
    torch.testing.assert_close(run(loaded, prompt=["a green slime", "a red sword"]), expected)

    result = run_without_hfdiff(DIFFUSERS_ONLY_TEXT, folder, tmp_path / "x.npy", hf_home=tmp_path / "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["text_encoder"] == "BertModel"
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_class_models_save_without_text_components(tmp_path):
    from tiny import make_pipe

    make_pipe().save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index.get("text_encoder") in (None, [None, None]) and not (tmp_path / "m" / "text_encoder").exists()
    assert SpriteDiffusionPipeline.from_pretrained(tmp_path / "m").text_encoder is None


def test_model_card_of_a_text_model(encoder_folder):
    from hfdiff.hub import build_model_card

    card = build_model_card(make_text_pipe(encoder_folder))
    assert card.data.pipeline_tag == "text-to-image" and "text-to-image" in card.data.tags
    assert 'prompt="a green slime monster"' in card.text and "frozen BertModel" in card.text
    assert "joins every resnet's time embedding" not in card.text
    card = build_model_card(make_text_pipe(encoder_folder, context_time_embedding=True))  # the training default
    assert "the context also joins every resnet's time embedding" in card.text


@pytest.mark.parametrize("prompt", ["🐉🔥 a dragon 🍎", "緑色のスライム", "зелёный слизень", "!!! ??? ...", "…", "  "])
def test_emoji_other_scripts_and_punctuation_give_images(encoder_folder, prompt):
    """Words the tokenizer does not know become [UNK] (or nothing): still a finite context and images, no crash."""
    pipe = make_text_pipe(encoder_folder)
    images = run(pipe, prompt=[prompt, "a slime"], guidance_scale=2.0, num_inference_steps=3)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_a_prompt_longer_than_the_encoder_gives_one_warning(encoder_folder):
    pipe = make_text_pipe(encoder_folder)
    long = " ".join(["green slime"] * 20)  # 40 words, the tiny encoder has 16 positions
    with pytest.warns(UserWarning) as records:
        images = run(pipe, prompt=long, negative_prompt="a bat", guidance_scale=2.0, num_inference_steps=3)
    truncated = [str(r.message) for r in records if "truncated" in str(r.message)]
    assert len(truncated) == 1 and "16 tokens" in truncated[0], truncated
    assert torch.isfinite(images).all()


def test_a_saved_text_model_samples_as_it_always_has(encoder_folder, tmp_path):
    """A text pipeline saved by hfdiff loads and samples the same numbers as before caption sets and the caption
    grammar existed: those change training only. Stored values from that code, on the CPU."""
    make_text_pipe(encoder_folder).save_pretrained(tmp_path / "model")
    pipe = SpriteDiffusionPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    images = run(pipe, prompt=["a green slime", ""], guidance_scale=2.0, num_inference_steps=5)
    corner = images[:, :, :2, :2].flatten()
    expected = torch.tensor(EXPECTED_CORNER)
    torch.testing.assert_close(corner, expected, atol=1e-4, rtol=1e-4)


# images[:, :, :2, :2] of the test above as hfdiff 581d881 samples them (before caption sets and the grammar).
EXPECTED_CORNER = [0.0, 0.0, 0.0, 0.0, 0.39779, 0.0, 0.30334, 0.57225, 0.52333, 0.25759, 0.19592, 0.81139]
EXPECTED_CORNER += [0.61941, 0.63554, 0.59193, 0.06341, 0.0, 0.28396, 0.75035, 1.0, 0.2613, 0.9905, 0.86539, 1.0]
