"""The kernel-facing sources of ``memledger collect`` (cli/collect.py runs them).

Unlike the rest of :mod:`memledger.tracer`, these modules do I/O: they read /dev/kmsg
(:mod:`.kmsgfollow`), attach eBPF programs through bcc (:mod:`.bcc`, imported only when
used), and drive kprobe events in a tracefs instance (:mod:`.tracefs`). What the records
mean is decided by the pure modules :mod:`memledger.tracer.kmsg`,
:mod:`memledger.tracer.probes` and :mod:`memledger.tracer.runtime`.
"""
