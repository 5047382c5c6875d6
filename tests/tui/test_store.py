"""The fleet store: filter language, sort order, diffs, pause, marks and export."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tui.query import QueryError, parse_query
from tui.rows import DeviceRow
from tui.store import FleetStore


def row(i: int, **kw: object) -> DeviceRow:
    base: dict[str, object] = {
        "id": f"arm-{i:03d}",
        "labels": (("role", "arm" if i % 2 == 0 else "cart"), ("site", "lab" if i < 5 else "yard")),
        "online": i % 3 != 0,
        "bundle_name": "pendulum",
        "bundle_version": "1.1.0" if i % 2 else "1.0.0",
        "bundle_sequence": 2 if i % 2 else 1,
        "update_state": "FAILED" if i == 7 else "COMMITTED",
        "loop_p99_ms": float(10 - i),
    }
    base.update(kw)
    return DeviceRow(**base)  # type: ignore[arg-type]


@pytest.fixture
def store() -> FleetStore:
    s = FleetStore(clock=lambda: 1000.0)
    s.replace_all(row(i) for i in range(10))
    return s


def test_empty_query_shows_every_device_sorted_by_id(store: FleetStore) -> None:
    assert store.visible == [f"arm-{i:03d}" for i in range(10)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site=lab", [0, 1, 2, 3, 4]),
        ("site!=lab", [5, 6, 7, 8, 9]),
        ("site=lab role=arm", [0, 2, 4]),
        ("state=failed", [7]),
        ("bundle=pendulum@1.0.0", [0, 2, 4, 6, 8]),
        ("bundle=other", []),
        ("offline", [0, 3, 6, 9]),
        ("status=online site=yard", [5, 7, 8]),
        ("arm-00", list(range(10))),
        ("ARM-007", [7]),
        ("yard", [5, 6, 7, 8, 9]),
    ],
)
def test_filter_terms_select_the_right_devices(
    store: FleetStore, text: str, expected: list[int]
) -> None:
    store.set_query(text)
    assert store.visible == [f"arm-{i:03d}" for i in expected]


@pytest.mark.parametrize("bad", ["=lab", "site=", "status=maybe"])
def test_bad_filter_names_the_term_and_keeps_the_old_filter(store: FleetStore, bad: str) -> None:
    store.set_query("site=lab")
    with pytest.raises(QueryError, match=bad.split("=")[0] or "="):
        store.set_query(bad)
    assert store.query.text == "site=lab"
    assert len(store.visible) == 5


def test_sort_by_column_then_again_reverses(store: FleetStore) -> None:
    store.set_sort("p99")
    assert store.visible[0] == "arm-009"  # lowest p99 first
    store.set_sort("p99")
    assert store.sort_reverse
    assert store.visible[0] == "arm-000"
    with pytest.raises(QueryError, match="no column"):
        store.set_sort("nope")


def test_sort_ties_break_on_id_so_order_is_stable(store: FleetStore) -> None:
    store.set_sort("bundle")
    assert store.visible[:5] == ["arm-000", "arm-002", "arm-004", "arm-006", "arm-008"]


def test_value_change_is_an_update_not_an_add(store: FleetStore) -> None:
    diff = store.apply([row(3, cpu_percent=99.0)])
    assert diff.updated == ["arm-003"]
    assert not diff.added and not diff.removed and not diff.reordered


def test_change_of_the_sort_key_reorders(store: FleetStore) -> None:
    store.set_sort("p99")
    diff = store.apply([row(3, loop_p99_ms=-5.0)])
    assert diff.reordered
    assert store.visible[0] == "arm-003"


def test_rows_enter_and_leave_the_filtered_view(store: FleetStore) -> None:
    store.set_query("state=failed")
    diff = store.apply([row(2, update_state="FAILED"), row(7, update_state="COMMITTED")])
    assert diff.added == ["arm-002"]
    assert diff.removed == ["arm-007"]
    assert store.visible == ["arm-002"]


def test_new_and_removed_devices(store: FleetStore) -> None:
    diff = store.apply([row(42), "arm-001", "no-such-device"])
    assert diff.added == ["arm-042"]
    assert diff.removed == ["arm-001"]
    assert "arm-001" not in store.visible and len(store) == 10


def test_pause_holds_changes_until_resume(store: FleetStore) -> None:
    store.pause()
    assert store.apply([row(1, cpu_percent=77.0)]).empty
    assert store.get("arm-001").cpu_percent == 0.0  # type: ignore[union-attr]
    assert store.counts()["pending"] == 1
    diff = store.resume()
    assert diff.updated == ["arm-001"]
    assert store.get("arm-001").cpu_percent == 77.0  # type: ignore[union-attr]


def test_marks_follow_devices(store: FleetStore) -> None:
    assert store.toggle_mark("arm-004") is True
    assert store.toggle_mark("ghost") is False
    store.set_query("site=yard")
    store.mark_visible()
    assert store.marked()[:5] == ["arm-005", "arm-006", "arm-007", "arm-008", "arm-009"]
    assert "arm-004" in store.marked()  # marked but filtered out: still a target
    store.apply(["arm-006"])
    assert "arm-006" not in store.marked()
    store.replace_all(row(i) for i in range(5))
    assert store.marked() == ["arm-004"]


def test_replace_all_drops_devices_missing_from_the_snapshot(store: FleetStore) -> None:
    diff = store.replace_all([row(1), row(2)])
    assert diff.reset
    assert store.visible == ["arm-001", "arm-002"]


def test_export_is_the_filtered_sorted_view(store: FleetStore) -> None:
    store.set_query("site=lab role=arm")
    store.set_sort("p99")
    rows = list(csv.DictReader(io.StringIO(store.export("csv"))))
    assert [r["id"] for r in rows] == ["arm-004", "arm-002", "arm-000"]
    assert rows[0]["labels"] == "role=arm,site=lab"
    data = json.loads(store.export("json"))
    assert data["query"] == "site=lab role=arm"
    assert [d["id"] for d in data["devices"]] == ["arm-004", "arm-002", "arm-000"]
    assert data["devices"][0]["labels"] == {"role": "arm", "site": "lab"}


def test_history_and_update_events_are_recorded(store: FleetStore) -> None:
    store.apply([row(7, update_state="ROLLED_BACK", update_reason="health_window")])
    store.apply([row(7, update_state="ROLLED_BACK", update_reason="health_window")])
    states = [(u.state, u.reason) for u in store.updates["arm-007"]]
    assert states == [("FAILED", ""), ("ROLLED_BACK", "health_window")]
    assert len(store.history["arm-007"]) == 3


def test_parse_query_keeps_text() -> None:
    q = parse_query("  site=lab  arm ")
    assert q.text == "site=lab  arm"
    assert len(q.terms) == 2
