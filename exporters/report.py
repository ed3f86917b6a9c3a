"""``memledger compare`` output: a rich table, JSON, Markdown for a rollout ticket, and one
self-contained HTML file with plots (matplotlib, drawn as inline SVG)."""

from __future__ import annotations

import html
import io
import json
from typing import Any

from memledger.store.compare import Comparison
from rich import box
from rich.table import Table

__all__ = ("BASELINE_COLOR", "CANDIDATE_COLOR", "to_html", "to_json", "to_markdown", "to_table")

BASELINE_COLOR = "#4c72b0"
CANDIDATE_COLOR = "#dd8452"
_VERDICT_STYLE = {"regression": "bold red", "improvement": "green", "changed": "yellow",
                  "same": "dim", "unknown": "dim"}
_PLOTTED = ("reclaimed", "kept")


def _num(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None:
        return "?"
    if unit != "bytes":
        return f"{value:+g}" if signed else f"{value:g}"
    mib = value / (1 << 20)
    return f"{mib:+,.2f} MiB" if signed else f"{mib:,.2f} MiB"


def _side(stats: dict[str, Any], unit: str) -> str:
    if not stats["n"]:
        return "no boots"
    return (f"{_num(stats['median'], unit)} "
            f"({_num(stats['p10'], unit)} to {_num(stats['p90'], unit)}, n={stats['n']})")


def _title(c: Comparison) -> str:
    def one(side: dict[str, Any]) -> str:
        return f"{side['selector']} ({side['boots']} boots)"
    where = ", ".join(f"{k}={v}" for k, v in c.baseline["where"].items())
    return f"{one(c.baseline)} → {one(c.candidate)}" + (f" where {where}" if where else "")


def _mib(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    return f"{value / (1 << 20):.1f}" if unit == "bytes" else f"{value:g}"


def _compact(stats: dict[str, Any], unit: str) -> str:
    if not stats["n"]:
        return "[dim]none[/dim]"
    return f"{_mib(stats['median'], unit)} ({_mib(stats['p10'], unit)}-{_mib(stats['p90'], unit)})"


def to_table(c: Comparison) -> Table:
    t = Table(title=_title(c), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
              caption="MiB (anomalies: a count). median (p10-p90) over the n boots where the "
              "figure is known (baseline/candidate); delta of the medians")
    for col, justify in (("figure", "left"), ("n", "right"), ("baseline", "right"),
                         ("candidate", "right"), ("delta", "right"), ("verdict", "left")):
        t.add_column(col, justify=justify, no_wrap=col != "figure")  # type: ignore[arg-type]
    for f in c.figures:
        delta = "?" if f["delta"] is None else (
            f"{f['delta'] / (1 << 20):+.1f}" if f["unit"] == "bytes" else f"{f['delta']:+g}")
        t.add_row(f["name"].replace("low_", "<1M "), f"{f['baseline']['n']}/{f['candidate']['n']}",
                  _compact(f["baseline"], f["unit"]), _compact(f["candidate"], f["unit"]), delta,
                  f"[{_VERDICT_STYLE[f['verdict']]}]{f['verdict']}[/]")
    return t


def to_json(c: Comparison) -> str:
    return json.dumps(c.as_dict(), indent=2)


def to_markdown(c: Comparison) -> str:
    lines = [f"### memledger compare: {_title(c)}", "",
             "| figure | baseline | candidate | delta | verdict |",
             "|---|---:|---:|---:|---|"]
    for f in c.figures:
        verdict = f"**{f['verdict']}**" if f["verdict"] == "regression" else f["verdict"]
        lines.append(f"| {f['label']} | {_side(f['baseline'], f['unit'])} | "
                     f"{_side(f['candidate'], f['unit'])} | {_num(f['delta'], f['unit'], True)} | "
                     f"{verdict} |")
    regs = c.regressions
    lines += ["", f"Regressions: {', '.join(regs)}." if regs else "No regression.", ""]
    return "\n".join(lines)


def _plot(c: Comparison, figure: str) -> str:
    """A box-and-points plot of one figure per kernel release, as an SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = c.samples[figure]
    base = set(c.baseline["releases"])
    releases = sorted(data, key=lambda r: (r not in base, r))
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * max(1, len(releases))))
    if releases:
        values = [[v / (1 << 20) for v in data[r]] for r in releases]
        parts = ax.boxplot(values, vert=False, patch_artist=True, widths=0.6)
        for patch, r in zip(parts["boxes"], releases, strict=True):
            patch.set_facecolor(BASELINE_COLOR if r in base else CANDIDATE_COLOR)
            patch.set_edgecolor("#333333")
        for i, vals in enumerate(values, 1):
            ax.scatter(vals, [i] * len(vals), s=14, color="#222222", zorder=3)
        ax.set_yticks(range(1, len(releases) + 1), releases)
    ax.set_xlabel(f"{figure} (MiB)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    svg = out.getvalue()
    return svg[svg.index("<svg"):]


def to_html(c: Comparison) -> str:
    rows = "".join(
        f"<tr class='{f['verdict']}'><td>{html.escape(f['label'])}</td>"
        f"<td>{html.escape(_side(f['baseline'], f['unit']))}</td>"
        f"<td>{html.escape(_side(f['candidate'], f['unit']))}</td>"
        f"<td>{html.escape(_num(f['delta'], f['unit'], True))}</td>"
        f"<td>{f['verdict']}</td></tr>" for f in c.figures)
    plots = "".join(f"<h2>{name}, per kernel release</h2><div class='plot'>{_plot(c, name)}</div>"
                    for name in _PLOTTED)
    regs = c.regressions
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>memledger compare</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; }}
td:nth-child(n+2) {{ text-align: right; }} tr.regression {{ background: #fbe3e3; }}
tr.improvement {{ background: #e3f5e3; }} tr.changed {{ background: #fff6dc; }}
.key span {{ display: inline-block; width: 1em; height: 1em; vertical-align: middle; }}
</style></head><body>
<h1>memledger compare</h1>
<p>{html.escape(_title(c))}</p>
<p class="key"><span style="background:{BASELINE_COLOR}"></span> baseline
<span style="background:{CANDIDATE_COLOR}"></span> candidate</p>
<p><b>{html.escape("Regressions: " + ", ".join(regs) if regs else "No regression.")}</b></p>
<table><tr><th>figure</th><th>baseline</th><th>candidate</th><th>delta</th><th>verdict</th></tr>
{rows}</table>
{plots}
</body></html>
"""
