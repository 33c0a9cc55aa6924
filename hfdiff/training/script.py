"""How the training scripts end: a user's mistake is one line on stderr and exit code 2, as in the `hfdiff` CLI; a
bug keeps its traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from ..errors import is_launch_main_process
from .loop import NonFiniteLossError

# Raised on purpose with a message that names the input and the fix: bad flags and data (ValueError, which includes
# huggingface_hub's HFValidationError), missing files, an --output_dir that cannot be written, a diverged run.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NonFiniteLossError)


def _missing_extra(error: BaseException) -> bool:
    """An optional extra the user has not installed (its message names it), not a broken import inside hfdiff."""
    return isinstance(error, ImportError) and 'pip install "hfdiff[' in str(error)


def run_training_script(main: Callable[[], object], argv: list[str] | None = None) -> int:
    """Run a script's `main(argv)` -> the process exit code: 0, or 2 after one line naming the error.

    Under `accelerate launch` every process runs the same checks and fails the same way, so only the first prints the
    line (readable before the processes have met, see `is_launch_main_process`) and each exits with 2, letting the
    launcher stop at once. Other exceptions propagate with their traceback: those are bugs to report."""
    try:
        main(argv)
    except Exception as error:
        if not isinstance(error, USER_ERRORS) and not _missing_extra(error):
            raise
        if is_launch_main_process():
            script = os.path.basename(sys.argv[0]) or "train"
            print(f"{script}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
