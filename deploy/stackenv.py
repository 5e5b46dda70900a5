"""``stack.env``: the settings a running stack was started with.

``make up`` writes it into the run directory as ``export KEY='value'`` lines
(so ``source .run/stack.env`` hands them to the next commands); ``make
status``, ``make down`` and a later ``make up`` read it, so they act on the
same stack without the settings being repeated.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def documented_settings() -> set[str]:
    """The setting names .env.example documents (the ones stack.env records when given)."""
    try:
        text = (ROOT / ".env.example").read_text()
    except OSError:
        return set()
    return {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}


def parse_env_lines(text: str) -> dict[str, str]:
    """``[export ]KEY=value`` lines (values shell-quoted or bare); comments and blank lines skipped."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        parts = shlex.split(value)
        env[key.strip()] = parts[0] if parts else ""
    return env


def read_stack_env(path: Path) -> dict[str, str]:
    return parse_env_lines(path.read_text()) if path.exists() else {}


def given(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus what up derived: the private servers' URLs and their markers.

    Applied to stack.env (the settings the running stack was started with) and
    to the environment too: a shell that ran `source .run/stack.env` exports
    the private servers' URLs with their EMBEDDED_* markers, and those URLs
    still name our own servers (to start after a reboot), not servers given."""
    derived = {"EMBEDDED_PG", "EMBEDDED_REDIS"}
    if env.get("EMBEDDED_PG"):
        derived.add("DATABASE_URL")
    if env.get("EMBEDDED_REDIS"):
        derived.add("REDIS_URL")
    return {k: v for k, v in env.items() if k not in derived}
