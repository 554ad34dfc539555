"""Format generated source with ruff, isolated from any project configuration."""

from __future__ import annotations

import subprocess

from ruff.__main__ import find_ruff_bin

__all__ = ["check_source", "format_source"]

_OPTIONS = ["--isolated", "--line-length", "100", "--target-version", "py310"]


def _ruff(args: list[str], source: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [find_ruff_bin(), *args, *_OPTIONS, "--stdin-filename", "generated.py", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )


def format_source(source: str) -> str:
    """``ruff format`` the source; a failure here is a kgen bug, so it raises."""
    proc = _ruff(["format"], source)
    if proc.returncode != 0:
        raise RuntimeError(f"ruff format failed on generated code: {proc.stderr.strip()}")
    return proc.stdout


def check_source(source: str) -> list[str]:
    """``ruff check`` findings (empty when clean)."""
    # kgen is first-party wherever this runs, so isort's verdict does not depend on the cwd
    first_party = ["--config", "lint.isort.known-first-party = ['kgen']"]
    proc = _ruff(["check", "--output-format", "concise", "--no-cache", *first_party], source)
    if proc.returncode == 0:
        return []
    return [line for line in proc.stdout.splitlines() if line.strip() and "Found" not in line]
