"""The per-boot ledger, computed without I/O: evidence in, one account out.

:func:`memledger.ledger.compute.compute_ledger` turns the
:class:`~memledger.tracer.evidence.Evidence` of one boot into a
:class:`~memledger.ledger.model.Ledger`: the EFI boot-services account
(:mod:`.boot_services`), the memory below 1 MiB (:mod:`.lowmem`), the kernel's own counters
(:mod:`.accounting`) and the anomalies an operator should look at (:mod:`.anomalies`).
:mod:`.measures` says which boots can measure which figure, :mod:`.vendors` gives one name
per firmware vendor and :mod:`.stats` the summary statistics compare and metrics share.
"""
