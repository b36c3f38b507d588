"""Running model-written programs: one isolated, limited, short-lived process each.

Isolation comes from a well-kept tool, chosen once at start:

- ``bwrap`` (bubblewrap): the whole filesystem read-only, a private ``/tmp`` and working
  directory, new PID and network namespaces, killed with its parent;
- ``none``: no isolation at all. Refused unless the caller opts in explicitly.

Inside, a small trusted runner (``_RUNNER``) sets resource limits (address space, CPU
seconds, file size, process count, open files), drops to ``nobody`` when it is root,
executes the program, runs its checks, and only then writes a per-run secret to a
private pipe. A program that exits early (``sys.exit(0)``, ``os._exit(0)``), hangs, dies,
or alters ``builtins`` never produces the secret, so it does not pass.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExecutionResult", "Limits", "Sandbox", "SandboxUnavailable", "available_isolations"]

_NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """No isolation is available and the caller did not opt in to running without it."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, per program
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16  # largest file it may write
    processes: int = 32  # for the user it runs as
    open_files: int = 64


@dataclass
class ExecutionResult:
    passed: bool
    status: str  # passed | failed | timeout | error (the program never reached its verdict)
    detail: str = ""  # the last lines of stderr, or why it failed
    seconds: float = 0.0


# The runner executes inside the sandbox. The program and the checks arrive on stdin as
# JSON together with the secret; the verdict goes to an inherited pipe, and it is written only after the checks ran to the end.
_RUNNER = r"""
import builtins, json, os, resource, sys
def _main():
    spec = json.loads(sys.stdin.read())
    sys.stdin.close()
    secret, verdict_fd = spec.pop("secret"), spec.pop("verdict_fd")
    write, close = os.write, os.close
    for name, value in spec["limits"].items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (value, value))
    if os.geteuid() == 0 and spec["drop_to"] is not None:
        os.setgroups([])
        os.setgid(spec["drop_to"])
        os.setuid(spec["drop_to"])
    pristine = dict(vars(builtins))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(spec["program"], "<program>", "exec"), namespace)
        exec(compile(spec["checks"], "<checks>", "exec"), namespace)
    except BaseException as error:  # SystemExit included: exiting is not passing
        print(f"{type(error).__name__}: {error}"[:2000], file=sys.stderr)
        return
    changed = sorted(k for k in set(pristine) | set(vars(builtins)) if vars(builtins).get(k, None) is not pristine.get(k, None))
    if changed:
        print(f"the program altered builtins: {changed[:5]}", file=sys.stderr)
        return
    write(verdict_fd, secret.encode())
    close(verdict_fd)
_main()
"""


def available_isolations() -> list[str]:
    """Isolation kinds that work on this machine, best first (each one is tried for real)."""
    # util-linux's unshare was tried too: as root it gives namespaces but no read-only
    # filesystem, and an unprivileged user cannot reach a Python under /root without
    # mounts that unshare does not set up.
    return ["bwrap"] if _probe("bwrap") else []


def _probe(kind: str) -> bool:
    if kind == "bwrap" and shutil.which("bwrap") is None:
        return False
    with tempfile.TemporaryDirectory() as workdir:
        command = _wrap(kind, [_interpreter(), "-I", "-c", "pass"], Path(workdir))
        try:
            return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _interpreter() -> str:
    """The base interpreter (a virtual environment's python resolved to the one it links
    to): programs need the standard library only, and a venv may live where the sandbox
    hides things (under /tmp, say)."""
    return os.path.realpath(sys.executable)


def _python_mounts() -> list[str]:
    """bwrap arguments that keep the interpreter's own tree reachable in the sandbox.

    Under ``/tmp`` (which the sandbox replaces) it is bound back read-only. Under a private
    directory (``/root/.pyenv``) it is unreachable for ``nobody``: the private directory is
    replaced by an empty tmpfs holding only the interpreter's tree, which also hides the
    rest of it (keys, tokens) from the program.
    """
    needed = os.path.realpath(sys.base_prefix)
    path = Path(needed)
    if path == Path("/tmp") or Path("/tmp") in path.parents:
        return ["--ro-bind", needed, needed]
    if os.geteuid() != 0:
        return []
    for ancestor in reversed(path.parents):
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            arguments = ["--tmpfs", str(ancestor)]
            for between in reversed(path.parents):
                if ancestor in between.parents:
                    arguments += ["--perms", "0755", "--dir", str(between)]
            return arguments + ["--ro-bind", needed, needed]
    return []


def _wrap(isolation: str, argv: list[str], workdir: Path) -> list[str]:
    if isolation == "bwrap":
        return [
            "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            *_python_mounts(),
            "--bind", str(workdir), str(workdir), "--chdir", str(workdir),
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--", *argv,
        ]
    return argv


class Sandbox:
    """Runs programs with their checks; ``run_many`` runs them in parallel.

    Args:
        isolation: ``auto`` (bwrap when it works here), ``bwrap`` or ``none``.
        allow_unisolated: permit ``none`` (explicitly, or when ``auto`` finds nothing).
        limits: per-program resource limits.
        workers: programs run at once (default: the machine's cores).

    Raises:
        SandboxUnavailable: when the isolation asked for does not work here, or none works
            and ``allow_unisolated`` is false.
    """

    def __init__(self, isolation: str = "auto", *, allow_unisolated: bool = False,
                 limits: Limits = Limits(), workers: int | None = None):
        if isolation not in ("auto", "bwrap", "none"):
            raise ValueError(f"isolation must be auto, bwrap or none, but got {isolation!r}")
        if isolation == "auto":
            found = available_isolations()
            isolation = found[0] if found else "none"
        elif isolation != "none" and not _probe(isolation):
            raise SandboxUnavailable(f"isolation {isolation!r} does not work on this machine")
        if isolation == "none" and not allow_unisolated:
            raise SandboxUnavailable(
                "no isolation for model-written code is available here (install bubblewrap: "
                "`apt-get install bubblewrap`); to run programs "
                "without isolation anyway, opt in with allow_unisolated=True (--unsafe-no-isolation)"
            )
        self.isolation, self.limits = isolation, limits
        self.workers = workers or os.cpu_count() or 1

    def describe(self) -> str:
        return {
            "bwrap": "bubblewrap: read-only filesystem, private /tmp, no network, own PID namespace"
                     + (", runs as nobody" if os.geteuid() == 0 else ""),
            "none": "NONE: programs run unisolated with resource limits only",
        }[self.isolation]

    def run(self, program: str, checks: str = "") -> ExecutionResult:
        """Run ``program`` then ``checks``; passed only if both ran to the end."""
        secret = secrets.token_hex(16)
        limits = self.limits
        spec = {
            "program": program, "checks": checks, "secret": secret,
            "drop_to": _NOBODY if os.geteuid() == 0 else None,  # RLIMIT_NPROC does not bind root
            "limits": {
                "RLIMIT_AS": limits.memory_mb * 2**20,
                "RLIMIT_CPU": int(limits.timeout_s) + 1,
                "RLIMIT_FSIZE": limits.file_size_mb * 2**20,
                "RLIMIT_NPROC": limits.processes,
                "RLIMIT_NOFILE": limits.open_files,
                "RLIMIT_CORE": 0,
            },
        }
        with tempfile.TemporaryDirectory(prefix="gmt-ray-exec-") as workdir:
            workdir_path = Path(workdir)
            if spec["drop_to"] is not None and os.geteuid() == 0:
                os.chown(workdir, _NOBODY, _NOBODY)
            command = _wrap(self.isolation, [_interpreter(), "-I", "-c", _RUNNER], workdir_path)
            verdict_read, verdict_write = os.pipe()
            spec["verdict_fd"] = verdict_write
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
            start = time.perf_counter()
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                cwd=workdir, env=env, start_new_session=True,
                pass_fds=(verdict_write,),
            )
            os.close(verdict_write)
            timed_out = False
            try:
                _, stderr = process.communicate(json.dumps(spec).encode(), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
                _, stderr = process.communicate()
            finally:
                _kill_group(process)  # anything it left behind in its session
            verdict = _read_all(verdict_read)
            seconds = time.perf_counter() - start
        tail = stderr.decode(errors="replace").strip()[-1000:]
        if timed_out:
            return ExecutionResult(False, "timeout", f"no verdict within {limits.timeout_s:g} s", seconds)
        if verdict == secret.encode():
            return ExecutionResult(True, "passed", "", seconds)
        status = "failed" if tail else "error"
        return ExecutionResult(False, status, tail or f"exited with status {process.returncode} before its checks finished", seconds)

    def run_many(self, jobs: list[tuple[str, str]]) -> list[ExecutionResult]:
        """``run`` over (program, checks) pairs in parallel, results in order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _read_all(fd: int) -> bytes:
    chunks = []
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
