"""The audit log cannot be rewritten quietly: a real plane (store on SQLite or a real
PostgreSQL) signs tree heads, keeps them in its store and signs a final head on stop;
`audit verify` catches every tamper against those heads, a witness file, or a given
head or size; a torn last line is repaired, and the repair audited."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.home import CloudHome
from cloud.router.audit import canonical_json
from cloud.router.errors import AuditError
from cloud.testing import running_plane
from edgeflux.cli import root as cli
from protos import router_pb2_grpc
from tests.router.conftest import _Agent
from tests.router.test_plane_policy import _home, _task

Lines = list[bytes]


def _verify(root_dir: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(
        cli, ["cloud", "router", "audit", "verify", "--home", str(root_dir), *extra]
    )
    return res.exit_code, res.output


def _rechain(lines: Lines, start_seq: int, edit: Callable[[dict[str, object]], None]) -> Lines:
    """What a forger without the key can do: rewrite records from `start_seq` on and
    recompute the hash chain so that every `prev` fits again."""
    out: Lines = []
    prev = None
    for raw in lines:
        obj = json.loads(raw)
        if obj["kind"] == "record":
            if obj["seq"] >= start_seq:
                if prev is not None:
                    obj["prev"] = prev
                edit(obj["body"])
            raw = canonical_json(obj)
            prev = hashlib.sha256(raw).hexdigest()
        out.append(raw)
    return out


def _heads(lines: Lines) -> list[int]:
    return [i for i, x in enumerate(lines) if b'"kind":"tree_head"' in x]


def _records(lines: Lines) -> list[int]:
    return [i for i, x in enumerate(lines) if b'"kind":"record"' in x]


@pytest.fixture
def stopped_plane(tmp_path: Path, agent: tuple[_Agent, int], database_url: str) -> tuple[Path, str]:
    _, port = agent
    root_dir = _home(tmp_path, port)
    cfg = CloudHome.at(root_dir).config_file
    text = cfg.read_text().replace("audit_every_n = 1", "audit_every_n = 4")
    # The plane and the CLI read the same store: name it in the config.
    assert "[cloud]\n" in text
    cfg.write_text(text.replace("[cloud]\n", f'[cloud]\ndatabase_url = "{database_url}"\n', 1))
    with running_plane(root_dir) as plane:
        dev = plane.device("r1", labels={"tenant": "acme"})
        with plane.channel(dev) as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            for _ in range(14):
                stub.Route(_task(3), timeout=10)
    return root_dir, database_url


def test_stop_signs_a_final_head_and_the_store_witnesses_every_head(
    stopped_plane: tuple[Path, str],
) -> None:
    root_dir, url = stopped_plane
    assert not (root_dir / "state" / "plane.db").exists() or url.startswith("sqlite")
    log = root_dir / "state" / "router-audit.jsonl"
    lines = log.read_bytes().splitlines()
    assert json.loads(lines[-1])["kind"] == "tree_head"  # the final head, on stop
    assert json.loads(lines[-1])["size"] == 14
    code, out = _verify(root_dir, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["records"] == 14 and report["unsigned_tail"] == 0
    assert report["witness_heads"] == len(_heads(lines)) >= 4
    # A known head or size: the right one passes, a wrong one or a larger size fails.
    final = json.loads(lines[-1])
    assert _verify(root_dir, "--size", "14", "--head", final["root"])[0] == 0
    assert _verify(root_dir, "--size", "15")[0] == 1
    assert _verify(root_dir, "--size", "10", "--head", final["root"])[0] == 1
    # Exported to a witness file, the heads check the file without the store.
    witness = root_dir.parent / "witness.jsonl"
    res = CliRunner().invoke(
        cli, ["cloud", "router", "audit", "heads", "--home", str(root_dir), "--out", str(witness)]
    )
    assert res.exit_code == 0, res.output
    assert len(witness.read_bytes().splitlines()) == len(_heads(lines))
    code, _ = _verify(root_dir, "--no-store", "--witness", str(witness))
    assert code == 0


TAMPERS: dict[str, Callable[[Lines], Lines]] = {
    # Edit the last record and drop the final head, so the edit is unsigned.
    "unsigned_tail_edit": lambda ls: [
        *ls[: _records(ls)[-1]],
        ls[_records(ls)[-1]].replace(b'"outcome":"ok"', b'"outcome":"failed"'),
    ],
    "tail_record_appended": lambda ls: _rechain(
        [*ls, ls[_records(ls)[-1]].replace(b'"seq":13', b'"seq":14')], 14, lambda b: None
    ),
    "head_deleted": lambda ls: [x for i, x in enumerate(ls) if i != _heads(ls)[2]],
    "truncated_after_a_head": lambda ls: ls[: _heads(ls)[2] + 1],
    "emptied": lambda ls: [],
    "head_duplicated": lambda ls: [*ls[: _heads(ls)[2] + 1], *ls[_heads(ls)[2] :]],
    # Delete the later heads and rewrite every later record with its cost zeroed,
    # chain recomputed; then sign nothing (no key).
    "rewritten_and_rechained": lambda ls: [
        x
        for i, x in enumerate(_rechain(ls, 5, lambda b: b.__setitem__("cost_usd", 0.0)))
        if i <= _heads(ls)[1] or b'"kind":"record"' in x
    ],
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_every_rewrite_of_the_log_fails_verification(
    stopped_plane: tuple[Path, str], tamper: str
) -> None:
    root_dir, _ = stopped_plane
    log = root_dir / "state" / "router-audit.jsonl"
    original = log.read_bytes().splitlines()
    forged = TAMPERS[tamper](list(original))
    assert forged != original
    log.write_bytes(b"".join(x + b"\n" for x in forged))
    code, out = _verify(root_dir)
    assert code == 1 and "FAILED verification" in out, out
    # Without the store, the file alone still fails wherever the file shows it.
    if tamper in ("unsigned_tail_edit", "tail_record_appended", "emptied", "head_duplicated"):
        assert _verify(root_dir, "--no-store")[0] == 1


def test_a_torn_last_line_is_cut_recorded_and_the_plane_starts_again(
    stopped_plane: tuple[Path, str],
) -> None:
    root_dir, _ = stopped_plane
    log = root_dir / "state" / "router-audit.jsonl"
    whole = log.read_bytes()
    torn = b'{"body":{"at":17000'
    log.write_bytes(whole + torn)  # power lost mid-write
    with (
        pytest.raises(AuditError, match="audit repair"),
        running_plane(root_dir),
    ):
        pass
    res = CliRunner().invoke(cli, ["cloud", "router", "audit", "repair", "--home", str(root_dir)])
    assert res.exit_code == 0 and f"cut a torn line of {len(torn)} bytes" in res.output
    side = json.loads((root_dir / "state" / "router-audit.jsonl.torn").read_bytes())
    assert side["sha256"] == hashlib.sha256(torn).hexdigest()
    lines = log.read_bytes().splitlines()
    repair = json.loads(lines[-2])["body"]
    assert repair["event"] == "repair" and repair["cut_bytes"] == len(torn)
    code, out = _verify(root_dir, "--json")
    assert code == 0, out
    with running_plane(root_dir):
        pass
    assert _verify(root_dir)[0] == 0
    # Nothing torn: repair says so and changes nothing.
    before = log.read_bytes()
    res = CliRunner().invoke(cli, ["cloud", "router", "audit", "repair", "--home", str(root_dir)])
    assert res.exit_code == 0 and "nothing to repair" in res.output
    assert log.read_bytes() == before
