"""Falcon resources: thin over named queries (parse, check, one query, answer)."""
