import math
import sys

import numpy as np
import PIL.Image
import pytest
import tiny
import torch
from diffusers import DDPMScheduler

from hfdiff import SpriteDDIMScheduler, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff import visualize as vis

T = tiny.T
CELL = 16 * vis.SCALE


def make_pipe(conditional=True, scheduler=None) -> SpriteDiffusionPipeline:
    return tiny.make_pipe(context_dim=5 if conditional else None, scheduler=scheduler)


def cell(grid: PIL.Image.Image, row: int, col: int, per_row: int, gap: int = 2) -> np.ndarray:
    """The (row, col) image of a labelled_rows grid (labels on the left, rows `gap` apart)."""
    left = grid.width - per_row * CELL
    top = row * (CELL + gap)
    return np.asarray(grid)[top : top + CELL, left + col * CELL : left + (col + 1) * CELL]


def upscaled(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(vis.upscale([image])[0])


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def test_class_grid_rows_are_labelled_classes(pipe):
    grid = vis.class_grid(pipe, per_class=3, generator=torch.manual_seed(0))
    assert grid.height == 5 * CELL + 4 * 2 and grid.width > 3 * CELL  # a label column on the left
    expected = pipe(
        batch_size=15, class_labels=[k for k in range(5) for _ in range(3)], generator=torch.manual_seed(0)
    )
    for row, col in ((0, 0), (2, 1), (4, 2)):
        assert np.array_equal(cell(grid, row, col, 3), upscaled(expected.images[row * 3 + col]))
    label_column = np.asarray(grid)[:CELL, : grid.width - 3 * CELL]
    assert (label_column < 128).any()  # the class name is written there


def test_class_grid_subset_and_errors(pipe):
    grid = vis.class_grid(pipe, per_class=2, class_names=["food", 0], generator=torch.manual_seed(1))
    assert grid.height == 2 * CELL + 2
    with pytest.raises(ValueError, match="wizard"):
        vis.class_grid(pipe, per_class=2, class_names=["wizard"])
    unconditional = make_pipe(conditional=False)
    plain = vis.class_grid(unconditional, per_class=2, generator=torch.manual_seed(0))
    assert plain.size == (2 * CELL, vis.UNCONDITIONAL_ROWS * CELL + (vis.UNCONDITIONAL_ROWS - 1) * 2)  # no labels
    with pytest.raises(ValueError, match="unconditional"):
        vis.class_grid(unconditional, class_names=["hero"])


def test_forward_process_fades_the_image_into_noise():
    scheduler = SpriteDDPMScheduler()
    image = vis.sprite_image("food")
    timesteps = [0, 50, 100, 200, 350, 499]
    panels = vis.forward_process(image, scheduler, timesteps, generator=torch.manual_seed(0))
    assert panels.shape == (1 + len(timesteps), 3, 16, 16)
    assert torch.equal(panels[0], image)  # the first panel is the clean image
    spread = [(panel - image).std().item() for panel in panels[1:]]
    assert all(a < b for a, b in zip(spread, spread[1:])), spread  # noisier with every t
    abar = scheduler.alphas_cumprod[499]
    assert abs(spread[-1] - (1 - abar).sqrt()) < 0.25  # about the noise level of eq. 4
    strip = vis.forward_process_strip(image, scheduler, timesteps, generator=torch.manual_seed(0))
    assert strip.height > 16 * 8 and strip.width >= 7 * 16 * 8
    with pytest.raises(ValueError, match="outside"):
        vis.forward_process(image, scheduler, [500])


def test_sprite_image_unknown_class():
    with pytest.raises(ValueError, match="dragon"):
        vis.sprite_image("dragon")


@pytest.mark.parametrize("every", [1, 3, None])
def test_denoising_frames_and_gif(pipe, tmp_path, every):
    frames = vis.denoising_frames(pipe, class_labels=["hero", "food"], every=every, generator=torch.manual_seed(0))
    expected_every = every or max(1, T // 25)
    recorded = math.ceil(T / expected_every) + ((T - 1) % expected_every != 0)  # every k-th step and the last
    assert len(frames) == 1 + recorded
    assert len({frame.size for frame in frames}) == 1 and frames[0].width >= 2 * CELL
    # the last frame is the finished sample of the same seed
    final = pipe(batch_size=2, class_labels=["hero", "food"], generator=torch.manual_seed(0)).images
    assert np.array_equal(np.asarray(frames[-1])[:CELL, :CELL], upscaled(final[0]))
    path = vis.save_gif(frames, tmp_path / "denoising.gif")
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == len(frames)


def spy_latents(monkeypatch) -> list:
    """Record the `latents` of every pipeline call."""
    seen = []
    original = SpriteDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("latents"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SpriteDiffusionPipeline, "__call__", spy)
    return seen


def test_sampler_comparison_shares_the_starting_noise(pipe, monkeypatch):
    seen = spy_latents(monkeypatch)
    image = vis.sampler_comparison(pipe, per_class=2, num_inference_steps=5, generator=torch.manual_seed(0))
    monkeypatch.undo()
    assert len(seen) == 2 and seen[0] is not None and torch.equal(seen[0], seen[1])
    # the DDIM (eta = 0) panel is exactly DDIM run from that x_T
    ddim = SpriteDiffusionPipeline(unet=pipe.unet, scheduler=SpriteDDIMScheduler.from_config(pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    direct = ddim(
        batch_size=10, class_labels=[k for k in range(5) for _ in range(2)], latents=seen[0], num_inference_steps=5
    ).images
    right_panel = image.crop((image.width - (image.width - 16) // 2, 0, image.width, image.height))
    band = right_panel.height - (5 * CELL + 4 * 2)  # the title band
    right_grid = right_panel.crop((0, band, right_panel.width, right_panel.height))
    assert np.array_equal(cell(right_grid, 1, 1, 2), upscaled(direct[3]))
    assert isinstance(pipe.scheduler, SpriteDDPMScheduler)  # the caller's pipeline is left as it was


def test_extra_noise_comparison(pipe, monkeypatch):
    seen = spy_latents(monkeypatch)
    first = vis.extra_noise_comparison(pipe, per_class=2, generator=torch.manual_seed(0))
    monkeypatch.undo()
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    again = vis.extra_noise_comparison(pipe, per_class=2, generator=torch.manual_seed(0))
    assert np.array_equal(np.asarray(first), np.asarray(again))  # deterministic by seed
    half = first.width // 2
    assert not np.array_equal(np.asarray(first)[:, :half], np.asarray(first)[:, -half:])  # the noise changes it


def test_schedule_data_read_from_the_scheduler():
    data = vis.schedule_data()
    assert list(data) == ["linear", "cosine", "sigmoid"]
    for label, curves in data.items():
        abar = curves["alphas_cumprod"]
        assert abar.shape == (500,) and np.all(np.diff(abar) < 0), label  # strictly decreasing
        assert np.all((curves["betas"] > 0) & (curves["betas"] < 1))
        np.testing.assert_allclose(abar, np.cumprod(1 - curves["betas"]), rtol=1e-6)  # abar_t = prod (1 - beta_s)
    np.testing.assert_allclose(data["linear"]["betas"], SpriteDDPMScheduler().betas.numpy())
    cosine = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    np.testing.assert_allclose(data["cosine"]["betas"], cosine.betas.numpy(), rtol=1e-6)
    assert data["cosine"]["betas"][-1] == pytest.approx(0.999)  # why the beta_t plot has a log axis
    short = vis.schedule_data(SpriteDDPMScheduler(num_train_timesteps=T))
    assert short["cosine"]["betas"].shape == (T,)


def colour_pixels(image: PIL.Image.Image, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(np.asarray(image).astype(int) - rgb).max(axis=-1) <= tolerance).sum())


def test_schedule_curves_draw_a_line_per_schedule():
    image = vis.schedule_curves()
    assert image.mode == "RGB" and 300 <= image.height <= 600 and 700 <= image.width <= 1200
    for rgb in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # matplotlib's first three colours: 3 schedules
        assert colour_pixels(image, rgb) > 200, rgb


def test_timestep_embedding_is_the_unets_own(pipe):
    embedding = vis.timestep_embedding(pipe.unet, T)
    assert embedding.shape == (T, tiny.TINY_UNET["block_out_channels"][0])
    expected = pipe.unet.time_proj(torch.arange(T)).numpy()
    np.testing.assert_array_equal(embedding, expected)
    half = embedding.shape[1] // 2
    np.testing.assert_allclose(embedding[0], [1.0] * half + [0.0] * half)  # t = 0: cos = 1, sin = 0 (flipped)
    image = vis.timestep_embedding_heatmap(pipe.unet, T)
    assert image.mode == "RGB" and 400 <= image.width <= 1000 and 400 <= image.height <= 1000
    assert colour_pixels(image, (253, 231, 37), 20) > 1000  # viridis' yellow: the cos half at t = 0 is +1


def test_plots_without_matplotlib_name_the_extra(pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "hfdiff\[plots\]"'):
        vis.schedule_curves()
    with pytest.raises(ImportError, match=r'pip install "hfdiff\[plots\]"'):
        vis.timestep_embedding_heatmap(pipe.unet, T)
    grid = vis.class_grid(pipe, per_class=1, generator=torch.manual_seed(0))  # sample grids do not need it
    assert grid.height == 5 * CELL + 4 * 2


def test_context_mixtures(pipe, monkeypatch):
    contexts = vis.mixture_contexts(pipe)
    assert contexts.shape == (5, 5)
    torch.testing.assert_close(contexts[0], torch.tensor([1.0, 0, 0.6, 0, 0]))  # hero + 0.6 food
    torch.testing.assert_close(contexts[1], torch.tensor([0, 0, 0.6, 0.4, 0]))  # 0.6 food + 0.4 spell
    seen = spy_latents(monkeypatch)
    grid = vis.context_mixture_grid(pipe, per_mixture=3, generator=torch.manual_seed(0))
    monkeypatch.undo()
    assert grid.height == 5 * CELL + 4 * 2
    latents = seen[0].reshape(5, 3, 3, 16, 16)
    assert all(torch.equal(latents[0], latents[row]) for row in range(5))  # column j: same x_T in every row
    with pytest.raises(ValueError, match="wizard"):
        vis.mixture_contexts(pipe, {"odd": {"wizard": 1.0}})
    with pytest.raises(ValueError, match="unconditional"):
        vis.mixture_contexts(make_pipe(conditional=False))
