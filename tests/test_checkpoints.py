"""Training checkpoints are data and belong to one run: resuming never unpickles anything, wherever a
pickle hides in the checkpoint; another run's checkpoints in --output_dir are refused, never pruned, and moved aside
only on --overwrite_output_dir."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_UNET_JSON

from hfdiff.training import parse_config, train
from hfdiff.training.checkpoints import (
    check_checkpoints_belong_to_run,
    list_checkpoints,
    prune_checkpoints,
    run_identity,
)
from hfdiff.training.data import TrainingData

TINY_RUN = [
    "--model_config_overrides", TINY_UNET_JSON,
    "--num_train_images", "32",
    "--train_batch_size", "16",
    "--ddpm_num_steps", "20",
    "--validation_steps", "1000",
    "--validation_inference_steps", "2",
    "--num_validation_images", "1",
    "--lr_warmup_steps", "1",
    "--logging_steps", "1000",
    "--mixed_precision", "no",
    "--num_cpu_threads", "1",
    "--checkpointing_steps", "2",
    "--checkpoints_total_limit", "none",
]  # fmt: skip


def config(output_dir, *flags):
    return parse_config([*TINY_RUN, "--output_dir", str(output_dir), *flags])


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run with its checkpoint-2 (seed 0)."""
    from accelerate.state import AcceleratorState

    out = tmp_path_factory.mktemp("trained") / "run"
    train(config(out, "--max_train_steps", "2"), conditional=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


class Payload:
    """Unpickling this creates `marker`: what a hostile checkpoint would do instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"state": Payload(str(marker))}))


@pytest.mark.parametrize(
    "planted",
    [
        "custom_checkpoint_0.pkl",  # Accelerate's registered objects (the EMA)
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "pytorch_model/weights.pt",  # a subfolder, and torch.save's usual suffixes
        "extra.pth",
    ],
)
def test_a_planted_pickle_refuses_the_resume_before_anything_runs(trained, tmp_path, planted, fresh_accelerate_state):
    out, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(trained / "checkpoint-2", out / "checkpoint-2")
    plant(out / "checkpoint-2" / planted, marker)
    with pytest.raises(ValueError, match=f"{os.path.basename(planted)} is a pickle file.*start a new run"):
        train(config(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"), conditional=True)
    assert not marker.exists()


@pytest.mark.parametrize("replaced", ["optimizer.safetensors", "ema.safetensors", "random_states_0.safetensors"])
def test_a_pickle_named_safetensors_is_a_damaged_checkpoint(trained, tmp_path, replaced, fresh_accelerate_state):
    out, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(trained / "checkpoint-2", out / "checkpoint-2")
    plant(out / "checkpoint-2" / replaced, marker)
    with pytest.raises(ValueError, match=f"{replaced} is not a training-state file.*damaged"):
        train(config(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"), conditional=True)
    assert not marker.exists()


def test_checkpoint_holds_only_safetensors_and_json(trained):
    folder = trained / "checkpoint-2"
    assert sorted(os.listdir(folder)) == [
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "random_states_0.safetensors",
        "scheduler.safetensors",
        "training_state.json",
    ]
    run = json.loads((folder / "training_state.json").read_text())["run"]
    assert run["seed"] == 0 and run["images"] == [32, 3, 16, 16] and len(run["class_names"]) == 5


def test_another_runs_checkpoints_are_refused_or_overwritten(trained, tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = load_file(out / "checkpoint-2" / "model.safetensors")
    other = ["--max_train_steps", "4", "--seed", "1"]
    for flags in [other, [*other, "--resume_from_checkpoint", "latest"]]:
        with pytest.raises(ValueError, match=r"another run .*seed: 0 -> 1.*another --output_dir"):
            train(config(out, *flags), conditional=True)
    assert [step for step, _ in list_checkpoints(str(out))] == [2]
    # the same run resumes (and a moved --output_dir does not make it another run)
    result = train(config(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"), conditional=True)
    assert result.global_step == 4
    # --overwrite_output_dir: a fresh seed-1 run; the old checkpoints are gone once its own exist
    result = train(config(out, *other, "--overwrite_output_dir"), conditional=True)
    assert result.global_step == 4 and [step for step, _ in list_checkpoints(str(out))] == [2, 4]
    assert json.loads((out / "checkpoint-2" / "training_state.json").read_text())["run"]["seed"] == 1
    assert not torch.equal(*(t["conv_in.weight"] for t in (before, load_file(out / "checkpoint-2/model.safetensors"))))
    assert not [name for name in os.listdir(out) if name.endswith(".overwritten")]


def test_overwrite_moves_aside_until_the_first_checkpoint_and_pruning_spares_other_runs(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    theirs = state["run"]
    ours = {**theirs, "seed": 1}
    with pytest.raises(ValueError, match="--overwrite_output_dir with --resume_from_checkpoint"):
        check_checkpoints_belong_to_run(
            config(out, "--overwrite_output_dir", "--resume_from_checkpoint", "latest"), ours
        )
    # pruning counts and deletes only the saving run's checkpoints
    for step in (4, 6, 8):
        shutil.copytree(out / "checkpoint-2", out / f"checkpoint-{step}")
        (out / f"checkpoint-{step}" / "training_state.json").write_text(json.dumps({**state, "run": ours}))
    prune_checkpoints(str(out), 1, ours)
    assert [step for step, _ in list_checkpoints(str(out))] == [2, 8]
    shutil.rmtree(out / "checkpoint-8")
    check_checkpoints_belong_to_run(config(out, "--overwrite_output_dir"), ours)
    assert list_checkpoints(str(out)) == [] and (out / ".checkpoint-2.overwritten" / "model.safetensors").exists()


def test_run_identity_covers_config_and_data_not_run_length():
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(40) % 5
    names = ["a", "b", "c", "d", "e"]
    data = TrainingData(images, labels, names, "test")
    base = run_identity(config("x"), data, "class")
    assert base == run_identity(
        config("y", "--max_train_steps", "9", "--checkpointing_steps", "3", "--logging_steps", "1"), data, "class"
    )
    changed_label = labels.clone()
    changed_label[7] = 0
    changed_image = images.clone()
    changed_image[-1, 0, 0, 0] += 1
    for other in [
        run_identity(config("x", "--seed", "3"), data, "class"),
        run_identity(config("x", "--prediction_type", "sample"), data, "class"),
        run_identity(config("x"), TrainingData(images, changed_label, names, "test"), "class"),
        run_identity(config("x"), TrainingData(changed_image, labels, names, "test"), "class"),
        run_identity(config("x"), TrainingData(images, labels, [*names[:4], "z"], "test"), "class"),
        run_identity(config("x"), data, "text"),
    ]:
        assert other != base


def test_optimizer_moments_get_their_parameters_layout_back(tmp_path):
    """safetensors stores row-major: moments of channels_last weights must regain their strides on resume (the CUDA
    graph step's fused AdamW refuses mismatched layouts)."""
    from hfdiff.training.checkpoint_state import match_parameter_layout, read_state, write_state

    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(1, 3, 5, 5)).sum().backward()
    optimizer.step()
    write_state(str(tmp_path / "optimizer.safetensors"), optimizer.state_dict())
    optimizer.load_state_dict(read_state(str(tmp_path / "optimizer.safetensors")))
    match_parameter_layout(optimizer)
    for key in ("exp_avg", "exp_avg_sq"):
        assert optimizer.state[conv.weight][key].stride() == conv.weight.stride()
