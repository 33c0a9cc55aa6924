"""hfdiff's optional extras (`plots`, `text`, `demo`): how a missing one is told apart from a broken import.

Code that needs an extra raises an ImportError whose message gives the install command, `pip install "hfdiff[...]"`.
The CLI and the training scripts print such an error as one line (the user can fix it); any other ImportError is a
bug inside hfdiff and keeps its traceback.
"""

from __future__ import annotations

INSTALL_COMMAND = 'pip install "hfdiff['  # how every missing-extra message begins its fix


def is_missing_extra(error: BaseException) -> bool:
    """An optional extra the user has not installed (its message names it), not a broken import inside hfdiff."""
    return isinstance(error, ImportError) and INSTALL_COMMAND in str(error)
