"""Floor 2: sources, snapshots, features, validation, quarantine and the demo simulator."""
