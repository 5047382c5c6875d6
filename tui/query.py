"""The fleet filter typed after `/`.

Query language for `/` (whitespace separated, all terms must match)::

    arm-0          text: substring of the device id or of any label value
    site=lab       label selector (any label key)
    site!=lab      negated label selector
    state=failed   update state (``state=idle``, ``state=committed`` ...)
    status=offline online/offline (``online``/``offline`` also work as bare words)
    bundle=pend    active bundle name (``bundle=name@1.2.0`` pins the version too)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tui.rows import DeviceRow

__all__ = ["Query", "QueryError", "parse_query"]


class QueryError(ValueError):
    """A filter the store cannot understand; the message says which term and why."""


@dataclass(frozen=True)
class _Term:
    kind: Literal["text", "label", "state", "status", "bundle"]
    key: str = ""
    value: str = ""
    negate: bool = False


@dataclass(frozen=True)
class Query:
    """A parsed filter: all terms must match. The empty query matches every device."""

    text: str = ""
    terms: tuple[_Term, ...] = ()

    def matches(self, row: DeviceRow) -> bool:
        return all(_term_matches(t, row) for t in self.terms)


def _term_matches(term: _Term, row: DeviceRow) -> bool:
    if term.kind == "text":
        hit = term.value in row.search
    elif term.kind == "label":
        hit = any(k == term.key and v == term.value for k, v in row.labels)
    elif term.kind == "state":
        hit = row.update_state.lower() == term.value
    elif term.kind == "status":
        hit = (term.value == "online") == row.online
    else:  # bundle
        name, _, version = term.value.partition("@")
        hit = row.bundle_name.lower() == name and (not version or row.bundle_version == version)
    return hit != term.negate


def parse_query(text: str) -> Query:
    """Parse the `/` filter; raises `QueryError` naming the bad term."""
    terms: list[_Term] = []
    for raw in text.split():
        if raw.lower() in ("online", "offline"):
            terms.append(_Term("status", value=raw.lower()))
            continue
        if "=" not in raw:
            terms.append(_Term("text", value=raw.lower()))
            continue
        key, _, value = raw.partition("=")
        negate = key.endswith("!")
        key = key.rstrip("!")
        if not key or not value:
            raise QueryError(
                f"filter term {raw!r} needs a key and a value, e.g. site=lab or state=failed"
            )
        low = key.lower()
        if low == "state":
            terms.append(_Term("state", value=value.lower(), negate=negate))
        elif low == "status":
            if value.lower() not in ("online", "offline"):
                raise QueryError(f"filter term {raw!r}: status is online or offline")
            terms.append(_Term("status", value=value.lower(), negate=negate))
        elif low == "bundle":
            terms.append(_Term("bundle", value=value.lower(), negate=negate))
        else:
            terms.append(_Term("label", key=key, value=value, negate=negate))
    return Query(text=text.strip(), terms=tuple(terms))
