"""Captions -> context vectors with a frozen transformers text encoder, the way hfdiff trains and samples them.

Imports only torch, so it travels next to a saved pipeline as stand-alone code (the pipeline module imports it
relatively). Loading an encoder (the default MiniLM, pooling settings from sentence-transformers files) is
`hfdiff.text.load_text_encoder`; how a loaded encoder pools is read from its config (`hfdiff_pooling`: "mean" over
the attention mask, "cls", or "pooler" for CLIP; `hfdiff_normalize`: L2-normalise), which is saved with it.
"""

from __future__ import annotations

import warnings

import torch

# Bounds on a text encoder's config, checked before the model is built (as the UNet's are): a damaged or hostile
# config.json (100,000 layers, a vocabulary of 10**9) would otherwise take minutes of CPU and then all the memory.
# Far above the encoders hfdiff uses (MiniLM: 6 layers of 384, 30,522 tokens, 512 positions) and above large ones
# (CLIP ViT-bigG's text model: 32 layers of 1280; T5-XXL's encoder: 24 layers of 4096, 10,240 inner).
TEXT_ENCODER_CONFIG_LIMITS = {
    "num_hidden_layers": 128,
    "hidden_size": 16384,
    "intermediate_size": 65536,
    "num_attention_heads": 256,
    "vocab_size": 1_000_000,
    "max_position_embeddings": 65536,
    "type_vocab_size": 1024,
    "projection_dim": 16384,
    "parameters": 20 * 10**9,  # estimated from the embeddings and the layers' matrices
}


def check_text_encoder_config(config: dict, source: str) -> None:
    """Refuse a transformers text encoder config (a dict, as config.json holds it; CLIP's "text_config" is checked
    too) with sizes beyond TEXT_ENCODER_CONFIG_LIMITS, in microseconds and before anything is allocated, with an
    error naming `source`, the entry and its limit."""
    if isinstance(config.get("text_config"), dict):
        check_text_encoder_config(config["text_config"], f"{source} (text_config)")
    sizes = {}
    for entry, limit in TEXT_ENCODER_CONFIG_LIMITS.items():
        value = config.get(entry)
        if entry == "parameters" or value is None:
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit):
            raise ValueError(
                f"{source}: {entry}={value!r} is beyond what hfdiff loads as a text encoder (whole numbers up to "
                f"{limit:,}; limits in TEXT_ENCODER_CONFIG_LIMITS of hfdiff's text_encoding module). The config is "
                "damaged or not a text encoder's: check the file, or pass another encoder."
            )
        sizes[entry] = value
    width = sizes.get("hidden_size", 0)
    inner = sizes.get("intermediate_size", 4 * width)
    embeddings = (sizes.get("vocab_size", 0) + sizes.get("max_position_embeddings", 0)) * width
    estimate = embeddings + sizes.get("num_hidden_layers", 0) * (4 * width * width + 2 * width * inner)
    if estimate > TEXT_ENCODER_CONFIG_LIMITS["parameters"]:
        raise ValueError(
            f"{source}: about {estimate:,} parameters (hidden_size={width}, intermediate_size={inner}, "
            f"num_hidden_layers={sizes.get('num_hidden_layers')}, vocab_size={sizes.get('vocab_size')}), over the "
            f"{TEXT_ENCODER_CONFIG_LIMITS['parameters']:,} hfdiff loads as a text encoder; pass a smaller encoder."
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

    # Cut one token past the maximum, so that a longer caption shows without transformers' own warning about
    # sequences longer than the model takes (the encoding below truncates them).
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length + 1)["input_ids"]]
    too_long = sum(length > max_length for length in lengths)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(texts)} captions are longer than the text encoder's {max_length} tokens and were "
            f"truncated; shorten them to keep their ends.",
            stacklevel=3,  # the caller, past torch.no_grad's wrapper
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
