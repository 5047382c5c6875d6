"""The external approval check: before each wave goes out, the plane POSTs the wave's
facts (rollout id, wave, bundle digest, the figures of the soak before it) as JSON to
the rollout's approval URL, and the endpoint answers::

    {"decision": "allow" | "deny", "reason": "why, for the operator"}

Only a 2xx answer with that object allows the wave. A deny, a time-out, an error status,
a redirect (never followed), a body over ``MAX_BODY`` bytes or anything else keeps the
wave waiting with the reason shown, and the check is asked again with exponential
backoff (``RETRY_BASE_S`` doubling up to ``RETRY_MAX_S``). An allow is kept with the
rollout (once per wave: it is not asked again) and audited with the URL and the answer.

:func:`ask` is the HTTP exchange (:class:`BackgroundAsker` runs it off the driver's
pass); :func:`external_gate` the pure decision around it (the caller passes the clock
and the asking function).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import math
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cloud.rollouts.engine import Rollout, SpecError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Answer",
    "BackgroundAsker",
    "allowed",
    "ask",
    "check_approval_url",
    "check_timeout",
    "external_gate",
    "external_text",
    "payload",
]

DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 60.0
MAX_BODY = 64 * 1024
MAX_URL = 2048
MAX_REASON = 500
RETRY_BASE_S = 2.0
RETRY_MAX_S = 60.0
ALLOW, DENY, ERROR = "allow", "deny", "error"


@dataclass(frozen=True)
class Answer:
    """What the endpoint said: ``allow``, ``deny``, or ``error`` (no usable answer)."""

    decision: str
    reason: str
    status: int = 0  # the HTTP status; 0 for none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_approval_url(url: str) -> str:
    """The URL if the plane may POST to it; SpecError naming what is wrong otherwise."""
    if len(url) > MAX_URL:
        raise SpecError(f"approval_url: {len(url)} characters (at most {MAX_URL})")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise SpecError(f"approval_url = {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"approval_url = {url!r}: expected an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise SpecError(
            "approval_url: credentials in the URL are refused (they would be stored and "
            "shown with the rollout)"
        )
    return url


def check_timeout(value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise SpecError(
            f"approval_timeout_s = {value}: expected more than 0 and at most {MAX_TIMEOUT_S:g}"
        )
    return float(value)


# ---------------------------------------------------------------------- HTTP
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx comes back as an HTTPError


def _judge_body(status: int, raw: bytes) -> Answer:
    if len(raw) > MAX_BODY:
        return Answer(ERROR, f"bad answer: body over {MAX_BODY} bytes", status)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Answer(ERROR, "bad answer: not JSON", status)
    decision = doc.get("decision") if isinstance(doc, dict) else None
    if decision not in (ALLOW, DENY):
        return Answer(
            ERROR,
            'bad answer: expected {"decision": "allow" | "deny", "reason": "…"}',
            status,
        )
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        return Answer(ERROR, "bad answer: reason is not a string", status)
    return Answer(decision, reason[:MAX_REASON], status)


def _exchange(url: str, body: bytes, timeout_s: float) -> Answer:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            status = int(resp.status)
            raw = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?") if exc.headers else "?"
            return Answer(ERROR, f"redirect ({exc.code} to {where[:200]}) refused", exc.code)
        return Answer(ERROR, f"HTTP {exc.code} {str(exc.reason)[:100]}", exc.code)
    except http.client.HTTPException as exc:  # a broken status line, headers, body
        return Answer(ERROR, f"bad answer: {type(exc).__name__}: {str(exc)[:200]}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(why, TimeoutError) or "timed out" in str(why):
            return Answer(ERROR, f"no answer within {timeout_s:g} s")
        return Answer(ERROR, f"cannot reach it: {str(why)[:200]}")
    if not 200 <= status < 300:
        return Answer(ERROR, f"HTTP {status}", status)
    return _judge_body(status, raw)


def _guarded(url: str, body: bytes, timeout_s: float) -> Answer:
    """`_exchange`, with whatever else goes wrong turned into no approval."""
    try:
        return _exchange(url, body, timeout_s)
    except Exception as exc:  # an answer must come back, whatever the endpoint did
        return Answer(ERROR, f"the check failed: {type(exc).__name__}: {str(exc)[:200]}")


def ask(url: str, doc: Mapping[str, Any], timeout_s: float) -> Answer:
    """POST `doc` as JSON to `url` and read the answer, within `timeout_s` in all
    (connect, a slow answer, a body trickling in)."""
    body = json.dumps(dict(doc), sort_keys=True).encode()
    got: list[Answer] = []

    def run() -> None:
        got.append(_guarded(url, body, timeout_s))

    worker = threading.Thread(target=run, name="approval-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not got:  # still reading: it ends at the socket time-out or the body cap
        return Answer(ERROR, f"no answer within {timeout_s:g} s")
    return got[0]


# ---------------------------------------------------------------------- the gate
# Asks the endpoint: the Answer, or None while a question asked in the background has
# no answer yet (the gate keeps waiting and asks the asker again on its next pass).
Asker = Callable[[str, Mapping[str, Any], float], Answer | None]


class BackgroundAsker:
    """An :data:`Asker` that puts each question to the endpoint on a thread of its own,
    so a slow endpoint holds no driver pass: the first call for a (rollout, wave) starts
    the question and returns None; a later call returns its answer once there is one."""

    def __init__(self, ask_fn: Callable[[str, Mapping[str, Any], float], Answer] = ask) -> None:
        self._ask = ask_fn
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, int], list[Answer]] = {}

    def _guarded(self, url: str, doc: Mapping[str, Any], timeout_s: float) -> Answer:
        try:
            return self._ask(url, doc, timeout_s)
        except Exception as exc:  # the gate must get an answer, or it waits forever
            return Answer(ERROR, f"the check failed: {type(exc).__name__}: {str(exc)[:200]}")

    def __call__(self, url: str, doc: Mapping[str, Any], timeout_s: float) -> Answer | None:
        key = (str(doc.get("rollout")), int(doc.get("wave", 0)))
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = []
                threading.Thread(
                    target=lambda: job.append(self._guarded(url, doc, timeout_s)),
                    name=f"approval-check {key[0]}#{key[1]}",
                    daemon=True,
                ).start()
                return None
            if not job:
                return None
            del self._jobs[key]
            return job[0]


def payload(r: Rollout, wave: int) -> dict[str, Any]:
    """What the endpoint is told about the wave."""
    b = r.spec.bundle
    soak = (r.gates.get("soak") or {}).get(str(wave - 1)) if wave else None
    figures = None
    if isinstance(soak, dict) and soak.get("verdict"):
        figures = {
            "verdict": soak.get("verdict"),
            "text": soak.get("text", ""),
            **{k: soak.get(k) for k in ("wave", "before", "baseline") if k in soak},
        }
    prior = r.waves[:wave]
    return {
        "rollout": r.id,
        "wave": wave,
        "waves": len(r.waves),
        "devices": len(r.waves[wave].device_ids),
        "bundle": {k: b.get(k) for k in ("name", "version", "sequence", "sha256")},
        "earlier_waves": {
            "committed": sum(w.count("COMMITTED") for w in prior),
            "failed": sum(w.failures for w in prior),
        },
        "soak": figures,
    }


def _state(r: Rollout, wave: int) -> dict[str, Any]:
    state: dict[str, Any] = r.gates.setdefault("external", {}).setdefault(str(wave), {"tries": 0})
    return state


def allowed(r: Rollout, wave: int) -> dict[str, Any] | None:
    st = (r.gates.get("external") or {}).get(str(wave))
    return st if isinstance(st, dict) and st.get("allowed_at") is not None else None


def external_gate(
    r: Rollout, wave: int, now: float, url: str, timeout_s: float, asker: Asker = ask
) -> bool:
    """Whether the external check lets wave `wave` go out (asked at most once per
    backoff step; an allow is kept). The caller audits a new allow (``allowed``)."""
    if allowed(r, wave) is not None:
        return True
    st = _state(r, wave)
    if now < float(st.get("next_at", 0.0)):
        return False
    answer = asker(url, payload(r, wave), timeout_s)
    if answer is None:  # asked in the background; the answer comes on a later pass
        return False
    st["tries"] = int(st.get("tries", 0)) + 1
    st["last"] = {**answer.to_dict(), "at": now}
    if answer.decision == ALLOW:
        st["allowed_at"] = now
        st.pop("next_at", None)
        r.note(now, f"wave {wave} allowed by {url}: {answer.reason or '(no reason given)'}")
        return True
    wait = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (st["tries"] - 1))
    st["next_at"] = now + wait
    said = f"{answer.decision}: {answer.reason}"
    if st.get("said") != said:  # the history notes each new answer once
        st["said"] = said
        what = "denied by" if answer.decision == DENY else "no approval from"
        r.note(now, f"wave {wave} {what} {url}: {answer.reason or '(no reason given)'}")
    return False


def external_text(r: Rollout, wave: int) -> str:
    """What `rollout get` shows for a wave's external check ("" before any)."""
    st = (r.gates.get("external") or {}).get(str(wave))
    if not isinstance(st, dict) or not isinstance(st.get("last"), dict):
        return ""
    last = st["last"]
    reason = str(last.get("reason") or "(no reason given)")
    if st.get("allowed_at") is not None:
        return f"allowed by the approval check: {reason}"
    what = "denied by the approval check" if last.get("decision") == DENY else "approval check"
    text = f"{what}: {reason}; {st.get('tries', 0)} tr{'y' if st.get('tries') == 1 else 'ies'}"
    if st.get("next_at") is not None:
        at = dt.datetime.fromtimestamp(float(st["next_at"]), dt.UTC)
        text += f", next at {at.strftime('%H:%M:%S')} UTC"
    return text
