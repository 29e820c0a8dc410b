"""Floor 2: the model artefact - trusted loading, input schema, files and the one score definition."""
