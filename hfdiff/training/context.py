"""What each training image is conditioned on, as a table of context vectors and an index into it.

    class conditioning:  table = the (K, K) identity (one-hot rows),       index = each image's class
    text conditioning:   table = (U, D) embeddings of the U distinct captions, index = each image's caption

The step gathers `table[index[indices]]` on the device (step.py `get_batch`), so both kinds run the same step, CUDA
graph and DDP included. The text encoder runs once, here, at start-up: each distinct caption is embedded once, in
batches, on the training device, so a training step costs no more than with classes. The empty caption's row is
zeros, the null context that the pipeline gives the empty prompt and that caption dropout (--p_uncond) trains.

Where an image has several true captions (the embedded sprites' caption sets, `--captions_per_image`), every one
of them is a row of the same table, `choices` holds each image's rows, and `draw_captions(seed, epoch)` writes one of
them per image into `index`, in place, at the start of each epoch: the step, its CUDA graph (which reads `index` by
address) and its random draws stay those of one caption per image. The draw is a function of (seed, epoch) alone,
so a resumed run draws the same captions for the rest of its epoch.

Resuming recomputes the table rather than storing it in checkpoints: the captions, their order (first appearance in
the data) and the frozen encoder are fixed by the flags, so the table is the same function of them every time (to
the encoder's floating-point determinism on one device), and a checkpoint stays the size of a class run's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import TrainingConfig
from .data import TrainingData
from .seeds import stream_seed

VALIDATION_ROWS = 5  # prompts of a text model's validation grid when the data has no classes to pick them by
ENCODE_BATCH_SIZE = 256  # captions per forward pass of the text encoder


@dataclass
class Contexts:
    """The context of every training image, on the device, and what a text model's pipeline needs besides."""

    table: torch.Tensor  # (U, D) float32: one row per distinct context
    index: torch.Tensor  # (N,) int64: the table row of each image
    text_encoder: torch.nn.Module | None = None  # text conditioning only: frozen, saved with the pipeline
    tokenizer: object | None = None
    validation_prompts: list[str] | None = None  # one per row of the validation grids and samples.png
    choices: torch.Tensor | None = None  # (N, K) int64: the table rows of each image's K captions; None: K = 1

    @property
    def context_dim(self) -> int:
        return self.table.shape[1]

    def draw_captions(self, seed: int, epoch: int) -> None:
        """Point each image's index at one of its captions, drawn uniformly from (seed, epoch); in place, so a CUDA
        graph that gathers from `index` sees the new rows. Nothing to do with one caption per image."""
        if self.choices is None:
            return
        generator = torch.Generator().manual_seed(caption_draw_seed(seed, epoch))  # CPU: the same on every device
        pick = torch.randint(self.choices.shape[1], (self.choices.shape[0],), generator=generator)
        self.index.copy_(self.choices.gather(1, pick.to(self.choices.device)[:, None])[:, 0])


def caption_draw_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s caption draw: a stream of its own, apart from the data order's and the noise's."""
    return stream_seed(seed, epoch, 0x43415054)  # "CAPT"


def build_contexts(config: TrainingConfig, data: TrainingData, conditional: bool, device) -> Contexts | None:
    """The context table and index for `data` on `device`; None for unconditional training."""
    if not conditional:
        return None
    if config.conditioning == "class":
        table = torch.eye(len(data.class_names), device=device)  # one-hot rows, without F.one_hot's host check
        return Contexts(table=table, index=data.labels.to(device))
    from hfdiff.text import load_text_encoder

    tokenizer, text_encoder = load_text_encoder(config.text_encoder_name_or_path)
    if data.caption_sets is None:
        table, index = caption_table(data.captions, tokenizer, text_encoder, device)
        return Contexts(table, index, text_encoder, tokenizer, validation_prompts(data))
    per_image = len(data.caption_sets[0])
    flat = [caption for options in data.caption_sets for caption in options]
    table, rows = caption_table(flat, tokenizer, text_encoder, device)
    choices = rows.view(len(data.caption_sets), per_image)  # (N, K)
    index = choices[:, 0].clone()  # the generator's sentence until draw_captions picks the epoch's
    return Contexts(table, index, text_encoder, tokenizer, validation_prompts(data), choices)


@torch.no_grad()
def caption_table(captions: list[str], tokenizer, text_encoder, device) -> tuple[torch.Tensor, torch.Tensor]:
    """N captions -> ((U, D) embeddings of the U distinct ones, in order of first appearance; (N,) int64 index).

    The empty caption gets the zero row: the null context, as in the pipeline."""
    from hfdiff.text import encode_text

    distinct = list(dict.fromkeys(captions))
    row = {caption: i for i, caption in enumerate(distinct)}
    index = torch.tensor([row[caption] for caption in captions], dtype=torch.int64, device=device)
    table = encode_text(tokenizer, text_encoder, distinct, batch_size=ENCODE_BATCH_SIZE, device=device)
    empty = torch.tensor([not caption.strip() for caption in distinct], device=table.device)
    return table.masked_fill(empty[:, None], 0.0).to(device), index


def validation_prompts(data: TrainingData) -> list[str]:
    """One prompt per grid row: the first caption of each class where the data has classes (the embedded sprites),
    else the first VALIDATION_ROWS distinct non-empty captions. Fixed by the data, so grids compare across steps."""
    if data.labels is not None:
        first = {}
        for label, caption in zip(data.labels.tolist(), data.captions):
            if caption.strip():
                first.setdefault(label, caption)
        return [first[label] for label in sorted(first)]
    return [caption for caption in dict.fromkeys(data.captions) if caption.strip()][:VALIDATION_ROWS]
