"""Lint, as ament_flake8 does for ROS 2 Python packages (settings: setup.cfg [flake8])."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["ddvlm_core", "ddvlm_ros", "training", "bench", "launch", "scripts", "test", "setup.py"]


def test_flake8_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "flake8", *TARGETS], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
