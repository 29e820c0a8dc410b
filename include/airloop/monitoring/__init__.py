"""Floor 5: drift, performance, traffic, alert rules, labels, retrain decisions of one interval."""
