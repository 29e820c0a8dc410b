"""airloop's Airflow adapters (provider style): hooks and operators around the airloop library."""
