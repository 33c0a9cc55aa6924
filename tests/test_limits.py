"""Values that are finite but out of range, sizes that would allocate or run without bound, and errors that must be
one line: each refused up front with an error naming the flag or entry, the value and the fix, or, where only the
result can tell (a sample that overflowed), refused after the fact with the likely cause. Families:

- wrong without a word: NaN flags accepted, finite inputs that overflow into black images;
- unbounded: sizes checked before anything is allocated, with the limit named;
- one line, not a traceback: the training scripts and the `hfdiff` command on bad values."""

import dataclasses
import json
import math
import re
import typing

import pytest
import torch
from tiny import T, make_pipe, seed

from hfdiff import ContextUNet2DModel, SpriteDDIMScheduler, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.training import TrainingConfig, resolve_defaults
from hfdiff.training import config as training_config


def resolve(tmp_path, **flags):
    return resolve_defaults(TrainingConfig(output_dir=str(tmp_path / "run"), **flags), "cpu", conditional=True)


# ----------------------------------------------------------------------------------------------------------------
# Wrong without a word: every numeric training flag has a range, NaN included
# ----------------------------------------------------------------------------------------------------------------


def _numeric_fields() -> list[str]:
    hints = typing.get_type_hints(TrainingConfig)
    names = []
    for f in dataclasses.fields(TrainingConfig):
        annotation, _ = training_config._unwrap_optional(hints[f.name])
        if annotation in (int, float):
            names.append(f.name)
    return names


def test_every_numeric_flag_has_a_range(tmp_path):
    ranges = training_config.numeric_flag_ranges()
    assert sorted(ranges) == sorted(_numeric_fields())
    config = resolve(tmp_path, num_cpu_threads=1, dataloader_num_workers=0, device_data_budget_mb=64.0)
    assert all(ok(getattr(config, name)) for name, (ok, _) in ranges.items() if getattr(config, name) is not None)


BAD_FLAGS = [
    ("ema_power", math.nan, r"--ema_power must be a finite number > 0 .*; got nan\."),
    ("ema_max_decay", math.nan, r"--ema_max_decay must be a number in \[0, 1\]"),
    ("ema_max_decay", 2.0, r"--ema_max_decay must be a number in \[0, 1\] .*; got 2\.0\."),
    ("ema_inv_gamma", 0.0, r"--ema_inv_gamma must be a finite number > 0"),
    ("max_grad_norm", math.nan, r"--max_grad_norm must be a finite number >= 0"),
    ("max_grad_norm", math.inf, r"--max_grad_norm must be a finite number >= 0"),
    ("learning_rate", math.nan, r"--learning_rate must be a number in \(0, 1\]"),
    ("adam_beta1", 1.0, r"--adam_beta1 must be a number in \[0, 1\)"),
    ("adam_beta2", math.nan, r"--adam_beta2 must be a number in \[0, 1\)"),
    ("adam_epsilon", 0.0, r"--adam_epsilon must be a number in \(0, 1\]"),
    ("adam_weight_decay", -1.0, r"--adam_weight_decay must be a finite number >= 0"),
    ("p_uncond", math.nan, r"--p_uncond must be a probability in \[0, 1\)"),
    ("snr_gamma", math.inf, r"--snr_gamma must be a finite number > 0"),
    ("seed", -1, r"--seed must be a whole number from 0 to 2\*\*63 - 1"),
    ("seed", 10**21, r"--seed must be a whole number from 0 to 2\*\*63 - 1"),
    # sizes that would allocate (or run) before anything else failed
    ("ddpm_num_steps", 10**9, r"--ddpm_num_steps must be a whole number from 1 to 100,000"),
    ("num_train_images", 10**9, r"--num_train_images must be a whole number from 1 to 5,000,000"),
    ("num_validation_images", 100_000, r"--num_validation_images must be a whole number from 1 to 256"),
    ("num_cpu_threads", 100_000, r"--num_cpu_threads must be a whole number from 1 to \d+, the CPU cores"),
    ("dataloader_num_workers", 5_000, r"--dataloader_num_workers must be a whole number from 0 to \d+"),
    ("device_data_budget_mb", 1e308, r"--device_data_budget_mb must be a number of megabytes > 0 and at most"),
    ("device_data_budget_mb", math.nan, r"--device_data_budget_mb must be a number of megabytes > 0"),
    ("train_batch_size", 10**9, r"--train_batch_size must be a whole number from 1 to 65,536"),
    ("resolution", 10**6, r"--resolution must be a whole number of pixels from 1 to 4096"),
    ("max_train_steps", 10**12, r"--max_train_steps must be a whole number from 1 to 1,000,000,000"),
    ("context_mlp_dim", 10**9, r"--context_mlp_dim must be a whole number from 0 to 16384"),
]


@pytest.mark.parametrize("flag, value, message", BAD_FLAGS, ids=[f"{f}={v}" for f, v, _ in BAD_FLAGS])
def test_numeric_flags_out_of_range_are_refused_before_any_work(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        resolve(tmp_path, **{flag: value})
    assert not (tmp_path / "run").exists()


def test_flags_at_the_edges_of_their_ranges_are_accepted(tmp_path):
    cores = training_config.machine_cpu_cores()
    resolve(
        tmp_path,
        ema_max_decay=1.0,
        ema_power=2 / 3,
        max_grad_norm=0.0,
        adam_beta1=0.0,
        seed=2**63 - 1,
        num_cpu_threads=cores,
        dataloader_num_workers=cores,
        num_validation_images=256,
        ddpm_num_steps=100_000,
        device_data_budget_mb=1e-3,
        snr_gamma=0.0,
    )


# ----------------------------------------------------------------------------------------------------------------
# Wrong without a word: finite inputs that overflow give an error naming the likely cause, not black images
# ----------------------------------------------------------------------------------------------------------------


def fast_path(pipe, monkeypatch):
    """Route the pipeline's calls through hfdiff's FastSampler on the CPU (the CUDA path's code, without the graph)."""
    from hfdiff.fast_sampling import FastSampler

    sampler = FastSampler(pipe)
    monkeypatch.setattr(pipe, "_fast_sampler_for", lambda *args: sampler)
    return sampler


OVERFLOWS = {
    "guidance_scale=1e30": ({"class_labels": ["hero", "food"], "guidance_scale": 1e30}, r"guidance_scale=1e\+30"),
    "context of 1e30": ({"context": torch.full((2, 5), 1e30)}, r"context or prompt_embeds with values up to 1e\+30"),
    "latents of 1e30": ({"latents": torch.full((2, 3, 16, 16), 1e30)}, r"latents with values up to 1e\+30"),
}


@pytest.mark.parametrize("path", ["loop", "fast sampler"])
@pytest.mark.parametrize("case", sorted(OVERFLOWS))
def test_finite_inputs_that_overflow_are_an_error_naming_the_cause(monkeypatch, path, case):
    kwargs, cause = OVERFLOWS[case]
    pipe = make_pipe()
    sampler = fast_path(pipe, monkeypatch) if path == "fast sampler" else None
    with pytest.raises(
        ValueError, match=rf"Sampling produced \d+ NaN or infinite value\(s\).*Likely cause: .*{cause}"
    ):
        pipe(batch_size=2, num_inference_steps=3, generator=seed(0), output_type="np", **kwargs)
    if sampler is not None:
        assert sampler._buffers  # the call ran on the fast sampler


def test_huge_weights_and_a_zero_snr_eps_schedule_are_named(monkeypatch):
    pipe = make_pipe()
    with torch.no_grad():
        for parameter in pipe.unet.parameters():
            parameter.fill_(1e38)
    with pytest.raises(ValueError, match=r"Likely cause: UNet weights up to 1e\+38"):
        pipe(batch_size=1, num_inference_steps=2, output_type="pt")

    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=T, rescale_betas_zero_snr=True,
                                                   timestep_spacing="trailing"))  # fmt: skip
    with pytest.raises(ValueError, match=r"rescale_betas_zero_snr=True and prediction_type='epsilon'"):
        pipe(batch_size=1, num_inference_steps=2, output_type="pt")


def test_an_ordinary_call_passes_the_output_check():
    images = make_pipe()(
        batch_size=2, class_labels="hero", guidance_scale=3.0, num_inference_steps=3, output_type="pt"
    )
    assert torch.isfinite(images.images).all()


# ----------------------------------------------------------------------------------------------------------------
# Unbounded: loaded configs checked before anything is built
# ----------------------------------------------------------------------------------------------------------------

SCHEDULER_CONFIGS = {
    "T = 1e9": (
        {"num_train_timesteps": 10**9},
        r"num_train_timesteps=1000000000 is not usable \(a whole number from 1",
    ),
    "trained_betas shorter than T": (
        {"trained_betas": [0.01] * 5},
        r"trained_betas=a list of 5 values is not usable \(one beta per step: num_train_timesteps=20 of them\)",
    ),
    "clip_sample_range NaN": ({"clip_sample_range": math.nan}, r"clip_sample_range=nan is not usable"),
    "clip_sample_range 0": ({"clip_sample_range": 0}, r"clip_sample_range=0 is not usable"),
    "steps_offset beyond T": ({"steps_offset": 10**9}, r"steps_offset=1000000000 is not usable"),
}


@pytest.mark.parametrize("case", sorted(SCHEDULER_CONFIGS))
def test_damaged_scheduler_configs_are_refused_on_loading(tmp_path, case):
    import time

    entries, message = SCHEDULER_CONFIGS[case]
    make_pipe().save_pretrained(tmp_path / "model")
    config_path = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **entries}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"scheduler_config.json: {message}"):
        SpriteDiffusionPipeline.from_pretrained(tmp_path / "model")
    assert time.perf_counter() - start < 5.0
    for cls in (SpriteDDPMScheduler, SpriteDDIMScheduler):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: {message}"):
            cls(**{"num_train_timesteps": T, **entries})


@pytest.mark.parametrize("groups, message", [(0, r"whole numbers from 1 to 1024"), (3, r"a divisor of every")])
def test_norm_num_groups_that_group_norm_cannot_take(groups, message):
    with pytest.raises(ValueError, match=rf"norm_num_groups={groups} is beyond what hfdiff builds \({message}"):
        ContextUNet2DModel(norm_num_groups=groups)


# ----------------------------------------------------------------------------------------------------------------
# One line, not a traceback: the `hfdiff` command
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "model"
    make_pipe().save_pretrained(folder)
    return str(folder)


def hfdiff_error(capsys, *argv) -> str:
    """Run `hfdiff argv...`; it must fail with exit code 2 and one line on stderr. Returns the line."""
    from hfdiff.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


CLI_CASES = {
    "--device bogus": (["--device", "bogus"], r"--device 'bogus' is not a torch device; pass cpu, cuda"),
    "--seed -1": (["--seed", "-1"], r"--seed must be a whole number from 0 to 2\*\*63 - 1; got -1"),
    "--seed 1e21": (["--seed", "1e21"], r"argument --seed: invalid int value: '1e21'"),
    "--per_class 0": (["--per_class", "0"], r"--per_class must be a whole number from 1 to 256"),
    "--per_class 1e5": (["--per_class", "100000"], r"--per_class must be a whole number from 1 to 256"),
    "--guidance_scale nan": (["--guidance_scale", "nan"], r"--guidance_scale must be a number from 0 to 1000"),
    "--guidance_scale 1e30": (["--guidance_scale", "1e30"], r"--guidance_scale must be a number from 0 to 1000"),
    "--eta inf": (["--eta", "inf"], r"--eta must be a number in \[0, 1\]"),
    "--num_inference_steps 0": (["--num_inference_steps", "0"], r"--num_inference_steps must be a whole number"),
    "--output a folder": (["--output", "."], r"--output \. is a folder; pass a file name"),
    "--output with a name over 255 bytes": (
        ["--output", "x" * 300 + ".png"],
        r"--output: the path part x+\.\.\. is 304 bytes long, over the file system's limit of 255",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_sample_flags_out_of_range_are_one_line(capsys, saved_model, case):
    argv, message = CLI_CASES[case]
    err = hfdiff_error(capsys, "sample", saved_model, "--device", "cpu", *argv)
    assert re.search(message, err), err


def test_device_cuda_without_a_gpu_is_one_line(capsys, saved_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = hfdiff_error(capsys, "sample", saved_model, "--device", "cuda")
    assert "--device cuda: torch sees no CUDA GPU here; pass --device cpu" in err


@pytest.mark.parametrize("command", ["sample", "evaluate", "report"])
def test_outputs_on_a_read_only_file_system_are_refused_before_sampling(capsys, saved_model, tmp_path, monkeypatch,
                                                                       command):  # fmt: skip
    import errno
    import os

    def read_only(path, mode, *args, **kwargs):
        return not (mode & os.W_OK) and real_access(path, mode)

    real_access = os.access
    monkeypatch.setattr(os, "access", read_only)  # what access(2) answers on a read-only mount, even for root
    loaded = []
    monkeypatch.setattr("hfdiff.cli.load_pipeline", lambda *a: loaded.append(a))
    output = ["--output_dir", str(tmp_path / "report")] if command == "report" else ["--output", str(tmp_path / "x")]
    err = hfdiff_error(capsys, command, saved_model, "--device", "cpu", *output)
    assert "cannot be written: no write permission in" in err and "read-only file system" in err
    assert not loaded  # refused before the model was loaded

    # a file system that turns read-only after the checks: one line naming the file, not a traceback
    monkeypatch.setattr(os, "access", real_access)

    def fail_to_write(args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x"))

    from hfdiff import cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, fail_to_write))
    err = hfdiff_error(capsys, "sample", saved_model, "--device", "cpu", "--output", str(tmp_path / "x"))
    assert f"could not write ({tmp_path / 'x'}): Read-only file system" in err


def _with_func(parser, func):
    original = parser.parse_args

    def parse_args(argv=None):
        args = original(argv)
        args.func = func
        return args

    parser.parse_args = parse_args
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Training data: labels sized before anything is built, metadata.jsonl read with one-line errors
# ----------------------------------------------------------------------------------------------------------------


def test_a_label_outlier_of_a_billion_is_refused_at_once():
    import time

    import numpy as np

    from hfdiff.data.npy import check_class_indices

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"largest is 1000000000, so classes 3\.\.999999999 of 0\.\.1000000000 have"):
        check_class_indices(np.array([0, 1, 2, 10**9]), "labels")
    with pytest.raises(ValueError, match=r"has 20,000 classes, more than the 16,384"):
        check_class_indices(np.arange(20_000), "labels")
    assert time.perf_counter() - start < 1.0


def test_a_one_hot_label_file_wider_than_the_model_takes_is_refused_from_its_header(tmp_path, monkeypatch):
    import numpy as np

    from hfdiff.data import load_npy_sprites

    np.save(tmp_path / "sprites.npy", np.zeros((3, 16, 16, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.eye(3, 50_000, dtype=np.float32))
    real_asarray = np.asarray
    read = []
    monkeypatch.setattr(np, "asarray", lambda a, *args, **kw: read.append(a.shape) or real_asarray(a, *args, **kw))
    with pytest.raises(ValueError, match=r"one-hot rows 50,000 wide, more than the 16,384 classes"):
        load_npy_sprites(tmp_path / "sprites.npy", tmp_path / "labels.npy")
    assert (3, 50_000) not in read  # refused from the .npy header, before the rows were read


def caption_folder(root, rows):
    import PIL.Image

    root.mkdir()
    for i in range(3):
        PIL.Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(root / f"{i}.png")
    if rows is not None:
        (root / "metadata.jsonl").write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    return str(root)


def text_load(folder):
    from hfdiff.training import load_training_data

    return load_training_data(TrainingConfig(train_data_dir=folder, conditioning="text"), conditional=True)


ROW = '{"file_name": "%s", "text": "a red sprite"}\n'
BAD_METADATA = {
    "empty": ("", r"metadata.jsonl is empty; write one line per image"),
    "blank lines": ("\n\n", r"metadata.jsonl is empty"),
    "not UTF-8": (b'{"file_name": "0.png", "text": "caf\xe9"}\n', r"metadata.jsonl is not UTF-8 text \(byte 35"),
    "not JSON": (ROW % "0.png" + "{oops\n", r"metadata.jsonl, line 2 is not JSON"),
    "no file_name": ('{"text": "a red sprite"}\n', r'line 1 has no "file_name"'),
    "outside the folder": (ROW % "../outside.png", r"line 1 names '\.\./outside\.png', which is not inside"),
    "absolute path": (ROW % "/etc/passwd", r"line 1 names '/etc/passwd', which is not inside"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_metadata_that_cannot_be_read_is_one_line(tmp_path, case):
    rows, message = BAD_METADATA[case]
    folder = caption_folder(tmp_path / "captions", rows)
    with pytest.raises(ValueError, match=rf"--train_data_dir {folder}: .*{message}"):
        text_load(folder)


def test_images_without_a_metadata_row_are_named_in_a_warning(tmp_path, caplog):
    import logging

    folder = caption_folder(tmp_path / "captions", ROW % "0.png" + ROW % "2.png" + ROW % "7.png")
    with caplog.at_level(logging.WARNING, logger="hfdiff"):
        data = text_load(folder)
    assert len(data.captions) == 2
    assert (
        "1 of the 3 images under" in caplog.text and "left out of training" in caplog.text and "1.png" in caplog.text
    )
    assert "1 row(s) of" in caplog.text and "7.png" in caplog.text


def test_streaming_a_saved_set_smaller_than_the_shard_count(tmp_path):
    import datasets
    import numpy as np
    import PIL.Image

    from hfdiff.training import load_training_data

    images = [PIL.Image.fromarray(np.full((8, 8, 3), 6 * i, np.uint8)) for i in range(40)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": images, "label": [i % 2 for i in range(40)]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "d")
    config = TrainingConfig(dataset_name=str(tmp_path / "d"), dataset_streaming=True, max_train_steps=2)
    data = load_training_data(config, conditional=True)
    assert data.streaming and sum(1 for _ in data.images.dataset) == 40


# ----------------------------------------------------------------------------------------------------------------
# Unbounded: text encoder configs are limited as the UNet's are, before the model is built
# ----------------------------------------------------------------------------------------------------------------

HOSTILE_ENCODERS = {
    "100,000 layers": ({"num_hidden_layers": 100_000}, r"num_hidden_layers=100000 is beyond what hfdiff loads"),
    "a vocabulary of 1e9": ({"vocab_size": 10**9}, r"vocab_size=1000000000 is beyond"),
    "1e9 positions": ({"max_position_embeddings": 10**9}, r"max_position_embeddings=1000000000 is beyond"),
    "wide and deep": (
        {"hidden_size": 16384, "intermediate_size": 65536, "num_hidden_layers": 128},
        r"about [\d,]+ parameters .* over the 20,000,000,000",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENCODERS))
def test_hostile_text_encoder_configs_are_refused_within_a_second(tmp_path, case):
    import time

    from test_text import save_tiny_bert
    from test_text_pipeline import make_text_pipe

    from hfdiff.text import load_text_encoder

    entries, message = HOSTILE_ENCODERS[case]
    encoder = save_tiny_bert(tmp_path / "encoder")
    make_text_pipe(encoder).save_pretrained(tmp_path / "model")
    for config_path in (encoder / "config.json", tmp_path / "model" / "text_encoder" / "config.json"):
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **entries}))
    for load in (
        lambda: load_text_encoder(encoder),  # --text_encoder_name_or_path
        lambda: SpriteDiffusionPipeline.from_pretrained(tmp_path / "model"),
    ):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            load()
        assert time.perf_counter() - start < 1.0


def test_an_encoder_folder_with_only_pickled_weights_is_one_line(tmp_path):
    from test_text import save_tiny_bert

    from hfdiff.text import load_text_encoder

    encoder = save_tiny_bert(tmp_path / "encoder")
    (encoder / "model.safetensors").rename(encoder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds only pickled weights \(pytorch_model\.bin\), which hfdiff never"):
        load_text_encoder(encoder)
    with pytest.raises(ValueError, match=r"--text_encoder_name_or_path .*pytorch_model\.bin"):
        resolve_defaults(
            TrainingConfig(
                output_dir=str(tmp_path / "run"), conditioning="text", text_encoder_name_or_path=str(encoder)
            ),
            "cpu",
            conditional=True,
        )


# ----------------------------------------------------------------------------------------------------------------
# One line, not a traceback: the training scripts and the pipeline's arguments
# ----------------------------------------------------------------------------------------------------------------


def test_logging_dir_and_output_dir_paths_that_cannot_be_written(tmp_path):
    from hfdiff.training.output_folder import RUN_MARKER

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_MARKER).write_text('{"written_by": "hfdiff training"}')  # a run's folder: training's own
    (tmp_path / "run" / "logs").write_text("a file where the logs would go")
    with pytest.raises(ValueError, match=r"--logging_dir logs: .*/run/logs is a file, not a folder"):
        resolve(tmp_path)
    resolve(tmp_path, logging_dir="tracker")
    for outside in ("/tmp/elsewhere", "../logs", ""):
        with pytest.raises(ValueError, match=r"--logging_dir .* must be a folder name relative to --output_dir"):
            resolve(tmp_path, logging_dir=outside)
    long = str(tmp_path / ("x" * 300) / "run")
    with pytest.raises(ValueError, match=r"--output_dir: the path part x+\.\.\. is 300 bytes long, over .* 255 bytes"):
        resolve_defaults(TrainingConfig(output_dir=long), "cpu", conditional=True)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"global_step": "12"}, r"global_step is '12', expected a whole number >= 0"),
        ({"global_step": -4}, r"global_step is -4, expected a whole number >= 0"),
        ({"run": ["not", "a", "dict"]}, r"run is \['not', 'a', 'dict'\], expected a JSON object"),
        ({"seed": True}, r"seed is True, expected a whole number >= 0"),
    ],
)
def test_a_hand_edited_training_state_is_named(tmp_path, edit, message):
    from hfdiff.training.checkpoints import STATE_FILE, read_training_state

    checkpoint = tmp_path / "checkpoint-12"
    checkpoint.mkdir()
    (checkpoint / STATE_FILE).write_text(json.dumps({"global_step": 12, "seed": 0, "run": {}, **edit}))
    with pytest.raises(ValueError, match=rf"training_state.json: {message}\. The file was edited or damaged"):
        read_training_state(str(checkpoint))
    (checkpoint / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"training_state.json is not valid JSON"):
        read_training_state(str(checkpoint))


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (KeyboardInterrupt(), 130, r"error: interrupted \(Ctrl-C\)\. The checkpoints already complete are unchanged"),
        ("save", 1, r"error: Could not write the checkpoint .*No space left on device"),
        (ValueError("--seed must be a whole number"), 2, r"error: --seed must be a whole number"),
    ],
)
def test_how_the_training_scripts_end(capsys, tmp_path, raised, code, line):
    import errno
    import os

    from hfdiff.training.checkpoints import save_error
    from hfdiff.training.script import run_training_script

    def main(argv):
        if raised == "save":
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            try:
                raise cause
            except OSError as error:
                raise save_error(f"checkpoint {tmp_path / 'checkpoint-3'}", str(tmp_path), error) from error
        raise raised

    assert run_training_script(main, []) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and re.search(line, err), err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": 1.5}, r"class_labels holds 1\.5 \(float\); a class label is an index \(int\) in 0\.\.4"),
        ({"class_labels": [0, True]}, r"class_labels holds True \(bool\)"),
        ({"num_inference_steps": 2.5}, r"num_inference_steps must be a whole number of steps, got 2\.5"),
    ],
)
def test_pipeline_arguments_of_the_wrong_type_name_the_argument(kwargs, message):
    pipe = make_pipe()
    with pytest.raises(ValueError, match=message):
        pipe(**{"batch_size": 2, "num_inference_steps": 2, "output_type": "np", **kwargs})


def test_text_arguments_of_the_wrong_type_name_the_argument(tmp_path):
    from test_text import save_tiny_bert
    from test_text_pipeline import make_text_pipe

    pipe = make_text_pipe(save_tiny_bert(tmp_path / "encoder"))
    with pytest.raises(ValueError, match=r"prompt must be a string or a non-empty list of strings, got 5"):
        pipe(prompt=5, num_inference_steps=2, output_type="np")
    with pytest.raises(ValueError, match=r"prompt_embeds must be a torch.Tensor \(N, context_dim\), got list"):
        pipe(prompt_embeds=[[0.0] * 32], num_inference_steps=2, output_type="np")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ('{"norm_num_groups": 0}', r"--model_config_overrides: norm_num_groups=0 is beyond what hfdiff builds"),
        (
            '{"block_out_channels": [16, 1000000]}',
            r"--model_config_overrides: block_out_channels=\(16, 1000000\) is beyond",
        ),
    ],
)
def test_model_config_overrides_beyond_the_limits_are_refused_with_the_flags(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve(tmp_path, model_config_overrides=overrides)


def test_a_loaded_folders_diffusers_scheduler_is_limited_too(tmp_path):
    """Training saves diffusers' DPMSolverMultistepScheduler (the dpm++ recipe): a hand-edited T of 10**9 in its
    config is refused by the loader before any table is built, as a sprite scheduler's is."""
    import json

    from tiny import make_pipe

    from hfdiff import SpriteDiffusionPipeline
    from hfdiff.samplers import with_sampler

    with_sampler(make_pipe(), "dpm++").save_pretrained(tmp_path / "pipe")
    config_path = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    assert config["_class_name"] == "DPMSolverMultistepScheduler"
    config_path.write_text(json.dumps({**config, "num_train_timesteps": 10**9}))
    with pytest.raises(ValueError, match=r"scheduler_config\.json: num_train_timesteps=1000000000 is not usable"):
        SpriteDiffusionPipeline.from_pretrained(tmp_path / "pipe")
