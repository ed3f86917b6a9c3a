"""Kernel command lines for lab boots: the base console arguments and boot-time tracing.

Stock Debian kernels have no CONFIG_BOOT_CONFIG, so the lab traces with command-line
arguments (Documentation/trace/boottime-trace.rst is for bootconfig kernels):

* ``ftrace=function ftrace_filter=…`` starts the function tracer in start_kernel, early
  enough to see efi_free_boot_services and every free_reserved_area it calls (no
  arguments, but callers and times);
* ``kprobe_event=…`` probes become live at fs_initcall (init_kprobe_trace), after the
  arch_initcall EFI free: they see the initrd, initmem and rodata-gap frees, with
  arguments and return values;
* ``trace_clock=global``: without it, 6.1 under TCG switches clocks in late_initcall
  ("Unstable clock detected") and that switch resets the ring buffer.

The probes record ``base=@page_offset_base`` so that the direct-map addresses of
free_reserved_area can be turned into physical ones (kernel-facts §5.3).
"""

from __future__ import annotations

__all__ = (
    "BASE_ARGS",
    "KPROBE_EVENTS",
    "TRACE_FUNCTIONS",
    "join_args",
    "tracing_args",
)

BASE_ARGS = ("console=ttyS0,115200", "log_buf_len=16M", "panic=-1")

TRACE_FUNCTIONS = (
    "efi_free_boot_services", "efi_unmap_boot_services", "efi_enter_virtual_mode",
    "free_reserved_area", "memblock_free_late", "memblock_phys_free", "memblock_free",
    "memblock_discard", "free_init_pages", "free_initrd_mem", "free_initmem",
    "free_kernel_image_pages", "deferred_init_memmap", "page_alloc_init_late",
    "init_real_mode", "do_init_real_mode", "swiotlb_exit", "pci_iommu_init",
)

# kprobe_event= takes ';' between probes and ',' where the tracefs syntax has spaces.
# x86-64 SysV: arg1=%di, arg2=%si, arg3=%dx, arg4=%cx; return value in $retval.
KPROBE_EVENTS = (
    "p:kprobes/efi_free_boot_services,efi_free_boot_services",
    "p:kprobes/free_reserved_area,free_reserved_area,start=%di:x64,end=%si:x64,"
    "poison=%dx:s32,s=+0(%cx):string,base=@page_offset_base:x64",
    "r:kprobes/free_reserved_area_ret,free_reserved_area,pages=$retval:u64",
    "p:kprobes/memblock_free_late,memblock_free_late,base=%di:x64,size=%si:x64",
    "p:kprobes/free_init_pages,free_init_pages,what=+0(%di):string,begin=%si:x64,end=%dx:x64",
    "p:kprobes/free_initrd_mem,free_initrd_mem,start=%di:x64,end=%si:x64",
    "p:kprobes/free_initmem,free_initmem",
    "p:kprobes/free_kernel_image_pages,free_kernel_image_pages,what=+0(%di):string,"
    "begin=%si:x64,end=%dx:x64",
)


def tracing_args(trace_buf_size: str = "4M") -> tuple[str, ...]:
    """The boot-time tracing arguments that work on stock Debian 6.1 and 6.12 kernels."""
    return (
        f"trace_buf_size={trace_buf_size}",
        "trace_clock=global",
        "ftrace=function",
        "ftrace_filter=" + ",".join(TRACE_FUNCTIONS),
        "kprobe_event=" + ";".join(KPROBE_EVENTS),
    )


def join_args(*groups: str | tuple[str, ...] | list[str]) -> str:
    """One command line from argument groups, dropping empty ones and exact duplicates."""
    out: list[str] = []
    for group in groups:
        items = group.split() if isinstance(group, str) else list(group)
        for item in items:
            if item and item not in out:
                out.append(item)
    return " ".join(out)
