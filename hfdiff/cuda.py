"""CUDA settings and helpers shared by training and sampling: the inductor options of every torch.compile call
hfdiff makes, and the one side stream per device on which CUDA graphs are warmed up and recorded.

Below both `hfdiff.training` and `hfdiff.fast_sampling`, so that training does not import the sampler to get them.
"""

from __future__ import annotations

import functools

import torch

# Inductor options of hfdiff's torch.compile calls (the training step and FastSampler's `compile=True`). Per-kernel
# benchmarking of pointwise launch configs is off: it lengthens a cold compile and buys no images/s, since
# sprite-sized tensors leave the launch config little to win (benchmarks/results/cold-start-h200.md).
COMPILE_OPTIONS = {"triton.autotune_pointwise": False}


@functools.cache
def side_stream(device_index: int) -> torch.cuda.Stream:
    """The one stream per device on which every CUDA-graph recording in this process warms up (sampling) and
    captures (training).

    One, not a new stream per recording: cuBLAS keeps a workspace for every stream it has run on for the life of the
    process, so a fresh stream per graph would grow a training run's GPU memory at every validation grid
    (benchmarks/NOTES-training.md, "Soak")."""
    return torch.cuda.Stream(device_index)
