"""Checks that run in a child Python, where a crash costs nothing: a native library that segfaults at its first
call (an int8 kernel on an edge build, a cv_bridge built against another NumPy) becomes a reason in words instead
of taking the caller, e.g. the ROS node, down."""
from __future__ import annotations

import subprocess
import sys


def probe(code: str, expected: str | None = None, env: dict | None = None, timeout_s: float = 60.0) -> str:
    """Run ``code`` in a child Python; '' when it exits cleanly (and, with ``expected``, its last line of output is
    that), else why not: the crash signal, its last line of stderr, a wrong answer, or no answer in time."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return f"no answer in {timeout_s:.0f} s"
    if proc.returncode < 0:
        return f"the process crashed (signal {-proc.returncode})"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {proc.returncode}"
    if expected is None:
        return ""
    answer = (proc.stdout.strip().splitlines() or [""])[-1]
    return "" if answer == expected else f"wrong answer {answer[:80]!r}, expected {expected!r}"
