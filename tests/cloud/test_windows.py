"""Maintenance windows on the plane: the table (SQLite and PostgreSQL), the commands,
and the windows carried in the signed desired state."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.store import NotFoundError, Store
from cloud.store.windows import LabeledWindow, WindowStore
from cloud.windows import WindowBook, with_windows
from runtime.desired_state import DesiredBundle, DesiredState, GatePolicy
from runtime.maintenance_window import MaintenanceWindow

DOCK = MaintenanceWindow.build("dock", "mon-fri", "02:00", "04:00", "Europe/Berlin")
NIGHT = MaintenanceWindow.build("night", "daily", "22:00", "06:00", "UTC")


def test_store_put_replace_list_remove(store: Store) -> None:
    ws = WindowStore(store.engine)
    assert ws.all() == []
    ws.put(DOCK, {"site": "dock"}, actor="alice")
    ws.put(NIGHT, {"site": "lab", "role": "arm"}, actor="bob")
    rows = ws.all()
    assert [r.window for r in rows] == [DOCK, NIGHT]
    assert rows[1].selector == {"role": "arm", "site": "lab"} and rows[1].actor == "bob"
    assert rows[0].updated_at is not None and rows[0].updated_at.tzinfo is not None
    later = MaintenanceWindow.build("dock", "sat", "01:00", "02:00", "UTC")
    ws.put(later, {"site": "dock"}, actor="alice")
    got = ws.get("dock")
    assert got is not None and got.window == later and len(ws.all()) == 2
    ws.remove("dock")
    with pytest.raises(NotFoundError, match="no maintenance window 'dock'"):
        ws.remove("dock")
    assert [r.window.name for r in ws.all()] == ["night"]


def test_a_selector_matches_every_label() -> None:
    lw = LabeledWindow(DOCK, {"site": "dock", "role": "arm"})
    assert lw.applies_to({"site": "dock", "role": "arm", "x": "y"})
    assert not lw.applies_to({"site": "dock"})
    assert not lw.applies_to({"site": "dock", "role": "cart"})


def test_book_rereads_after_its_ttl() -> None:
    rows = [LabeledWindow(DOCK, {"site": "dock"})]
    loads: list[int] = []
    now = [0.0]

    def load() -> list[LabeledWindow]:
        loads.append(1)
        return list(rows)

    book = WindowBook(load, ttl_s=2.0, clock=lambda: now[0])
    assert book.for_labels({"site": "dock"}) == (DOCK,)
    assert book.for_labels({"site": "lab"}) == ()
    rows.append(LabeledWindow(NIGHT, {"site": "dock"}))
    assert book.for_labels({"site": "dock"}) == (DOCK,) and len(loads) == 1
    now[0] = 2.0
    assert book.for_labels({"site": "dock"}) == (DOCK, NIGHT) and len(loads) == 2


def _doc(bundle: DesiredBundle | None) -> DesiredState:
    at = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    return DesiredState.issue("robot-1", bundle, 3, now=at, ttl_s=60)


def test_windows_ride_in_the_gate_and_nothing_changes_without_them() -> None:
    plain = DesiredBundle(name="pendulum", version="1.1.0", sequence=2, target="t.efb")
    assert with_windows(plain, ()) is plain
    before = _doc(plain).payload()
    assert b"windows" not in before and b"gate" not in before
    gated = DesiredBundle(
        name="pendulum",
        version="1.1.0",
        sequence=2,
        target="t.efb",
        gate=GatePolicy(max_action_divergence=0.2),
    )
    merged = with_windows(gated, (DOCK, NIGHT))
    payload = _doc(merged).payload()
    gate = json.loads(payload)["bundle"]["gate"]
    assert gate["max_action_divergence"] == 0.2
    assert [w["name"] for w in gate["windows"]] == ["dock", "night"]
    back = DesiredState.parse(payload)
    assert back.bundle is not None and back.bundle.gate is not None
    assert back.bundle.gate.windows == (DOCK, NIGHT)
    # A window the bundle already names is not added twice.
    again = with_windows(merged, (NIGHT,))
    assert again.gate is not None and [w.name for w in again.gate.windows] == ["dock", "night"]


def test_a_hostile_window_in_a_document_is_refused_by_field() -> None:
    from runtime.desired_state import DesiredStateError

    doc = json.loads(_doc(with_windows(DesiredBundle(name="p", sequence=1), (DOCK,))).payload())
    doc["bundle"]["gate"]["windows"][0]["tz"] = "../../etc/localtime"
    with pytest.raises(DesiredStateError, match=r"bundle\.gate\.windows\.0\.tz"):
        DesiredState.parse(json.dumps(doc).encode())
    doc["bundle"]["gate"]["windows"] = [DOCK.to_dict()] * 17
    with pytest.raises(DesiredStateError, match=r"bundle\.gate\.windows"):
        DesiredState.parse(json.dumps(doc).encode())


# ---- the commands


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(h)]).exit_code == 0
    return h


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cloud, list(args))
    return res.exit_code, res.output


def test_window_commands(home: Path) -> None:
    h = ["--home", str(home)]
    code, out = _run(
        "window", "set", "dock", *h, "--label", "site=dock", "--days", "mon-fri",
        "--start", "02:00", "--end", "04:00", "--tz", "Europe/Berlin",
    )  # fmt: skip
    assert code == 0, out
    assert "window dock: mon,tue,wed,thu,fri 02:00-04:00 Europe/Berlin for site=dock" in out
    code, out = _run("window", "list", *h, "--json")
    assert code == 0, out
    (row,) = json.loads(out)["windows"]
    assert row["name"] == "dock" and row["labels"] == {"site": "dock"}
    assert row["tz"] == "Europe/Berlin" and row["next_open"].endswith("Z")
    code, out = _run("window", "list", *h)
    assert "dock  site=dock" in out and "1 window(s)" in out
    code, out = _run("audit", *h, "--json")
    assert "window.set" in out
    code, out = _run("window", "remove", "dock", *h)
    assert code == 0 and "removed window dock" in out
    code, out = _run("window", "remove", "dock", *h)
    assert code == 1 and "no maintenance window 'dock'" in out


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"--tz": "Mars/Olympus"}, "tz:"),
        ({"--days": "someday"}, "days:"),
        ({"--start": "25:00"}, "start:"),
        ({"--label": "nolabel"}, "not key=value"),
    ],
)
def test_window_set_refuses_bad_words_and_changes_nothing(
    home: Path, change: dict[str, str], expect: str
) -> None:
    opts = {"--label": "site=dock", "--days": "daily", "--start": "02:00", "--end": "03:00"}
    opts["--tz"] = "UTC"
    opts.update(change)
    args = [x for kv in opts.items() for x in kv]
    code, out = _run("window", "set", "w", "--home", str(home), *args)
    assert code != 0 and expect in out and "Traceback" not in out
    code, out = _run("window", "list", "--home", str(home), "--json")
    assert json.loads(out)["windows"] == []


def test_book_answers_per_label_set_and_its_key_follows_the_windows() -> None:
    rows = [LabeledWindow(DOCK, {"site": "dock"})]
    now = [0.0]
    book = WindowBook(lambda: list(rows), ttl_s=2.0, clock=lambda: now[0])
    windows, key = book.lookup({"site": "dock", "role": "arm"})
    assert windows == (DOCK,) and key
    assert book.lookup({"site": "lab"}) == ((), "")
    rows[0] = LabeledWindow(
        MaintenanceWindow.build("dock", "sat", "01:00", "02:00", "UTC"), {"site": "dock"}
    )
    assert book.lookup({"site": "dock", "role": "arm"})[1] == key  # until the re-read
    now[0] = 5.0
    changed = book.lookup({"site": "dock", "role": "arm"})
    assert changed[1] != key and changed[0][0].days == ("sat",)


def test_the_bench_prints_its_table_and_json() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable,
            str(repo / "bench" / "desired_windows.py"),
            "--rounds",
            "1",
            "--calls",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "book-3" in out.splitlines()[3]
    last = json.loads(out.strip().splitlines()[-1])
    assert last["bench"] == "desired_windows" and last["book-3_hit_us"] > 0
