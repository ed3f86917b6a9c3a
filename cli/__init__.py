"""The ``memledger`` command line: one module per group of commands.

:mod:`.main` holds the click group and ``analyze``; :mod:`.store` ``capture``, ``ingest``,
``boots`` and ``reprocess``; :mod:`.daemon`, :mod:`.compare`, :mod:`.collect`, :mod:`.bootsetup` and
:mod:`.lab` their commands. :mod:`.render` draws a ledger as tables; :mod:`.inputs` loads
what ``analyze`` is given; :mod:`.dboption` is ``--db``.
"""
