"""benchmarks/command_cpu.py: a command's CPU seconds by process, and its exit code passed on."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Burns about a second of CPU in a child named by its script, then exits 3.
BURN = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\nraise SystemExit(3)\n"


def test_a_commands_cpu_is_counted_under_its_program_and_its_exit_code_passed_on(tmp_path):
    script = tmp_path / "burn_cpu.py"
    script.write_text(BURN)
    done = subprocess.run([sys.executable, "benchmarks/command_cpu.py", "--", sys.executable, str(script)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert "exit 3" in header
    cpu, processes, name = rows[0].split("CPU-s")[0], rows[0].split()[2], rows[0].split()[-1]
    assert name == "burn_cpu.py" and processes == "1"
    assert 0.8 <= float(cpu) <= 1.5  # sampled every 0.1 s: at most one sample's worth missed


def test_a_process_the_command_did_not_start_is_not_counted(tmp_path):
    # The machine is shared: a process started beside the command, while it is measured,
    # burns CPU that is not the command's.
    started, burnt = tmp_path / "started", tmp_path / "burnt"
    waiter = tmp_path / "wait_idle.py"  # the measured command: idles until the other process is done
    waiter.write_text(f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
                      f"while not pathlib.Path({str(burnt)!r}).exists(): time.sleep(0.05)\n")
    beside = tmp_path / "burn_beside.py"
    beside.write_text(BURN.replace("raise SystemExit(3)", f"import pathlib; pathlib.Path({str(burnt)!r}).touch()"))
    measuring = subprocess.Popen([sys.executable, "benchmarks/command_cpu.py", "--", sys.executable, str(waiter)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run([sys.executable, str(beside)], check=True, timeout=60)
        out, err = measuring.communicate(timeout=60)
    finally:
        measuring.kill()
    assert measuring.returncode == 0, out + err
    header, *rows = out.strip().splitlines()
    assert "burn_beside.py" not in out
    assert [row.split()[-1] for row in rows] == ["wait_idle.py"]
    assert float(header.split(" s wall, ")[1].split(" CPU-s")[0]) < 0.8  # the idler's own start and polling


def test_no_command_is_a_usage_error():
    done = subprocess.run([sys.executable, "benchmarks/command_cpu.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "give the command to measure after --" in done.stderr
