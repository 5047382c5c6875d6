"""Property test: the campaign TOML parser answers every document with a CampaignError
(naming the source) or a valid spec. Small budget by default, large under slow."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.attest.spec import CampaignError, CampaignSpec, parse_campaign
from tests.budgets import slow_budget

SMALL = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
LARGE = settings(
    max_examples=slow_budget(full=2000, ci=200),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "campaign.toml").read_text()
VALID: dict[str, Any] = tomllib.loads(EXAMPLE)

scalars = (
    st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"


@st.composite
def documents(draw: st.DrawFn) -> str:
    """The example with keys dropped or replaced (also whole tables); or random text."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=300))
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(t) for t in v]) for k, v in VALID.items()}
    lines: list[str] = []
    for table, body in doc.items():
        rows = body if isinstance(body, list) else [body]
        if draw(st.integers(0, 9)) == 0:
            lines.append(f"{table} = {_toml(draw(values))}")
            continue
        for row in rows:
            lines.append(f"[[{table}]]" if isinstance(body, list) else f"[{table}]")
            for key, value in row.items():
                choice = draw(st.integers(0, 5))
                if choice == 0:
                    continue
                lines.append(f"{key} = {_toml(draw(values) if choice == 1 else value)}")
    return "\n".join(lines) + "\n"


def _property(text: str) -> None:
    try:
        spec = parse_campaign(text, "fuzz.toml")
    except CampaignError as exc:
        assert "fuzz.toml" in str(exc)
        return
    assert isinstance(spec, CampaignSpec)


def test_the_example_parses() -> None:
    assert isinstance(parse_campaign(EXAMPLE, "examples/campaign.toml"), CampaignSpec)


@SMALL
@given(documents())
def test_campaign_parser_raises_only_campaign_errors(text: str) -> None:
    _property(text)


@pytest.mark.slow
@LARGE
@given(documents())
def test_campaign_parser_raises_only_campaign_errors_large(text: str) -> None:
    _property(text)
