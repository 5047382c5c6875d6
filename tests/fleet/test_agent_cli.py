"""`edgeflux agent run|status`: user mistakes are clear errors, status reports state."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgeflux.cli import root
from fleet.spool import Spool
from fleet.update import Reason, UpdateRecord, UpdateState, UpdateStateFile
from runtime.layout import RobotLayout


def test_status_reports_update_state_and_spool_backlog(tmp_path: Path) -> None:
    layout = RobotLayout.at(tmp_path)
    layout.ensure()
    UpdateStateFile(layout.agent_state / "update.json").save(
        UpdateRecord(state=UpdateState.FAILED, reason=Reason.DISK_FULL, bundle_name="pendulum")
    )
    spool = Spool(layout.agent_state / "spool.db")
    spool.put("telemetry", "t", lambda seq: b"x" * 10)
    spool.close()
    res = CliRunner().invoke(root, ["agent", "status", "--root", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["update"]["state"] == "FAILED" and out["update"]["reason"] == "DISK_FULL"
    assert out["spool"]["messages"] == 1 and out["spool"]["last_sequence"] == 1


def test_run_with_a_bad_config_value_names_it_and_starts_nothing(tmp_path: Path) -> None:
    layout = RobotLayout.at(tmp_path)
    layout.ensure()
    layout.agent_config.write_text('[agent]\ndevice_id = "robot-1"\nmqtt_port = "eighty"\n')
    res = CliRunner().invoke(root, ["agent", "run", "--root", str(tmp_path)])
    assert res.exit_code == 1
    assert "mqtt_port" in res.output and "did not start" in res.output
    assert "Traceback" not in res.output
    assert not (layout.agent_state / "spool.db").exists()


def test_run_without_a_device_id_says_so(tmp_path: Path) -> None:
    res = CliRunner().invoke(root, ["agent", "run", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "device_id" in res.output


def test_status_on_a_root_where_the_agent_never_ran(tmp_path: Path) -> None:
    res = CliRunner().invoke(root, ["agent", "status", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "has the agent run here?" in res.output


def test_lock_unlock_and_status(tmp_path: Path) -> None:
    layout = RobotLayout.at(tmp_path)
    layout.ensure()
    base = ["agent", "lock", "--root", str(tmp_path)]
    res = CliRunner().invoke(root, [*base, "--reason", "mid-task", "--ttl", "10m", "--who", "nav"])
    assert res.exit_code == 0, res.output
    assert "locked by nav: mid-task" in res.output
    lock = json.loads((layout.agent_state / "locks" / "nav.json").read_text())
    assert lock["who"] == "nav" and lock["reason"] == "mid-task"
    res = CliRunner().invoke(root, ["agent", "status", "--root", str(tmp_path), "--json"])
    assert json.loads(res.stdout)["locks"][0]["reason"] == "mid-task"
    res = CliRunner().invoke(root, ["agent", "status", "--root", str(tmp_path)])
    assert "locks: locked by nav: mid-task" in res.output
    res = CliRunner().invoke(root, ["agent", "unlock", "--root", str(tmp_path), "--who", "nav"])
    assert res.exit_code == 0 and "released" in res.output
    assert not (layout.agent_state / "locks" / "nav.json").exists()
    res = CliRunner().invoke(root, ["agent", "unlock", "--root", str(tmp_path), "--who", "nav"])
    assert res.exit_code == 1 and "no lock held by 'nav'" in res.output


def test_lock_refuses_bad_ttl_and_reason(tmp_path: Path) -> None:
    base = ["agent", "lock", "--root", str(tmp_path), "--who", "nav"]
    res = CliRunner().invoke(root, [*base, "--reason", "x", "--ttl", "soon"])
    assert res.exit_code == 2 and "not a duration" in res.output
    res = CliRunner().invoke(root, [*base, "--reason", "x", "--ttl", "30d"])
    assert res.exit_code == 1 and "ttl:" in res.output and "No lock was written" in res.output
    res = CliRunner().invoke(root, [*base, "--reason", " ", "--ttl", "1m"])
    assert res.exit_code == 1 and "reason:" in res.output
    assert "Traceback" not in res.output
    assert not (RobotLayout.at(tmp_path).agent_state / "locks" / "nav.json").exists()
