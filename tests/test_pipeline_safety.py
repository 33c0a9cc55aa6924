"""What a careless or hostile user can do to a pipeline, family by family: save across filesystems and fail part-way
(the previous pipeline stays or the folder says it has none, the error names the cause), NaN/inf inputs, configs and
weights (refused with the culprit named), and configs that would allocate without bound (refused at once)."""

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_pipe

import hfdiff.folder_saving as folder_saving
from hfdiff import SpriteDiffusionPipeline
from hfdiff.folder_swap import MANIFEST

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def bias_of(folder: Path) -> torch.Tensor:
    return load_file(folder / UNET_WEIGHTS)["conv_out.bias"]


def shift_weights(pipe) -> torch.Tensor:
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(1.0)
    return pipe.unet.conv_out.bias.detach().clone()


@pytest.fixture
def other_filesystem(tmp_path):
    """A folder on another filesystem than tmp_path: /dev/shm (tmpfs) where it is one, removed afterwards."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here (test_resave_with_renames_that_cannot_leave_the_folder simulates one)")
    folder = shm / f"hfdiff-test-{uuid.uuid4().hex}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Saving: across filesystems, and failures before and during the swap
# ----------------------------------------------------------------------------------------------------------------


def test_resave_into_a_symlink_to_another_filesystem(tmp_path, other_filesystem):
    link = tmp_path / "model"
    link.symlink_to(other_filesystem, target_is_directory=True)
    others = tmp_path / ".model.saving-of-someone-else"  # looks like an old staging folder: not ours to delete
    others.mkdir()
    pipe = make_pipe()
    pipe.save_pretrained(link)
    new_bias = shift_weights(pipe)
    pipe.save_pretrained(link)
    assert torch.equal(bias_of(other_filesystem), new_bias)
    assert torch.equal(SpriteDiffusionPipeline.from_pretrained(link).unet.conv_out.bias, new_bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == [others.name, "model"]  # nothing left in, or taken from, it
    assert not [p.name for p in other_filesystem.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def test_resave_with_renames_that_cannot_leave_the_folder(tmp_path, monkeypatch):
    """EXDEV simulated: any rename into or out of the target folder fails, as it would with the target on another
    filesystem than its parent; a save stages inside the target, so it never needs one."""
    target = tmp_path / "model"
    pipe = make_pipe()
    pipe.save_pretrained(target)
    rename = os.replace

    def replace_within_one_filesystem(src, dst):
        if (target in Path(src).absolute().parents) != (target in Path(dst).absolute().parents):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", replace_within_one_filesystem)
    new_bias = shift_weights(pipe)
    pipe.save_pretrained(target)
    assert torch.equal(bias_of(target), new_bias)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_component_folder_on_another_filesystem_stops_the_save_before_the_swap(tmp_path, monkeypatch):
    """A mount point at `unet` (simulated: os.stat reports another device for it) could not be renamed aside: the
    save stops before the old index is removed, so the previous pipeline stays whole."""
    target = tmp_path / "model"
    pipe = make_pipe()
    pipe.save_pretrained(target)
    old_bias = bias_of(target)
    stat = os.stat

    def mounted_unet(path, *args, **kwargs):
        result = stat(path, *args, **kwargs)
        if Path(path) == target / "unet":
            return os.stat_result((*result[:2], result.st_dev + 1, *result[3:]))
        return result

    monkeypatch.setattr(os, "stat", mounted_unet)
    shift_weights(pipe)
    message = r"unet is on another filesystem .*a rename would cross filesystems.*Nothing in the folder was changed"
    with pytest.raises(OSError, match=message) as caught:
        pipe.save_pretrained(target)
    assert caught.value.errno == errno.EXDEV
    monkeypatch.setattr(os, "stat", stat)
    assert torch.equal(SpriteDiffusionPipeline.from_pretrained(target).unet.conv_out.bias, old_bias)
    assert not [p.name for p in target.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


@pytest.mark.parametrize(
    "code, cause",
    [
        (errno.ENOSPC, "the disk is full or a file size limit was reached"),
        (errno.EFBIG, "the disk is full or a file size limit was reached"),
        (errno.EROFS, "the filesystem is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EIO, None),  # quoted, not guessed at
    ],
)
def test_a_save_that_fails_while_writing_names_the_cause_and_changes_nothing(tmp_path, monkeypatch, code, cause):
    target = tmp_path / "model"
    pipe = make_pipe()
    pipe.save_pretrained(target)
    old_bias = bias_of(target)

    def fail(staging, target, previous=None):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(folder_saving, "keep_other_variants", fail)
    shift_weights(pipe)
    with pytest.raises(OSError, match=r"Nothing in the folder was changed\.$") as caught:
        pipe.save_pretrained(target)
    message = str(caught.value)
    assert message.startswith(f"Could not save the pipeline to {target} (") and f"[Errno {code}]" in message
    assert caught.value.errno == code
    if cause is None:
        assert "full" not in message and "permission" not in message and "read-only" not in message
    else:
        assert cause in message
    assert torch.equal(SpriteDiffusionPipeline.from_pretrained(target).unet.conv_out.bias, old_bias)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert not [p.name for p in target.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def test_a_swap_that_fails_part_way_is_undone_and_leaves_the_old_pipeline(tmp_path, monkeypatch):
    target = tmp_path / "model"
    pipe = make_pipe()
    pipe.save_pretrained(target)
    old_bias = bias_of(target)
    rename = os.replace

    def denied_for_the_new_unet(src, dst):
        if Path(dst) == target / "unet" and Path(src).parent.name.startswith(".saving-"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(src))
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", denied_for_the_new_unet)
    shift_weights(pipe)
    with pytest.raises(OSError, match="permission denied.*The swap was undone: the folder holds the previous"):
        pipe.save_pretrained(target)
    monkeypatch.setattr(os, "replace", rename)
    # every old entry, model_index.json included, was put back: the previous pipeline loads as it was
    assert torch.equal(SpriteDiffusionPipeline.from_pretrained(target).unet.conv_out.bias, old_bias)
    pipe.save_pretrained(target)  # and the next save goes through
    assert torch.equal(SpriteDiffusionPipeline.from_pretrained(target).unet.conv_out.bias, pipe.unet.conv_out.bias)
    assert not [p.name for p in target.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


# ----------------------------------------------------------------------------------------------------------------
# NaN and inf: contexts, schedules, weights
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_contexts_are_refused(bad):
    pipe = make_pipe()
    context = torch.eye(5)[:2].clone()
    context[1, 3] = bad
    with pytest.raises(ValueError, match=r"context holds 1 NaN or infinite value\(s\) \(the first at index \(1, 3\)"):
        pipe(batch_size=2, context=context, num_inference_steps=2, output_type="np")
    with pytest.raises(ValueError, match=r"context holds 1 NaN or infinite value\(s\) \(the first at index \(2,\)"):
        pipe(context=[1.0, 0.0, bad, 0.0, 0.0], num_inference_steps=2, output_type="np")
    pipe(batch_size=2, context=torch.eye(5)[:2], num_inference_steps=2, output_type="np")  # finite: fine


def test_non_finite_prompt_embeds_are_refused():
    pipe = make_pipe()
    embeds = torch.zeros(1, 5)
    embeds[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"prompt_embeds holds 1 NaN"):
        pipe(prompt_embeds=embeds, num_inference_steps=2, output_type="np")
    with pytest.raises(ValueError, match=r"negative_prompt_embeds holds 1 NaN"):
        pipe(prompt_embeds=torch.zeros(1, 5), negative_prompt_embeds=embeds, num_inference_steps=2, output_type="np")


@pytest.mark.parametrize("scheduler_cls", ["SpriteDDPMScheduler", "SpriteDDIMScheduler"])
@pytest.mark.parametrize(
    "config, culprit",
    [
        (
            {"beta_end": 2.0},
            r"250 of the 500 betas built from beta_schedule='linear', beta_start=0.0001, beta_end=2.0",
        ),
        ({"beta_start": -0.01}, r"beta_start=-0.01.*first: beta_1 = -0.01"),
        ({"beta_start": float("nan")}, r"500 of the 500 .*beta_start=nan.*first: beta_1 = nan"),
        ({"trained_betas": [0.1, float("inf"), 0.2], "num_train_timesteps": 3}, r"1 of the 3 .*trained_betas.*inf"),
    ],
)
def test_schedules_with_betas_outside_0_1_are_refused(scheduler_cls, config, culprit):
    import hfdiff

    with pytest.raises(ValueError, match=rf"{scheduler_cls}: .*{culprit}.*(beta_start <= beta_end < 1|in \(0, 1\))"):
        getattr(hfdiff, scheduler_cls)(**config)


def test_edge_schedules_still_build():
    from hfdiff import SpriteDDIMScheduler, SpriteDDPMScheduler

    for cls in (SpriteDDPMScheduler, SpriteDDIMScheduler):
        assert cls(rescale_betas_zero_snr=True).betas[-1] == 1  # abar_T = 0 on purpose
        assert cls(beta_schedule="squaredcos_cap_v2").betas.max() < 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_on_loading(tmp_path, bad):
    pipe = make_pipe()
    with torch.no_grad():
        pipe.unet.conv_out.weight[0, 0, 0, 0] = bad
    pipe.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"The 'unet' component in .*model/unet has 1 NaN or infinite value\(s\) in "):
        SpriteDiffusionPipeline.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="'conv_out.weight'"):
        SpriteDiffusionPipeline.from_pretrained(tmp_path / "model")


# ----------------------------------------------------------------------------------------------------------------
# Hostile configs: refused at once, before anything is allocated
# ----------------------------------------------------------------------------------------------------------------

HOSTILE = {
    "10,000 blocks": (
        {
            "block_out_channels": [8] * 10_000,
            "down_block_types": ["DownBlock2D"] * 10_000,
            "up_block_types": ["UpBlock2D"] * 10_000,
        },
        r"block_out_channels=\[8, 8, 8, 8, ...\] \(10000 entries\) is beyond what hfdiff builds \(1 to 8 blocks",
    ),
    "a million channels": ({"block_out_channels": [8, 10**6]}, r"block_out_channels=\[8, 1000000\] .*1 to 4096"),
    "huge sample_size": ({"sample_size": 10**9}, r"sample_size=1000000000 .*1 to 4096"),
    "many layers": ({"layers_per_block": 10**5}, r"layers_per_block=100000 .*1 to 16"),
    "wide and deep": (
        {
            "block_out_channels": [4096] * 8,
            "down_block_types": ["DownBlock2D"] * 8,
            "up_block_types": ["UpBlock2D"] * 8,
        }
        | {"layers_per_block": 16},
        r"parameters at layers_per_block=16, over 4,000,000,000",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_unet_configs_are_refused_within_a_second(tmp_path, case):
    import json
    import time

    from hfdiff import ContextUNet2DModel

    entries, message = HOSTILE[case]
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path / "model")
    config_path = tmp_path / "model" / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **entries}))
    for load in (
        lambda: SpriteDiffusionPipeline.from_pretrained(tmp_path / "model"),
        lambda: ContextUNet2DModel.from_pretrained(tmp_path / "model" / "unet"),
        lambda: ContextUNet2DModel(**entries),
    ):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            load()
        assert time.perf_counter() - start < 1.0


def test_the_presets_and_a_stable_diffusion_sized_unet_are_within_the_limits():
    from hfdiff import ContextUNet2DModel
    from hfdiff.models.unet_context import UNET_PRESETS

    for name, preset in UNET_PRESETS.items():
        ContextUNet2DModel.check_config_limits(preset, source=name)
    sd_sized = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "context_dim": 768}
    ContextUNet2DModel.check_config_limits(sd_sized | {"sample_size": 64, "down_block_types": ["DownBlock2D"] * 4})


def test_pipeline_config_entries_the_class_does_not_know_are_refused(tmp_path):
    # diffusers drops unknown config entries with a warning; for this model each entry shapes the architecture (a
    # newer hfdiff's option, say), so loading a saved pipeline would put the weights into a different model. The
    # pipeline's loader refuses it; the model's own from_pretrained keeps diffusers' behaviour, which EMAModel's
    # save/load relies on (it stores the EMA's state as extra config entries).
    from diffusers.training_utils import EMAModel
    from tiny import tiny_unet

    from hfdiff import ContextUNet2DModel

    make_pipe().save_pretrained(tmp_path / "pipe")
    config_path = tmp_path / "pipe" / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "context_cross_attention": True}))
    with pytest.raises(ValueError, match=r"\['context_cross_attention'\].*newer hfdiff.*trust_remote_code=True"):
        SpriteDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    unet = tiny_unet(context_dim=12, context_time_embedding=True)
    ema = EMAModel(unet.parameters(), model_cls=ContextUNet2DModel, model_config=unet.config)
    ema.save_pretrained(tmp_path / "ema")
    loaded = EMAModel.from_pretrained(tmp_path / "ema", ContextUNet2DModel)
    assert all(torch.equal(a, b) for a, b in zip(loaded.shadow_params, ema.shadow_params))
