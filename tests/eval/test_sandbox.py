"""Hostile programs in the sandbox: each must fail, and none may do harm."""

import os
import shutil
import socket
import tempfile
import textwrap
import time

import pytest

from gmt_ray.eval.sandbox import Limits, Sandbox, SandboxUnavailable, available_isolations

pytestmark = pytest.mark.skipif(not available_isolations(), reason="bubblewrap is not installed (apt-get install bubblewrap)")


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox("bwrap", limits=Limits(timeout_s=5, memory_mb=512))


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_correct_program_passes_and_a_wrong_one_fails(sandbox):
    assert sandbox.run("def f(x):\n    return x + 1\n", "assert f(1) == 2").passed
    wrong = sandbox.run("def f(x):\n    return x\n", "assert f(1) == 2")
    assert not wrong.passed and wrong.status == "failed" and "AssertionError" in wrong.detail


def test_infinite_loop_times_out(sandbox):
    start = time.perf_counter()
    result = sandbox.run("while True:\n    pass\n", "")
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - start < 5 + 5


def test_fork_bomb_fails_and_leaves_no_process(sandbox):
    marker = "forkbomb-7f3a"
    program = f"import os\nMARK = '{marker}'\nwhile True:\n    os.fork()\n"
    result = sandbox.run(program, "")
    assert not result.passed
    time.sleep(0.5)
    assert _processes_with(marker) == []


def test_memory_bomb_fails(sandbox):
    result = sandbox.run("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))\n", "")
    assert not result.passed and "MemoryError" in result.detail


@pytest.fixture
def canary():
    # Not under /tmp, which the sandbox replaces with its own: this file is visible inside.
    directory = tempfile.mkdtemp(dir="/var/tmp")
    path = os.path.join(directory, "canary.txt")
    with open(path, "w") as file:
        file.write("intact")
    yield path
    shutil.rmtree(directory)


@pytest.mark.parametrize("attack", ["import os\nos.remove(CANARY)\n", "open(CANARY, 'w').write('owned')\n",
                                    "import os\nos.rename(CANARY, CANARY + '.moved')\n"])
def test_cannot_delete_or_overwrite_a_file_outside_its_directory(sandbox, canary, attack):
    result = sandbox.run(f"CANARY = {canary!r}\n" + attack, f"assert open({canary!r}).read() == 'intact'")
    assert not result.passed and ("Read-only" in result.detail or "Permission" in result.detail)
    with open(canary) as file:
        assert file.read() == "intact"


def test_cannot_write_outside_the_filesystem_root_it_was_given(sandbox):
    checks = "open('/etc/gmt-ray-test', 'w').write('x')"
    assert not sandbox.run("", checks).passed
    assert not os.path.exists("/etc/gmt-ray-test")


def test_can_write_its_own_directory(sandbox):
    assert sandbox.run("open('scratch.txt', 'w').write('ok')\n", "assert open('scratch.txt').read() == 'ok'").passed


def test_cannot_reach_a_loopback_listener(sandbox):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = f"import socket\nconnection = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        result = sandbox.run(program, "")
        assert not result.passed
        with pytest.raises(socket.timeout):
            listener.accept()


def test_cannot_kill_its_parent_or_the_evaluator(sandbox):
    # Every kill must fail; the program then reaches its checks, which pass only if it
    # killed nothing. A kill that landed would end the sandbox (its parent) or this process.
    program = (f"import os, signal\nkilled = []\nfor pid in (os.getppid(), {os.getpid()}):\n    try:\n"
               "        os.kill(pid, signal.SIGKILL)\n        killed.append(pid)\n    except OSError:\n        pass\n")
    result = sandbox.run(program, "assert not killed, f'killed {killed}'")
    assert result.passed and result.status == "passed", result  # and this process is still alive to say so


@pytest.mark.parametrize("early_exit", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_exiting_before_the_checks_does_not_pass(sandbox, early_exit):
    program = "def f(x):\n    return 0\n" + early_exit
    assert not sandbox.run(program, "assert f(1) == 2").passed


def test_exiting_from_inside_the_checked_function_does_not_pass(sandbox):
    program = "import os\ndef f(x):\n    os._exit(0)\n"
    assert not sandbox.run(program, "assert f(1) == 2").passed


def test_redefining_builtins_does_not_pass(sandbox):
    program = "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 41\n"
    result = sandbox.run(program, "assert abs(f(1) - 42) < 1e-6")
    assert not result.passed and "builtins" in result.detail


def test_writing_to_every_open_file_descriptor_does_not_forge_a_pass(sandbox):
    program = textwrap.dedent("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b"passed")
            except OSError:
                pass
        os._exit(0)
    """)
    assert not sandbox.run(program, "").passed


def test_processes_left_behind_are_killed(sandbox):
    marker = "daemon-4b1c"
    program = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                MARK = '{marker}'
                time.sleep(60)
            os._exit(0)
    """)
    # Programs run via `python -c`, so the marker must be in the program text the child runs.
    result = sandbox.run(program + f"\n# {marker}\n", "")
    assert result.passed  # a well-behaved parent; what matters is the orphan
    time.sleep(0.5)
    assert _processes_with(marker) == []


def test_programs_run_in_parallel_and_in_order(sandbox):
    jobs = [(f"value = {i}\n", f"assert value == {i}") for i in range(8)] + [("value = 0\n", "assert value == 1")]
    results = sandbox.run_many(jobs)
    assert [r.passed for r in results] == [True] * 8 + [False]


def test_a_sandbox_reports_its_isolation(sandbox):
    assert "bubblewrap" in sandbox.describe()


def test_no_isolation_is_refused_unless_asked_for():
    with pytest.raises(SandboxUnavailable, match="allow_unisolated"):
        Sandbox("none")
    unisolated = Sandbox("none", allow_unisolated=True, limits=Limits(timeout_s=5))
    assert "NONE" in unisolated.describe()
    assert unisolated.run("x = 1\n", "assert x == 1").passed


def test_an_unknown_isolation_is_an_error():
    with pytest.raises(ValueError, match="isolation"):
        Sandbox("chroot")


def test_works_from_a_virtual_environment_under_tmp(tmp_path):
    # CI checkouts (and their .venv) often live under /tmp, which the sandbox replaces.
    import subprocess
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    import gmt_ray.eval.sandbox as module

    # sandbox.py needs only the standard library: load it by path in the bare venv.
    script = ("import importlib.util, sys\n"
              f"spec = importlib.util.spec_from_file_location('sandbox', {module.__file__!r})\n"
              "sandbox = importlib.util.module_from_spec(spec); sys.modules['sandbox'] = sandbox\n"
              "spec.loader.exec_module(sandbox)\n"
              "print(sys.prefix, file=sys.stderr)\n"
              "print(sandbox.Sandbox('bwrap').run('x = 41 + 1', 'assert x == 42').passed)")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().startswith("/tmp/")  # really running from the venv under /tmp
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
