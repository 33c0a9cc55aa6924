"""The training scripts as a user runs them: a mistake (a missing path, a bad flag value, an output folder or Hub
setting that would fail at the end) is one line on stderr naming the input, exit code 2, and no traceback; under
`accelerate launch` with two processes the line is printed once and the launch fails. A bug keeps its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY_UNET_JSON

from hfdiff.training.script import run_training_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model_config_overrides", TINY_UNET_JSON, "--num_train_images", "16", "--max_train_steps", "1"]


def run(args, launcher=(), **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def bad_labels(tmp_path):
    np.save(tmp_path / "sprites.npy", np.zeros((6, 16, 16, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 3, 4, 999]))
    return ["--sprites_npy", str(tmp_path / "sprites.npy"), "--labels_npy", str(tmp_path / "labels.npy")]


@pytest.mark.parametrize(
    "script, flags, message",
    [
        ("train_conditional.py", lambda tmp: ["--train_data_dir", str(tmp / "missing")], "missing does not exist"),
        ("train_unconditional.py", lambda tmp: ["--num_epochs", "x"], "argument --num_epochs: invalid int value"),
        ("train_conditional.py", lambda tmp: ["--output_dir", ""], "--output_dir is empty"),
        ("train_conditional.py", lambda tmp: ["--push_to_hub"], "HF_HUB_OFFLINE is set"),
        ("train_conditional.py", bad_labels, "classes 5..998 of 0..999 have no images"),
        (
            "train_conditional.py",
            lambda tmp: ["--conditioning", "text", "--text_encoder_name_or_path", str(tmp / "no-encoder")],
            "no-encoder looks like a local folder but does not exist",
        ),
    ],
    ids=["missing-data-dir", "bad-flag-value", "empty-output-dir", "push-offline", "outlier-label", "no-encoder"],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, script, flags, message):
    args = ["--output_dir", str(tmp_path / "run"), *TINY, *flags(tmp_path)]
    result = run([sys.executable, script, *args])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"{script}: error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_under_accelerate_launch_the_line_is_printed_once(tmp_path):
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--quiet"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29523"]
    result = run(["train_conditional.py", *TINY, "--output_dir", ""], launcher=launcher, ACCELERATE_USE_CPU="1")
    assert result.returncode != 0
    assert result.stderr.count("train_conditional.py: error: --output_dir is empty") == 1, result.stderr[-3000:]
    # torchrun's agent reports the failed processes with a traceback of its own (the launcher's, not the script's);
    # neither training process printed one.
    assert 'train_conditional.py", line' not in result.stderr and "hfdiff/training" not in result.stderr


def test_bugs_keep_their_traceback():
    def user_mistake(argv):
        raise ValueError("--flag x is wrong; pass y.")

    def bug(argv):
        raise KeyError("a bug")

    assert run_training_script(user_mistake) == 2
    with pytest.raises(KeyError, match="a bug"):
        run_training_script(bug)
