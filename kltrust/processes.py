"""Several processes, one run: starting the runtime, agreeing on decisions, bounded waits, SIGTERM.

A multi-process run (`initialize`) is one program on every process: each must take the same branch
(resume or not, stop or not, a stage done or not) or they reach different collectives and wait for
each other for ever. The rules this module enforces:

* **Decide, agree, then write.** A decision read from files (`claim`) is taken by every process on
  what it sees *before* any process writes, and the answers are exchanged: equal answers go on,
  an error on any process is raised on all of them, and different answers (a stale or per-host
  directory) raise `PeerDisagreement` naming each process's view. Only then does process 0 write,
  followed by a `sync`.
* **Every wait is bounded.** Barriers and exchanges go through the coordination service's key-value
  store and barriers (not device collectives), each with the peer timeout (``--peer_timeout``,
  ``KLTRUST_PEER_TIMEOUT``, default `DEFAULT_TIMEOUT_S`), and fail with `PeerError` naming the
  point. A dead peer stops heart-beating; JAX's coordination service then ends every process
  within the same timeout ("Terminating process because the JAX distributed service detected
  fatal errors ... tasks stopped sending heartbeats").
* **A hung peer is found even from inside a collective.** The host loops mark each step with
  `progress`; a watchdog thread ends a process that has made no progress for the peer timeout
  while a peer has sat at an earlier step for a further timeout (that peer hangs outside any
  collective, and this one waits for it inside one), with a clear message and every stack.
* **SIGTERM ends a process in bounded time**, even one blocked in a collective (`StopOnSigterm`).

With one process every function here is a cheap no-op, so single-process code calls them freely.
"""

from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from kltrust.errors import ConfigError

ENV_COORDINATOR = "KLTRUST_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "KLTRUST_NUM_PROCESSES"
ENV_PROCESS_ID = "KLTRUST_PROCESS_ID"
ENV_TIMEOUT = "KLTRUST_PEER_TIMEOUT"
# Long enough for the slowest process to catch up at a barrier after the others (a compile of a
# few minutes on a loaded host), short enough that a dead or hung peer is reported the same hour.
DEFAULT_TIMEOUT_S = 300

T = TypeVar("T")
_state = {"timeout_s": float(DEFAULT_TIMEOUT_S), "calls": 0}


class PeerError(RuntimeError):
    """A peer process did not answer in time: dead, hung, or on another code path."""


class PeerDisagreement(PeerError):
    """The processes reached the same decision point with different answers."""


# ---------------------------------------------------------------- starting the runtime


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float | None = None) -> bool:
    """Starts the multi-process runtime when asked to; returns whether it did.

    Arguments left None are read from ``KLTRUST_COORDINATOR_ADDRESS``, ``KLTRUST_NUM_PROCESSES``,
    ``KLTRUST_PROCESS_ID`` and ``KLTRUST_PEER_TIMEOUT``. With a coordinator address this calls
    `jax.distributed.initialize` with it; ``coordinator_address="auto"`` lets JAX detect the
    cluster (TPU pod slices, SLURM, Open MPI). With neither, nothing happens (single process).
    ``timeout_s`` bounds every wait for a peer: start-up, heartbeats (a dead peer), barriers and
    exchanges (a hung or diverged peer) and shut-down. Must run before anything touches a device.
    CPU processes exchange collectives over gloo.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if timeout_s is None and os.environ.get(ENV_TIMEOUT):
        timeout_s = float(os.environ[ENV_TIMEOUT])
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    if not (isinstance(timeout_s, (int, float)) and 1 <= timeout_s < float("inf")):
        raise ConfigError(f"peer_timeout = {timeout_s!r}: must be a finite number of seconds >= 1.")
    if not coordinator_address:
        if num_processes not in (None, 1):
            raise ConfigError(f"num_processes = {num_processes} needs a coordinator address "
                             f"(--coordinator_address or ${ENV_COORDINATOR}).")
        return False
    if coordinator_address != "auto":
        if num_processes is None or num_processes < 1:
            raise ConfigError(f"num_processes = {num_processes}: must be an integer >= 1 with a "
                             "coordinator address.")
        if process_id is None or not 0 <= process_id < num_processes:
            raise ConfigError(f"process_id = {process_id}: must be in [0, {num_processes - 1}].")
    _one_collective_order()
    seconds = int(max(1, round(timeout_s)))
    timeouts = dict(initialization_timeout=seconds, heartbeat_timeout_seconds=seconds,
                    shutdown_timeout_seconds=seconds)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto":
        jax.distributed.initialize(**timeouts)
    else:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeouts)
    _state["timeout_s"] = float(timeout_s)
    return True


def _one_collective_order() -> None:
    """CPU processes must start their collectives in one order (see kltrust/__init__.py)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_concurrency_optimized_scheduler=false"
                                   ).strip()


def timeout_s() -> float:
    """The bound on every wait for a peer, in seconds."""
    return _state["timeout_s"]


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; every process writes checkpoints,
    which orbax coordinates itself)."""
    return jax.process_index() == 0


# ---------------------------------------------------------------- bounded waits


def _client():
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise PeerError("several processes but no jax.distributed client: call "
                        "kltrust.processes.initialize first.")
    return client


def _point(name: str) -> str:
    """A unique key for the n-th decision point of this run. Every process passes the same points
    in the same order, so the counter names the same point everywhere; a process on another path
    waits at a key nobody else writes and times out, naming it."""
    _state["calls"] += 1
    return f"kltrust/{_state['calls']}/{name}"


def _timeout_error(what: str, name: str, error: Exception) -> PeerError:
    return PeerError(
        f"process {jax.process_index()}: not every one of the {jax.process_count()} processes "
        f"reached '{name}' within {timeout_s():g} s ({what}); a peer is dead, hung or took "
        f"another code path. Detail: {str(error).splitlines()[0][:300] if str(error) else error!r}")


def sync(name: str) -> None:
    """A barrier across processes, bounded by the peer timeout (nothing with one process)."""
    if jax.process_count() == 1:
        return
    point = _point(name)
    try:
        _client().wait_at_barrier(point, int(timeout_s() * 1000))
    except Exception as error:  # noqa: BLE001  (the runtime raises its own XlaRuntimeError)
        raise _timeout_error("barrier", name, error) from error


def exchange(name: str, value: str) -> list[str]:
    """Every process's ``value`` (a string), in process order; bounded by the peer timeout."""
    if jax.process_count() == 1:
        return [value]
    point = _point(name)
    client = _client()
    client.key_value_set(f"{point}/{jax.process_index()}", value)
    values = []
    for i in range(jax.process_count()):
        try:
            values.append(client.blocking_key_value_get(f"{point}/{i}", int(timeout_s() * 1000)))
        except Exception as error:  # noqa: BLE001
            raise _timeout_error(f"waiting for process {i}'s answer", name, error) from error
    return values


def agree(name: str, value: Any) -> Any:
    """Checks that every process holds the same JSON-able ``value`` and returns it; raises
    `PeerDisagreement` (on every process) naming each process's value otherwise."""
    return claim(name, lambda: value)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every process must call it)."""
    return any(json.loads(v) for v in exchange("any", json.dumps(bool(flag))))


def claim(name: str, decide: Callable[[], T], where: str = "") -> T:
    """Takes a decision that every process must share, before any of them writes.

    Each process runs ``decide()`` (reading files, say) and the outcomes are exchanged: the same
    value everywhere is returned; an exception on any process is raised on every process (the
    original where it happened; elsewhere a `ConfigError` if it was one, else a `ValueError`, with
    its message); different values raise
    `PeerDisagreement` on every process. Callers then let process 0 write and `sync`.
    ``where`` (a directory) goes into the disagreement message.
    """
    try:
        outcome = {"value": decide()}
        local_error = None
    except Exception as error:  # noqa: BLE001  (shared with the peers, then re-raised)
        outcome = {"error": f"{error}", "type": type(error).__name__}
        local_error = error
    if jax.process_count() == 1:
        if local_error is not None:
            raise local_error
        return outcome["value"]
    outcomes = [json.loads(v) for v in exchange(name, json.dumps(outcome, sort_keys=True))]
    if local_error is not None:
        raise local_error
    for i, other in enumerate(outcomes):
        if "error" in other:
            kind = ConfigError if other["type"] == "ConfigError" else ValueError
            raise kind(f"{other['error']} (seen by process {i})")
    if any(o != outcomes[0] for o in outcomes):
        views = "; ".join(f"process {i} sees {o['value']!r}" for i, o in enumerate(outcomes))
        raise PeerDisagreement(
            f"the processes disagree at '{name}'{f' in {where}' if where else ''}: {views}. Every "
            "process must see the same files (one shared file system, no stale copies).")
    return outcome["value"]


def primary_first(name: str, fn: Callable[[], T]) -> T:
    """Runs ``fn`` on process 0, waits, then on the others: for shared files such as a data set
    that process 0 builds and the others then read."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_primary() else None
    sync(name)
    if not is_primary():
        result = fn()
    return result


# ---------------------------------------------------------------- progress watchdog

_progress = {"count": 0, "where": "", "at": 0.0, "watching": False}
EXIT_PEER_HUNG = 70  # the exit status of a process the progress watchdog ends


def progress(where: str) -> None:
    """Marks that this process reached the next step of a host loop (``where`` names it).

    Every process passes the same steps in the same order, so step counts compare across processes.
    With several processes the first call starts `_watch_progress`. With one, nothing happens.
    """
    if jax.process_count() == 1:
        return
    _progress.update(count=_progress["count"] + 1, where=where, at=time.monotonic())
    _client().key_value_set(f"kltrust/progress/{jax.process_index()}",
                            json.dumps([_progress["count"], where]), allow_overwrite=True)
    if not _progress["watching"]:
        _progress["watching"] = True
        threading.Thread(target=_watch_progress, daemon=True, name="kltrust-progress").start()


def _watch_progress() -> None:
    """Ends this process when it has been stuck for the peer timeout and a peer has sat at an
    earlier step for a further timeout. Peers are read only once this process is stuck, so a
    healthy run costs no reads."""
    client, me = _client(), jax.process_index()
    peers = [i for i in range(jax.process_count()) if i != me]
    suspects: dict[int, tuple[int, float]] = {}
    while True:
        time.sleep(max(0.5, min(5.0, timeout_s() / 10)))
        now = time.monotonic()
        mine, where = _progress["count"], _progress["where"]
        if now - _progress["at"] < timeout_s():
            suspects.clear()
            continue
        for peer in peers:
            try:
                count, peer_where = json.loads(client.key_value_try_get(f"kltrust/progress/{peer}"))
            except Exception:  # noqa: BLE001  (not posted yet: the peer is before its first step)
                count, peer_where = 0, "its start"
            if count >= mine:
                suspects.pop(peer, None)
            elif suspects.get(peer, (None,))[0] != count:
                suspects[peer] = (count, now)
            elif now - suspects[peer][1] >= timeout_s():
                print(f"kltrust: process {me} has waited {now - _progress['at']:.0f} s at "
                      f"'{where}' (step {mine}) for process {peer}, which has not moved from "
                      f"'{peer_where}' (step {count}) in over {timeout_s():g} s: it is hung. "
                      f"Stacks follow; exiting with status {EXIT_PEER_HUNG}.", file=sys.stderr,
                      flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(EXIT_PEER_HUNG)


# ---------------------------------------------------------------- SIGTERM


class StopOnSigterm:
    """While active (main thread only), SIGTERM asks the loop to checkpoint after the chunk it is
    running and return, instead of killing the process.

    Python runs a signal handler only between bytecodes, so a main thread blocked in a collective
    (a peer gone) would never see it. With several processes a watchdog thread therefore reads the
    signal from a wake-up pipe: if the loop has not returned ``grace_s`` seconds (default: the peer
    timeout) after SIGTERM, or on a second SIGTERM, it dumps every thread's stack to stderr and
    exits with 143, the status of a process killed by SIGTERM.
    """

    def __init__(self, enabled: bool, grace_s: float | None = None):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self.grace_s = timeout_s() if grace_s is None else grace_s
        self._previous = None
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._done = threading.Event()

    def __enter__(self) -> "StopOnSigterm":
        if not self.enabled:
            return self
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        if jax.process_count() > 1:
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            self._old_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            threading.Thread(target=self._watch, daemon=True, name="kltrust-sigterm").start()
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def _watch(self) -> None:
        read, _ = self._pipe
        seen = 0
        while not self._done.is_set():
            ready, _, _ = select.select([read], [], [], 0.5 if not seen else self.grace_s)
            if self._done.is_set():
                return
            if ready:
                data = os.read(read, 64)
                seen += data.count(bytes([signal.SIGTERM]))
                if seen < 2 and data:
                    continue
            if seen:
                # Ready with a second SIGTERM, or not ready within the grace period after the first.
                print(f"kltrust: SIGTERM not handled within {self.grace_s:g} s (the main thread is "
                      "blocked, e.g. in a collective with a dead peer); stacks follow, exiting "
                      "with status 143.", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(143)

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._done.set()
        signal.signal(signal.SIGTERM, self._previous)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._pipe[1])
            # The read end is left to the watchdog thread, which returns within 0.5 s.
