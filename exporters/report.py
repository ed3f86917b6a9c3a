"""``memledger compare`` output: a rich table, JSON, Markdown for a rollout ticket, and one
self-contained HTML file with plots (matplotlib, inline SVG; past 1000 points a side, the
points are one embedded image).

Every format leads with the verdict and its reasons, then the figures (with each one's
threshold and how it was compared), the paired hosts (worst first), the anomaly codes,
what else differs between the sides, and the boots left out of some figures with why.
The table and the markdown are read by people and pasted in tickets: they list the
:data:`WORST` worst hosts, values and left-out boots and count the rest, whatever the
fleet's size; JSON and HTML keep everything.
"""

from __future__ import annotations

import html
import io
import json
import statistics
from datetime import timedelta
from typing import Any

from memledger.exporters.markdown import md
from memledger.exporters.terminal import text
from memledger.ledger.measures import REASONS
from memledger.store.compare import FIGURES, SMALL_N, Comparison, size_text
from memledger.store.db import as_utc
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ("BASELINE_COLOR", "CANDIDATE_COLOR", "WORST", "to_html", "to_json", "to_markdown",
           "to_table")

BASELINE_COLOR = "#4c72b0"
CANDIDATE_COLOR = "#dd8452"
_VERDICT_STYLE = {"regression": "bold red", "improvement": "green", "changed": "yellow",
                  "same": "dim", "unknown": "dim", "no change": "bold"}
_UNITS = {f.name: f.unit for f in FIGURES}
WORST = 10  # hosts (and values, left-out boots) the table and the markdown list by default
_BOOT_ROWS = 500  # the HTML lists at most this many boots a side
_RASTER = 1000  # points of one side in one plot drawn as SVG elements, at most


def _num(value: float | None, unit: str, signed: bool = False) -> str:
    return "?" if value is None else size_text(value, unit, signed=signed, places=2)


def _mib(value: float | None, unit: str, signed: bool = False, short: bool = False) -> str:
    """A table cell under a "MiB" heading: a figure under 1 MiB keeps its KiB or bytes
    (``short``: ``4K``, ``512B``, for the terminal's narrow table)."""
    return "?" if value is None else size_text(value, unit, signed=signed, mib=False, short=short)


def _side(stats: dict[str, Any], unit: str) -> str:
    if not stats["n"]:
        return "no boots"
    return (f"{_num(stats['median'], unit)} "
            f"({_num(stats['p10'], unit)} to {_num(stats['p90'], unit)}, n={stats['n']})")


def _compact(stats: dict[str, Any], unit: str) -> str:
    """The terminal's "median (p10-p90)", a unit the three share written once: 640K and
    639K to 640K is ``640 (639-640)K``."""
    if not stats["n"]:
        return "none"
    med, lo, hi = (_mib(stats[k], unit, short=True) for k in ("median", "p10", "p90"))
    if stats["n"] == 1 or lo == hi:
        return med
    suffix = {c.lstrip("+-0123456789.,") for c in (med, lo, hi)}
    if len(suffix) == 1 and (u := suffix.pop()):
        return f"{med.removesuffix(u)} ({lo.removesuffix(u)}-{hi.removesuffix(u)}){u}"
    return f"{med} ({lo}-{hi})"


def _how(f: dict[str, Any], short: bool = False) -> str:
    """How a figure was compared: "3 pairs" ("3p"), or "7/7" boots a side."""
    if f["mode"] == "paired":
        return f"{f['hosts']['paired']}{'p' if short else ' pairs'}"
    return f"{f['baseline']['n']}/{f['candidate']['n']}"


def _compared(f: dict[str, Any]) -> str:
    """The HTML's "compared" cell: how many paired hosts, or boots a side."""
    if f["mode"] == "paired":
        n = f["hosts"]["paired"]
        return f"{n} paired host{'s' if n != 1 else ''}"
    if f["mode"] is None:
        return "-"
    return f"{f['baseline']['n']} / {f['candidate']['n']} boots"


def _sample_warning(c: Comparison) -> str | None:
    """Said at the verdict when a figure that decides it rests on few boots or hosts."""
    small = [f for f in c.figures
             if f.get("small_n") and f["verdict"] in ("regression", "improvement")]
    if not small:
        return None
    what = ", ".join(f"{f['name']} on {_how(f).replace('pairs', 'paired hosts')}"
                     + ("" if f["mode"] == "paired" else " boots") for f in small)
    return (f"on a small sample, fewer than {SMALL_N}: {what}; a change this size may be "
            "chance")


def _short(name: str) -> str:
    return name.replace("low_", "<1M ").replace("boot_services", "boot svc")


def _title(c: Comparison) -> str:
    def one(side: dict[str, Any]) -> str:
        return f"{side['selector']} ({side['boots']} boots, {side['hosts']} hosts)"
    where = ", ".join(f"{k}={v}" for k, v in c.baseline["where"].items())
    return f"{one(c.baseline)} → {one(c.candidate)}" + (f" where {where}" if where else "")


def _host(d: dict[str, Any]) -> str:
    return str(d["hostname"] or d["machine_id"][:12])


def to_table(c: Comparison, worst: int | None = WORST) -> RenderableType:
    """The verdict, its reasons, the figures; the ``worst`` paired hosts (None: every
    one) with the rest summarised; the context, summarised the same way."""
    head = Text.assemble(("verdict: ", "bold"), (c.verdict, _VERDICT_STYLE[c.verdict]))
    if (warning := _sample_warning(c)) is not None:
        head.append(f" — {warning}", style="yellow")
    reasons = [text(f"- {r}") for r in c.reasons]
    t = Table(title=text(_title(c)), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
              caption="MiB, K: KiB, B: bytes (anomalies: a count). median (p10-p90) of the "
              "boots that measure the figure; n: boots a side, or paired hosts (p); change: of the median "
              "(per host when paired); leaked, <1M freed, anomalies: the largest change; "
              "thr: threshold")
    for col, justify in (("figure", "left"), ("n", "right"), ("baseline", "right"),
                         ("candidate", "right"), ("change", "right"), ("thr", "right"),
                         ("verdict", "left")):
        t.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for f in c.figures:
        t.add_row(_short(f["name"]), _how(f, short=True),
                  _compact(f["baseline"], f["unit"]), _compact(f["candidate"], f["unit"]),
                  _mib(f["delta"], f["unit"], True, short=True),
                  _mib(f["threshold"], f["unit"], short=True),
                  Text(f["verdict"], style=_VERDICT_STYLE[f["verdict"]]))
    parts: list[RenderableType] = [head, *reasons, t]
    if c.pairs:
        shown = [f["name"] for f in c.figures if f["mode"] == "paired"]
        listed = c.pairs if worst is None else c.pairs[:worst]
        p = Table(title=_pairs_title(c, listed) + " (baseline → candidate, MiB; K: KiB, B: bytes)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        p.add_column("host")
        for name in shown:
            p.add_column(_short(name), justify="right")
        for d in listed:
            p.add_row(text(_host(d)), *(_pair_cell(d["figures"].get(name), _UNITS[name], short=True)
                                        for name in shown))
        parts.append(p)
        if len(listed) < c.paired["hosts"]:
            parts.append(text(_rest_of_pairs(c, listed)))
    parts += [text(line) for line in _context_lines(c, worst)]
    return Group(*parts)


def _pairs_title(c: Comparison, listed: list[dict[str, Any]]) -> str:
    if len(listed) == c.paired["hosts"]:
        return "paired hosts, worst first"
    return f"the worst {len(listed)} of {c.paired['hosts']} paired hosts"


def _some(listed: list[dict[str, Any]], verdict: str) -> int:
    return sum(1 for d in listed if any(v["verdict"] == verdict for v in d["figures"].values()))


def _rest_of_pairs(c: Comparison, listed: list[dict[str, Any]]) -> str:
    """One line for the paired hosts not listed: how many were worse in some figure."""
    worse = c.paired["worse"] - _some(listed, "regression")
    better = c.paired["better"] - _some(listed, "improvement")
    return (f"… and {c.paired['hosts'] - len(listed)} more paired hosts: {worse} worse in "
            f"some figure, {better} better in some; every host is in --format json and "
            "html (or --worst all)")


def _pair_cell(v: dict[str, Any] | None, unit: str, short: bool = False) -> str:
    if v is None:
        return "?"
    return f"{_mib(v['baseline'], unit, short=short)} → {_mib(v['candidate'], unit, short=short)}"


def _values(vals: dict[str, int], worst: int | None) -> str:
    items = sorted(vals.items(), key=lambda kv: -kv[1])
    shown = items if worst is None else items[:worst]
    text_ = ", ".join(f"{v} ({n})" for v, n in shown)
    return text_ + (f", and {len(items) - len(shown)} more" if len(shown) < len(items) else "")


def _context_lines(c: Comparison, worst: int | None = None) -> list[str]:
    """Anomaly codes, other differences and the boots left out, a line each; with
    ``worst``, at most that many values a side and boots listed, the rest counted."""
    a = c.anomalies
    lines = []
    for side in ("baseline", "candidate"):
        codes = ", ".join(f"{k} ({n})" for k, n in a[side].items()) or "none"
        lines.append(f"anomalies on the {side}'s measuring boots: {codes}")
    for attr, sides in c.differences.items():
        lines.append(f"differs, {attr}: " + "; ".join(
            f"{side} " + _values(vals, worst) for side, vals in sides.items()))
    how = "counted anyway" if c.include_all else "left out"
    if worst is None or c.left_out_total <= worst:
        for d in c.left_out:
            lines.append(f"{how} ({d['side']}): {_host(d)} boot {d['boot_id'][:8]} "
                         f"{d['kernel_release']}, of {', '.join(d['figures'])}: {'; '.join(d['why'])}")
        return lines
    for side, kinds in c.left_out_whys.items():
        if not kinds:
            continue
        lines.append(f"{how} ({side}): {sum(kinds.values())} boots, of some figures: " + "; ".join(
            f"{' and '.join(REASONS[w] for w in why)} ({n})"
            for why, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
            + "; each is listed in --format json and html")
    return lines


def to_json(c: Comparison) -> str:
    """One line (json's C encoder: 15 000 paired hosts take 0.1 s, not the 1 s that
    indenting costs); ``jq .`` indents it."""
    return json.dumps(c.as_dict(), default=str) + "\n"


def to_markdown(c: Comparison, worst: int | None = WORST) -> str:
    """For a pull-request comment: the ``worst`` paired hosts (None: every one), the rest
    and the context summarised, so that it stays under GitHub's 65 536 characters at any
    fleet size."""
    # Data reaches markdown only through md(): what is not wrapped in it is ours.
    lines = [f"### memledger compare: {md(_title(c))}", "", f"**Verdict: {c.verdict}**", ""]
    if (warning := _sample_warning(c)) is not None:
        lines[-2] += f" — {md(warning)}"
    lines += [f"- {md(r)}" for r in c.reasons]
    lines += ["", "| figure | compared | baseline | candidate | change | threshold | verdict |",
              "|---|---|---:|---:|---:|---:|---|"]
    for f in c.figures:
        verdict = f"**{f['verdict']}**" if f["verdict"] == "regression" else f["verdict"]
        how = f"{_how(f)} ({f['mode']})" if f["mode"] else "-"
        lines.append(f"| {md(f['label'])} | {how} | {_side(f['baseline'], f['unit'])} | "
                     f"{_side(f['candidate'], f['unit'])} | {_num(f['delta'], f['unit'], True)} | "
                     f"{_num(f['threshold'], f['unit'])} | {verdict} |")
    if c.pairs:
        shown = [f["name"] for f in c.figures if f["mode"] == "paired"]
        listed = c.pairs if worst is None else c.pairs[:worst]
        lines += ["", f"{_pairs_title(c, listed).capitalize()} (baseline → candidate, MiB "
                      "unless marked):", "",
                  "| host | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
        lines += [f"| {md(_host(d))} | " + " | ".join(_pair_cell(d["figures"].get(n), _UNITS[n])
                                                  for n in shown) + " |" for d in listed]
        if len(listed) < c.paired["hosts"]:
            lines += ["", md(_rest_of_pairs(c, listed))]
    lines += [""] + [f"- {md(line)}" for line in _context_lines(c, worst)]
    regs = c.regressions
    lines += ["", f"Regressions: {', '.join(regs)}." if regs else "No regression.", ""]
    return "\n".join(lines)


def _plot(c: Comparison, fig_name: str, key: str, unit: str) -> str:
    """Every boot as a point, one row per side (filled: counted; hollow: left out), with
    each side's median as a bar; an SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scale = (1 << 20) if unit == "bytes" else 1
    fig, ax = plt.subplots(figsize=(7, 1.5))
    highest: list[float] = []
    for y, (side, color) in enumerate((("candidate", CANDIDATE_COLOR),
                                       ("baseline", BASELINE_COLOR))):
        counted: list[float] = []
        left: list[float] = []
        for r, ok in c.counted(side, fig_name):
            value = r._mapping[key]
            if value is not None:
                (counted if ok else left).append(value / scale)
        highest += [max(counted + left)] if counted or left else []
        jitter = [((i * 7) % 11 - 5) * 0.025 for i in range(max(len(counted), len(left)))]
        # Thousands of points as SVG elements would make a fleet's report hundreds of MB:
        # past _RASTER points a side's points are one embedded image.
        raster = len(counted) + len(left) > _RASTER
        ax.scatter(counted, [y + j for j in jitter[:len(counted)]], s=36, color=color,
                   edgecolor="#222222", linewidths=0.5, zorder=3, rasterized=raster)
        ax.scatter(left, [y + j for j in jitter[:len(left)]], s=36, facecolors="none",
                   edgecolors=color, linewidths=1.2, zorder=3, rasterized=raster)
        if counted:
            med = statistics.median(counted)
            ax.plot([med, med], [y - 0.3, y + 0.3], color=color, linewidth=3, zorder=2)
    ax.set_yticks([0, 1], ["candidate", "baseline"])
    ax.set_ylim(-0.6, 1.6)
    # From 0: a difference shows at its true size (zoomed to the values, 1 KiB between
    # two boots of 624 KiB looked like two far-apart clusters).
    ax.set_xlim(0, max([1.0, *(v * 1.05 for v in highest)]))
    ax.set_xlabel(f"{fig_name} ({'MiB' if unit == 'bytes' else 'count'})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    svg: str = out.getvalue()
    return svg[svg.index("<svg"):]


def _e(value: Any) -> str:
    return html.escape("?" if value is None else str(value))


def _tri(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else (yes if value else no)


def _boots_table(c: Comparison, side: str) -> str:
    rows = sorted(c.rows(side), key=lambda r: (r.kernel_release or "", r.hostname or "",
                                               r.machine_id, str(r.captured_at)))
    body = "".join(
        f"<tr><td>{_e(r.hostname or r.machine_id[:12])}</td><td>{_e(r.boot_id[:8])}</td>"
        f"<td>{_e(r.kernel_release)}</td><td>{_e(_booted(r))}</td><td>{_e(_at(r.captured_at))}</td>"
        f"<td>{_tri(r.efi, 'EFI', 'not EFI')}</td><td>{_tri(r.efi_debug, 'efi=debug', '-')}</td>"
        f"<td>{_tri(r.kexec, 'kexec', '-')}</td>"
        f"<td>{_tri(r.log_complete, 'complete', 'truncated')}</td>"
        + "".join(f"<td>{_e(_num(r._mapping[f.key], f.unit))}</td>" for f in FIGURES)
        + f"<td>{_e(r.anomaly_codes or '-')}</td></tr>" for r in rows[:_BOOT_ROWS])
    more = (f"<p>… and {len(rows) - _BOOT_ROWS} more boots (the JSON format counts them "
            "all).</p>") if len(rows) > _BOOT_ROWS else ""
    head = "".join(f"<th>{h}</th>" for h in ("host", "boot", "kernel", "booted", "captured", "firmware",
                                            "efi=debug", "kexec", "kernel log",
                                            *(f.name for f in FIGURES), "anomaly codes"))
    return f"<div class='scroll'><table class='boots'><tr>{head}</tr>{body}</table></div>{more}"


def _at(when: Any) -> str | None:
    return None if when is None else as_utc(when).strftime("%Y-%m-%d %H:%M:%S")


def _booted(r: Any) -> str | None:
    """When the host booted: the capture's time less its uptime (unknown once the capture
    file is pruned)."""
    if r.captured_at is None or r.uptime_s is None:
        return None
    return _at(as_utc(r.captured_at) - timedelta(seconds=r.uptime_s))


def to_html(c: Comparison) -> str:
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in c.reasons)
    warning = (f"<p id='small-sample'>{html.escape(w)}</p>"
               if (w := _sample_warning(c)) is not None else "")
    glossary = "; ".join(f"<b>{html.escape(f.name)}</b>: {html.escape(f.label)}" for f in FIGURES)
    rows = "".join(
        f"<tr class='{f['verdict']}'><td title='{html.escape(f['label'])}'>{html.escape(f['name'])}</td>"
        f"<td>{html.escape(_compared(f))}</td>"
        f"<td>{html.escape(_side(f['baseline'], f['unit']))}</td>"
        f"<td>{html.escape(_side(f['candidate'], f['unit']))}</td>"
        f"<td>{html.escape(_num(f['delta'], f['unit'], True))}</td>"
        f"<td title='{html.escape(f['threshold_rule'])}'>"
        f"{html.escape(_num(f['threshold'], f['unit']))}</td>"
        f"<td>{f['left_out']['baseline']}/{f['left_out']['candidate']}</td>"
        f"<td class='verdict'>{f['verdict']}</td></tr>" for f in c.figures)
    plots = "".join(
        f"<figure><figcaption>{html.escape(f.name)}</figcaption>{_plot(c, f.name, f.key, f.unit)}"
        "</figure>"
        for f, s in zip(FIGURES, c.figures, strict=True)
        if s["baseline"]["n"] or s["candidate"]["n"] or any(s["left_out"].values()))
    shown = [f for f in c.figures if f["mode"] == "paired"]
    pairs = "".join(
        f"<tr><td>{_e(d['hostname'] or d['machine_id'][:12])}</td>"
        f"<td>{d['boots']['baseline']} / {d['boots']['candidate']}</td>"
        + "".join(_pair_td(d["figures"].get(f["name"]), f["unit"]) for f in shown) + "</tr>"
        for d in c.pairs)
    pairs_html = (
        "<div class='scroll'><table class='pairs'><tr><th>host</th><th>boots (baseline / candidate)</th>"
        + "".join(f"<th>{html.escape(f['name'])}</th>" for f in shown) + f"</tr>{pairs}</table></div>"
        if c.pairs else "<p>No host booted both sides: the two populations are compared.</p>")
    a = c.anomalies
    codes = sorted(a["baseline"].keys() | a["candidate"].keys())
    anomalies = "".join(
        f"<tr class='{_code_class(code, a)}'><td>{html.escape(code)}</td>"
        f"<td>{a['baseline'].get(code, 0)}</td><td>{a['candidate'].get(code, 0)}</td>"
        f"<td>{_code_class(code, a).replace('-', ' ')}</td></tr>" for code in codes)
    diffs = "".join(
        f"<tr><td>{html.escape(attr)}</td>"
        + "".join("<td>" + "<br>".join(f"{html.escape(v)} ({n})" for v, n in sides[s].items())
                  + "</td>" for s in ("baseline", "candidate")) + "</tr>"
        for attr, sides in c.differences.items())
    left = "".join(
        f"<tr><td>{d['side']}</td><td>{_e(d['hostname'] or d['machine_id'][:12])}</td>"
        f"<td>{_e(d['boot_id'][:8])}</td><td>{_e(d['kernel_release'])}</td>"
        f"<td>{html.escape(', '.join(d['figures']))}</td>"
        f"<td>{html.escape('; '.join(d['why']))}</td></tr>" for d in c.left_out)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>memledger compare: {c.verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 80em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; }}
tr.regression, tr.new-kernel, td.worse {{ background: #fbe3e3; }}
tr.improvement, tr.gone, td.better {{ background: #e3f5e3; }}
tr.changed, tr.new-capture {{ background: #fff6dc; }}
#verdict {{ font-size: 1.6em; padding: 0.4em 0.6em; border-radius: 4px; display: inline-block; }}
#verdict.regression {{ background: #c62828; color: white; }}
#verdict.improvement {{ background: #2e7d32; color: white; }}
#verdict.no-change, #verdict.unknown {{ background: #eeeeee; }}
.key span {{ display: inline-block; width: 1em; height: 1em; vertical-align: middle; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 0 2em; }}
figure {{ margin: 0 0 1em 0; }} figcaption {{ font-weight: bold; }}
table.boots td, table.boots th {{ font-size: 0.85em; }}
.scroll {{ max-width: 100%; overflow-x: auto; }}
#small-sample {{ background: #fff6dc; padding: 0.3em 0.6em; display: inline-block; }}
</style></head><body>
<h1>memledger compare</h1>
<p id="sides">{html.escape(_title(c))}</p>
<div id="verdict" class="{c.verdict.replace(' ', '-')}">verdict: {c.verdict}</div>
{warning}
<ul id="reasons">{reasons}</ul>
<h2>Figures</h2>
<div class="scroll"><table id="figures"><tr><th>figure</th><th>compared</th><th>baseline</th>
<th>candidate</th><th>change</th><th>threshold</th><th>left out (baseline / candidate)</th>
<th>verdict</th></tr>
{rows}</table></div>
<p>Baseline and candidate: median (p10 to p90, nearest rank) of the boots that measure the
figure, in MiB unless marked. Compared: over the hosts that booted both sides (each host
against itself), else over each side's boots. Change: the median of the paired hosts'
changes, else the candidate median minus the baseline median; where any increase matters
(leaked, low_freed, anomalies), the largest change on a host, else of the highest value.
Hover a threshold for its rule. Left out (baseline / candidate): boots of each side with a
value that cannot measure the figure, listed below with why.</p>
<p id="glossary">{glossary}</p>
<h2>Every boot</h2>
<p class="key"><span style="background:{BASELINE_COLOR}"></span> baseline
<span style="background:{CANDIDATE_COLOR}"></span> candidate; a hollow point is a boot left
out of the figure; a bar is a side's median.</p>
<div class="plots">{plots}</div>
<h2>Paired hosts, worst first (baseline → candidate, MiB unless marked)</h2>
{pairs_html}
<h2>Anomalies</h2>
<table id="anomalies"><tr><th>code</th><th>baseline boots</th><th>candidate boots</th><th></th></tr>
{anomalies}</table>
<h2>What else differs</h2>
{_table("differences", ("", "baseline", "candidate"), diffs,
        "Nothing else: firmware, product, command lines and memory sizes are the same on both sides.")}
<h2>Boots left out of some figures</h2>
{_table("left-out", ("side", "host", "boot", "kernel", "left out of", "why"), left,
        "None: every boot measures every figure it has.")}
<h2>Baseline boots</h2>
{_boots_table(c, "baseline")}
<h2>Candidate boots</h2>
{_boots_table(c, "candidate")}
</body></html>
"""


def _table(ident: str, heads: tuple[str, ...], rows: str, empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return f"<div class='scroll'><table id='{ident}'><tr>{head}</tr>{rows}</table></div>"


def _pair_td(v: dict[str, Any] | None, unit: str) -> str:
    if v is None:
        return "<td>?</td>"
    cls = {"regression": "worse", "improvement": "better"}.get(v["verdict"], "")
    return (f"<td class='{cls}'>{_mib(v['baseline'], unit)} → {_mib(v['candidate'], unit)} "
            f"({_mib(v['delta'], unit, True)})</td>")


def _code_class(code: str, a: dict[str, Any]) -> str:
    if code in a["new_kernel"]:
        return "new-kernel"
    if code in a["new_capture"]:
        return "new-capture"
    if code in a["gone"]:
        return "gone"
    return "both"
