"""The readable report and the PNG work from the statement alone, degenerate tasks included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloud.attest import report
from cloud.attest.analysis import analyse
from cloud.attest.gates import evaluate_gates
from tests.attest.test_gates import POLICY, RUNTIME, START, _episodes, _task


def _statement() -> dict:
    flat = _task()
    constant_gap = _episodes(flat.planned_seeds, [e.ret + 3.0 for e in flat.teacher.values()])
    tasks = [dataclasses.replace(flat, name="flat", student=constant_gap), _task(seed=3)]
    gates = evaluate_gates(tasks, RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
    predicate = {**analyse(tasks, gates).to_dict(), "bundle": {"name": "pendulum"}}
    subject = [{"name": "policy.onnx", "digest": {"sha256": POLICY}}]
    return {"subject": subject, "predicate": predicate}


def test_report_lists_every_task_and_failed_gate() -> None:
    text = report.render_text(_statement(), verified_by="ab" * 32)
    assert text.startswith("Parity attestation: NOT_ATTESTED — pendulum")
    assert "signature: verified (key abababababababab)" in text
    assert "flat" in text and "not_computed" in text and "equivalent" in text
    assert "FAIL positive_variance [flat]: " in text
    assert "normalised IQM" in text


def test_png_has_one_panel_per_task(tmp_path: Path) -> None:
    out = report.plot_differences(_statement(), tmp_path / "parity.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    one = report.plot_differences(
        {"predicate": {"tasks": _statement()["predicate"]["tasks"][1:]}}, tmp_path / "one.png"
    )
    assert width > int.from_bytes(one.read_bytes()[16:20], "big")  # two panels are wider
