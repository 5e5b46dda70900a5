"""deploy/supervise.py, which `make up` runs every Celery process under: a child that
dies is started again; a stop signal to the process group ends both, without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from api_helpers import ROOT, wait_for


def test_a_dying_child_is_restarted_and_a_group_stop_ends_both(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # Each run appends a line; the first two die at once, the third keeps running.
    child = ("import os, sys, time; p = sys.argv[1]; open(p, 'a').write('run\\n'); "
             "n = len(open(p).read().splitlines()); sys.exit(3) if n < 3 else time.sleep(600)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.supervise", "--name", "t", "--", sys.executable, "-c", child, str(runs)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for(lambda: runs.exists() and len(runs.read_text().splitlines()) == 3, timeout=30,
                 what="two restarts after two exits")
        time.sleep(0.5)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGTERM)  # what `make down` sends
        assert proc.wait(timeout=20) != 0  # the child's status (killed by SIGTERM), not a restart
        out = proc.stdout.read()
        assert out.count("child exited with 3") == 2 and "restarting in 1 s" in out and "restarting in 2 s" in out
        assert len(runs.read_text().splitlines()) == 3  # nothing started after the stop
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
