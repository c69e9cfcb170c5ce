"""The suite's workers: `--workers N` processes with one torch thread each, or this process.

Why one thread each: on 2 cores two 1-thread runs train 1.75x as many samples per second as one
2-thread run, and two runs with default threads oversubscribe the cores and crawl. Workers die
with the suite, and results come back to the suite's process one by one as they finish, so the
runner records each at once (`ablations.ledger`).
"""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from multiprocessing import get_context


def _init_worker() -> None:
    import logging

    import torch

    _die_with_parent()

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _die_with_parent() -> None:
    """Linux: kill this worker when the suite's process dies, so a stopped suite leaves no orphan
    still training into its run folders. SIGKILL, not SIGTERM: the trainer would checkpoint on
    SIGTERM and the worker take the next queued job; an unfinished job restarts from its start."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG


def call(item):
    """(runner, method name, args) -> runner.method(*args), in a worker: the runner pickles whole."""
    runner, method, args = item
    if method == "run_variant":
        print(f"[{args[0]}] {args[1].name} seed {args[2]}", flush=True)
    return getattr(runner, method)(*args)


class _Serial:
    """The pool interface in this process (workers=1: no spawn cost, tracebacks stay simple)."""

    def __enter__(self):
        _init_worker()
        return self

    def __exit__(self, *exc):
        return False

    def map(self, f, items):
        return map(f, items)

    def submit(self, f, item):
        done = Future()
        done.set_result(f(item))
        return done


def finished(pool, f, items):
    """f(item) for each item, yielded as each finishes, so the caller records it at once. When one
    fails, no further item starts; the running ones finish and are yielded; then the error is raised."""
    if isinstance(pool, _Serial):
        yield from map(f, items)  # lazily, one at a time
        return
    running = [pool.submit(f, item) for item in items]
    failed = None
    for done in as_completed(running):
        try:
            value = done.result()
        except Exception as e:  # the failed job, or one cancelled after it
            if failed is None:
                failed = e
                for other in running:
                    other.cancel()
            continue
        yield value
    if failed is not None:
        raise failed


def open_pool(workers: int):
    if workers <= 1:
        return _Serial()
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker)
