import json
import shutil
import subprocess
import sys

import PIL.Image
import pytest
import torch
from tiny import TINY_UNET as TINY

from hfdiff import ContextUNet2DModel, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.cli import PICTURES, main
from hfdiff.data import SPRITE_CLASSES

COMMANDS = ["sample", "visualize", "train-classifier", "evaluate", "report"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = ContextUNet2DModel(**TINY, context_dim=5, class_names=list(SPRITE_CLASSES))
    folder = tmp_path_factory.mktemp("tiny-sprite-model")
    SpriteDiffusionPipeline(unet=unet, scheduler=SpriteDDPMScheduler(num_train_timesteps=20)).save_pretrained(folder)
    return folder


def test_console_script_help():
    command = [shutil.which("hfdiff")] if shutil.which("hfdiff") else [sys.executable, "-m", "hfdiff.cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert all(name in result.stdout for name in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: hfdiff {command}" in capsys.readouterr().out


def test_sample_writes_a_grid(model_dir, tmp_path):
    output = tmp_path / "out" / "grid.png"
    assert main(["sample", str(model_dir), "--per_class", "3", "--output", str(output), "--device", "cpu"]) == 0
    with PIL.Image.open(output) as image:
        assert image.height == 5 * 64 + 4 * 2 and image.width > 3 * 64
    subset = tmp_path / "subset.png"
    args = ["sample", str(model_dir), "--class_names", "food", "--scheduler", "ddim", "--num_inference_steps", "5"]
    assert main([*args, "--per_class", "2", "--output", str(subset)]) == 0
    with PIL.Image.open(subset) as image:
        assert image.height == 64


def test_visualize_all(model_dir, tmp_path):
    assert (
        main(["visualize", "all", "--model", str(model_dir), "--output_dir", str(tmp_path), "--per_class", "2"]) == 0
    )
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(file for file, _ in PICTURES.values())
    with PIL.Image.open(tmp_path / "denoising.gif") as gif:
        assert gif.n_frames == 1 + 19  # x_T and every step of the default sampler: dpm++, 19 of T = 20 ("leading")
    for path in tmp_path.iterdir():
        assert path.stat().st_size < 1_000_000


def test_visualize_without_model_draws_what_it_can(tmp_path, capsys):
    assert main(["visualize", "all", "--output_dir", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "forward_process.png",
        "schedules.png",
        "timestep_embedding.png",
    ]
    assert "skipped samples (needs --model)" in capsys.readouterr().out
    assert main(["visualize", "samples", "--output_dir", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_plots_without_matplotlib(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert main(["visualize", "schedules", "--output_dir", str(tmp_path)]) == 2
    assert 'pip install "hfdiff[plots]"' in capsys.readouterr().err
    assert main(["visualize", "all", "--output_dir", str(tmp_path)]) == 0  # draws what needs no matplotlib
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forward_process.png"]
    assert "skipped schedules" in capsys.readouterr().out
    assert main(["report", str(model_dir), "--output_dir", str(tmp_path / "report")]) == 2  # before any sampling
    assert "hfdiff[plots]" in capsys.readouterr().err and not (tmp_path / "report").exists()


def test_errors_for_people(model_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["sample", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["sample", str(model_dir), "--class_names", "wizard", "--output", str(tmp_path / "x.png")]) == 2
    assert "wizard" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["report", str(model_dir), "--steps", "ten", "--output_dir", str(tmp_path)]) == 2


def test_evaluate_trains_the_classifier_on_first_use_then_report(model_dir, tmp_path, capsys):
    data = ["--num_train_images", "500", "--classifier_epochs", "1", "--device", "cpu"]
    output = tmp_path / "metrics.json"
    assert main(["evaluate", str(model_dir), "--per_class", "2", "--output", str(output), *data]) == 0
    assert (model_dir / "classifier" / "classifier.safetensors").is_file()
    metrics = json.loads(output.read_text())
    assert metrics["images"] == 10 and "frechet_floor" in metrics and "fid_note" in metrics
    assert "training one" in capsys.readouterr().out

    report = tmp_path / "report"
    args = ["report", str(model_dir), "--output_dir", str(report), "--per_class", "1", "--steps", "2", "full"]
    assert main([*args, "--samplers", "DDPM", "DDIM eta=0", *data]) == 0
    out = capsys.readouterr().out
    assert "training one" not in out and "classifier:" in out  # the cached classifier is reused
    assert sorted(path.name for path in report.iterdir()) == ["report.json", "report.md", "report.png"]
    assert json.loads((report / "report.json").read_text())[1]["steps"] == 20  # "full" = T steps


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    from test_evaluate_text import make_text_pipe

    folder = tmp_path_factory.mktemp("tiny-text-model")
    make_text_pipe(folder / "bert").save_pretrained(folder / "pipe")
    return folder / "pipe"


def test_sample_prompts_write_a_row_per_prompt(text_model_dir, tmp_path):
    output = tmp_path / "prompts.png"
    args = ["sample", str(text_model_dir), "--prompt", "a green slime", "--prompt", "a red apple", "--prompt", "hero"]
    assert main([*args, "--num_images_per_prompt", "2", "--output", str(output), "--device", "cpu"]) == 0
    with PIL.Image.open(output) as image:
        assert image.height == 3 * 64 + 2 * 2 and image.width > 2 * 64


@pytest.mark.parametrize(
    "which, extra, message",
    [
        ("class", ["--prompt", "a green slime"], "has no text encoder"),
        ("text", ["--class_names", "hero"], "is a text model"),
        ("text", [], "give one or more --prompt"),
        ("text", ["--negative_prompt", "blue"], "--negative_prompt needs --prompt"),
    ],
)
def test_sample_conditioning_mistakes_are_one_line_errors(which, extra, message, model_dir, text_model_dir, capsys):
    folder = text_model_dir if which == "text" else model_dir
    assert main(["sample", str(folder), *extra, "--device", "cpu"]) == 2
    # the last line: transformers may draw a "Loading weights" bar on stderr before it
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hfdiff sample: error: ") and message in err, err


# The tiny test encoder reads 16 tokens, so some generator captions are cut; that warning is tested in test_text.
@pytest.mark.filterwarnings("ignore:.*captions are longer than the text encoder:UserWarning")
def test_evaluate_a_text_model(text_model_dir, tmp_path, capsys):
    output = tmp_path / "text_metrics.json"
    small = ["--num_train_images", "500", "--classifier_epochs", "1", "--attribute_epochs", "1"]
    text = ["--guidance_scales", "1", "--prompts_per_class", "1", "--images_per_prompt", "1"]
    args = ["evaluate", str(text_model_dir), *small, *text, "--held_out", "kind=slime,colour=purple"]
    args += ["--per_held_out", "1", "--classifier", str(tmp_path / "clf"), "--output", str(output), "--device", "cpu"]
    assert main([*args, "--attribute_classifier", str(tmp_path / "probe")]) == 0
    out = capsys.readouterr().out
    assert "| held-out combinations | 1 |" in out and "| paraphrases | 1 |" in out
    metrics = json.loads(output.read_text())
    assert metrics["held_out_combinations"] == [{"kind": "slime", "colour": "purple"}]
    assert set(metrics["attribute_classifier_accuracy"]) == {"class", "kind", "colour"}
    assert (tmp_path / "probe" / "attribute_classifier.safetensors").is_file()


def test_held_out_on_a_class_model_is_an_error(model_dir, capsys):
    assert main(["evaluate", str(model_dir), "--held_out", "kind=slime,colour=purple", "--device", "cpu"]) == 2
    assert "--held_out is for text models" in capsys.readouterr().err


def test_held_out_combinations_come_from_the_model_card(tmp_path):
    from hfdiff.cli import build_parser, held_out_combinations

    config = {"conditioning": "text", "holdout": ["kind=slime,colour=purple", "kind=sword,colour=golden"]}
    card = "# model\n\n## Training configuration\n\n```json\n" + json.dumps(config, indent=2) + "\n```\n"
    (tmp_path / "README.md").write_text(card)
    args = build_parser().parse_args(["evaluate", str(tmp_path)])
    assert held_out_combinations(args) == config["holdout"]
    args = build_parser().parse_args(["evaluate", str(tmp_path), "--held_out", "kind=bat,colour=red"])
    assert held_out_combinations(args) == ["kind=bat,colour=red"]
    (tmp_path / "README.md").write_text("# a card without a configuration\n")
    assert held_out_combinations(build_parser().parse_args(["evaluate", str(tmp_path)])) == []


def test_train_classifier_on_a_dataset(tmp_path, capsys):
    """--dataset_name (a save_to_disk folder) with its own column names, resized as training would (--resolution):
    the classifier takes the training loader's images and knows the set's class names."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(24):
        image = rng.integers(0, 40, size=(8, 8), dtype=np.uint8)
        image[:, :3] = 250 if i % 2 else 0  # class "lit" has a bright left edge, class "dark" none
        rows.append(PIL.Image.fromarray(image))
        labels.append(i % 2)
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["dark", "lit"])})
    datasets.Dataset.from_dict({"img": rows, "kind": labels}, features=features).save_to_disk(tmp_path / "set")
    output = tmp_path / "classifier"
    flags = ["--dataset_name", str(tmp_path / "set"), "--image_column", "img", "--label_column", "kind"]
    flags += ["--resolution", "16", "--classifier_epochs", "2", "--device", "cpu", "--output_dir", str(output)]
    assert main(["train-classifier", *flags]) == 0
    config = json.loads((output / "classifier_config.json").read_text())
    assert config["class_names"] == ["dark", "lit"] and config["image_size"] == 16 and config["in_channels"] == 1
    assert "held-out accuracy" in capsys.readouterr().out

    assert main(["train-classifier", "--resolution", "16", "--output_dir", str(output)]) == 2
    assert "--train_data_dir or --dataset_name" in capsys.readouterr().err
