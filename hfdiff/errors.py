"""How hfdiff's commands report a user's mistake: one line on stderr and exit code 2, no usage block, no traceback.

Imports only the standard library, so that `hfdiff --help` and a bad flag answer without importing torch.
"""

from __future__ import annotations

import argparse
import os
import sys


def is_launch_main_process() -> bool:
    """Whether this is the first process of a launch, readable before the processes have met: torchrun (behind
    `accelerate launch --multi_gpu`) gives each process its RANK; plain python has none and is the only one."""
    return os.environ.get("RANK", "0") == "0"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag is reported as one line (argparse prints the whole usage, 40 lines for these
    scripts, before the error), by the first process of a launch only; every process exits with argparse's code 2."""

    def error(self, message: str):
        if is_launch_main_process():
            print(f"{self.prog}: error: {message} (all flags: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
