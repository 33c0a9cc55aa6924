"""What a careless or hostile user can do to a pipeline, family by family: save across filesystems and fail part-way
(the previous pipeline stays or the folder says it has none, the error names the cause), NaN/inf inputs, configs and
weights (refused with the culprit named), and configs that would allocate without bound (refused at once)."""

import errno
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_pipe

import hfdiff.pipelines.pipeline_sprite_diffusion as pipeline_module
from hfdiff import SpriteDiffusionPipeline

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
    assert not [p.name for p in other_filesystem.iterdir() if p.name.startswith(".")]


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

    def fail(staging, target):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(pipeline_module, "_keep_other_variants", fail)
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
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]


def test_a_swap_that_fails_part_way_leaves_no_index_and_says_so(tmp_path, monkeypatch):
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
    with pytest.raises(OSError, match="permission denied.*stopped part-way: the folder has no model_index.json now"):
        pipe.save_pretrained(target)
    monkeypatch.setattr(os, "replace", rename)
    assert torch.equal(bias_of(target), old_bias)  # the old component was put back when the new one could not go in
    with pytest.raises(FileNotFoundError, match="cut short"):
        SpriteDiffusionPipeline.from_pretrained(target)
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]
