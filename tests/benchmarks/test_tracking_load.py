"""benchmarks/tracking_load.py, shortened: simulated trials at 10x a paper sweep's logging rate
through a real `mlflow server` (SQLite, and PostgreSQL where it runs) stopped and restarted
mid-run, every point read back."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_the_load_test_loses_nothing_through_a_server_restart():
    result = subprocess.run(
        [sys.executable, "benchmarks/tracking_load.py", "--seconds", "6", "--speedup", "5", "--row-chars", "40"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert re.search(r"^sqlite: lost: 0 of [1-9]\d* points .*duplicated: 0; reported unlogged: 0$", out, re.M), out
    # PostgreSQL where it can run here; otherwise the script says why and ran SQLite alone.
    assert re.search(r"^postgresql: (lost: 0 of [1-9]\d* points .*duplicated: 0;|not run: .+)", out, re.M), out
    assert "tracking_recovered" in out
