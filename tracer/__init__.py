"""Kernel-side inputs of memledger.

The modules here turn kernel logs, ftrace text, boot_params and /proc and /sys snapshots
into typed records, gather them into the :class:`~memledger.tracer.evidence.Evidence` of
one boot, and pack a boot into a capture file. Every parser is pure (text in, records
out); the only module that touches the filesystem is :mod:`memledger.tracer.reader`, and
it takes the root path as an argument (or a :class:`~memledger.tracer.reader.Tree`, such
as a :class:`~memledger.tracer.reader.RecordingTree`). :mod:`.probes` is the one catalogue
of what memledger probes, at boot and at runtime; the live sources that attach those
probes do I/O and live apart, in :mod:`memledger.tracer.live`.
"""
