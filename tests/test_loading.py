"""Loading and saving with diffusers' keywords: variants, dtypes, Hub download patterns, the keywords that are refused,
save_pretrained(push_to_hub=True), push_to_hub(subfolder=...), and uploads of exactly the files a save wrote."""

import json
import os

import numpy as np
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from test_hub import REPO_ID, hf_hub_cache, put_in_hub_cache, sample
from tiny import make_pipe

from hfdiff import ContextUNet2DModel, SpriteDDIMScheduler, SpriteDiffusionPipeline
from hfdiff.hub import pipeline_files, upload_pipeline_folder


@pytest.fixture
def saved(tmp_path):
    pipe = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=20))
    folder = tmp_path / "tiny-sprites"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_variant_round_trip_keeps_both_variants(saved):
    pipe, folder = saved
    half = make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=20))
    half.unet.to(torch.float16)
    half.save_pretrained(folder, variant="fp16")
    names = sorted(p.name for p in (folder / "unet").glob("*.safetensors"))
    assert names == ["diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    # as in diffusers, the variant picks the file and torch_dtype the dtype
    loaded = SpriteDiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16
    assert torch.equal(loaded.unet.conv_out.weight, half.unet.conv_out.weight)
    full = SpriteDiffusionPipeline.from_pretrained(folder)
    assert full.unet.dtype == torch.float32
    full.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(full), sample(pipe))


def test_a_missing_variant_names_the_ones_there(saved):
    _, folder = saved
    with pytest.raises(FileNotFoundError, match=r"expected diffusion_pytorch_model.bf16.safetensors"):
        SpriteDiffusionPipeline.from_pretrained(folder, variant="bf16")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(
        folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    )
    with pytest.raises(FileNotFoundError, match=r"variant\(s\) \['fp16'\]: pass variant="):
        SpriteDiffusionPipeline.from_pretrained(folder)


def test_a_changed_architecture_drops_the_other_variants(saved):
    _, folder = saved
    make_pipe(scheduler=SpriteDDIMScheduler(num_train_timesteps=20)).save_pretrained(folder, variant="fp16")
    make_pipe(context_dim=3, class_names=None).save_pretrained(folder)  # another config: old variants no longer fit
    assert [p.name for p in (folder / "unet").glob("*.safetensors")] == ["diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, {"unet": torch.bfloat16}, {"default": torch.bfloat16}])
def test_torch_dtype(saved, dtype):
    _, folder = saved
    loaded = SpriteDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)
    assert loaded.unet.dtype == torch.bfloat16


def test_diffusers_keywords_accepted_or_refused_with_a_reason(saved):
    pipe, folder = saved
    loaded = SpriteDiffusionPipeline.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False, low_cpu_mem_usage=True, local_files_only=True
    )
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded), sample(pipe))
    with pytest.raises(ValueError, match="safetensors weights only"):
        SpriteDiffusionPipeline.from_pretrained(folder, use_safetensors=False)
    with pytest.raises(ValueError, match="does not take device_map: load, then move"):
        SpriteDiffusionPipeline.from_pretrained(folder, device_map="balanced")
    with pytest.raises(ValueError, match="does not take custom_pipeline"):
        SpriteDiffusionPipeline.from_pretrained(folder, custom_pipeline="other")
    with pytest.raises(TypeError, match="Unexpected arguments.*'colour'"):
        SpriteDiffusionPipeline.from_pretrained(folder, colour="blue")
    unet = ContextUNet2DModel.from_pretrained(folder, subfolder="unet")
    assert SpriteDiffusionPipeline.from_pretrained(folder, unet=unet).unet is unet


def test_a_missing_local_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        SpriteDiffusionPipeline.from_pretrained(str(tmp_path / "no" / "such" / "folder"))


def test_each_slot_takes_only_its_kind_of_class(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["hfdiff", "ContextUNet2DModel"]  # a model class in the scheduler slot
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'scheduler' slot, which takes a SchedulerMixin"):
        SpriteDiffusionPipeline.from_pretrained(folder)


def test_hub_download_fetches_only_the_pipeline_files(saved, tmp_path, monkeypatch):
    """snapshot_download's patterns, applied to a repo that also holds checkpoints, logs, pickles and a variant."""
    import huggingface_hub

    pipe, folder = saved
    put_in_hub_cache(folder, tmp_path / "hf")
    calls = []
    real = huggingface_hub.snapshot_download

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    loaded = SpriteDiffusionPipeline.from_pretrained(REPO_ID, cache_dir=hf_hub_cache(tmp_path / "hf"))
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded), sample(pipe))
    repo = [
        "model_index.json",
        "README.md",
        "checkpoint-500/model.safetensors",
        "logs/events.out.tfevents",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/unet_context.py",
        "scheduler/scheduler_config.json",
    ]
    (call,) = calls
    fetched = set(
        filter_repo_objects(repo, allow_patterns=call["allow_patterns"], ignore_patterns=call["ignore_patterns"])
    )
    assert fetched == {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }


def test_save_pretrained_push_to_hub(saved, fake_hub):
    pipe, folder = saved
    pipe.save_pretrained(folder, push_to_hub=True, repo_id=REPO_ID, private=True, token="hf_test", commit_message="m")
    (upload,) = fake_hub["uploads"]
    assert upload["repo_id"] == REPO_ID and upload["commit_message"] == "m"
    assert set(upload["files"]) == set(pipeline_files(folder))
    assert fake_hub["create_repo"] == [{"repo_id": REPO_ID, "private": True, "token": "hf_test"}]
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        pipe.save_pretrained(folder / "x", push_to_hub=True, repo_id="not a/valid/repo id")
    assert not (folder / "x").exists()  # refused before writing


def test_push_to_hub_has_diffusers_signature(saved, fake_hub):
    pipe, _ = saved
    pipe.push_to_hub(REPO_ID, "a message", True, "hf_test", False, True, None, "models/v1")
    (upload,) = fake_hub["uploads"]
    assert upload["path_in_repo"] == "models/v1" and upload["commit_message"] == "a message"


def test_uploads_leave_out_hidden_nested_and_linked_files(saved, fake_hub, tmp_path):
    _, folder = saved
    expected = set(pipeline_files(folder))
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (folder / "unet" / ".env").write_text("HF_TOKEN=x")
    (folder / "scheduler" / ".secrets").mkdir()
    (folder / "scheduler" / ".secrets" / "key").write_text("x")
    (folder / "unet" / "nested").mkdir()
    (folder / "unet" / "nested" / "notes.txt").write_text("x")
    os.symlink(secret, folder / "unet" / "link.txt")
    (folder / "helper.py").write_text("print('not written by the save')")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "x.safetensors").write_text("x")
    saved_index = (folder / "model_index.json").read_bytes()
    index["*"] = ["hfdiff", "SpriteDDIMScheduler"]  # a hostile key must not widen the upload
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model_index.json changed since the pipeline was saved"):
        upload_pipeline_folder(folder, REPO_ID)
    (folder / "model_index.json").write_bytes(saved_index)
    upload_pipeline_folder(folder, REPO_ID)
    (upload,) = fake_hub["uploads"]
    assert set(upload["files"]) == expected


def test_revision_and_cache_dir_reach_the_download(saved, tmp_path):
    from test_hub import REVISION

    pipe, folder = saved
    put_in_hub_cache(folder, tmp_path / "hf")
    loaded = SpriteDiffusionPipeline.from_pretrained(
        REPO_ID, cache_dir=hf_hub_cache(tmp_path / "hf"), revision=REVISION, local_files_only=True
    )
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded), sample(pipe))
    with pytest.raises(Exception, match="(?i)revision|snapshot|cannot find|not found"):
        SpriteDiffusionPipeline.from_pretrained(
            REPO_ID, cache_dir=hf_hub_cache(tmp_path / "hf"), revision="f" * 40, local_files_only=True
        )
