"""The plane/robot contract (`runtime.desired_state`): what the plane builds is what
the robot parses, unknown fields survive, and the bytes keep the wire shape."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import common_pb2
from runtime.desired_state import (
    BundleRef,
    DesiredBundle,
    DesiredState,
    DesiredStateError,
    GatePolicy,
)

NOW = dt.datetime(2026, 6, 1, 0, 0, 0, 400_000, tzinfo=dt.UTC)

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40)
bundles = st.builds(
    DesiredBundle,
    name=names,
    version=st.text(max_size=20),
    sequence=st.integers(0, 2**63 - 1),
    target=st.text(max_size=60),
    sha256=st.text("0123456789abcdef", max_size=64),
    length=st.integers(0, 2**40),
    gate=st.none() | st.builds(GatePolicy, max_action_divergence=st.none() | st.floats(0, 10)),
)


@given(bundle=st.none() | bundles, generation=st.integers(0, 2**31), ttl=st.integers(1, 10**6))
def test_what_the_plane_issues_the_robot_parses_back_unchanged(
    bundle: DesiredBundle | None, generation: int, ttl: int
) -> None:
    doc = DesiredState.issue("robot-1", bundle, generation, now=NOW, ttl_s=ttl)
    back = DesiredState.parse(doc.payload())
    assert back == doc
    assert back.payload() == doc.payload()


def test_the_payload_keeps_the_wire_shape_older_robots_read() -> None:
    b = DesiredBundle(
        name="pendulum", version="1.1.0", sequence=2, target="bundles/p.efb", sha256="ab", length=9
    )
    doc = DesiredState.issue("robot-1", b, 3, now=NOW, ttl_s=60)
    assert doc.payload() == (
        b'{"_type":"edgeflux.desired-state/v1","bundle":{"length":9,"name":"pendulum",'
        b'"sequence":2,"sha256":"ab","target":"bundles/p.efb","version":"1.1.0"},'
        b'"device_id":"robot-1","expires":"2026-06-01T00:01:00Z","generation":3,'
        b'"issued_at":"2026-06-01T00:00:00Z"}'
    )


def test_unknown_fields_from_a_newer_plane_are_kept() -> None:
    raw = DesiredState.issue("r", DesiredBundle(name="p", sequence=1), 1, now=NOW, ttl_s=5)
    obj = json.loads(raw.payload())
    obj["rollout"] = {"id": "ro-1"}
    obj["bundle"]["channel"] = "beta"
    obj["bundle"]["gate"] = {"max_action_divergence": 0.5, "min_reward": 1}
    doc = DesiredState.parse(json.dumps(obj).encode())
    assert doc.bundle is not None and doc.bundle.gate is not None
    assert doc.bundle.gate.max_action_divergence == 0.5
    again = json.loads(doc.payload())
    assert again["rollout"] == {"id": "ro-1"} and again["bundle"]["channel"] == "beta"
    assert again["bundle"]["gate"] == {"max_action_divergence": 0.5, "min_reward": 1}


@pytest.mark.parametrize(
    ("gate", "fragment"),
    [
        ({"max_action_divergence": -1}, "max_action_divergence"),
        ({"max_action_divergence": "NaN"}, "max_action_divergence"),
    ],
)
def test_a_bad_gate_is_refused_naming_the_field(gate: object, fragment: str) -> None:
    obj = json.loads(DesiredState.issue("r", None, 0, now=NOW, ttl_s=5).payload())
    obj["bundle"] = {"name": "p", "sequence": 1, "gate": gate}
    with pytest.raises(DesiredStateError, match=fragment):
        DesiredState.parse(json.dumps(obj).encode())


def test_a_reference_round_trips_through_the_wire_message() -> None:
    ref = BundleRef(name="p", version="1", sequence=4, policy_sha256="a" * 64)
    assert BundleRef.from_pb(ref.to_pb()) == ref
    assert BundleRef.from_pb(common_pb2.BundleRef()) is None
    assert ref.to_dict() == {"name": "p", "version": "1", "sequence": 4, "policy_sha256": "a" * 64}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (BundleRef(name="p", version="1", sequence=2), BundleRef(name="p", version="1"), True),
        (BundleRef(name="p", sequence=2), BundleRef(name="p", version="9", sequence=2), True),
        (BundleRef(name="p", version="1", sequence=2), BundleRef(name="q", version="1"), False),
        (BundleRef(name="p", version="1"), BundleRef(name="p", version="2"), False),
        (BundleRef(name="p"), BundleRef(name="p"), False),
    ],
)
def test_same_bundle(a: BundleRef, b: BundleRef, same: bool) -> None:
    assert a.same_bundle(b) is same


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
documents = st.fixed_dictionaries(
    {"_type": st.just("edgeflux.desired-state/v1")},
    optional={
        "device_id": json_values,
        "bundle": json_values
        | st.fixed_dictionaries(
            {"name": json_values},
            optional={"sequence": json_values, "gate": json_values, "length": json_values},
        ),
        "generation": json_values,
        "issued_at": json_values,
        "expires": json_values,
    },
)


@given(doc=documents)
def test_hostile_documents_are_refused_with_a_reason_never_a_traceback(doc: object) -> None:
    try:
        parsed = DesiredState.parse(json.dumps(doc).encode())
    except DesiredStateError as exc:
        assert str(exc)
    else:
        assert parsed.issued_at.tzinfo is not None and parsed.expires.tzinfo is not None
