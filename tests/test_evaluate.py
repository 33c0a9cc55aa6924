import json
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import TINY_UNET as TINY

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
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        ("DDPM", 2),
        ("DDPM", 20),
        ("DDIM eta=0", 2),
        ("DDIM eta=0", 20),
        ("DDIM eta=1", 2),
        ("DDIM eta=1", 20),
    ]
    paths = ev.write_report(rows, tmp_path / "report")
    table = open(paths["md"], encoding="utf-8").read()
    assert table.count("\n| DD") == 6 and "floor" in table
    assert len(json.load(open(paths["json"], encoding="utf-8"))) == 6
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
