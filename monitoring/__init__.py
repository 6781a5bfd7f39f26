"""Health, statistics and metrics of the running service."""
