"""Floor 1: settings, the pipeline schema, shared names, time, files, security, the store. Imports nothing of airloop."""
