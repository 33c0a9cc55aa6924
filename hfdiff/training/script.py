"""How the training scripts end: a user's mistake is one line on stderr and exit code 2, as in the `hfdiff` CLI; a
save the machine made fail (a full disk) is one line and exit code 1; Ctrl-C is one line and 130; a bug keeps its
traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from ..errors import is_launch_main_process
from ..extras import is_missing_extra
from .checkpoints import SaveFailedError
from .loop import NonFiniteLossError

# Raised on purpose with a message that names the input and the fix: bad flags and data (ValueError, which includes
# huggingface_hub's HFValidationError), missing files, an --output_dir that cannot be written, a diverged run.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NonFiniteLossError)


def run_training_script(main: Callable[[], object], argv: list[str] | None = None) -> int:
    """Run a script's `main(argv)` -> the process exit code: 0; 2 after one line naming a user's error; 1 after one
    line for a save that failed while writing (SaveFailedError); 130 after one line for Ctrl-C.

    Under `accelerate launch` every process runs the same checks and fails the same way, so only the first prints the
    line (readable before the processes have met, see `is_launch_main_process`) and each exits with 2, letting the
    launcher stop at once. Other exceptions propagate with their traceback: those are bugs to report."""
    try:
        main(argv)
    except KeyboardInterrupt:
        # Ctrl-C: a checkpoint being written stays a .tmp folder that the next save removes; the complete ones are
        # untouched. 130 is the shell's code for a run ended by SIGINT.
        _one_line(
            "interrupted (Ctrl-C). The checkpoints already complete are unchanged: continue with "
            "--resume_from_checkpoint latest."
        )
        return 130
    except SaveFailedError as error:  # the machine (a full disk, a read-only mount), not the flags: exit code 1
        # Every process of a launch says it: the one that failed names the cause, the others name that process.
        _one_line(str(error), every_process=True)
        return 1
    except Exception as error:
        if not isinstance(error, USER_ERRORS) and not is_missing_extra(error):
            raise
        _one_line(str(error))
        return 2
    return 0


def _one_line(message: str, every_process: bool = False) -> None:
    if every_process or is_launch_main_process():
        script = os.path.basename(sys.argv[0]) or "train"
        print(f"{script}: error: {' '.join(message.split())}", file=sys.stderr)
