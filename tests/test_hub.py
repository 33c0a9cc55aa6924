"""Sharing: saved folders that load with hfdiff and with diffusers alone, the Hub cache path offline, consent for
remote code, model cards, uploads intercepted at huggingface_hub's boundary, and safe loading."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from tiny import make_pipe, seed

from hfdiff import SpriteDDIMScheduler, SpriteDiffusionPipeline
from hfdiff.data import SPRITE_CLASSES
from hfdiff.folder_swap import MANIFEST
from hfdiff.hub import build_model_card, upload_pipeline_folder

REPO_ID = "sprite-fan/tiny-sprites"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def sample(pipe) -> np.ndarray:
    return pipe(batch_size=2, class_labels=["hero", "food"], generator=seed(0), output_type="np").images


def put_in_hub_cache(folder: Path, hf_home: Path, repo_id: str = REPO_ID) -> None:
    """Lay a folder out as huggingface_hub's cache holds a downloaded repo: models--user--name/snapshots/<rev>/,
    refs/main naming that revision."""
    repo = hf_hub_cache(hf_home) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def hf_hub_cache(hf_home: Path) -> Path:
    return hf_home / "hub"


# Runs where hfdiff cannot be imported (nor the repository's pipelines/ folder): diffusers alone.
DIFFUSERS_ONLY = textwrap.dedent(
    """
    import json, sys
    sys.modules["hfdiff"] = None  # `import hfdiff` now raises ImportError
    sys.path = [p for p in sys.path if p not in ("", ".") and not p.endswith("/tests")]
    import numpy as np, torch
    from diffusers import DiffusionPipeline

    source, out = sys.argv[1], sys.argv[2]
    pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=["hero", "food"], generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    np.save(out, images)
    print(json.dumps({"pipeline": type(pipe).__module__, "unet": type(pipe.unet).__module__,
                      "scheduler": type(pipe.scheduler).__module__, "steps": pipe.num_timesteps,
                      "guidance_scale": pipe.guidance_scale,
                      "hfdiff_loaded": sys.modules.get("hfdiff") is not None}))
    """
)


def run_without_hfdiff(script: str, *args, hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def saved(tmp_path) -> tuple:
    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=20))
    folder = tmp_path / "tiny-sprites"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_saved_folder_layout(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_sprite_diffusion", "SpriteDiffusionPipeline"]
    assert index["unet"] == ["unet_context", "ContextUNet2DModel"]
    assert index["scheduler"] == ["scheduling_sprite_ddim", "SpriteDDIMScheduler"]
    for path in [
        "pipeline_sprite_diffusion.py",
        "README.md",
        "unet/unet_context.py",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduling_sprite_ddim.py",
        "scheduler/_math.py",  # imported relatively by the scheduler module
        "scheduler/scheduler_config.json",
    ]:
        assert (folder / path).is_file(), path
    assert not list(folder.rglob("*.bin")) and not [
        p for p in folder.iterdir() if p.name.startswith(".") and p.name != MANIFEST
    ]


def test_hfdiff_loads_without_remote_code(saved):
    pipe, folder = saved
    loaded = SpriteDiffusionPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is SpriteDiffusionPipeline and type(loaded.scheduler) is SpriteDDIMScheduler
    assert type(loaded.unet).__module__ == "hfdiff.models.unet_context"  # the installed class, not the exported file
    np.testing.assert_array_equal(sample(loaded), sample(pipe))


def test_diffusers_alone_loads_from_a_local_path_and_by_repo_id_offline(saved, tmp_path):
    pipe, folder = saved
    hf_home = tmp_path / "hf"
    put_in_hub_cache(folder, hf_home)
    expected = sample(pipe)
    for source in (folder, REPO_ID):
        out = tmp_path / "images.npy"
        result = run_without_hfdiff(DIFFUSERS_ONLY, source, out, hf_home=hf_home, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        info = json.loads(result.stdout.strip().splitlines()[-1])
        assert info["pipeline"].startswith("diffusers_modules.") and info["unet"].startswith("diffusers_modules.")
        assert info["scheduler"].startswith("diffusers_modules.") and not info["hfdiff_loaded"]
        np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_diffusers_alone_samples_with_the_saved_recipe(tmp_path):
    """A folder saved with a named sampler (as training saves dpm++) samples with its steps and guidance where only
    diffusers is installed: the recipe is a scheduler config entry, and the exported pipeline code reads it."""
    from hfdiff.samplers import with_sampler

    pipe = with_sampler(make_pipe(), "dpm++")
    folder = tmp_path / "dpm-sprites"
    pipe.save_pretrained(folder)
    out = tmp_path / "images.npy"
    result = run_without_hfdiff(DIFFUSERS_ONLY, folder, out, hf_home=tmp_path / "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["scheduler"].startswith("diffusers.") and (info["steps"], info["guidance_scale"]) == (19, 1.5)
    assert "are not expected and will be ignored" not in result.stderr  # no warning about the recipe entry
    np.testing.assert_allclose(np.load(out), sample(pipe), atol=1e-6)


def test_hfdiff_loads_by_repo_id_from_the_hub_cache(saved, tmp_path):
    pipe, folder = saved
    put_in_hub_cache(folder, tmp_path / "hf")
    loaded = SpriteDiffusionPipeline.from_pretrained(REPO_ID, cache_dir=hf_hub_cache(tmp_path / "hf"))
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded), sample(pipe))


def test_no_code_runs_without_consent(saved, tmp_path):
    _, folder = saved
    marker = tmp_path / "code-ran"
    for code_file in folder.rglob("*.py"):  # every exported file would leave a trace if it were executed
        with open(code_file, "a") as f:
            f.write(f"\nopen({str(marker)!r}, 'a').write({code_file.name!r} + '\\n')\n")
    hf_home = tmp_path / "hf"
    put_in_hub_cache(folder, hf_home)
    refuse = textwrap.dedent(
        """
        import sys
        sys.modules["hfdiff"] = None
        from diffusers import DiffusionPipeline
        try:
            DiffusionPipeline.from_pretrained(sys.argv[1])
        except ValueError as error:
            print("REFUSED", error)
        """
    )
    for source in (folder, REPO_ID):
        result = run_without_hfdiff(refuse, source, hf_home=hf_home, cwd=tmp_path)
        assert "REFUSED" in result.stdout and "trust_remote_code=True" in result.stdout, result.stderr[-2000:]
        assert not marker.exists()
    # the marker works: with consent the exported code does run
    result = run_without_hfdiff(DIFFUSERS_ONLY, folder, tmp_path / "x.npy", hf_home=hf_home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pipeline_sprite_diffusion.py" in marker.read_text()


def test_model_card(saved, tmp_path):
    pipe, folder = saved
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "diffusers"
    # class-conditional: the Hub has no task for it, so no pipeline_tag that would call it unconditional
    assert card.data.pipeline_tag is None and "class-conditional-image-generation" in card.data.tags
    assert "unconditional-image-generation" not in card.data.tags
    unconditional = build_model_card(make_pipe(context_dim=None))
    assert unconditional.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.license == "apache-2.0" and "hfdiff" in card.data.tags
    for name in SPRITE_CLASSES:
        assert name in card.text
    assert "trust_remote_code=True" in card.text and "SpriteDiffusionPipeline.from_pretrained" in card.text

    full = build_model_card(
        pipe,
        repo_id=REPO_ID,
        training_config={"learning_rate": 0.001, "num_epochs": 32},
        metrics={"conditional_accuracy": 0.93},
        samples_file="samples.png",
    )
    assert "![samples](samples.png)" in full.text and '"learning_rate": 0.001' in full.text
    assert "| conditional_accuracy | 0.93 |" in full.text and f'from_pretrained("{REPO_ID}"' in full.text
    assert full.data.metrics == ["conditional_accuracy"]


PIPELINE_FILES = {
    "README.md",
    "model_index.json",
    "pipeline_sprite_diffusion.py",
    "image_processing.py",  # the pipeline's relative imports travel with it
    "scheduler_steps.py",
    "text_encoding.py",
    "scheduler/_math.py",
    "scheduler/scheduler_config.json",
    "scheduler/scheduling_sprite_ddim.py",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/unet_context.py",
}


def test_push_to_hub_uploads_the_saved_pipeline(saved, fake_hub, tmp_path):
    pipe, _ = saved
    url = pipe.push_to_hub(REPO_ID, private=True, token="hf_test")
    assert url.endswith("/commit/1")
    assert fake_hub["create_repo"] == [{"repo_id": REPO_ID, "private": True, "token": "hf_test"}]
    (upload,) = fake_hub["uploads"]
    assert upload["repo_id"] == REPO_ID and set(upload["files"]) == PIPELINE_FILES
    # what was sent loads back through the Hub cache path, with hfdiff and with diffusers alone
    put_in_hub_cache(upload["copy"], tmp_path / "hf")
    loaded = SpriteDiffusionPipeline.from_pretrained(REPO_ID, cache_dir=hf_hub_cache(tmp_path / "hf"))
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded), sample(pipe))
    result = run_without_hfdiff(DIFFUSERS_ONLY, REPO_ID, tmp_path / "x.npy", hf_home=tmp_path / "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), sample(pipe), atol=1e-6)


def test_upload_pipeline_folder_sends_no_checkpoints_or_logs(saved, fake_hub):
    _, folder = saved
    for junk in ["checkpoint-100/model.safetensors", "logs/events.out.tfevents.1", "validation/step-000100.png"]:
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("x")
    upload_pipeline_folder(folder, REPO_ID, private=False, token="hf_test")
    (upload,) = fake_hub["uploads"]
    assert set(upload["files"]) == PIPELINE_FILES


def test_upload_pipeline_folder_needs_a_pipeline_folder(tmp_path, fake_hub):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        upload_pipeline_folder(tmp_path, REPO_ID)
    assert fake_hub["uploads"] == []


class _Exploit:
    """Unpickling this object would create the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_weights_are_never_unpickled(saved, tmp_path):
    _, folder = saved
    marker = tmp_path / "unpickled"
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with open(folder / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Exploit(marker)}, f)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin holds pickled weights.*save_pretrained"):
        SpriteDiffusionPipeline.from_pretrained(folder)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors_name_the_file(saved, damage):
    _, folder = saved
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 10)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors is not a readable safetensors file"):
        SpriteDiffusionPipeline.from_pretrained(folder)


def test_missing_component_folder(saved):
    _, folder = saved
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(FileNotFoundError, match="names a 'scheduler' component"):
        SpriteDiffusionPipeline.from_pretrained(folder)


def test_resaving_replaces_components_and_keeps_other_files(saved):
    pipe, folder = saved
    (folder / "samples.png").write_bytes(b"keep me")
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(1.0)
    pipe.save_pretrained(folder)
    assert (folder / "samples.png").read_bytes() == b"keep me"
    loaded = SpriteDiffusionPipeline.from_pretrained(folder)
    assert torch.equal(loaded.unet.conv_out.bias, pipe.unet.conv_out.bias)
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != MANIFEST]  # no staging leftovers


def test_pickle_serialization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        make_pipe().save_pretrained(tmp_path, safe_serialization=False)
