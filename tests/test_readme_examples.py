"""README's curl examples work against the demo data, as written.

The second bash block of README's "Try it" section runs unchanged in bash
against a real gunicorn serving a copy of the demo database, with the
variables `source .run/stack.env` would export (API_URL, DATABASE_URL,
REDIS_URL, JWT_SECRET) pointed at this session's servers. ``curl`` is wrapped
to fail on any non-2xx answer (``--fail-with-body``) and to report each status
on stderr; the script runs under ``set -euo pipefail``, so one broken example
fails the test (except /health, 503 here because no worker runs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import ROOT, SECRET, Gunicorn

# /health is 503 here by design (no Celery worker runs in this test): the one answer allowed to be non-2xx.
CURL_WRAPPER = """curl() {
  case "$*" in
    */health) command curl -w '%{stderr}HEALTH %{http_code}\\n' "$@" ;;
    *) command curl --fail-with-body -w '%{stderr}HTTP %{http_code}\\n' "$@" ;;
  esac
}"""


def readme_examples() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Try it"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "README's Try it section: a set-up block, then the examples"
    return blocks[1]


@pytest.fixture(scope="module")
def server(demo_database_url: str, redis_url: str, tmp_path_factory) -> Iterator[Gunicorn]:
    g = Gunicorn(demo_database_url, redis_url, workers=1, threads=4).start(tmp_path_factory.mktemp("readme"))
    yield g
    g.stop()


def test_readme_curl_examples_answer_2xx_on_demo_data(server: Gunicorn, demo_database_url: str,
                                                     redis_url: str) -> None:
    assert shutil.which("curl"), "curl is required"
    examples = readme_examples()
    env = {
        "HOME": os.environ.get("HOME", "/tmp"),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "API_URL": server.base,
        "DATABASE_URL": demo_database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": SECRET,
        "PYTHONPATH": str(ROOT),
    }
    script = "\n".join(["set -euo pipefail", CURL_WRAPPER, examples])
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    statuses = [int(s) for s in re.findall(r"^HTTP (\d{3})$", out.stderr, re.M)]
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    health = re.findall(r"^HEALTH (\d{3})$", out.stderr, re.M)
    assert health in (["200"], ["503"]), out.stderr
    assert len(statuses) + len(health) == examples.count("curl -s"), statuses
    assert all(200 <= s < 300 for s in statuses), statuses
    assert {201, 202} <= set(statuses)  # the create and the admin refresh ran
    assert '"upvoted":' in out.stdout and "/api/projects/{project_id}" in out.stdout
