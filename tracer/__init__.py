"""Kernel-side inputs of memledger.

The modules here turn kernel logs, ftrace text and /proc and /sys snapshots into typed
records. Every parser is pure (text in, records out); the only module that touches the
filesystem is :mod:`memledger.tracer.reader`, and it takes the root path as an argument.
"""
