"""A checkpoint's training state as data: safetensors and JSON, never a pickle.

Accelerate's `save_state` pickles the optimizer, LR schedule, registered objects (the EMA) and RNG states, and its
`load_state` unpickles them: resuming a checkpoint someone sent you would run any code planted in it. hfdiff writes
each piece as one safetensors file instead, its tensors as tensors and everything else as JSON in the file's metadata
(safetensors' header is JSON, read without executing anything):

    model.safetensors              the bare UNet's weights (the name Accelerate used, so tools that read it still do)
    optimizer.safetensors          Optimizer.state_dict(): AdamW's moments and step counts; the param groups as JSON
    scheduler.safetensors          the LR schedule's state_dict (JSON only)
    ema.safetensors                diffusers EMAModel.state_dict(): shadow weights; decay settings and step as JSON
    random_states_<rank>.safetensors  each process's RNG states: torch CPU and CUDA as uint8 tensors, Python's and
                                   NumPy's as JSON (training draws from its own seeded generators; these keep a
                                   dropout layer exact across a resume, as Accelerate's did)

The main process writes the shared files, every process its own RNG file. Reading refuses, before it opens anything,
a folder that holds a pickle (`*.pkl`, `*.bin`, `*.pt`, `*.pth`, ...): such a checkpoint comes from an hfdiff that
used Accelerate's format, and nothing in it can be read safely.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file, save_model

PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
MODEL_FILE = "model.safetensors"
_METADATA_KEY = "hfdiff_state"  # the JSON half of a state file, in the safetensors header's metadata


def refuse_pickles(path: str) -> None:
    """Raise before anything in `path` is read if any file below it is a pickle format."""
    for folder, _, names in os.walk(path):
        for name in sorted(names):
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise ValueError(
                    f"--resume_from_checkpoint {path}: {os.path.join(folder, name)} is a pickle file, and unpickling "
                    "can run any code that was put in it, so hfdiff does not read it. Checkpoints of this hfdiff "
                    "hold only safetensors and JSON; a pickle file means an older hfdiff (Accelerate's format) wrote "
                    "this checkpoint, or someone added it. It cannot be resumed safely: start a new run (another "
                    "--output_dir, or --overwrite_output_dir), or finish this one with the hfdiff version that wrote it."
                )


def pack(value, name: str, tensors: dict):
    """A state_dict -> JSON-able structure: each tensor goes to `tensors[name-path]` and is replaced by a reference;
    tuples and dicts with non-string keys (the optimizer's parameter ids) are tagged so `unpack` rebuilds them."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: pack(item, f"{name}.{key}", tensors) for key, item in value.items()}
        return {"__items__": [[key, pack(item, f"{name}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [pack(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name}: a {type(value).__name__} cannot be saved as safetensors + JSON")


def unpack(value, tensors: dict):
    if isinstance(value, list):
        return [unpack(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(unpack(item, tensors) for item in value["__tuple__"])
    if "__items__" in value:
        return {key: unpack(item, tensors) for key, item in value["__items__"]}
    return {key: unpack(item, tensors) for key, item in value.items()}


def write_state(path: str, state: dict) -> None:
    tensors = {}
    structure = pack(state, "state", tensors)
    save_file(tensors, path, metadata={_METADATA_KEY: json.dumps(structure)})


def read_state(path: str) -> dict:
    """A file `write_state` wrote; a missing or damaged one is a ValueError that names it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint is incomplete or was saved with other flags (--use_ema, the number "
            "of processes). Resume from another checkpoint, or with the flags it was trained with."
        )
    try:
        with safe_open(path, framework="pt") as f:
            structure = json.loads((f.metadata() or {})[_METADATA_KEY])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, KeyError, ValueError, OSError) as error:
        raise ValueError(
            f"{path} is not a training-state file hfdiff wrote ({type(error).__name__}: {error}): the checkpoint is "
            "damaged. Resume from an older checkpoint (pass its folder to --resume_from_checkpoint)."
        ) from error
    return unpack(structure, tensors)


def rng_states() -> dict:
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.random.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def match_parameter_layout(optimizer) -> None:
    """Give each per-parameter state tensor (AdamW's moments) its parameter's strides. safetensors stores tensors
    row-major, so moments read back for channels_last parameters come back contiguous, and the fused AdamW of the
    CUDA-graph step refuses tensors whose layouts differ from their parameters'."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the torch one
    for group in inner.param_groups:
        for param in group["params"]:
            state = inner.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


@dataclass
class TrainingState:
    """What a checkpoint holds besides the step: the bare UNet, the (Accelerate-wrapped) optimizer and LR schedule,
    and the EMA."""

    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: object | None  # diffusers EMAModel

    def save(self, folder: str, is_main_process: bool, process_index: int) -> None:
        """Call on every process: the main one writes the shared files, each one its RNG states."""
        os.makedirs(folder, exist_ok=True)
        if is_main_process:
            # force_contiguous: channels_last weights are not contiguous, and safetensors stores row-major only.
            save_model(self.unet, os.path.join(folder, MODEL_FILE), force_contiguous=True)
            write_state(os.path.join(folder, "optimizer.safetensors"), self.optimizer.state_dict())
            write_state(os.path.join(folder, "scheduler.safetensors"), self.lr_scheduler.state_dict())
            if self.ema is not None:
                write_state(os.path.join(folder, "ema.safetensors"), self.ema.state_dict())
        write_state(os.path.join(folder, f"random_states_{process_index}.safetensors"), rng_states())

    def load(self, folder: str, process_index: int, device: torch.device) -> None:
        """Every process reads the whole checkpoint (after `refuse_pickles`), and its own RNG states."""
        model_file = os.path.join(folder, MODEL_FILE)
        try:
            missing, unexpected = load_model(self.unet, model_file, strict=False, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{model_file} cannot be read ({type(error).__name__}: {error}): the checkpoint is damaged. Resume "
                "from an older checkpoint (pass its folder to --resume_from_checkpoint)."
            ) from error
        if missing or unexpected:
            raise ValueError(
                f"{model_file} does not fit this run's UNet (missing {sorted(missing)[:3]}, unexpected "
                f"{sorted(unexpected)[:3]}): resume with the --preset and --model_config_overrides it was trained with."
            )
        self.optimizer.load_state_dict(read_state(os.path.join(folder, "optimizer.safetensors")))
        match_parameter_layout(self.optimizer)
        self.lr_scheduler.load_state_dict(read_state(os.path.join(folder, "scheduler.safetensors")))
        if self.ema is not None:
            self.ema.load_state_dict(read_state(os.path.join(folder, "ema.safetensors")))
            self.ema.to(device)  # EMAModel.load_state_dict keeps the loaded tensors where they were (CPU)
        rng_file = os.path.join(folder, f"random_states_{process_index}.safetensors")
        if os.path.isfile(rng_file):  # absent when the run had fewer processes; resume warns about the change
            set_rng_states(read_state(rng_file))
