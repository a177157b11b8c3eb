"""Run a list of tasks in order: in this process, on a local process pool, or on Ray.

Long jobs (``bgbias build``, ``bgbias masks``) cut their work into a fixed
plan of tasks and map one function over it here. Results always come back in
task order, so outputs never depend on the worker count or the executor.
Each worker gets its state once through ``initializer(*initargs)`` instead of
with every task.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Iterable, Iterator, Sequence

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray; install it with: pip install 'bgbias[ray]'."


def check_executor(executor: str) -> None:
    """One clear sentence for an unknown executor or a missing Ray, before any work starts."""
    if executor not in EXECUTORS:
        raise ValueError(f"Unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}.")
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError(RAY_MISSING)


def map_ordered(fn: Callable[[Any], Any], tasks: Sequence[Any], *, initializer: Callable[..., None],
                initargs: tuple = (), workers: int = 1, executor: str = "local",
                preload: str | None = None, chunksize: int = 1) -> Iterator[Any]:
    """``fn(task)`` for every task, yielded in task order.

    workers <= 1 runs in this process (its torch/OpenCV thread counts are put
    back afterwards). Local pools use forkserver: a plain fork after OpenCV or
    torch started threads can hang; ``preload`` names the module the server
    imports once. ``chunksize`` tasks travel to a worker together (for many
    small tasks). On Ctrl-C or an error, queued tasks are dropped.
    """
    check_executor(executor)
    if executor == "ray":
        from ray.util.multiprocessing import Pool as RayPool

        with RayPool(processes=max(1, workers), initializer=initializer, initargs=initargs) as pool:
            yield from pool.imap(fn, tasks, chunksize=chunksize)
        return
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
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload([preload])
    start_forkserver_outside_cwd()
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=initializer, initargs=initargs)
    try:
        yield from pool.map(fn, tasks, chunksize=chunksize)
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


def progress(it: Iterable, total: int, desc: str, enabled: bool = True, unit: str = "chunk") -> Iterable:
    """A tqdm bar over ``it`` when enabled (it disappears when done)."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit=unit, leave=False)
