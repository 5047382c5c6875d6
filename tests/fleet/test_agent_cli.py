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
