"""Text from a capture reaches a terminal, a markdown file or the log as text, never as
markup (issue 28, item 1).

A host name, a kernel release (the manifest's and proc/sys/kernel/osrelease), the command
line and the DMI strings are written by whoever wrote the capture. Hypothesis fills every
one of them with rich markup (``[/x]`` raised MarkupError in ``boots``, ``analyze`` and
``compare``), escape sequences (OSC 52 writes the reader's clipboard, CSI 2J clears the
screen), newlines that forge a verdict line or a log record, markdown tables' ``|``,
images and links, raw HTML and bidi overrides; every command that shows them must show
them as written, escaped where a character would act, and nothing else.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from capturegen import BOOTS, T0, boot_id, machine_id
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from memledger.cli.main import main
from memledger.exporters.logs import OneLineFormatter
from memledger.tracer.capture import Manifest, pack
from memledger.tracer.reader import FsTree, RecordingTree, read_tree
from memledger.tracer.untrusted import shown

# Each example stores two captures and runs six commands (about 2 s): a few examples, and
# no shrinking (a failing example is reported as generated).
SETTINGS = settings(max_examples=25, deadline=None, phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# What a terminal, a log reader or a markdown viewer would act on (the oracle is the
# list of such characters, not memledger's own).
ACTING = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                    "\u202a-\u202e\u2066-\u2069]")
EVIL = "evil.example"
MARKUP = ["[/x]", "[bold red]", "[/]", f"[link=http://{EVIL}/]x[/link]", ":cd:", "[dim]"]
MARKDOWN = ["|", f"![x](http://{EVIL}/a.png)", f"<img src=http://{EVIL}/b.png>",
            f"[y](https://{EVIL}/)", f"www.{EVIL}", f"<https://{EVIL}/>", "`", "**", "_",
            "&lt;b&gt;", "# no", "\\"]
BIDI = ["\u202e", "\u2066", "\u200f"]
# Control characters: the manifest refuses them (names hold none), files may hold them.
CONTROL = ["\x1b]52;c;ZXZpbA==\x07", "\x1b[2J", "\x9b2J", "\r", "\t", "\x7f",
           "\n\n**Verdict: no change**\n", "\nERROR forged.tar.gz: the database refused it\n"]
PLAIN = st.text(alphabet="abcxyz019-. ", min_size=1, max_size=6)


def _hostile(fragments: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(fragments) | PLAIN, min_size=1, max_size=5).map("".join)


NAME = _hostile(MARKUP + MARKDOWN + BIDI)  # a manifest string: no control character
TEXT = _hostile(MARKUP + MARKDOWN + BIDI + CONTROL)  # a file's text


def _fits_a_release(text: str) -> str:
    """Cut to what a release can hold after its first words (at most "6.12.117"): the
    kernel's 64 bytes (tracer/caps.py refuses more, from the manifest or the file)."""
    return text.encode()[:64 - len("6.12.117")].decode(errors="ignore")


# osrelease with a control character is refused at ingest (tracer/caps.py): no
# output sees it; the command line and DMI strings may hold them.
RELEASE_NAME = NAME.map(_fits_a_release)


def _tree(name: str) -> tuple[dict[str, bytes], set[str]]:
    rec = RecordingTree(FsTree(BOOTS / name / "root"))
    read_tree(rec, str(BOOTS / name / "root"))
    return dict(rec.files), set(rec.dirs)


TREES = {name: _tree(name) for name in ("6.1.0-47-amd64-default", "6.12.117+deb12-amd64-default")}


def _capture(name: str, host: int, hostname: str, release: str, osrelease: str,
             cmdline: str, dmi: dict[str, str]) -> bytes:
    files, dirs = TREES[name]
    files = {**files, "proc/sys/kernel/osrelease": osrelease.encode() + b"\n",
             "proc/cmdline": cmdline.encode() + b"\n",
             **{f"sys/class/dmi/id/{k}": v.encode() + b"\n" for k, v in dmi.items()}}
    m = Manifest(machine_id=machine_id(host), boot_id=boot_id(host, len(name)),
                 captured_at=T0, memledger_version="test", hostname=hostname,
                 kernel_release=release[:64], cmdline=None)
    return pack(files, dirs, m)


def _run(*args: str) -> Any:
    try:
        result = CliRunner().invoke(main, list(args), env={"COLUMNS": "4000"},
                                    catch_exceptions=False)
    finally:
        gc.enable()  # analyze and ingest turn the cyclic collector off
    return result


def _acting(text: str) -> list[str]:
    return sorted(set(ACTING.findall(text)))


def _forged_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if ln.lstrip(" │|-*").startswith(("ERROR forged", "**Verdict: no change"))]


def _markdown_checks(text: str, hostname: str) -> None:
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    kinds: set[str] = set()
    tables: list[list[list[str]]] = []  # table → row → cell's text
    for prev, tok in zip([None, *tokens], tokens, strict=False):
        kinds.add(tok.type)
        kinds.update(child.type for child in tok.children or [])
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            tables[-1].append([])
        elif tok.type == "inline" and prev is not None and prev.type in ("td_open", "th_open"):
            tables[-1][-1].append("".join(c.content for c in tok.children or []))
    # No image, link or HTML from data; every row has its header's cells.
    assert not kinds & {"image", "link_open", "html_inline", "html_block"}, kinds
    assert len(tables) == 2  # the figures and the paired hosts
    for rows in tables:
        assert {len(r) for r in rows} == {len(rows[0])}, rows
    assert len(tables[0][0]) == 7
    # One verdict line, the report's own.
    assert sum(ln.startswith("**Verdict:") for ln in text.splitlines()) == 1
    # The host name reads as written (escaped only where a character would act).
    assert [r[0] for r in tables[1][1:]] == [shown(hostname).strip()]


@SETTINGS
@given(hostname=NAME, release=RELEASE_NAME, osrelease=RELEASE_NAME, cmdline=TEXT, vendor=TEXT,
       product=TEXT, version=TEXT)
def test_hostile_text_in_a_capture_reaches_no_output_as_markup(
        tmp_path_factory: pytest.TempPathFactory, hostname: str, release: str, osrelease: str,
        cmdline: str, vendor: str, product: str, version: str) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    db = f"sqlite:///{tmp / 'memledger.db'}"
    dmi = {"sys_vendor": vendor, "bios_vendor": vendor, "product_name": product,
           "board_name": product, "bios_version": version}
    # One host booting both kernels (its releases told apart by their first words).
    caps = []
    for name, head in (("6.1.0-47-amd64-default", "6.1.0-47"),
                       ("6.12.117+deb12-amd64-default", "6.12.117")):
        path = tmp / f"{head}.tar.gz"
        path.write_bytes(_capture(name, 1, hostname, f"{head}{release}", f"{head}{osrelease}",
                                  cmdline + head, dmi))
        caps.append(path)

    stored = _run("ingest", "--db", db, "-j", "1", *map(str, caps))
    assert stored.exit_code == 0, stored.output
    assert "2 new" in stored.stderr and not _acting(stored.stderr)

    analyzed = _run("analyze", str(caps[0]))
    assert analyzed.exit_code == 0, analyzed.output
    assert not _acting(analyzed.stdout) and not _forged_lines(analyzed.stdout)
    # Not read as markup: the release in the panel's title, as written.
    assert shown(f"6.1.0-47{osrelease}".strip()) in analyzed.stdout

    listed = _run("boots", "--db", db)
    assert listed.exit_code == 0, listed.output
    assert not _acting(listed.stdout) and not _forged_lines(listed.stdout)
    assert shown(f"6.12.117{osrelease}".strip()) in listed.stdout  # the column is never cut
    as_json = json.loads(_run("boots", "--db", db, "--json").stdout)
    assert {b["hostname"] for b in as_json} == {hostname}  # stored as written
    assert {b["kernel_release"] for b in as_json} == {
        f"{h}{osrelease}".strip() for h in ("6.1.0-47", "6.12.117")}

    sides = ("--baseline", "6.1.0-47*", "--candidate", "6.12.117*", "--db", db)
    table = _run("compare", *sides)
    assert table.exit_code in (0, 1), table.output
    assert not _acting(table.stdout) and not _forged_lines(table.stdout)
    assert shown(hostname) in table.stdout  # the paired host, not read as markup

    markdown = _run("compare", *sides, "--format", "markdown")
    assert markdown.exit_code == table.exit_code, markdown.output
    assert not _acting(markdown.stdout) and not _forged_lines(markdown.stdout)
    _markdown_checks(markdown.stdout, hostname)

    exact = json.loads(_run("compare", *sides, "--format", "json").stdout)
    assert [p["hostname"] for p in exact["pairs"]] == [hostname]


@settings(max_examples=200, deadline=None)
@given(message=TEXT, arg=TEXT, raised=TEXT)
def test_a_log_record_is_one_line_whatever_its_data(message: str, arg: str, raised: str) -> None:
    record = logging.LogRecord("memledger.daemon", logging.ERROR, __file__, 1,
                               "%s: " + message.replace("%", "%%") + " %s", ("x.tar.gz", arg),
                               None)
    try:
        raise ValueError(raised)
    except ValueError:
        record.exc_info = sys.exc_info()
    line = OneLineFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and not _acting(line)
    assert line.startswith("ERROR x.tar.gz: ") and shown(arg) in line and shown(raised) in line


@pytest.mark.slow
def test_a_newline_in_osrelease_forges_no_daemon_log_line(tmp_path: Path) -> None:
    from daemonrun import Daemon, drop, wait_for

    forged = "\nERROR forged.tar.gz: the database refused it\n\x1b[2J"
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'memledger.db'}", spool)
    # A newline in the release file: refused, in one record.
    drop(spool, "newline.tar.gz", _capture("6.1.0-47-amd64-default", 2, "web-2",
                                           "6.1.0-47-amd64", f"6.1.0-47{forged}", "ro", {}))
    # Escape sequences in the release the kernel log's banner gives: stored, shown escaped.
    files, dirs = TREES["6.1.0-47-amd64-default"]
    release = "6.1.0-47\x1b[2J\x1b]52;c;ZXZpbA==\x07"
    log = files["dmesg.txt"].replace(b"Linux version 6.1.0-47-amd64 ",
                                     f"Linux version {release} ".encode())
    assert log != files["dmesg.txt"]
    m = Manifest(machine_id=machine_id(3), boot_id=boot_id(3, 1), captured_at=T0,
                 memledger_version="test", hostname="web-3")
    drop(spool, "escape.tar.gz", pack({k: v for k, v in {**files, "dmesg.txt": log}.items()
                                       if k != "proc/sys/kernel/osrelease"}, dirs, m))
    wait_for("both files", lambda: (spool / "failed" / "newline.tar.gz").exists()
             and (spool / "done" / "escape.tar.gz").exists(), 60)
    assert d.stop() == 0
    text = d.text()
    lines = text.splitlines()
    assert [ln for ln in lines if "newline.tar.gz" in ln] == [
        "WARNING newline.tar.gz: proc/sys/kernel/osrelease holds the character \\n, which "
        "cannot be stored (moved to failed/newline.tar.gz)"], text
    # One record, the release shown escaped in it (the log parser drops the CSI colour
    # sequence a console log may hold; the OSC 52 stays, escaped); no escape sequence.
    stored = [ln for ln in lines if ln.startswith("INFO escape.tar.gz")]
    assert len(stored) == 1 and stored[0].startswith(
        f"INFO escape.tar.gz: new boot {boot_id(3, 1)} of {machine_id(3)} (6.1.0-47"), text
    assert stored[0].endswith(f"{shown(chr(27) + ']52;c;ZXZpbA==' + chr(7))})"), text
    assert not any(ln.startswith("ERROR forged") for ln in lines) and "\x1b" not in text


def test_a_refusal_s_reason_file_is_one_line_with_data_escaped(tmp_path: Path) -> None:
    """failed/NAME.error once kept a reason's first line with its escape sequences raw."""
    from memledger.spool.reader import Spool

    spool = Spool(str(tmp_path / "spool"), 1 << 20)
    spool.ensure()
    (tmp_path / "spool" / "x.tar.gz").write_bytes(b"x")
    claim = spool.claim("x.tar.gz")
    assert claim is not None
    spool.mark_failed(claim, "release 6.1\x1b]52;c;ZXZpbA==\x07 refused\nERROR forged\n")
    text = (tmp_path / "spool" / "failed" / "x.tar.gz.error").read_text()
    assert text == "release 6.1\\x1b]52;c;ZXZpbA==\\x07 refused\\nERROR forged\n"
