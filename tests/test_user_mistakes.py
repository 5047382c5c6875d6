"""User mistakes, one row each: every command refuses with a non-zero exit and one
`Error:` line that names the cause, never a traceback, and changes no file.

The rows cover what a new operator gets wrong on the way through the README (flash
extras, campaign files, bundle paths, specs, variants, certificates) and the other
refusals `--help` promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflux.cli import root
from tests.flash.conftest import add_device, make_pendulum_bundle

CAMPAIGN = """
[campaign]
name = "mistakes"
workers = 1

[[task]]
name = "nominal"
episodes = 4
calibration_episodes = 4
"""


@dataclass(frozen=True)
class Mistake:
    why: str
    argv: str  # {w} is the work directory
    expected: str
    code: int = 1


FLASH = (
    "flash --device robot-1 --target dir:{w}/robot --home {w}/plane --bundle {w}/bundle "
    "--cloud 127.0.0.1:7443 --broker mqtt://127.0.0.1:1883 --no-wheelhouse"
)
ATTEST = "attest run {w}/bundle --home {w}/plane --campaign"

MISTAKES = [
    Mistake("gym adapter without gymnasium", FLASH + " --extras device",
            "the gym adapter needs sim (gymnasium)", 2),
    Mistake("two onnxruntime builds", FLASH + " --extras device,gpu,sim",
            "cannot be installed together", 2),
    Mistake("a trainer extra on a robot", FLASH + " --extras device,sim,distill",
            "distill is not a robot extra", 2),
    Mistake("unknown device", FLASH.replace("robot-1", "robot-9"), "unknown device id 'robot-9'"),
    Mistake("cloud address without a port", FLASH.replace("127.0.0.1:7443", "plane.lan"),
            "is not HOST:PORT", 2),
    Mistake("the README's campaign path from elsewhere", ATTEST + " {w}/campaign.toml",
            "does not exist", 2),
    Mistake("unknown env_id", ATTEST + " {w}/env.toml", "unknown environment 'Nope-v9'"),
    Mistake("variant the env lacks", ATTEST + " {w}/variant.toml",
            "has no variant parameter 'mass'"),
    Mistake("variant out of range", ATTEST + " {w}/range.toml", "variant m=99.0 is outside"),
    Mistake("campaign typo", ATTEST + " {w}/typo.toml", "episods"),
    Mistake("campaign not TOML", ATTEST + " {w}/plain.txt", "not valid TOML"),
    Mistake("attest get of nonsense", "attest get nope --home {w}/plane",
            "neither a policy sha256", 2),
    Mistake("attest show of a non-envelope", "attest show {w}/plain.txt", "not a DSSE envelope"),
    Mistake("attest verify without subject", "attest verify {w}/plain.txt --trust {w}/plane/trust",
            "give --bundle", 2),
    Mistake("verify a missing bundle", "bundle verify {w}/nope --home {w}/plane",
            "no such bundle"),
    Mistake("verify a plain file", "bundle verify {w}/plain.txt --home {w}/plane",
            "is a plain file, not a bundle"),
    Mistake("verify against a non-home", "bundle verify {w}/bundle --home {w}",
            "is not a control-plane home"),
    Mistake("create with nothing", "bundle create", "needs 10 more settings"),
    Mistake("create with a spec typo",
            "bundle create --onnx {w}/bundle/policy.onnx --spec {w}/spec.toml --out {w}/b2",
            "unknown key control.fallbak"),
    Mistake("create without bounds",
            "bundle create --onnx {w}/bundle/policy.onnx --name p --version 1.0.0 "
            "--out {w}/b2 --rate-hz 20 --deadline-ms 5",
            "needs 4 more settings"),
    Mistake("keygen over an existing key",
            "bundle keygen --private {w}/plane/keys/model-signing.key --public {w}/x.pub",
            "refusing to overwrite a key"),
    Mistake("distill with a variant out of range", "distill run --out {w}/runs --variant g=1000",
            "variant g=1000.0 is outside"),
    Mistake("distill with an unknown env", "distill run --out {w}/runs --env Hopper-v9",
            "unknown environment 'Hopper-v9'"),
    Mistake("distill variant without '='", "distill run --out {w}/runs --variant g:12",
            "is not KEY=NUMBER", 2),
    Mistake("distill eval of a non-bundle", "distill eval {w}/plane", "is not a bundle directory"),
    Mistake("tui without a port", "tui --cloud plane.lan", "--cloud must be HOST:PORT"),
    Mistake("tui with a bad replica in its list", "tui --cloud 127.0.0.1:7443,plane.lan",
            "plane address 'plane.lan'"),
    Mistake("rollouts against a plane without a port", "rollout list --home {w}/plane "
            "--server 127.0.0.1:7443,plane:x", "--server: plane address 'plane:x'", 2),
    Mistake("tui with half the mTLS files",
            "tui --cloud 127.0.0.1:7443 --cert {w}/plane/pki/ca.crt",
            "missing --ca, --key"),
    Mistake("start a directory that was never flashed", "robot start --root {w}",
            "is not a flashed robot"),
    Mistake("status of a robot that is not running", "runtime status --root {w}",
            "no runtime is running"),
    Mistake("home twice", "cloud init {w}/plane", "already exists and is not empty"),
    Mistake("device id with spaces", "cloud device add 'bad id' --home {w}/plane",
            "device id 'bad id' is invalid"),
    Mistake("devices of a non-home", "cloud devices --home {w}/nope",
            "is not a control-plane home"),
    Mistake("publish a plain file", "cloud publish {w}/plain.txt --home {w}/plane",
            "not an uncompressed tar archive"),
]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud.home import init_home

    w = tmp_path_factory.mktemp("mistakes")
    home = init_home(w / "plane")
    add_device(w / "plane", "robot-1")
    make_pendulum_bundle(w / "bundle", home.key_path("model-signing", private=True))
    (w / "plain.txt").write_text("not what was expected\n")
    (w / "env.toml").write_text(CAMPAIGN + 'env_id = "Nope-v9"\n')
    (w / "variant.toml").write_text(CAMPAIGN + "variant = { mass = 2.0 }\n")
    (w / "range.toml").write_text(CAMPAIGN + "variant = { m = 99.0 }\n")
    (w / "typo.toml").write_text(CAMPAIGN.replace("episodes = 4\n", "episods = 4\n", 1))
    (w / "spec.toml").write_text("name = 'p'\nversion = '1.0.0'\n[control]\nfallbak = 'zero'\n")
    return w


def _tree(root_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root_dir.rglob("*"))
        if not p.is_dir() or not any(p.iterdir())
    }


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.why for m in MISTAKES])
def test_a_mistake_is_refused_in_one_line_and_changes_nothing(
    work: Path, mistake: Mistake, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex

    monkeypatch.chdir(work)
    before = _tree(work)
    result = CliRunner().invoke(root, shlex.split(mistake.argv.format(w=work)))
    out = result.output
    assert result.exit_code == mistake.code, out
    # Our own exits only (SystemExit), never an exception escaping the command.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, out
    assert mistake.expected in errors[0], out
    assert _tree(work) == before, "the refused command changed files"
