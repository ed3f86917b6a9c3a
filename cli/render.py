"""Human-readable tables of a ledger (rich)."""

from __future__ import annotations

from memledger.exporters.terminal import text
from memledger.ledger.model import LedgerDoc
from memledger.store.compare import size_text
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ("fmt_bytes", "render_ledger")

_SEVERITY = {"error": "bold red", "warning": "yellow", "info": "cyan"}


_UNKNOWN = Text("unknown", style="dim")
_NOT_APPLICABLE = Text("does not apply", style="dim")


def fmt_bytes(value: int | None) -> str | Text:
    """``48037888`` → ``46,912 KiB (45.8 MiB)``; None → ``unknown`` (dim)."""
    if value is None:
        return _UNKNOWN
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    v = abs(value)
    if v % 1024:
        return f"{sign}{v:,} B"
    text = f"{sign}{v // 1024:,} KiB"
    if v >= 1 << 20:
        text += f" ({size_text(value, 'bytes')})"
    return text


def _table(title: str) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", min_width=28)
    t.add_column(justify="right")
    t.add_column(style="dim")
    return t


def _unseen(d: LedgerDoc) -> list[str]:
    """What the inputs could not show, said plainly (one line each), where it matters."""
    fw, bs, fid = d["firmware"], d["efi_boot_services"], d["fidelity"]
    out = []
    if fw["efi"] is None:
        out.append("cannot show: whether this boot was EFI (the log lost its start)")
    if fw["efi"] and bs["reclaimed_bytes"] is None and not d["kernel"]["kdump"] \
            and not fid["efi_debug"]:
        out.append("cannot show: how much boot-services memory was freed (no 'Freeing EFI "
                   "boot services memory' line, memblock=debug or boot trace)")
    if fw["efi"] and bs["total_bytes"] is None and not d["kernel"]["kdump"]:
        out.append("cannot show: the boot-services total (no EFI memory map: efi=debug "
                   "prints it, a capture reads it from /sys)")
    if fw["efi"] and not fid["sources"].get("proc_meminfo"):
        out.append("cannot show: a leak (needs this boot's /proc/meminfo and /proc/zoneinfo: "
                   "memledger capture)")
    return out


def render_ledger(d: LedgerDoc, console: Console) -> None:
    boot, kernel, fw = d["boot"], d["kernel"], d["firmware"]
    bs, low, acct, fid = (d["efi_boot_services"], d["low_memory"], d["kernel_accounting"],
                          d["fidelity"])
    index = "?" if boot["index"] is None else boot["index"] + 1
    head = (f"boot {index} of {boot['of']}  ·  kernel {kernel['release'] or 'unknown'}"
            f"  ·  firmware {'EFI' if fw['efi'] else 'BIOS' if fw['efi'] is False else 'unknown'}"
            + (f" ({fw['efi_vendor']})" if fw["efi_vendor"] else ""))

    t1 = _table("EFI boot services")
    if fw["efi"] is False:
        t1.add_row("not an EFI boot", _NOT_APPLICABLE, "BIOS: no boot services")
    else:
        t1.add_row("total", fmt_bytes(bs["total_bytes"]), bs["total_source"] or "")
        t1.add_row("reclaimed", fmt_bytes(bs["reclaimed_bytes"]), bs["reclaimed_source"] or "")
        t1.add_row("kept", fmt_bytes(bs["kept_bytes"]), "")
        for reason, value in (bs["kept_by_reason"] or {}).items():
            t1.add_row(f"  {reason}", fmt_bytes(value), "")
        t1.add_row("leaked", fmt_bytes(bs["leaked_bytes"]), "MemTotal - Σ managed")

    t2 = _table("Below 1 MiB")
    t2.add_row("usable (E820)", fmt_bytes(low["usable_bytes"]), "")
    t2.add_row("reserved", fmt_bytes(low["reserved_bytes"]), low["reserved_source"] or "")
    if fw["efi"] is False:
        t2.add_row("boot services", _NOT_APPLICABLE, "BIOS")
    else:
        t2.add_row("boot services", fmt_bytes(low["boot_services_bytes"]), "")
    t2.add_row("freed", fmt_bytes(low["freed_bytes"]), low["freed_source"] or "")
    t2.add_row("crashkernel low", fmt_bytes(low["crashkernel_low_bytes"]), "")

    t3 = _table("Kernel accounting")
    t3.add_row("reserved at boot", fmt_bytes(acct["boot_reserved_bytes"]), "Memory: line")
    for name, value in acct["freed_by_name"].items():
        t3.add_row(f"  freed: {name}", fmt_bytes(value), "")
    t3.add_row("present - managed", fmt_bytes(
        None if acct["present_bytes"] is None or acct["managed_bytes"] is None
        else acct["present_bytes"] - acct["managed_bytes"]), "zoneinfo")
    t3.add_row("MemTotal", fmt_bytes(acct["memtotal_bytes"]), "meminfo")
    t3.add_row("residual", fmt_bytes(acct["residual_bytes"]), "")

    src = ", ".join(k for k, v in fid["sources"].items() if v) or "none"
    lines = [f"sources: {src}", *_unseen(d)]
    if fid["unreadable"]:
        lines.append("unreadable: " + ", ".join(fid["unreadable"]))
    lines.extend(f"note: {n}" for n in fid["notes"])
    anomalies = Table(show_header=False, box=None, pad_edge=False)
    anomalies.add_column()
    anomalies.add_column()
    for a in d["anomalies"]:
        anomalies.add_row(
            Text.assemble(text(a["severity"], _SEVERITY.get(a["severity"], "")), " ",
                          text(a["code"])),
            Text.assemble(text(a["message"]), " ", text(f"({a['evidence']})", "dim")))
    parts: list[RenderableType] = [t1, "", t2, "", t3, "", *(text(line) for line in lines)]
    if d["anomalies"]:
        parts += ["", anomalies]
    console.print(Panel(Group(*parts), title=text(head), title_align="left", expand=False))
