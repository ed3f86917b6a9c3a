"""The spool: the folder where captures and runtime batches wait for the daemon.

:mod:`.writer` is the producer's side (``memledger capture``, ``memledger collect``): each
file appears whole, by rename. :mod:`.reader` is the daemon's side: it claims files safely
(no symlinks, no foreign owners, no files still being written) and moves each one to done/
or failed/ so that nothing is lost.
"""
