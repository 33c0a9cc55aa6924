"""The web demo (hfdiff.demo): the app's logic per model kind, the saved Space app, the command line, a live server
driven by gradio_client, and the page in headless Chromium."""

import os
import re
import shutil

import pytest
from test_text import save_tiny_bert
from test_text_pipeline import make_text_pipe
from tiny import T, make_pipe

import hfdiff.samplers
from hfdiff.demo import MIXTURE, SAMPLERS, Demo, Request, model_controls, sampler_pipeline
from hfdiff.samplers import RECOMMENDED, with_sampler

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def class_pipe():
    return make_pipe()


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_controls_per_model_kind(class_pipe):
    controls = model_controls(class_pipe)
    assert controls.class_names == ["hero", "non-hero", "food", "spell/weapon", "side-facing"]
    assert controls.mixture and controls.guidance and not controls.text
    assert controls.presets["hero + 0.6 food"] == [1.0, 0.0, 0.6, 0.0, 0.0]
    assert len(controls.presets) == 5

    unconditional = model_controls(make_pipe(context_dim=None))
    assert unconditional.class_names is None and not unconditional.mixture and not unconditional.guidance

    unnamed = model_controls(make_pipe(context_dim=3, class_names=None))
    assert unnamed.class_names == ["class 0", "class 1", "class 2"] and unnamed.mixture
    assert unnamed.presets == {}  # the course's mixtures name classes this model does not have

    vectors = model_controls(make_pipe(context_dim=12, class_names=None))  # raw context vectors: nothing to pick
    assert vectors.class_names is None and not vectors.mixture and vectors.guidance

    many = model_controls(make_pipe(context_dim=12, class_names=[f"kind {k}" for k in range(12)]))
    assert many.class_names == [f"kind {k}" for k in range(12)] and not many.mixture  # a slider each: too many


def test_mixture_is_sampled_as_its_context(class_pipe):
    """A preset mixture gives the images the pipeline gives for that context vector, from the same seed."""
    import torch

    demo = Demo(class_pipe)
    weights = demo.controls.presets["hero + 0.6 food"]
    request = Request(num_images=2, seed=3, sampler="ddim", steps=5, class_name=MIXTURE, mixture=weights)
    result = demo.generate(request)
    ddim = sampler_pipeline(class_pipe, "ddim")
    expected = ddim(
        batch_size=2, context=[weights] * 2, num_inference_steps=5, generator=torch.Generator().manual_seed(3)
    ).images
    assert result.grid.size == (2 * 16 * 8, 16 * 8)  # two sprites, upscaled 8x
    scaled = [image.resize((128, 128), resample=0) for image in expected]
    assert result.grid.crop((0, 0, 128, 128)).tobytes() == scaled[0].tobytes()
    assert result.grid.crop((128, 0, 256, 128)).tobytes() == scaled[1].tobytes()


def test_grid_is_nearest_neighbour_and_wraps(class_pipe):
    result = Demo(class_pipe).generate(Request(num_images=10, class_name="food", steps=3))
    assert result.grid.size == (4 * 128, 3 * 128 + 2 * 2)  # four to a row, 2-pixel gaps between rows
    assert Demo(class_pipe).generate(Request(num_images=64, steps=1)).grid.size == (8 * 128, 8 * 128 + 7 * 2)
    block = result.grid.crop((0, 0, 8, 8))
    assert len(block.getcolors()) == 1  # one sprite pixel = one flat 8x8 block: not smoothed
    assert result.gif_path is None and "10 image(s)" in result.summary


def test_gif_and_progress(class_pipe):
    import PIL.Image

    seen = []
    result = Demo(class_pipe).generate(
        Request(num_images=3, class_name="hero", sampler="ddpm", steps=T, gif=True),
        progress=lambda value, desc=None: seen.append(value),
    )
    assert seen == [(i, T) for i in range(1, T + 1)]
    with PIL.Image.open(result.gif_path) as gif:
        assert gif.n_frames == T  # every step (T < 25)
        assert gif.size[0] == 3 * 128


def test_old_gifs_are_removed(class_pipe):
    from hfdiff.demo import KEEP_GIFS

    demo = Demo(class_pipe)
    paths = [demo.generate(Request(num_images=1, steps=1, gif=True)).gif_path for _ in range(KEEP_GIFS + 2)]
    assert sorted(os.listdir(demo.gif_folder)) == sorted(os.path.basename(path) for path in paths[-KEEP_GIFS:])


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        ({"num_images": 10_000}, "10000 images were asked for; this demo makes 1 to 64"),
        ({"num_images": 0}, "1 to 64"),
        ({"prompt": "a green slime"}, "not conditioned on text"),
        ({"class_name": "dragon"}, "Unknown class 'dragon'"),
        ({"class_name": MIXTURE, "mixture": [0, 0, 0, 0, 0]}, "Every mixture weight is 0"),
        ({"class_name": MIXTURE, "mixture": [1, 0]}, "one weight per class (5), got 2"),
        ({"sampler": "euler"}, "Unknown sampler 'euler'"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"steps": T + 1}, f"outside 1..{T}"),
    ],
)
def test_bad_requests_are_refused(class_pipe, request_kwargs, message):
    with pytest.raises(ValueError, match=None) as error:
        Demo(class_pipe).generate(Request(**{"class_name": "hero", "steps": 2, **request_kwargs}))
    assert message in str(error.value)


def test_max_batch_is_configurable(class_pipe):
    demo = Demo(class_pipe, max_batch=4)
    assert demo.generate(Request(num_images=4, steps=2)).grid.width == 4 * 128
    with pytest.raises(ValueError, match="1 to 4 per request"):
        demo.generate(Request(num_images=5, steps=2))
    with pytest.raises(ValueError, match="max_batch must be a positive"):
        Demo(class_pipe, max_batch=0)


def test_unconditional_model_ignores_guidance():
    result = Demo(make_pipe(context_dim=None)).generate(Request(num_images=2, steps=2, guidance_scale=5.0))
    assert "2 image(s)" in result.summary


def test_request_defaults_are_the_samplers_recipe_as_in_python(class_pipe):
    """A request that leaves steps, guidance and eta out runs what `with_sampler(pipe, name)()` runs in Python."""
    demo = Demo(class_pipe)
    for name in SAMPLERS:
        result = demo.generate(Request(sampler=name, num_images=2, class_name="food"))
        python = with_sampler(class_pipe, name)
        python(batch_size=2, class_labels="food", output_type="np")
        assert f"{python.num_timesteps} steps" in result.summary
        assert demo.sampler_defaults(name) == python.sampling_defaults
    assert demo.sampler_defaults("dpm++")["guidance_scale"] == 1.5 and demo.default_steps("dpm++") == 19


def test_sampler_pipeline_keeps_every_component(class_pipe):
    assert next(iter(SAMPLERS)) == RECOMMENDED == Request().sampler  # the recommended sampler is the page's default
    assert SAMPLERS is hfdiff.samplers.SAMPLERS  # one table of samplers, for the page, Python and the CLI
    for name in SAMPLERS:
        other = sampler_pipeline(class_pipe, name)
        assert other.unet is class_pipe.unet
        expected = {"fast": "SpriteDDPMScheduler", "ddpm": "SpriteDDPMScheduler", "ddim": "SpriteDDIMScheduler"}
        expected["dpm++"] = "DPMSolverMultistepScheduler"
        assert type(other.scheduler).__name__ == expected[name]
    assert class_pipe.scheduler.__class__.__name__ == "SpriteDDPMScheduler"  # the shared pipeline is unchanged


def test_text_model_takes_prompts_and_keeps_its_encoder(encoder_folder):
    """A text model gets prompt boxes and no class controls, and every sampler keeps its text encoder."""
    import torch

    pipe = make_text_pipe(encoder_folder)
    demo = Demo(pipe)
    assert demo.controls.text and demo.controls.class_names is None and not demo.controls.mixture
    ddim = sampler_pipeline(pipe, "ddim")
    assert ddim.text_encoder is pipe.text_encoder and ddim.tokenizer is pipe.tokenizer
    request = Request(
        sampler="ddim", num_images=2, steps=4, prompt="a green slime", negative_prompt="a hero", guidance_scale=3.0
    )
    result = demo.generate(request)
    expected = ddim(
        prompt="a green slime",
        negative_prompt="a hero",
        num_images_per_prompt=2,
        guidance_scale=3.0,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert result.grid.crop((0, 0, 128, 128)).tobytes() == expected[0].resize((128, 128), resample=0).tobytes()
    with pytest.raises(ValueError, match="this is a text model; write a prompt"):
        demo.generate(Request(class_name="hero", prompt="a slime", steps=2))


# ----------------------------------------------------------------------------------------------------------------
# The app beside a saved pipeline (a Space)
# ----------------------------------------------------------------------------------------------------------------


def test_save_with_demo_app_writes_a_space(class_pipe, tmp_path):
    from hfdiff.hub import pipeline_files

    plain, space = tmp_path / "plain", tmp_path / "space"
    class_pipe.save_pretrained(plain)
    class_pipe.save_pretrained(space, demo_app=True)
    assert not (plain / "app.py").exists() and "sdk:" not in (plain / "README.md").read_text()
    assert {"app.py", "requirements.txt"} <= set(pipeline_files(space))
    card = (space / "README.md").read_text()
    assert "\nsdk: gradio\n" in card and "\napp_file: app.py\n" in card and "## Try it in the browser" in card
    requirements = (space / "requirements.txt").read_text().split()
    assert requirements[0].startswith("hfdiff>=") and "gradio>=6,<7" in requirements
    assert "build_app(" in (space / "app.py").read_text()


def test_a_plain_save_drops_the_app_an_earlier_demo_save_wrote(class_pipe, tmp_path):
    """Otherwise the stale app.py and requirements.txt would stay and be uploaded beside a card without the Space
    metadata; an app.py the user wrote stays."""
    from hfdiff.demo_app import APP_MARKER, APP_PY
    from hfdiff.hub import pipeline_files

    assert APP_MARKER in APP_PY.splitlines()[0]  # a save recognises hfdiff's app by its first line
    class_pipe.save_pretrained(tmp_path, demo_app=True)
    class_pipe.save_pretrained(tmp_path)
    assert not (tmp_path / "app.py").exists() and not (tmp_path / "requirements.txt").exists()
    assert not {"app.py", "requirements.txt"} & set(pipeline_files(tmp_path))
    (tmp_path / "app.py").write_text("print('my own app')\n")
    class_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "app.py").read_text() == "print('my own app')\n"


def test_saved_app_builds_the_page_from_its_folder(class_pipe, tmp_path):
    """app.py, run as a module (as a Space imports it, without launching), loads its own folder's pipeline."""
    import runpy

    gr = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    class_pipe.save_pretrained(tmp_path / "model", demo_app=True)
    namespace = runpy.run_path(str(tmp_path / "model" / "app.py"))
    app = namespace["demo"]
    assert isinstance(app, gr.Blocks)
    assert [fn.api_name for fn in app.fns.values() if fn.api_visibility == "public"] == ["generate"]
    assert "Sprite diffusion: model" in app.title


def test_page_shows_only_the_controls_a_model_takes(class_pipe, encoder_folder):
    from hfdiff.demo import build_app

    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")

    def visible(pipe) -> set[str]:
        app = build_app(pipe, max_batch=8)
        labels = {block.label: block for block in app.blocks.values() if getattr(block, "label", None)}
        shown = {label for label, block in labels.items() if block.visible}
        assert labels["images"].maximum == 8  # the slider stops at max_batch
        return shown & {"class", "hero", "prompt", "negative prompt", "guidance scale", "sampler", "steps", "seed"}

    always = {"sampler", "steps", "seed"}
    assert visible(class_pipe) == always | {"class", "hero", "guidance scale"}
    assert visible(make_text_pipe(encoder_folder)) == always | {"prompt", "negative prompt", "guidance scale"}
    assert visible(make_pipe(context_dim=None)) == always


def test_push_to_hub_sends_the_app(class_pipe, fake_hub):
    class_pipe.push_to_hub("sprite-fan/tiny-sprites-demo", token="hf_test", demo_app=True)
    (upload,) = fake_hub["uploads"]
    assert {"app.py", "requirements.txt", "README.md", "model_index.json"} <= set(upload["files"])
    assert (upload["copy"] / "app.py").read_text().startswith('"""A web demo')


# ----------------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------------


def test_cli_refuses_bad_input(class_pipe, tmp_path, capsys):
    import socket

    from hfdiff.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["demo", str(tmp_path / "empty")]) == 2
    assert "is not a saved pipeline folder" in capsys.readouterr().err
    assert main(["demo", str(tmp_path), "--max_batch", "0"]) == 2
    assert "--max_batch must be a whole number from 1" in capsys.readouterr().err
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["demo", str(tmp_path / "empty"), "--port", str(port)]) == 2  # the port is checked first
    err = capsys.readouterr().err
    assert f"Cannot serve on 127.0.0.1:{port}" in err and "pass another --port" in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------
# A live server: gradio_client, and the page in headless Chromium
# ----------------------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(class_pipe, tmp_path_factory):
    """`hfdiff demo`'s serve() on a saved tiny model, on a free loopback port; yields its URL."""
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    from hfdiff.demo import serve

    folder = tmp_path_factory.mktemp("served") / "tiny-sprites"
    class_pipe.save_pretrained(folder)
    port = free_port()
    app = serve(folder, host="127.0.0.1", port=port, max_batch=8, device="cpu", block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_endpoint_from_gradio_client(server):
    import PIL.Image

    client_module = pytest.importorskip("gradio_client", reason="gradio_client is not installed")
    client = client_module.Client(server, verbose=False)
    grid, gif, summary = client.predict(
        class_name="food", sampler="ddpm", steps=T, num_images=3, seed=1, gif=True, api_name="/generate"
    )
    with PIL.Image.open(grid) as image:
        assert image.size == (3 * 128, 128)
    with PIL.Image.open(gif) as animation:
        assert animation.n_frames == T
    assert summary.startswith("3 image(s) in ") and "DDPM, 20 steps, seed 1, on cpu" in summary
    weights = {"mix_hero": 1.0, "mix_food": 0.6}
    _, no_gif, summary = client.predict(class_name=MIXTURE, num_images=2, steps=3, api_name="/generate", **weights)
    assert no_gif is None and summary.startswith("2 image(s)")
    for kwargs, message in [
        ({"prompt": "a green slime"}, "not conditioned on text"),
        ({"num_images": 10_000}, "greater than maximum value 8"),  # the slider's own check: max_batch is its maximum
        ({"class_name": MIXTURE}, "Every mixture weight is 0"),
    ]:
        with pytest.raises(client_module.exceptions.AppError, match=message):
            client.predict(api_name="/generate", **kwargs)


def drive_page(url: str, screenshot: str, class_name: str = "food") -> None:
    """In headless Chromium: load the page, pick `class_name`, press Generate, wait for the sprites and the summary,
    and save a screenshot of the whole page. docs/demo.png is this on a trained model:

        python -c "import sys; sys.path.insert(0, 'tests'); import test_demo; test_demo.screenshot_of('sprite-model')"
    """
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_label("class").click()
            page.get_by_role("option", name=class_name, exact=True).click()
            page.click("#generate")
            page.wait_for_function(
                "() => document.querySelector('#samples img')?.naturalWidth > 0", timeout=60_000, polling=200
            )
            expect(page.locator("#summary textarea")).to_have_value(re.compile(r"^8 image\(s\) in "))
            assert page.eval_on_selector("#samples img", "img => img.naturalWidth") == 4 * 128  # two rows of four
            page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()


def screenshot_of(model: str, path: str = "docs/demo.png") -> None:
    """docs/demo.png: `drive_page` on `model` (a trained pipeline folder), served on a free port."""
    from hfdiff.demo import serve

    port = free_port()
    app = serve(model, port=port, device="cpu", block=False)
    try:
        drive_page(f"http://127.0.0.1:{port}/", path)
    finally:
        app.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_in_headless_chromium(server, tmp_path):
    """Load the page, pick a class, press Generate, and see the sprites appear (`drive_page`)."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    drive_page(server, str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 10_000
