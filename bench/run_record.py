"""What every bench script's JSON line says about its run (the version and the machine), and how the lines of a
long study are read back when it resumes (a torn last line, from a run killed while writing, is skipped)."""

from __future__ import annotations

import json
import os
import platform
import subprocess


def version() -> str:
    """``git describe --always --dirty`` of the checkout the script runs from (``unknown`` outside git)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """The architecture, core count and Python of this machine."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def read_lines(path: str | None) -> list[dict]:
    """The JSON objects of a JSON-lines file, in order; a missing file gives none, a line that does not parse is
    skipped."""
    found = []
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return found
