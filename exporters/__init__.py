"""What users see: the command line, tables and JSON (later Prometheus and Grafana)."""
