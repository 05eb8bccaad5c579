"""The writer's scheduling: ``workers`` lanes each take the next twin themselves, while the
calling thread reports progress, watches ``cancel`` and prepares the prompts of the next twins
(see :func:`run_lanes`). ``progress`` and ``cancel`` are called from the calling thread only."""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.generation.llm.prompt import TwinRequest
from services.generation.llm.results import ERROR, Prepared, TwinResult


def run_lanes(
    reqs: list[TwinRequest],
    workers: int,
    run_one: Callable[[TwinRequest, threading.Event, Prepared | None], TwinResult],
    prepare: Callable[[TwinRequest], Prepared],
    stop: threading.Event,
    is_cancelled: Callable[[], bool],
    progress: Callable[[int, int], Any] | None,
) -> tuple[list[TwinResult | None], float]:
    """Run ``run_one`` on every request with ``workers`` lanes; returns the results in request
    order (None for a twin that never started: cancelled) and this thread's own seconds
    outside waits. ``progress(done, n)`` counts written twins (failed twins are not
    progress). An exception of ``progress`` or ``cancel`` stops the lanes and propagates."""
    n = len(reqs)
    results: list[TwinResult | None] = [None] * n
    sched = 0.0  # own time in this thread outside waits
    done = 0  # twins written (failed twins are not progress)
    if progress is not None and n:
        progress(0, n)
    # Each worker is a lane that takes the next twin itself as soon as its previous one
    # is done: no hand-off through this thread between two calls, whose wake-ups would
    # wait on the interpreter lock. This thread reports progress, watches cancel and, in
    # the time the lanes wait on the endpoint, prepares the prompts of the next twins
    # (`prepare`) so that a lane sends its next request as soon as a reply is in.
    claim = threading.Lock()
    next_i = 0
    prepared: list[Prepared | None] = [None] * n
    finished: queue.SimpleQueue[tuple[int, TwinResult]] = queue.SimpleQueue()

    def lane() -> None:
        nonlocal next_i
        while not stop.is_set():
            with claim:
                i = next_i
                if i >= n:
                    return
                next_i += 1
                ready, prepared[i] = prepared[i], None
            try:
                res = run_one(reqs[i], stop, ready)
            except Exception as exc:  # noqa: BLE001  (run_one catches already)
                res = TwinResult(reqs[i], ok=False, reason=ERROR,
                                 errors=[f"{type(exc).__name__}: {exc}"])
            finished.put((i, res))

    def prepare_ahead() -> bool:
        """Prepare one twin that no lane has taken yet, at most `workers` ahead."""
        nonlocal ahead
        with claim:
            ahead = max(ahead, next_i)
            if ahead >= min(n, next_i + workers):
                return False
            i = ahead
            ahead += 1
        try:
            ready = prepare(reqs[i])
        except Exception:  # noqa: BLE001  (the lane redoes it and reports the error)
            return True
        with claim:
            if i >= next_i:  # a lane that took it meanwhile prepared it itself
                prepared[i] = ready
        return True

    ahead = 0
    if is_cancelled():
        stop.set()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="twinarm-llm")
    lanes = [pool.submit(lane) for _ in range(workers if n else 0)]
    completed = not lanes
    # A full collection of the whole heap (the trial, the libraries: ~10^5 objects in the
    # app) stops every lane for ~0.15 s; during the run only new objects are collected.
    gc.freeze()
    try:
        while not completed:
            ts = time.perf_counter()
            if not stop.is_set() and is_cancelled():
                stop.set()
            try:
                item: tuple[int, TwinResult] | None = finished.get_nowait()
            except queue.Empty:
                item = None
                if not stop.is_set() and prepare_ahead():
                    sched += time.perf_counter() - ts
                    continue
                sched += time.perf_counter() - ts
                try:
                    item = finished.get(timeout=0.1)
                except queue.Empty:
                    item = None
                ts = time.perf_counter()
            got = 0
            while item is not None:
                results[item[0]] = item[1]
                got += 1
                done += bool(item[1].ok)
                try:
                    item = finished.get_nowait()
                except queue.Empty:
                    item = None
            # a lane queues its results before it ends: all ended + queue empty = complete
            completed = all(f.done() for f in lanes) and finished.empty()
            sched += time.perf_counter() - ts
            if got and progress is not None:
                progress(done, n)
    finally:
        if not completed:  # progress or cancel raised: stop, keep what is done
            stop.set()
        pool.shutdown(wait=True)
        gc.unfreeze()
        while not finished.empty():
            i, res = finished.get_nowait()
            results[i] = res
    return results, sched


def cancel_checker(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be a threading.Event or a callable returning bool")
