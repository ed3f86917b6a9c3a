"""What the fleet sees: the daemon and what it serves.

:mod:`.daemon` ingests the spool and serves :mod:`.web` (the landing page and /metrics
from :mod:`.metrics`, per host or for a fleet with :mod:`.fleetview`); :mod:`.parsechild`
parses untrusted input in a bounded child process. :mod:`.dashboard` builds the Grafana
dashboard and :mod:`.report` the compare reports (table, JSON, markdown, HTML).
"""
