import json
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import TINY_UNET as TINY
from torch import nn

from hfdiff import ContextUNet2DModel, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff import evaluate as ev
from hfdiff.data import SPRITE_CLASSES


def make_pipe(class_names=tuple(SPRITE_CLASSES)) -> SpriteDiffusionPipeline:
    torch.manual_seed(0)
    unet = ContextUNet2DModel(**TINY, context_dim=len(class_names), class_names=list(class_names))
    pipe = SpriteDiffusionPipeline(unet=unet.eval(), scheduler=SpriteDDPMScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def real():
    return ev.real_sprites(num_train=3_000, num_heldout=1_000)


@pytest.fixture(scope="module")
def classifier(real):
    return ev.train_classifier(real.train_images, real.train_labels, real.class_names, epochs=3, progress=False)


def test_classifier_learns_the_procedural_classes(classifier, real):
    assert 50_000 < sum(p.numel() for p in classifier.parameters()) < 150_000
    predicted, features = classifier.predict(real.heldout_images)
    accuracy = ev.conditional_accuracy(predicted, real.heldout_labels, real.class_names)
    assert accuracy["accuracy"] > 0.9, accuracy  # held-out sprites, never seen in training
    assert min(accuracy["per_class"].values()) > 0.75, accuracy
    assert features.shape == (1_000, classifier.config["feature_dim"])


def test_classifier_save_load_round_trip(classifier, real, tmp_path):
    ev.save_classifier(classifier, tmp_path, trained_on=real.description)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ev.CLASSIFIER_CONFIG, ev.CLASSIFIER_WEIGHTS])
    config = json.loads((tmp_path / ev.CLASSIFIER_CONFIG).read_text())
    assert config["class_names"] == list(SPRITE_CLASSES) and config["image_size"] == 16
    loaded = ev.load_classifier(tmp_path)
    x = ev.to_model_input(real.heldout_images[:64])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), classifier(x), rtol=0, atol=0)
    assert ev.classifier_trained_on(tmp_path) == real.description
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        ev.load_classifier(tmp_path / "missing")


def test_classifier_rejects_wrong_image_size(classifier):
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        classifier(torch.zeros(2, 3, 32, 32))


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(300, 8)) * 1.5
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert ev.frechet_distance(a, b) == pytest.approx(ev.frechet_distance(b, a), rel=1e-6)
    shifts = [ev.frechet_distance(a, a + shift) for shift in (0.1, 0.5, 1.0)]
    assert shifts[0] < shifts[1] < shifts[2]
    np.testing.assert_allclose(shifts, [8 * s**2 for s in (0.1, 0.5, 1.0)], rtol=1e-6)  # ||shift||^2, same cov
    # b = 2a + 1: cov_b = 4 cov_a, so FD = ||mu_a + 1||^2 + Tr(S_a + 4 S_a - 2 (4 S_a^2)^(1/2)) = ||mu_a + 1||^2 + Tr(S_a)
    expected = ((a.mean(0) + 1) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert ev.frechet_distance(a, 2 * a + 1) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="same F"):
        ev.frechet_distance(a, b[:, :4])


def test_conditional_accuracy_hand_made():
    target = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 0, 1, 1, 0])
    scores = ev.conditional_accuracy(predicted, target, ["a", "b", "c", "d"])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["per_class"]["a"] == pytest.approx(2 / 3)
    assert scores["per_class"]["b"] == 1.0 and scores["per_class"]["c"] == 0.0
    assert np.isnan(scores["per_class"]["d"])  # no images of that class


def test_evaluate_pipeline(classifier, real):
    pipe = make_pipe()
    metrics = ev.evaluate_pipeline(pipe, classifier, real, per_class=4, generator=torch.manual_seed(0), progress=False)
    assert metrics["images"] == 20 and metrics["seconds"] > 0
    assert 0 <= metrics["accuracy"] <= 1 and list(metrics["per_class"]) == list(SPRITE_CLASSES)
    assert metrics["frechet"] > metrics["frechet_floor"] >= 0  # random weights give noise, far from real sprites
    assert "Fréchet distance" in ev.format_metrics(metrics)
    again = ev.evaluate_pipeline(pipe, classifier, real, per_class=4, generator=torch.manual_seed(0), progress=False)
    assert again["frechet"] == metrics["frechet"]  # deterministic by seed


def test_evaluate_needs_matching_class_names(classifier, real):
    pipe = make_pipe(class_names=("cat", "dog"))
    with pytest.raises(ValueError, match="cat"):
        ev.evaluate_pipeline(pipe, classifier, real, per_class=1, progress=False)


def test_standard_fid_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    available, reason = ev.standard_fid_status()
    assert not available and ("not installed" in reason or "never downloads" in reason)


def test_ddpm_vs_ddim_report(classifier, real, tmp_path):
    pipe = make_pipe()
    rows = ev.ddpm_vs_ddim(pipe, classifier, real, steps=(2, None), per_class=2, progress=False)
    # the recommended sampler first, at its own guidance; its "full" row at the 19 steps it can take of T = 20
    assert [(r["sampler"], r["steps"], r["guidance_scale"]) for r in rows] == [
        ("dpm++", 2, 1.5),
        ("dpm++", 19, 1.5),
        ("DDPM", 2, 1.0),
        ("DDPM", 20, 1.0),
        ("DDIM eta=0", 2, 1.0),
        ("DDIM eta=0", 20, 1.0),
        ("DDIM eta=1", 2, 1.0),
        ("DDIM eta=1", 20, 1.0),
    ]
    paths = ev.write_report(rows, tmp_path / "report")
    table = open(paths["md"], encoding="utf-8").read()
    assert table.count("\n| DD") == 6 and table.count("\n| dpm++ | 19 | 1.5 |") == 1 and "floor" in table
    assert len(json.load(open(paths["json"], encoding="utf-8"))) == 8
    with PIL.Image.open(paths["png"]) as plot:
        assert plot.width > 2 * plot.height > 400  # three panels side by side
    with pytest.raises(ValueError, match="outside"):
        ev.ddpm_vs_ddim(pipe, classifier, real, steps=(50,), per_class=1, progress=False)
    with pytest.raises(ValueError, match="PNDM"):
        ev.ddpm_vs_ddim(pipe, classifier, real, samplers=("PNDM",), per_class=1, progress=False)


def report_rows(samplers=("DDPM", "DDIM eta=0"), accuracy=0.9) -> list[dict]:
    """Rows in ddpm_vs_ddim's format (what report.json stores), with made-up but plausible numbers."""
    return [
        {"sampler": name, "steps": steps, "images": 100, "seconds": steps * 0.01 * (k + 1), "accuracy": accuracy,
         "frechet": 10 / steps + k, "frechet_floor": 0.4}
        for k, name in enumerate(samplers)
        for steps in (10, 25, 50, 500)
    ]  # fmt: skip


def test_report_plot_panels_and_lines():
    image = ev.report_plot(report_rows(), title="a title")
    assert image.mode == "RGB" and 1000 <= image.width <= 1800 and 250 <= image.height <= 600
    pixels = np.asarray(image).astype(int)
    for rgb in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two colours: a line per sampler
        assert (np.abs(pixels - rgb).max(axis=-1) <= 12).sum() > 300, rgb
    unconditional = ev.report_plot(report_rows(accuracy=None))  # no accuracy panel
    assert unconditional.width < image.width * 0.8


def test_report_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "hfdiff\[plots\]"'):
        ev.report_plot(report_rows())


def test_generated_images_are_the_pipelines_pictures():
    pipe = make_pipe()
    images, labels, _ = ev.generate_images(pipe, 2, generator=torch.manual_seed(0), progress=False)
    assert (
        images.dtype == np.uint8
        and images.shape == (10, 16, 16, 3)
        and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    )
    pil = pipe(batch_size=10, class_labels=labels.tolist(), generator=torch.manual_seed(0)).images
    np.testing.assert_array_equal(images, np.stack([np.asarray(image) for image in pil]))  # what a PNG would hold


# ----------------------------------------------------------------------------------------------------------------
# Models trained on an image folder; images larger than the classifier's
# ----------------------------------------------------------------------------------------------------------------

FOLDER_CLASSES = ["bar", "dot", "left"]


def write_folder(folder, class_names=FOLDER_CLASSES, per_class=12):
    """8x8 RGB PNGs, one sub-folder per class: a horizontal bar, a centre dot, a mark on the left edge (which a
    mirror would turn into another picture), each with a little noise."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(class_names):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 40, size=(8, 8, 3), dtype=np.uint8)
            image[[(3, slice(None)), (slice(3, 5), slice(3, 5)), (slice(None), slice(0, 2))][k % 3]] = 230
            PIL.Image.fromarray(image).save(folder / name / f"{i:02d}.png")
    return folder


def train_tiny(output_dir, *flags):
    from tiny import TINY_UNET_JSON

    from hfdiff.training import parse_config, train

    run = ["--model_config_overrides", TINY_UNET_JSON, "--train_batch_size", "8", "--ddpm_num_steps", "20"]
    run += ["--validation_inference_steps", "2", "--num_validation_images", "1", "--lr_warmup_steps", "1"]
    run += ["--max_train_steps", "2", "--num_cpu_threads", "1", "--output_dir", str(output_dir), *flags]
    train(parse_config(run), conditional=True)
    return output_dir


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory):
    folder = write_folder(tmp_path_factory.mktemp("shapes") / "data")
    return folder, train_tiny(tmp_path_factory.mktemp("shapes-model"), "--train_data_dir", str(folder))


def test_fit_flips_only_when_asked():
    images = np.zeros((8, 4, 4, 3), dtype=np.uint8)
    images[:, :, 0] = 255  # a bright left column: its mirror has it on the right
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(48, 2)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.linear(x.flatten(1))

    def loss_fn(logits, index):
        return logits.square().mean()

    for flip, mirrored in ((False, False), (True, True)):
        seen.clear()
        ev.fit(Recorder(), images, loss_fn, epochs=4, batch_size=8, progress=False, flip=flip)
        right_column_lit = torch.cat(seen)[:, :, :, -1].mean(dim=(1, 2)) > 0
        assert bool(right_column_lit.any()) is mirrored


def test_folder_data_is_what_training_saw_without_flips(folder_model):
    folder, _ = folder_model
    real = ev.real_training_data(train_data_dir=str(folder), resolution=16)
    assert real.class_names == FOLDER_CLASSES and not real.flip and real.train_images.shape == (36, 16, 16, 3)
    assert real.num_classifier_train == 18 and len(real.heldout_images) == 18
    # 8x8 made 16x16 by pixel repetition, exactly as the training loader does it
    np.testing.assert_array_equal(real.train_images[:, ::2, ::2], real.train_images[:, 1::2, 1::2])
    assert ev.real_sprites(num_train=10, num_heldout=10).flip


def test_evaluate_cli_on_an_image_folder(folder_model, tmp_path, capsys):
    from hfdiff.cli import main

    folder, model = folder_model
    output = tmp_path / "metrics.json"
    flags = ["--per_class", "4", "--classifier_epochs", "2", "--device", "cpu", "--num_inference_steps", "5"]
    assert main(["evaluate", str(model), "--train_data_dir", str(folder), *flags, "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    assert metrics["images"] == 12 and 0 <= metrics["accuracy"] <= 1
    assert list(metrics["per_class"]) == FOLDER_CLASSES
    assert metrics["frechet"] > 0 and metrics["frechet_floor"] >= 0
    assert "image folder" in ev.classifier_trained_on(model / "classifier")

    other = write_folder(tmp_path / "other", class_names=["cat", "dog", "fish"])
    assert main(["evaluate", str(model), "--train_data_dir", str(other), *flags]) == 2
    error = capsys.readouterr().err
    assert "['bar', 'dot', 'left']" in error and "['cat', 'dog', 'fish']" in error

    # 7 per class are 21 images, more than the 18 held out: refused before sampling
    assert main(["evaluate", str(model), "--train_data_dir", str(folder), *flags, "--per_class", "7"]) == 2
    assert "only 18 are available" in capsys.readouterr().err


def test_larger_sprite_models_are_pooled_to_the_classifier(classifier, real, tmp_path, caplog):
    from tiny import tiny_unet

    from hfdiff.cli import main

    ev.save_classifier(classifier, tmp_path / "classifier", trained_on=real.description)
    model = train_tiny(tmp_path / "sprites-32", "--num_train_images", "16", "--resolution", "32")
    flags = ["--classifier", str(tmp_path / "classifier"), "--per_class", "2", "--num_inference_steps", "3"]
    flags += ["--device", "cpu", "--num_train_images", "100"]
    output = tmp_path / "metrics.json"
    with caplog.at_level("WARNING", logger="hfdiff.evaluate"):
        assert main(["evaluate", str(model), *flags, "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    assert metrics["images"] == 10 and 0 <= metrics["accuracy"] <= 1 and metrics["frechet"] > 0
    assert "average-pooled 2x2" in caplog.text

    # pooling the training data gives the sprites back exactly
    sprites = real.train_images[:4]
    upscaled = sprites.repeat(4, axis=1).repeat(4, axis=2)
    np.testing.assert_array_equal(ev.fit_to_classifier(upscaled, ev.load_classifier(tmp_path / "classifier")), sprites)

    pipe = SpriteDiffusionPipeline(
        unet=tiny_unet(context_dim=5, class_names=list(SPRITE_CLASSES), sample_size=24),
        scheduler=SpriteDDPMScheduler(num_train_timesteps=20),
    )
    pipe.save_pretrained(tmp_path / "sprites-24")
    with pytest.raises(ValueError, match=r"24x24 images but the classifier takes 16x16.*--resolution 24"):
        ev.pool_factor(24, ev.load_classifier(tmp_path / "classifier"))
    assert main(["evaluate", str(tmp_path / "sprites-24"), *flags]) == 2


def test_a_classifier_trained_on_other_data_is_refused(folder_model, tmp_path, capsys):
    """MODEL/classifier remembers which data it was trained on: another --train_data_dir with the same class names
    is refused (its accuracy would be the other data's), and --classifier elsewhere trains one for it."""
    from hfdiff.cli import main

    folder, model = folder_model
    flags = ["--per_class", "4", "--classifier_epochs", "1", "--device", "cpu", "--num_inference_steps", "3"]
    assert main(["evaluate", str(model), "--train_data_dir", str(folder), *flags]) == 0
    capsys.readouterr()
    same_classes = write_folder(tmp_path / "same-classes")
    assert main(["evaluate", str(model), "--train_data_dir", str(same_classes), *flags]) == 2
    error = capsys.readouterr().err
    assert f"The classifier in {model / 'classifier'} was trained on image folder data (" in error
    assert "not on the data given now, image folder same-classes (" in error and "Pass --classifier" in error
    other = ["--classifier", str(tmp_path / "classifier")]
    assert main(["evaluate", str(model), "--train_data_dir", str(same_classes), *flags, *other]) == 0
