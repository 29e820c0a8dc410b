"""Floor 4: the MLflow registry - client, tags, gates, the promotion ledger, lifecycle moves, audit."""
