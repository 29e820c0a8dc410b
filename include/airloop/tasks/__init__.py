"""Floor 8: the DAGs' task functions, one module per DAG family."""
