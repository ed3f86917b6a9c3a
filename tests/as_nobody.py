"""Run ``memledger`` as the unprivileged user nobody, wherever the checkout lives.

memledger is imported while still root (the checkout and its venv may sit under a
root-only directory), then the process drops to nobody/nogroup and runs the command. The
privilege drop is real: every file memledger opens afterwards is opened as nobody.
"""

import os
import sys

import memledger.cli.inputs
import memledger.cli.main as cli
import memledger.cli.render
import memledger.ledger.anomalies
import memledger.ledger.compute  # noqa: F401  (loaded before the drop)

NOBODY = 65534

os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)
assert os.geteuid() == NOBODY
sys.argv = ["memledger", *sys.argv[1:]]
cli.main()
