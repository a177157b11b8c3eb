"""Run a list of tasks in order: in this process, on a local process pool, or on Ray (the ``EXECUTORS`` registry).

Long jobs (``bgbias build``, ``bgbias masks``) cut their work into a fixed
plan of tasks and map one function over it here. Results always come back in
task order, so outputs never depend on the worker count or the executor.
Each worker gets its state once through ``initializer(*initargs)`` instead of
with every task.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Iterator, Sequence

from bgbias.core.registry import Registry

RAY_MISSING = "--executor ray needs Ray; install it with: pip install 'bgbias[ray]'."


class Executor(ABC):
    """Where a plan of tasks runs. ``map`` yields ``fn(task)`` in task order, whatever the workers do."""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *, initializer: Callable[..., None],
            initargs: tuple, workers: int, preload: str | None, chunksize: int,
            ray_remote_args: dict[str, Any] | None) -> Iterator[Any]:
        """``fn(task)`` for every task, in task order; each worker runs ``initializer(*initargs)`` once."""


EXECUTORS: Registry[Executor] = Registry("executor")


@EXECUTORS.register("local", help="this process (workers <= 1) or a local forkserver process pool; workers die "
                                  "with the parent")
class LocalExecutor(Executor):
    """In this process (torch/OpenCV thread counts put back afterwards) or on a forkserver process pool.

    A plain fork after OpenCV or torch started threads can hang, hence forkserver; ``preload`` names the
    module the server imports once.
    """

    def map(self, fn, tasks, *, initializer, initargs, workers, preload, chunksize, ray_remote_args):
        if workers <= 1 or len(tasks) <= 1:
            import cv2
            import torch

            threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
            initializer(*initargs)
            try:
                yield from map(fn, tasks)
            finally:
                torch.set_num_threads(threads)
                cv2.setNumThreads(cv_threads)
            return
        pool = _pool(min(workers, len(tasks)), initializer, initargs, preload)
        try:
            yield from pool.map(fn, tasks, chunksize=chunksize)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@EXECUTORS.register("ray", help="Ray actors on a local or remote cluster (pip install 'bgbias[ray]')")
class RayExecutor(Executor):
    """Ray's multiprocessing pool; ``ray_remote_args`` go to every actor (e.g. ``{"num_gpus": 1}``)."""

    def __init__(self) -> None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError(RAY_MISSING)

    def map(self, fn, tasks, *, initializer, initargs, workers, preload, chunksize, ray_remote_args):
        from ray.util.multiprocessing import Pool as RayPool

        with RayPool(processes=max(1, workers), initializer=initializer, initargs=initargs,
                     ray_remote_args=ray_remote_args) as pool:
            yield from pool.imap(fn, tasks, chunksize=chunksize)


def create_executor(name: str = "local") -> Executor:
    """The executor ``name`` (``bgbias list executors``); one sentence for an unknown name or a missing Ray."""
    return EXECUTORS.create(name)


def check_executor(executor: str) -> None:
    """One clear sentence for an unknown executor or a missing Ray, before any work starts."""
    create_executor(executor)


def map_ordered(fn: Callable[[Any], Any], tasks: Sequence[Any], *, initializer: Callable[..., None],
                initargs: tuple = (), workers: int = 1, executor: str = "local",
                preload: str | None = None, chunksize: int = 1,
                ray_remote_args: dict[str, Any] | None = None) -> Iterator[Any]:
    """``fn(task)`` for every task, yielded in task order, on the executor named ``executor``.

    workers <= 1 runs in this process; ``chunksize`` tasks travel to a worker together (for many small
    tasks). On Ctrl-C or an error, queued tasks are dropped. ``ray_remote_args`` go to every Ray actor
    (e.g. ``{"num_gpus": 1}``: one GPU per worker).
    """
    yield from create_executor(executor).map(fn, tasks, initializer=initializer, initargs=initargs,
                                             workers=workers, preload=preload, chunksize=chunksize,
                                             ray_remote_args=ray_remote_args)


class WorkerCrashed(RuntimeError):
    """The process running a task died (a signal such as SIGSEGV, or the OOM killer) instead of returning."""


def _pool(n: int, initializer: Callable[..., None], initargs: tuple, preload: str | None):
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload([preload])
    start_forkserver_outside_cwd()
    return ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_start,
                               initargs=(os.getpid(), initializer, initargs))


def run_isolated(fn: Callable[[Any], Any], task: Any, *, initializer: Callable[..., None], initargs: tuple = (),
                 preload: str | None = None) -> Any:
    """``fn(task)`` in a fresh one-worker process; raises :class:`WorkerCrashed` naming how it died."""
    from concurrent.futures.process import BrokenProcessPool

    pool = _pool(1, initializer, initargs, preload)
    try:
        future = pool.submit(fn, task)
        try:
            return future.result()
        except BrokenProcessPool:
            procs = list(getattr(pool, "_processes", {}).values() or [])
            code = procs[0].exitcode if procs else None
            if code is not None and code < 0:
                try:
                    how = f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    how = f"killed by signal {-code}"
            else:
                how = f"exit code {code}" if code is not None else "it stopped without a result"
            raise WorkerCrashed(how) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def start_forkserver_outside_cwd() -> None:
    """Start the forkserver so that it never imports from the current directory.

    The server is started as ``python -c ...``, which puts the current directory first on
    ``sys.path``; Python < 3.12 ignores the parent's ``sys.path`` there, so a folder named
    ``bgbias`` in the current directory (a clone, or any folder of that name) shadowed the
    installed package in every worker. The server is started from a folder that holds nothing
    importable, with ``PYTHONSAFEPATH`` set (no script or current directory on ``sys.path``);
    each worker still changes back to the caller's directory, so relative paths keep working.
    """
    import atexit
    import os
    import shutil
    import tempfile
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        pid, _ = os.waitpid(server._forkserver_pid, os.WNOHANG)
        if not pid:
            return                                            # already running (started here, safely)
    cwd, safe = os.getcwd(), os.environ.get("PYTHONSAFEPATH")
    neutral = tempfile.mkdtemp(prefix="bgbias-forkserver-")   # empty; kept while the server may still start
    atexit.register(shutil.rmtree, neutral, True)
    try:
        os.chdir(neutral)
        os.environ["PYTHONSAFEPATH"] = "1"
        server.ensure_running()
    finally:
        os.chdir(cwd)
        if safe is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = safe
def _worker_start(main_pid: int, initializer: Callable[..., None], initargs: tuple) -> None:
    """Tie the worker's life to the main process, then run the real initializer.

    Workers are children of the forkserver, not of the main process, so a kill -9 of the main
    process would leave them (and, through their pipes, the resource tracker) running. The kernel
    kills a worker whose parent (the forkserver) dies (``PR_SET_PDEATHSIG``, Linux), and a daemon
    thread ends it within a second of the main process going away (any POSIX system).
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_watch_parent, args=(main_pid,), daemon=True, name="bgbias-parent-watch").start()
    initializer(*initargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"   # a killed, not yet reaped main process
    except OSError:
        return True


def _watch_parent(main_pid: int) -> None:
    while _alive(main_pid):
        time.sleep(0.5)
    os._exit(1)


def progress(it: Iterable, total: int, desc: str, enabled: bool = True, unit: str = "chunk") -> Iterable:
    """A tqdm bar over ``it`` when enabled (it disappears when done)."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit=unit, leave=False)
