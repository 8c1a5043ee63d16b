"""Export: deliver result objects from the durable outbox to the configured destinations."""
