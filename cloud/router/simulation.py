"""A seeded discrete-event simulation that drives routing policies — the real `Router`
and simple baselines — against simulated queueing backends.

Used by the tests (small, deterministic runs) and by `bench/atp_router.py`. Nothing
here is a copy of router logic: `RouterPolicy` only executes the `Step`s the real
router returns.

Backends are FIFO queues with `servers` parallel workers; service time is
`service_s_per_work_unit · work_units`, log-normally jittered, slowed by a capacity
knee (past `knee` busy workers each call slows in proportion, as a GPU does when its
batch outgrows it) and by brown-out windows; a backend can fail a share of its calls
and push back when its queue is long. Answers are right with the backend's accuracy
for the task type; a wrong action is perturbed (sometimes out of bounds), a wrong
label is flipped. The simulated verifier sees the truth through noise.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud.router.backends import BackendSpec
from cloud.router.router import Router, Step
from cloud.router.task import Answer, Constraints, Outcome, Qos, Result, Task
from cloud.router.verifier import ConstraintVerifier, Verdict

__all__ = [
    "EventLoop",
    "RouterPolicy",
    "SimBackend",
    "SimBackendSpec",
    "SimVerifier",
    "TaskRecord",
    "Truth",
]

BOUNDS = Constraints((-1.0, -1.0), (1.0, 1.0))


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._q, (max(t, self.now), next(self._seq), fn))

    def run_until(self, t_end: float) -> None:
        q = self._q
        while q and q[0][0] <= t_end:
            t, _, fn = heapq.heappop(q)
            self.now = t
            fn()
        self.now = max(self.now, t_end)


@dataclass(frozen=True)
class SimBackendSpec:
    spec: BackendSpec
    servers: int
    service_s_per_work_unit: float
    accuracy: Mapping[str, float]
    knee: int | None = None
    jitter_sigma: float = 0.25
    fail_prob: float = 0.0
    max_queue: int | None = None
    """Queue length past which it answers `overloaded` at once (None: never)."""
    silent: bool = False
    """Never answers (a hung backend)."""
    reported_work_factor: float = 1.0
    """Multiplies the work units it reports (negative or huge: a lying backend)."""
    hard_accuracy: Mapping[str, float] | None = None
    """Accuracy on hard tasks (first observation value ≥ 0.5; see `make_task`'s
    `difficulty`); None: `accuracy` for every task."""


@dataclass
class Truth:
    """The hidden right answer of each task, for answers and for the verifier."""

    action: dict[str, tuple[float, ...]] = field(default_factory=dict)
    label: dict[str, str] = field(default_factory=dict)

    def is_correct(self, task: Task, answer: Answer) -> bool:
        if not answer.ok:
            return False
        if task.task_id in self.label:
            return answer.label == self.label[task.task_id]
        want = self.action.get(task.task_id)
        return (
            want is not None
            and len(answer.action) == len(want)
            and all(abs(a - b) <= 0.02 for a, b in zip(answer.action, want, strict=True))
        )


class SimBackend:
    def __init__(self, sim: SimBackendSpec, loop: EventLoop, truth: Truth, seed: int) -> None:
        self.sim = sim
        self.name = sim.spec.name
        self.loop = loop
        self.truth = truth
        self.rng = random.Random(seed)
        self.busy = 0
        self.queue: deque[tuple[Task, Callable[[Answer], None], float | None]] = deque()
        self.brownouts: list[tuple[float, float, float]] = []
        self.fail_windows: list[tuple[float, float, float]] = []
        self.calls = 0
        self.usd = 0.0
        self.usd_by_site: dict[str, float] = {}

    def _bill(self, task: Task, service: float) -> None:
        usd = self.sim.spec.price.cost(task.work_units, service)
        self.usd += usd
        site = task.scope.site
        self.usd_by_site[site] = self.usd_by_site.get(site, 0.0) + usd

    def _factor(self) -> float:
        f = 1.0
        for t0, t1, k in self.brownouts:
            if t0 <= self.loop.now < t1:
                f *= k
        return f

    def _fail_prob(self) -> float:
        p = self.sim.fail_prob
        for t0, t1, q in self.fail_windows:
            if t0 <= self.loop.now < t1:
                p = max(p, q)
        return p

    def call(
        self, task: Task, reply: Callable[[Answer], None], deadline_at: float | None = None
    ) -> None:
        """`deadline_at`: the caller's propagated deadline (as a gRPC deadline is); the
        backend stops there and bills only the time it worked. None: no deadline."""
        self.calls += 1
        if self.sim.silent:
            return
        mq = self.sim.max_queue
        if mq is not None and len(self.queue) >= mq:
            self.loop.at(self.loop.now + 0.001, lambda: reply(Answer(overloaded=True)))
            return
        if self.busy < self.sim.servers:
            self._start(task, reply, deadline_at)
        else:
            self.queue.append((task, reply, deadline_at))

    def _start(
        self, task: Task, reply: Callable[[Answer], None], deadline_at: float | None
    ) -> None:
        now = self.loop.now
        if deadline_at is not None and now >= deadline_at:
            # Expired while queued: a deadline-propagating server drops it unbilled.
            reply(Answer(error="deadline exceeded"))
            if self.queue and self.busy < self.sim.servers:
                self._start(*self.queue.popleft())
            return
        self.busy += 1
        s = self.sim
        base = s.service_s_per_work_unit * task.work_units * self._factor()
        if s.knee is not None and self.busy > s.knee:
            base *= self.busy / s.knee
        service = base * math.exp(self.rng.gauss(0.0, s.jitter_sigma))
        fail = self.rng.random() < self._fail_prob()
        answer = Answer(error="internal error") if fail else self._answer(task, service)
        if deadline_at is not None and now + service > deadline_at:
            service = deadline_at - now  # stopped at the deadline: billed until then
            answer = Answer(error="deadline exceeded")
            self._bill(task, service)
        elif answer.ok:
            self._bill(task, service)

        def done() -> None:
            self.busy -= 1
            if self.queue:
                self._start(*self.queue.popleft())
            reply(answer)

        self.loop.at(now + service, done)

    def _answer(self, task: Task, service: float) -> Answer:
        acc = self.sim.accuracy.get(task.task_type, 0.0)
        if self.sim.hard_accuracy is not None and task.observation and task.observation[0] >= 0.5:
            acc = self.sim.hard_accuracy.get(task.task_type, acc)
        right = self.rng.random() < acc
        work = task.work_units * self.sim.reported_work_factor
        if task.task_id in self.truth.label:
            label = self.truth.label[task.task_id]
            if not right:
                label = "unsafe" if label == "safe" else "safe"
            return Answer(label=label, work_units=work, gpu_s=service)
        want = self.truth.action[task.task_id]
        if right:
            action = want
        else:
            # Wrong: off by a visible amount, and now and then outside the envelope.
            action = tuple(a + self.rng.choice((-1, 1)) * self.rng.uniform(0.1, 0.9) for a in want)
        return Answer(action=action, work_units=work, gpu_s=service)


class SimVerifier:
    """Hard checks from `ConstraintVerifier`, plus a soft score that sees the truth
    through noise: a wrong answer scores low with probability `detect`."""

    def __init__(self, truth: Truth, seed: int, detect: float = 0.95, pass_rate: float = 0.97):
        self.truth = truth
        self.hard = ConstraintVerifier()
        self.rng = random.Random(seed)
        self.detect, self.pass_rate = detect, pass_rate

    def verify(self, task: Task, answer: Answer) -> Verdict:
        v = self.hard.verify(task, answer)
        if not v.hard_ok:
            return v
        good = self.truth.is_correct(task, answer)
        looks_good = self.rng.random() < (self.pass_rate if good else 1 - self.detect)
        score = self.rng.uniform(0.65, 1.0) if looks_good else self.rng.uniform(0.0, 0.55)
        return Verdict(True, score)


@dataclass
class TaskRecord:
    task: Task
    submitted: float
    finished: float | None = None
    outcome: Outcome | None = None
    correct: bool = False
    backend: str = ""
    reason: str = ""

    @property
    def latency(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted


class Policy(Protocol):
    name: str

    def submit(self, task: Task, done: Callable[[Result], None]) -> None: ...


class RouterPolicy:
    """Executes the real Router's steps against simulated backends."""

    name = "atp"

    def __init__(self, router: Router, loop: EventLoop, backends: Mapping[str, SimBackend]) -> None:
        self.router = router
        self.loop = loop
        self.backends = backends
        self._waiting: dict[str, Callable[[Result], None]] = {}
        self._wake: float | None = None
        self.overhead_s: list[float] = []
        """CPU time of this thread in every router call (submit, on_answer, tick): on a
        machine shared with other work, wall time mostly measures being descheduled."""
        self.overhead_wall_s: list[float] = []
        self.overhead_by_kind: dict[str, list[float]] = {"submit": [], "answer": [], "tick": []}
        self.audit_flush_s: list[tuple[int, float]] = []
        """(records, CPU seconds) per audit flush, which runs off the decision path."""
        self._perf = time.perf_counter

    def _run(self, fn: Callable[[], Step], kind: str) -> None:
        w0, t0 = self._perf(), time.thread_time()
        step = fn()
        dt = time.thread_time() - t0
        self.overhead_wall_s.append(self._perf() - w0)
        self.overhead_s.append(dt)
        self.overhead_by_kind[kind].append(dt)
        if len(self.router._pending_audit) >= 64:
            self.flush()
        self._apply(step)

    def flush(self) -> None:
        t0 = time.thread_time()
        n = self.router.flush_audit()
        self.audit_flush_s.append((n, time.thread_time() - t0))

    def _apply(self, step: Step) -> None:
        for d in step.dispatches:
            self.backends[d.backend].call(d.task, self._replier(d.dispatch_id), d.deadline_at)
        for r in step.results:
            cb = self._waiting.pop(r.task_id, None)
            if cb is not None:
                cb(r)
        self._arm()

    def _replier(self, dispatch_id: str) -> Callable[[Answer], None]:
        def reply(answer: Answer) -> None:
            self._run(lambda: self.router.on_answer(dispatch_id, answer), "answer")

        return reply

    def _arm(self) -> None:
        t = self.router.next_wakeup()
        if t is not None and (self._wake is None or t < self._wake or self._wake < self.loop.now):
            self._wake = t
            self.loop.at(t, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._run(self.router.tick, "tick")

    def submit(self, task: Task, done: Callable[[Result], None]) -> None:
        self._waiting[task.task_id] = done
        self._run(lambda: self.router.submit(task), "submit")


def make_task(
    rng: random.Random,
    truth: Truth,
    task_id: str,
    task_type: str,
    qos: Qos,
    now: float,
    deadline_s: float,
    work_units: float,
    scope: Any,
    difficulty: float | None = None,
) -> Task:
    """A task with a hidden right answer; `difficulty` (0..1) is its first observation
    value, a feature a router may read (hard from 0.5, see `SimBackendSpec`)."""
    if task_type == "verify":
        truth.label[task_id] = rng.choice(("safe", "unsafe"))
    else:
        truth.action[task_id] = (rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8))
    bounds = None if task_type == "verify" else BOUNDS
    obs = () if difficulty is None else (difficulty,)
    return Task(
        task_id,
        task_type,
        qos,
        now + deadline_s,
        scope,
        work_units,
        observation=obs,
        constraints=bounds,
    )


def percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]
