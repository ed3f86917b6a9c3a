"""What a host's kernel command line needs for a well-captured boot, as a GRUB drop-in (pure).

``memledger boot-setup`` adds:

* ``memblock=debug``: every memblock_reserve/free with its caller (memblock_dbg prints
  ``memblock_reserve: [base-end] caller``);
* ``log_buf_len=16M``: memblock=debug prints a few hundred KiB on a small machine and
  more on a big one; the default 128 KiB-1 MiB ring buffer would wrap and lose the start;
* boot-time tracing on the command line (stock Debian kernels have no
  CONFIG_BOOT_CONFIG): ``trace_clock=global`` (else a
  clock switch in late_initcall resets the ring buffer on 6.1), ``trace_buf_size`` (per
  CPU: the boot writes a few hundred entries, so it stays small), ``ftrace=function``
  with ``ftrace_filter=…``, and ``kprobe_event=…`` (the boot-time probes of
  :mod:`memledger.tracer.probes`, the ones the lab uses).
  Function tracing needs CONFIG_FUNCTION_TRACER and kprobes CONFIG_KPROBE_EVENTS; a
  kernel config that lacks them drops those arguments, with a note.

It never adds ``efi=debug``: that makes efi_unmap_boot_services() keep every EFI
boot-services region ("Keep all regions for /sys/kernel/debug/efi"), so the boot frees
none of the memory being measured. Asking for it is refused; finding it already set is reported.

The drop-in is sourced by grub-mkconfig as shell, and its value lands unquoted on the
``linux`` line of grub.cfg, which GRUB's own lexer splits on ``;`` and expands ``$``
in. So each argument is single-quoted for GRUB when it holds such characters, and the
whole value is escaped for the shell (``$`` as ``\\$``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from memledger.tracer.probes import BOOT_PROBES, BOOT_TRACE_FUNCTIONS

__all__ = (
    "DROPIN",
    "LOG_BUF_LEN",
    "BootSetupError",
    "Plan",
    "efi_debug_in",
    "kernel_config",
    "parse_size",
    "plan",
    "render_dropin",
    "shell_words",
)

DROPIN = "/etc/default/grub.d/memledger.cfg"
LOG_BUF_LEN = 16 << 20
TRACE_BUF_SIZE = "256K"
_GRUB_SPECIAL = re.compile(r"[\s;$|&<>(){}\"'\\#`]")
_SIZE = re.compile(r"^(\d+)([KMG]?)$", re.I)


class BootSetupError(ValueError):
    """A request boot-setup refuses; the message is one line."""


def kernel_config(text: str) -> dict[str, str]:
    """``/boot/config-*``: CONFIG_X=value lines (``# CONFIG_X is not set`` gives "n")."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key.removeprefix("CONFIG_")] = value.strip().strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[9:-11]] = "n"
    return out


def parse_size(text: str) -> int | None:
    m = _SIZE.match(text.strip())
    if m is None:
        return None
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def shell_words(text: str) -> list[str]:
    """Split a command line the way the kernel does (spaces; double quotes group)."""
    out: list[str] = []
    word: list[str] = []
    quoted = any_ = False
    for ch in text:
        if ch == '"':
            quoted, any_ = not quoted, True
        elif ch.isspace() and not quoted:
            if word or any_:
                out.append("".join(word))
            word, any_ = [], False
        else:
            word.append(ch)
    if word or any_:
        out.append("".join(word))
    return out


def efi_debug_in(args: list[str]) -> str | None:
    """The ``efi=`` argument that turns on efi=debug, if any (efi= takes a comma list)."""
    for a in args:
        if a.startswith("efi=") and "debug" in a[4:].split(","):
            return a
    return None


@dataclass
class Plan:
    args: list[str]
    notes: list[str] = field(default_factory=list)


def plan(config: dict[str, str] | None, current: list[str], extra: tuple[str, ...] = ()) -> Plan:
    """The arguments to add for a kernel with ``config`` booted with ``current``."""
    if (bad := efi_debug_in(list(extra))) is not None:
        raise BootSetupError(
            f"refusing to add {bad}: with efi=debug the kernel keeps all EFI boot-services "
            "memory (efi_unmap_boot_services returns early), which is what memledger measures")
    notes: list[str] = []
    if (bad := efi_debug_in(current)) is not None:
        notes.append(f"the running kernel has {bad}: it frees no EFI boot-services memory; "
                     "remove it from the GRUB configuration (memledger flags such boots)")
    args = ["memblock=debug"]
    have = {a.partition("=")[0]: a.partition("=")[2] for a in current}
    current_buf = parse_size(have.get("log_buf_len", "")) or 0
    args.append(f"log_buf_len={max(LOG_BUF_LEN, current_buf) >> 20}M")
    cfg = config or {}
    if config is None:
        notes.append("no kernel config found: assuming CONFIG_FUNCTION_TRACER and "
                     "CONFIG_KPROBE_EVENTS")
    tracing = []
    if cfg.get("FUNCTION_TRACER", "y") == "y":
        tracing += ["ftrace=function", "ftrace_filter=" + ",".join(BOOT_TRACE_FUNCTIONS)]
    else:
        notes.append("CONFIG_FUNCTION_TRACER is not set: no boot-time function trace")
    if cfg.get("KPROBE_EVENTS", "y") == "y":
        tracing.append("kprobe_event=" + ";".join(p.boot_arg for p in BOOT_PROBES))
    else:
        notes.append("CONFIG_KPROBE_EVENTS is not set: no boot-time kprobes")
    if tracing:
        args += [f"trace_buf_size={TRACE_BUF_SIZE}", "trace_clock=global", *tracing]
    for a in extra:
        if a not in args:
            args.append(a)
    return Plan(args, notes)


def _grub_quote(arg: str) -> str:
    if "'" in arg:
        raise BootSetupError(f"{arg[:60]!r}: a single quote cannot be passed through GRUB")
    return f"'{arg}'" if _GRUB_SPECIAL.search(arg) else arg


def _shell_escape(text: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", text)


def render_dropin(args: list[str], version: str) -> str:
    """The text of /etc/default/grub.d/memledger.cfg."""
    value = " ".join(_grub_quote(a) for a in args)
    return (
        f"# Written by memledger boot-setup {version}: what memledger needs to see a boot's\n"
        "# memory (memblock=debug, a bigger log buffer, boot-time tracing). Never efi=debug.\n"
        "# Undo with `memledger boot-setup --revert`. Arguments holding ; or $ are\n"
        "# single-quoted for GRUB's linux line, and $ is escaped for this shell file.\n"
        f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {_shell_escape(value)}"\n'
    )
