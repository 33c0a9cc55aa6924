"""The Gradio app a saved pipeline folder carries: `save_pretrained(..., demo_app=True)` writes app.py and
requirements.txt beside the pipeline, so the folder runs as a Hugging Face Space as it is (`hfdiff.demo` builds the
app those files start). Writing them needs neither gradio nor the pipeline class.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BATCH = 64  # default cap on images per request: a CPU Space stays responsive, a GPU one fits in memory
APP_FILES = ("app.py", "requirements.txt")  # what save_pretrained(demo_app=True) writes beside the pipeline
# The first line of APP_PY: how a save recognises an app.py that hfdiff wrote (and may replace) from the user's own.
APP_MARKER = "written by hfdiff's save_pretrained(demo_app=True)"

APP_PY = '''\
"""A web demo of the diffusion pipeline saved in this folder (written by hfdiff's save_pretrained(demo_app=True)).

Run it with `python app.py`; uploaded as a Hugging Face Space (Gradio SDK), the folder runs as it is.
"""

import os
from pathlib import Path

from hfdiff.demo import PIXELATED_CSS, build_app, load_pipeline

folder = Path(__file__).resolve().parent
demo = build_app(
    load_pipeline(folder),
    max_batch=int(os.environ.get("HFDIFF_MAX_BATCH", "{max_batch}")),
    title=os.environ.get("HFDIFF_TITLE", "Sprite diffusion: " + folder.name),
)

if __name__ == "__main__":
    demo.launch(css=PIXELATED_CSS)
'''


def write_app(folder: str | os.PathLike, max_batch: int = MAX_BATCH) -> list[str]:
    """Write app.py and requirements.txt (hfdiff and gradio) into a pipeline folder; returns their names."""
    from importlib.metadata import PackageNotFoundError, version

    folder = Path(folder)
    (folder / "app.py").write_text(APP_PY.replace("{max_batch}", str(max_batch)), encoding="utf-8")
    try:
        hfdiff = f"hfdiff>={version('hfdiff')}"
    except PackageNotFoundError:  # hfdiff imported from a source tree rather than installed
        hfdiff = "hfdiff"
    requirements = f"{hfdiff}\ngradio>=6,<7\n"
    (folder / "requirements.txt").write_text(requirements, encoding="utf-8")
    return list(APP_FILES)


def is_hfdiff_app(folder: str | os.PathLike) -> bool:
    """Whether `folder`'s app.py is one that `write_app` wrote (its first line carries APP_MARKER): in a folder saved
    without a manifest (`hfdiff.folder_swap.MANIFEST`), a file a save may replace, unlike a user's own app.py. False
    without an app.py, or with an unreadable one."""
    try:
        return APP_MARKER in (Path(folder) / "app.py").read_text(encoding="utf-8", errors="replace")[:300]
    except OSError:
        return False
