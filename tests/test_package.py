"""deploy/debian and requirements.lock: what the Debian package ships agrees with the
program and with the test environment. (The package itself is built by ``make deb``,
checked by lintian, and installed, upgraded and purged in the guest e2e test.)"""

from __future__ import annotations

import re
from importlib.metadata import requires, version
from pathlib import Path

import click
from memledger.cli.main import main
from packaging.requirements import Requirement

REPO = Path(__file__).parent.parent
LOCK = REPO / "requirements.lock"
MAN = REPO / "deploy" / "debian" / "memledger.1"


def _pins() -> dict[str, str]:
    pins = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            assert m, f"requirements.lock:{n}: not name==version: {line!r}"
            pins[_name(m.group(1))] = m.group(2)
    return pins


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(*extras: str) -> list[Requirement]:
    """memledger's own requirements, for no extra and for each of ``extras``."""
    out = []
    for text in requires("memledger") or []:
        r = Requirement(text)
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras):
            out.append(r)
    return out


def test_the_manual_page_lists_every_command() -> None:
    ctx = click.Context(main)
    listed = re.findall(r"^\.TP\n\.B (\S+)$", MAN.read_text(), re.M)
    assert listed == main.list_commands(ctx)


def test_the_lock_pins_every_requirement_within_its_range() -> None:
    pins = _pins()
    for r in _requirements("postgresql", "report", "dashboards", "test"):
        assert _name(r.name) in pins, f"{r.name} is not in requirements.lock (scripts/lock)"
        assert r.specifier.contains(pins[_name(r.name)], prereleases=True), (r, pins[_name(r.name)])


def test_the_test_environment_runs_the_locked_versions() -> None:
    """make test installs with --constraint requirements.lock: what runs here is what the
    package ships, even where Debian has another version (PyYAML)."""
    pins = _pins()
    got = {r.name: version(r.name) for r in _requirements("postgresql", "test")}
    assert got == {name: pins[_name(name)] for name in got}
