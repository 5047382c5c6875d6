"""The agent's "ask the cloud" path: route a task through the control plane's
RouterService without ever blocking the robot's control loop.

Usage (from the control loop, once per tick)::

    client = RouterClient(channel)                  # a grpc.Channel with the device's mTLS
    ticket = client.ask(task, timeout_s=0.5)        # returns at once; None = throttled
    ...
    if ticket is not None and ticket.done():
        resp = ticket.response()                    # RouteResponse or None (failed)
        if resp is not None and resp.outcome == router_pb2.ROUTE_OUTCOME_OK:
            use(resp.action)
    else:
        use(local_fallback)

`ask` issues the RPC asynchronously (gRPC futures) and returns a `Ticket`; the loop
polls it. Two protections keep a struggling cloud from being hammered by a fleet:

- an adaptive client-side throttle (Google SRE book, "Handling Overload": reject
  locally with probability max(0, (requests − K·accepts) / (requests + 1)) over a
  sliding window), so a robot whose requests keep being refused stops sending most of
  them and uses its fallback at once;
- a retry budget: a REJECTED answer with a `retry_after_ms` that still fits the
  deadline is retried once, in the background, only while retries stay below
  `retry_ratio` of requests in the window.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from protos import router_pb2, router_pb2_grpc

__all__ = ["AdaptiveThrottle", "RetryBudget", "RouterClient", "Ticket"]


class _Window:
    """Counts in a sliding time window (per-second buckets)."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: deque[float] = deque()

    def add(self) -> None:
        self._events.append(self.clock())

    def count(self) -> int:
        cutoff = self.clock() - self.window_s
        while self._events and self._events[0] < cutoff:
            self._events.popleft()
        return len(self._events)


class AdaptiveThrottle:
    """Client-side throttling (SRE book ch. 21): `allow()` may refuse locally."""

    def __init__(
        self,
        k: float = 2.0,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.k = k
        self.requests = _Window(window_s, clock)
        self.accepts = _Window(window_s, clock)
        self.rng = rng or random.Random()

    def reject_probability(self) -> float:
        req, acc = self.requests.count(), self.accepts.count()
        return max(0.0, (req - self.k * acc) / (req + 1))

    def allow(self) -> bool:
        p = self.reject_probability()
        self.requests.add()  # locally rejected requests count too, as in the SRE formula
        return self.rng.random() >= p

    def accepted(self) -> None:
        self.accepts.add()


class RetryBudget:
    """Retries allowed while they stay under `ratio` of requests (plus `min_retries`)."""

    def __init__(
        self,
        ratio: float = 0.1,
        min_retries: int = 3,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio, self.min_retries = ratio, min_retries
        self.requests = _Window(window_s, clock)
        self.retries = _Window(window_s, clock)

    def note_request(self) -> None:
        self.requests.add()

    def try_spend(self) -> bool:
        if self.retries.count() < self.min_retries + self.ratio * self.requests.count():
            self.retries.add()
            return True
        return False


@dataclass
class _State:
    response: Any = None
    error: str = ""
    done: bool = False
    attempts: int = 0


class Ticket:
    """A routed task in flight. Every method returns at once."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._s = _State()
        self._lock = threading.Lock()
        self._event = threading.Event()
        self.deadline = deadline
        self._clock = clock
        self._future: Any = None

    def done(self) -> bool:
        with self._lock:
            return self._s.done or self._clock() >= self.deadline

    def response(self) -> router_pb2.RouteResponse | None:
        """The answer if it came before the deadline, else None (use the fallback)."""
        with self._lock:
            return self._s.response if self._s.done else None

    @property
    def error(self) -> str:
        with self._lock:
            return self._s.error

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._s.attempts

    def wait(self, timeout_s: float) -> bool:
        """For tests and scripts, never for the control loop."""
        return self._event.wait(timeout_s)

    def cancel(self) -> None:
        fut = self._future
        if fut is not None:
            fut.cancel()

    def _finish(self, response: Any, error: str) -> None:
        with self._lock:
            if self._s.done:
                return
            self._s.response, self._s.error, self._s.done = response, error, True
        self._event.set()


class RouterClient:
    def __init__(
        self,
        channel: grpc.Channel,
        *,
        throttle: AdaptiveThrottle | None = None,
        retry_budget: RetryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = router_pb2_grpc.RouterServiceStub(channel)  # type: ignore[no-untyped-call]
        self.throttle = throttle or AdaptiveThrottle(clock=clock)
        self.retry_budget = retry_budget or RetryBudget(clock=clock)
        self.clock = clock
        self.throttled = 0

    def ask(self, task: router_pb2.Task, timeout_s: float) -> Ticket | None:
        """Send `task` without blocking; None means "throttled locally: use the fallback".

        The deadline sent is what is left of `timeout_s` at each attempt.
        """
        if not self.throttle.allow():
            self.throttled += 1
            return None
        self.retry_budget.note_request()
        ticket = Ticket(self.clock() + timeout_s, self.clock)
        self._send(ticket, router_pb2.RouteRequest(task=task))  # a copy: the caller's stays
        return ticket

    def _send(self, ticket: Ticket, request: router_pb2.RouteRequest) -> None:
        remaining = ticket.deadline - self.clock()
        if remaining <= 0:
            ticket._finish(None, "deadline passed before sending")
            return
        with ticket._lock:
            ticket._s.attempts += 1
        request.task.deadline_ms = max(1, int(remaining * 1000))
        fut = self._stub.Route.future(request, timeout=remaining)
        ticket._future = fut
        fut.add_done_callback(lambda f: self._on_done(ticket, request, f))

    def _on_done(self, ticket: Ticket, request: router_pb2.RouteRequest, fut: Any) -> None:
        try:
            resp = fut.result()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                self.throttle.accepted()  # the server answered; it was not overloaded
            ticket._finish(None, f"{getattr(code, 'name', 'error')}: {exc}")
            return
        except Exception as exc:  # cancelled futures raise their own type
            ticket._finish(None, f"{type(exc).__name__}: {exc}")
            return
        if resp.outcome != router_pb2.ROUTE_OUTCOME_REJECTED:
            self.throttle.accepted()
            ticket._finish(resp, "")
            return
        retry_at = self.clock() + resp.retry_after_ms / 1000.0
        if (
            resp.retry_after_ms
            and ticket.attempts < 2
            and retry_at < ticket.deadline
            and self.retry_budget.try_spend()
        ):
            timer = threading.Timer(
                resp.retry_after_ms / 1000.0, lambda: self._send(ticket, request)
            )
            timer.daemon = True
            timer.start()
            return
        ticket._finish(resp, "")
