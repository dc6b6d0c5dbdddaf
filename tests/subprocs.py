"""Child processes for tests that never outlive their test and always explain a hang.

Every child runs with ``PYTHONFAULTHANDLER=1``. A child still running at its deadline gets SIGABRT,
on which faulthandler prints every thread's Python stack; it is then killed (SIGKILL) if still
alive, and the test fails with the tail of its output, stacks included, so a hang is diagnosable
from CI's log alone. Output goes to temporary files, not pipes: a chatty child cannot block on a
full pipe while the test waits for it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import pytest

TAIL = 6000  # characters of a failed child's output shown in the failure message


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def child_env(extra: dict[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONFAULTHANDLER="1", JAX_PLATFORMS="cpu", **(extra or {}))
    return env


class Children:
    """Starts children; `wait` returns their results or fails the test after killing them all."""

    def __init__(self):
        self.procs: list[tuple[subprocess.Popen, object, object, float]] = []

    def start(self, args: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.Popen:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(list(args), env=env or child_env(), cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
        self.procs.append((proc, out, err, time.monotonic()))
        return proc

    def output(self, proc: subprocess.Popen) -> tuple[str, str]:
        for p, out, err, _ in self.procs:
            if p is proc:
                out.seek(0), err.seek(0)
                return out.read(), err.read()
        raise KeyError(proc)

    def wait(self, timeout: float) -> list[Result]:
        """Waits for every child; past ``timeout`` seconds dumps their stacks, kills them all and
        fails the test with their output."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p, *_ in self.procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        hung = [p for p, *_ in self.procs if p.poll() is None]
        if hung:
            self.kill(dump=True)
            logs = "\n".join(self._describe(i) for i in range(len(self.procs)))
            pytest.fail(f"{len(hung)} of {len(self.procs)} child process(es) still running after "
                        f"{timeout:g} s; stacks and output:\n{logs}")
        return [Result(p.returncode, *self.output(p), time.monotonic() - t0)
                for p, _, _, t0 in self.procs]

    def kill(self, dump: bool = False) -> None:
        """Ends every child still running (after a stack dump with ``dump``); leaves no orphan."""
        alive = [p for p, *_ in self.procs if p.poll() is None]
        if dump:
            for p in alive:
                p.send_signal(signal.SIGABRT)  # faulthandler prints the stacks, then the child dies
            end = time.monotonic() + 10
            while any(p.poll() is None for p in alive) and time.monotonic() < end:
                time.sleep(0.1)
        for p in alive:
            if p.poll() is None:
                p.kill()
            p.wait()

    def _describe(self, i: int) -> str:
        proc = self.procs[i][0]
        out, err = self.output(proc)
        return (f"--- child {i} (exit {proc.returncode}): {' '.join(map(str, proc.args))[:300]}\n"
                f"stdout: ...{out[-TAIL:]}\nstderr: ...{err[-TAIL:]}")

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc) -> None:
        self.kill(dump=exc[0] is not None)
        for _, out, err, _ in self.procs:
            out.close(), err.close()


def run(args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None) -> Result:
    """One child to completion (`subprocess.run` with a stack dump instead of a bare timeout)."""
    with Children() as children:
        children.start(args, env=env, cwd=cwd)
        return children.wait(timeout)[0]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]
