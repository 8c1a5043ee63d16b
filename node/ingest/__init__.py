"""Ingest: the C-STORE listener and the watch folder, both feeding one durable spool."""
