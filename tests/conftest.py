import os
import shutil
from pathlib import Path

import pytest

# Nothing in the tests may touch the network; without this some failing hub calls retry for ~24 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Intercept huggingface_hub's HfApi at its boundary: record repo creation and keep a copy of what each
    upload_folder call would send (after its allow/ignore patterns)."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    # The fake stands in for the network: code that refuses uploads in offline mode must see it as online.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = {"create_repo": [], "uploads": []}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, "private": private, "token": self.token})
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        folder_path = Path(folder_path)
        files = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*") if p.is_file())
        sent = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        copy = tmp_path / f"uploaded-{len(calls['uploads'])}"
        for name in sent:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder_path / name, copy / name)
        calls["uploads"].append({"repo_id": repo_id, "files": sent, "copy": copy, **kwargs})
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture
def fresh_accelerate_state():
    """In-process training runs share Accelerate's process-wide state; reset it after each so other tests start
    clean. One torch thread meanwhile: exact equality between runs needs the same reduction order in each."""
    import torch
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)
