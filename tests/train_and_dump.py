"""Test helper, run under `accelerate launch`: what `train_conditional.py FLAGS` does, and then each process writes
the image indices it trained on, in order, and its final weights to DUMP_DIR/rank-<rank>.safetensors.

    accelerate launch ... tests/train_and_dump.py DUMP_DIR FLAGS...

It records by wrapping the training step that `hfdiff.training.loop.set_up` builds, so `train` needs no test-only
argument.
"""

import os
import sys

import torch
from safetensors.torch import save_file

import hfdiff.training.loop as loop
from hfdiff.training import configure_script_logging, parse_config, train


class RecordingStep:
    """The run's step, unchanged, noting the image indices of every micro-batch it trains on."""

    def __init__(self, step):
        self.step, self.indices = step, []

    def __call__(self, indices, generator, images):
        self.indices.append(indices.cpu())
        return self.step(indices, generator, images)


def recording_set_up(*args, **kwargs):
    run = set_up(*args, **kwargs)
    run.step = RecordingStep(run.step)
    runs.append(run)
    return run


if __name__ == "__main__":
    dump_dir, *flags = sys.argv[1:]
    runs, set_up = [], loop.set_up
    loop.set_up = recording_set_up
    configure_script_logging()
    train(parse_config(flags), conditional=True)
    (run,) = runs
    indices = run.step.indices
    tensors = {"indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)}
    tensors.update(
        {f"unet.{name}": value.detach().cpu().contiguous() for name, value in run.unet.state_dict().items()}
    )
    os.makedirs(dump_dir, exist_ok=True)
    save_file(tensors, os.path.join(dump_dir, f"rank-{run.accelerator.process_index}.safetensors"))
