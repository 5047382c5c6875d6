"""`RouterRunner`: the asyncio driver of the pure `Router`.

All router calls run on one dedicated thread (the router is single-threaded and the
SQL ledger blocks); dispatches run as asyncio tasks with per-call deadlines; a timer
task drives `tick` and flushes the audit log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from cloud.router.router import Dispatch, Router, Step
from cloud.router.task import Answer, Outcome, Result, Task
from cloud.router.wire import Executor

__all__ = ["RouterRunner"]

log = logging.getLogger(__name__)


class RouterRunner:
    """Drives a `Router` from asyncio: one router thread, dispatches as tasks.

    Every router call that returns a `Step` goes through `_post`: the step is applied on
    the event loop when the call finishes, whether or not its caller still waits, so a
    caller cancelled mid-admission loses no dispatch (no call is charged that never ran).
    A cancelled `route` posts `Router.cancel` right behind its submit (one FIFO thread),
    so a retry with the same idempotency key always finds the key free.
    """

    def __init__(
        self,
        router: Router,
        executors: Mapping[str, Executor],
        *,
        flush_every_s: float = 0.2,
    ) -> None:
        self.router = router
        self.executors = dict(executors)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="router")
        # task id -> (the caller's future, sequence number of its submit)
        self._waiting: dict[str, tuple[asyncio.Future[Result], int]] = {}
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flush_every_s = flush_every_s
        self._seq = itertools.count()
        self._closed = False

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _post(
        self, fn: Callable[[], Step], owner: asyncio.Future[Result] | None = None
    ) -> tuple[int, asyncio.Future[None]]:
        """Run `fn` on the router thread; apply its step on the loop once it returns."""
        loop = asyncio.get_running_loop()
        seq = next(self._seq)
        applied: asyncio.Future[None] = loop.create_future()

        def apply(cf: concurrent.futures.Future[Step]) -> None:
            exc = cf.exception()
            if exc is not None:
                log.error("router call failed: %r", exc)
                if owner is not None and not owner.done():
                    owner.set_exception(exc)
                applied.set_exception(exc)
                return
            self._apply(cf.result(), seq)
            applied.set_result(None)

        def finished(cf: concurrent.futures.Future[Step]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to apply
                loop.call_soon_threadsafe(apply, cf)

        try:
            self._pool.submit(fn).add_done_callback(finished)
        except RuntimeError:  # closed: the router is gone, nothing is left to change
            applied.set_result(None)
        return seq, applied

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._timers())

    @property
    def waiting(self) -> int:
        """Callers waiting for a result."""
        return len(self._waiting)

    async def route(self, task: Task) -> Result:
        self.start()
        tid = task.task_id
        if tid in self._waiting:
            # Same device, same idempotency key, still in flight: one answer per key.
            return Result(tid, Outcome.FAILED, "duplicate_task_id")
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        seq, _ = self._post(lambda: self.router.submit(task), owner=fut)
        self._waiting[tid] = (fut, seq)
        try:
            return await fut
        except asyncio.CancelledError:
            # Whatever the router did with the task so far, undo what is still open.
            self._post(lambda: self.router.cancel(tid))
            raise
        finally:
            entry = self._waiting.get(tid)
            if entry is not None and entry[0] is fut:
                del self._waiting[tid]

    def _apply(self, step: Step, seq: int) -> None:
        for r in step.results:
            entry = self._waiting.get(r.task_id)
            # A step produced before this caller's submit belongs to an earlier attempt.
            if entry is not None and seq >= entry[1] and not entry[0].done():
                entry[0].set_result(r)
        for did in step.cancels:
            call = self._calls.get(did)
            if call is not None:
                call.cancel()
        loop = asyncio.get_running_loop()
        for d in step.dispatches:
            self._calls[d.dispatch_id] = loop.create_task(self._run(d))
        self._wake.set()

    async def _run(self, d: Dispatch) -> None:
        ex = self.executors.get(d.backend)
        try:
            if ex is None:
                answer = Answer(error=f"no executor for backend {d.backend!r}")
            elif self._closed:
                answer = Answer(error="cancelled")
            else:
                answer = await ex.execute(d.task, d.deadline_at - time.monotonic())
        except asyncio.CancelledError:
            answer = Answer(error="cancelled")
        except Exception as exc:  # a backend plug-in must never take the router down
            log.warning("backend %s raised %r", d.backend, exc)
            answer = Answer(error=f"{type(exc).__name__}: {exc}")
        finally:
            self._calls.pop(d.dispatch_id, None)
        self._post(lambda: self.router.on_answer(d.dispatch_id, answer))

    async def _timers(self) -> None:
        last_flush = time.monotonic()
        while not self._closed:
            nxt = self.router.next_wakeup()
            delay = self._flush_every_s if nxt is None else max(0.0, nxt - time.monotonic())
            self._wake.clear()
            with _suppress_timeout():
                await asyncio.wait_for(self._wake.wait(), min(delay, self._flush_every_s))
            await self._post(self.router.tick)[1]
            if time.monotonic() - last_flush >= self._flush_every_s:
                last_flush = time.monotonic()
                await self._call(self.router.flush_audit)

    async def note(self, event: dict[str, Any]) -> None:
        """Audit an event on the router thread (`Router.note`)."""
        await self._call(lambda: self.router.note(event))

    async def stats(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = await self._call(self.router.stats)
        return stats

    async def close(self) -> None:
        """Cancel calls in flight (their reservations are released), write every decision
        to the audit log and sign a final tree head."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        calls = list(self._calls.values())
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await self._post(Step)[1]  # the calls' answers are applied (FIFO) before this
        await self._call(self.router.flush_audit)
        if self.router.audit is not None:
            await self._call(self.router.audit.close)
        self._pool.shutdown(wait=True)


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: object, ev: object, tb: object) -> bool:
        return et is asyncio.TimeoutError or et is TimeoutError
