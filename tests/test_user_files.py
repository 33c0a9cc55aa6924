"""The user's own files: a save replaces or removes only what an hfdiff save wrote (its manifest), an upload sends
exactly that, training writes only into its own folders, one run at a time, and what a failed final save keeps is
said truthfully."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from tiny import TINY_UNET_JSON, make_pipe

from hfdiff import SpriteDiffusionPipeline
from hfdiff.folder_swap import MANIFEST, read_manifest
from hfdiff.hub import build_model_card, pipeline_files, upload_pipeline_folder
from hfdiff.training import parse_config, train
from hfdiff.training.checkpoints import list_checkpoints
from hfdiff.training.output_folder import LOCK_FILE

REPO_ID = "sprite-fan/tiny-sprites"


@pytest.fixture
def saved(tmp_path):
    pipe = make_pipe()
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    return pipe, folder


def bias(folder):
    return SpriteDiffusionPipeline.from_pretrained(folder).unet.conv_out.bias


def shift(pipe):
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(1.0)


# ----------------------------------------------------------------------------------------------------------------
# let in: uploads send exactly what the last save wrote
# ----------------------------------------------------------------------------------------------------------------


def test_the_manifest_lists_every_file_the_save_wrote(saved):
    _, folder = saved
    manifest = read_manifest(folder)
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert set(manifest) == on_disk and "unet/diffusion_pytorch_model.safetensors" in manifest
    assert all(len(record["sha256"]) == 64 and record["size"] > 0 for record in manifest.values())


def test_stray_files_in_component_folders_and_index_keys_are_not_uploaded(saved, fake_hub):
    _, folder = saved
    expected = set(pipeline_files(folder))
    (folder / "unet" / "token.txt").write_text("hf_secret")
    (folder / "scheduler" / "stray.py").write_text("import os")
    for junk in ["logs/events.out", "validation/step-1.png", "checkpoint-2/model.safetensors"]:
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("x")
    upload_pipeline_folder(folder, REPO_ID)
    (upload,) = fake_hub["uploads"]
    assert set(upload["files"]) == expected
    # a hand-edited index naming other folders changes a saved file: refused, naming it, nothing sent
    index = json.loads((folder / "model_index.json").read_text())
    index.update(logs=["diffusers", "UNet2DModel"], validation=["diffusers", "UNet2DModel"])
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model_index.json changed since the pipeline was saved"):
        upload_pipeline_folder(folder, REPO_ID)
    assert len(fake_hub["uploads"]) == 1


@pytest.mark.parametrize("name", ["README.md", "model_index.json", "unet/config.json"])
def test_a_saved_file_replaced_by_a_symlink_is_refused(saved, fake_hub, tmp_path, name):
    _, folder = saved
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_secret_token")
    (folder / name).unlink()
    (folder / name).symlink_to(secret)
    with pytest.raises(ValueError, match=f"{name} changed since the pipeline was saved"):
        upload_pipeline_folder(folder, REPO_ID)
    assert fake_hub["uploads"] == []


@pytest.mark.parametrize("name", ["samples.png", "app.py", "requirements.txt"])
def test_linked_top_level_files_the_save_did_not_write_are_not_uploaded(saved, fake_hub, tmp_path, name):
    _, folder = saved
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_secret_token")
    (folder / name).symlink_to(secret)
    upload_pipeline_folder(folder, REPO_ID)
    (upload,) = fake_hub["uploads"]
    assert name not in upload["files"]
    assert not any(
        "hf_secret_token" in p.read_text(errors="replace") for p in upload["copy"].rglob("*") if p.is_file()
    )


def test_a_folder_no_hfdiff_save_wrote_is_not_uploaded(saved, fake_hub):
    _, folder = saved
    (folder / MANIFEST).unlink()
    with pytest.raises(ValueError, match=f"no record of what was saved there \\({MANIFEST}\\).*save it again"):
        upload_pipeline_folder(folder, REPO_ID)
    assert fake_hub["uploads"] == []


def test_the_model_card_names_no_local_paths(tmp_path):
    data = tmp_path / "home" / "alice" / "private-sprites"
    data.mkdir(parents=True)
    config = {"train_data_dir": str(data), "output_dir": str(tmp_path / "out"), "logging_dir": "logs",
              "learning_rate": 0.001, "dataset_name": "user/sprites"}  # fmt: skip
    text = build_model_card(make_pipe(), training_config=config).text
    assert str(tmp_path) not in text and "alice" not in text and '"output_dir"' not in text
    assert '"train_data_dir": "local: private-sprites"' in text and '"dataset_name": "user/sprites"' in text


# ----------------------------------------------------------------------------------------------------------------
# lost: a save touches only what an hfdiff save wrote
# ----------------------------------------------------------------------------------------------------------------


def test_a_save_into_a_users_folder_changes_nothing(tmp_path):
    folder = tmp_path / "mine"
    (folder / "unet").mkdir(parents=True)
    (folder / "README.md").write_text("my notes")
    (folder / "unet" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"README\.md is not from an hfdiff save.*unet is not from an hfdiff save"):
        make_pipe().save_pretrained(folder)
    assert (folder / "README.md").read_text() == "my notes" and (folder / "unet" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "unet"]


def test_an_edited_model_card_stops_the_save_before_any_change(saved):
    pipe, folder = saved
    (folder / "README.md").write_text("my own card")
    old = bias(folder)
    shift(pipe)
    with pytest.raises(ValueError, match=r"README\.md was changed since hfdiff saved it.*Nothing was changed"):
        pipe.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "my own card" and torch.equal(bias(folder), old)


def test_user_files_in_component_folders_survive_a_save_and_stay_local(saved, fake_hub):
    pipe, folder = saved
    (folder / "unet" / "notes.txt").write_text("mine")
    shift(pipe)
    pipe.save_pretrained(folder)
    assert (folder / "unet" / "notes.txt").read_text() == "mine"
    assert torch.equal(bias(folder), pipe.unet.conv_out.bias)
    assert "unet/notes.txt" not in read_manifest(folder)
    upload_pipeline_folder(folder, REPO_ID)
    assert "unet/notes.txt" not in fake_hub["uploads"][0]["files"]


def test_demo_app_never_overwrites_the_users_app(saved):
    pipe, folder = saved
    (folder / "app.py").write_text("print('my app')")
    (folder / "requirements.txt").write_text("mylib\n")
    with pytest.raises(ValueError, match=r"app\.py is not from an hfdiff save"):
        pipe.save_pretrained(folder, demo_app=True)
    assert (folder / "app.py").read_text() == "print('my app')"
    assert (folder / "requirements.txt").read_text() == "mylib\n"


def test_a_generated_app_is_replaced_or_removed_only_while_unedited(saved):
    pipe, folder = saved
    pipe.save_pretrained(folder, demo_app=True)
    pipe.save_pretrained(folder, demo_app=True)  # hfdiff's own app: replaced
    pipe.save_pretrained(folder)  # and removed by a plain save, with its requirements.txt
    assert not (folder / "app.py").exists() and not (folder / "requirements.txt").exists()
    pipe.save_pretrained(folder, demo_app=True)
    (folder / "app.py").write_text((folder / "app.py").read_text() + "\n# my change\n")
    pipe.save_pretrained(folder)  # an edited app stays, and is not part of the pipeline any more
    assert (folder / "app.py").read_text().endswith("# my change\n")
    assert "app.py" not in pipeline_files(folder)


def test_a_symlinked_component_folder_never_leaves_the_pipeline_unloadable(saved, tmp_path):
    pipe, folder = saved
    elsewhere = tmp_path / "elsewhere-unet"
    shutil.move(folder / "unet", elsewhere)
    (folder / "unet").symlink_to(elsewhere, target_is_directory=True)
    old = bias(folder)
    shift(pipe)
    for _ in range(2):  # not hfdiff's folder: refused before any change, every time
        with pytest.raises(ValueError, match="unet is a symbolic link"):
            pipe.save_pretrained(folder)
        assert torch.equal(bias(folder), old)
    # a folder saved without a manifest (diffusers alone, an older hfdiff): the link is replaced as a link
    (folder / MANIFEST).unlink()
    for _ in range(2):
        pipe.save_pretrained(folder)
        assert torch.equal(bias(folder), pipe.unet.conv_out.bias)
        assert not (folder / "unet").is_symlink() and (elsewhere / "config.json").is_file()  # the target is untouched
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


# ----------------------------------------------------------------------------------------------------------------
# lost: training writes only into its own folder, one run at a time
# ----------------------------------------------------------------------------------------------------------------

TINY_RUN = [
    "--model_config_overrides", TINY_UNET_JSON,
    "--num_train_images", "32",
    "--train_batch_size", "16",
    "--ddpm_num_steps", "20",
    "--validation_steps", "1000",
    "--validation_inference_steps", "2",
    "--num_validation_images", "1",
    "--logging_steps", "1000",
    "--mixed_precision", "no",
    "--num_cpu_threads", "1",
    "--max_train_steps", "2",
]  # fmt: skip


def config(output_dir, *flags):
    return parse_config([*TINY_RUN, "--output_dir", str(output_dir), *flags])


def test_training_refuses_a_users_folder_before_any_work(tmp_path, fresh_accelerate_state):
    out = tmp_path / "mine"
    (out / "unet").mkdir(parents=True)
    (out / "README.md").write_text("my notes")
    with pytest.raises(ValueError, match="holds files that hfdiff did not write.*Pass a new or empty --output_dir"):
        train(config(out), conditional=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "unet"]


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / LOCK_FILE), timeout=0):  # another run, alive
        with pytest.raises(ValueError, match="is in use by another training run"):
            train(config(out), conditional=True)
    assert not list_checkpoints(str(out)) and not (out / "model_index.json").exists()


def test_a_run_keeps_user_folders_named_like_temporaries_and_its_lock_is_free_after(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    train(config(out, "--checkpointing_steps", "2"), conditional=True)
    for name in ["checkpoint-2.tmp", ".checkpoint-1.old", "checkpoint-3.old"]:
        (out / name).mkdir()
        (out / name / "mine.txt").write_text("keep")
    (out / "notes.txt").write_text("keep")
    train(config(out, "--checkpointing_steps", "2", "--max_train_steps", "4", "--resume_from_checkpoint", "latest"),
          conditional=True)  # fmt: skip
    for name in ["checkpoint-2.tmp/mine.txt", ".checkpoint-1.old/mine.txt", "checkpoint-3.old/mine.txt", "notes.txt"]:
        assert (out / name).read_text() == "keep", name
    assert [step for step, _ in list_checkpoints(str(out))] == [2, 4]
    with FileLock(str(out / LOCK_FILE), timeout=0):  # released when the run ended
        pass


def test_the_original_run_resumes_after_an_interrupted_overwrite(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    train(config(out, "--checkpointing_steps", "2"), conditional=True)
    # what --overwrite_output_dir does before its run's first checkpoint, and where a kill then leaves the folder
    os.replace(out / "checkpoint-2", out / ".checkpoint-2.overwritten")
    result = train(
        config(out, "--checkpointing_steps", "2", "--max_train_steps", "4", "--resume_from_checkpoint", "latest"),
        conditional=True,
    )
    assert result.global_step == 4 and [step for step, _ in list_checkpoints(str(out))] == [2, 4]
    assert not (out / ".checkpoint-2.overwritten").exists()


def test_overwrite_without_checkpoints_removes_what_it_set_aside(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    train(config(out, "--checkpointing_steps", "2"), conditional=True)
    train(config(out, "--seed", "1", "--checkpointing_steps", "0", "--overwrite_output_dir"), conditional=True)
    assert not list_checkpoints(str(out)) and not [p for p in out.iterdir() if p.name.endswith(".overwritten")]


def test_a_failed_final_save_without_checkpoints_keeps_the_pipeline_elsewhere(
    tmp_path, monkeypatch, fresh_accelerate_state
):
    import errno

    from hfdiff import folder_saving

    out = tmp_path / "run"
    target = out.absolute()
    save_folder = folder_saving.save_folder

    def disk_full_in_out(pipe, save_directory, *args, **kwargs):
        if Path(save_directory).absolute() == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_folder(pipe, save_directory, *args, **kwargs)

    monkeypatch.setattr(folder_saving, "save_folder", disk_full_in_out)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(OSError, match="No space left on device.*was saved to .*hfdiff-run-step2-.* instead") as caught:
        train(config(out, "--checkpointing_steps", "0"), conditional=True)
    assert "--resume_from_checkpoint" not in str(caught.value)
    (kept,) = (tmp_path / "tmp").iterdir()
    assert isinstance(SpriteDiffusionPipeline.from_pretrained(kept), SpriteDiffusionPipeline)
