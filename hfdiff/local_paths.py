"""Telling a local path from a Hub repo id where a flag or argument takes either (`--model`, `--dataset_name`,
`--text_encoder_name_or_path`): one rule, so that every place reads a name the same way."""

from __future__ import annotations

import os


def looks_like_local_path(name: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else (an absolute path, one starting with "." or "~", more than
    one "/", a backslash) is meant as a local path, whether or not it exists."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def missing_local_folder(name: str) -> bool:
    """`name` is meant as a local folder (`looks_like_local_path`), and there is no folder there: an error to report
    as a missing path, where a Hub client would complain about the form of a repo id."""
    return looks_like_local_path(name) and not os.path.isdir(os.path.expanduser(name))
