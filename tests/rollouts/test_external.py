"""The external approval check: a real HTTP endpoint on a free port answers allow,
deny, hangs past the time-out, or answers garbage, a huge body, a redirect; the gate
keeps the wave waiting, asks again with backoff, and keeps an allow."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest

from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError
from cloud.rollouts.external import (
    RETRY_BASE_S,
    Answer,
    BackgroundAsker,
    allowed,
    ask,
    check_approval_url,
    check_timeout,
    external_gate,
    external_text,
    payload,
)
from tests.rollouts.approval_server import approval_server

BUNDLE = {"name": "p", "version": "1.1.0", "sequence": 2, "sha256": "ab" * 32}


def test_allow_and_deny_are_read_with_their_reason() -> None:
    with approval_server("allow") as srv:
        got = ask(srv.url, {"rollout": "ro-1", "wave": 0}, 5.0)
        assert got == Answer("allow", "change board ok", 200)
        srv.mode, srv.reason = "deny", "freeze until Monday"
        assert ask(srv.url, {"rollout": "ro-1", "wave": 1}, 5.0) == Answer(
            "deny", "freeze until Monday", 200
        )
        assert srv.posts == [{"rollout": "ro-1", "wave": 0}, {"rollout": "ro-1", "wave": 1}]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "bad answer: not JSON"),
        ("not-an-object", 'bad answer: expected {"decision": "allow" | "deny"'),
        ("huge", "bad answer: body over 65536 bytes"),
        ("redirect", "redirect (302 to http://127.0.0.1:9/allow) refused"),
        ("error", "HTTP 500"),
        ("bad-status", "bad answer: BadStatusLine"),
        ("headers", "bad answer: LineTooLong"),
    ],
)
def test_hostile_answers_are_no_approval_with_a_specific_reason(mode: str, reason: str) -> None:
    with approval_server(mode) as srv:
        got = ask(srv.url, {"wave": 0}, 5.0)
    assert got.decision == "error" and got.reason.startswith(reason), got


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_an_endpoint_slower_than_the_time_out_is_no_approval(mode: str) -> None:
    with approval_server(mode) as srv:
        t0 = time.monotonic()
        got = ask(srv.url, {"wave": 0}, 0.5)
        took = time.monotonic() - t0
    assert got == Answer("error", "no answer within 0.5 s")
    assert took < 3.0


def test_a_closed_port_is_no_approval() -> None:
    with approval_server() as srv:
        url = srv.url
    got = ask(url, {"wave": 0}, 2.0)
    assert got.decision == "error" and got.reason.startswith("cannot reach it: ")


def test_urls_and_time_outs_are_checked_before_use() -> None:
    assert check_approval_url("https://ci.example/approve?x=1") == "https://ci.example/approve?x=1"
    for bad, match in (
        ("ftp://ci.example/x", "expected an http:// or https:// URL"),
        ("ci.example/approve", "expected an http:// or https:// URL"),
        ("http://user:pw@ci.example/", "credentials in the URL are refused"),
        ("http://ci.example:99999/", "approval_url = "),
        ("http://x/" + "a" * 3000, "characters"),
    ):
        with pytest.raises(SpecError, match=match):
            check_approval_url(bad)
    for bad_t in (0.0, -1.0, 61.0, float("nan")):
        with pytest.raises(SpecError, match="approval_timeout_s"):
            check_timeout(bad_t)


class Scripted:
    """Answers in order (pure tests of the gate; the HTTP part is tested above)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any], float]] = []

    def __call__(self, url: str, doc: Mapping[str, Any], timeout_s: float) -> Answer:
        self.calls.append((url, dict(doc), timeout_s))
        return self.answers.pop(0)


def rollout() -> Rollout:
    r = Rollout.create("ro-e", RolloutSpec(BUNDLE, ("a", "b"), (0.5, 1.0)), now=0.0, created_by="x")
    r.start(0.0)
    return r


def test_a_deny_waits_and_is_asked_again_with_backoff_then_an_allow_is_kept() -> None:
    ask_ = Scripted(
        Answer("deny", "freeze", 200),
        Answer("error", "no answer within 5 s"),
        Answer("allow", "ok now", 200),
    )
    r = rollout()
    url = "http://ci/approve"
    assert not external_gate(r, 0, 100.0, url, 5.0, ask_)
    assert (
        external_text(r, 0) == "denied by the approval check: freeze; 1 try, next at 00:01:42 UTC"
    )
    assert not external_gate(r, 0, 100.0 + RETRY_BASE_S - 0.1, url, 5.0, ask_)  # backoff
    assert len(ask_.calls) == 1
    assert not external_gate(r, 0, 102.0, url, 5.0, ask_)  # the time-out; next in 4 s
    assert r.gates["external"]["0"]["next_at"] == 106.0
    assert not external_gate(r, 0, 105.0, url, 5.0, ask_)
    assert external_gate(r, 0, 106.0, url, 5.0, ask_)
    assert external_gate(r, 0, 107.0, url, 5.0, ask_) and len(ask_.calls) == 3  # kept
    got = allowed(r, 0)
    assert got is not None and got["last"]["reason"] == "ok now" and got["tries"] == 3
    assert external_text(r, 0) == "allowed by the approval check: ok now"
    notes = [
        h["reason"]
        for h in r.history
        if "approve" in h["reason"] or "allowed" in h["reason"] or "denied" in h["reason"]
    ]
    assert notes == [
        "wave 0 denied by http://ci/approve: freeze",
        "wave 0 no approval from http://ci/approve: no answer within 5 s",
        "wave 0 allowed by http://ci/approve: ok now",
    ]
    assert ask_.calls[0][2] == 5.0


def test_the_same_deny_is_noted_once_and_the_backoff_is_capped() -> None:
    ask_ = Scripted(*[Answer("deny", "freeze", 200)] * 12)
    r = rollout()
    now = 0.0
    for _ in range(12):
        assert not external_gate(r, 0, now, "http://ci/a", 5.0, ask_)
        now = float(r.gates["external"]["0"]["next_at"])
    st = r.gates["external"]["0"]
    assert st["tries"] == 12 and now - st["last"]["at"] == 60.0
    assert sum("denied by" in h["reason"] for h in r.history) == 1


def test_the_payload_names_the_rollout_wave_bundle_and_the_soak_figures() -> None:
    r = rollout()
    r.dispatched(0, 1.0, {"a": None})
    r.observe("a", "COMMITTED", "", 2.0)
    r.evaluate(3.0)
    r.gates["soak"] = {
        "0": {
            "verdict": "passed",
            "text": "wave: …",
            "wave": {"devices": 1},
            "baseline": {"devices": 1},
            "before": {"devices": 1},
        }
    }
    doc = payload(r, 1)
    assert doc["rollout"] == "ro-e" and doc["wave"] == 1 and doc["devices"] == 1
    assert doc["bundle"] == {"name": "p", "version": "1.1.0", "sequence": 2, "sha256": "ab" * 32}
    assert doc["earlier_waves"] == {"committed": 1, "failed": 0}
    assert doc["soak"]["verdict"] == "passed" and doc["soak"]["wave"] == {"devices": 1}
    assert payload(r, 0)["soak"] is None


def test_the_background_asker_holds_no_pass_while_the_endpoint_hangs() -> None:
    with approval_server("hang") as srv:
        bg = BackgroundAsker()
        doc = {"rollout": "ro-b", "wave": 2}
        r = rollout()
        t0 = time.monotonic()
        assert bg(srv.url, doc, 1.0) is None  # asked; returns at once
        assert not external_gate(r, 1, 0.0, srv.url, 1.0, bg)  # another wave: its own
        assert time.monotonic() - t0 < 0.5
        assert "tries" not in r.gates["external"]["1"] or r.gates["external"]["1"]["tries"] == 0
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got = bg(srv.url, doc, 1.0)
            time.sleep(0.05)
        assert got == Answer("error", "no answer within 1 s")
        assert bg(srv.url, doc, 1.0) is None  # the next question starts afresh
        srv.mode = "allow"
        srv.release.set()
        deadline = time.monotonic() + 10
        while not external_gate(r, 1, time.time(), srv.url, 1.0, bg):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert allowed(r, 1) is not None and r.gates["external"]["1"]["tries"] >= 1


def test_an_asker_that_raises_still_gives_the_gate_an_answer() -> None:
    def broken(url: str, doc: Mapping[str, Any], timeout_s: float) -> Answer:
        raise RuntimeError("boom")

    bg = BackgroundAsker(broken)
    doc = {"rollout": "ro-x", "wave": 0}
    assert bg("http://ci/a", doc, 1.0) is None
    deadline = time.monotonic() + 10
    got = None
    while got is None and time.monotonic() < deadline:
        time.sleep(0.02)
        got = bg("http://ci/a", doc, 1.0)
    assert got == Answer("error", "the check failed: RuntimeError: boom")
