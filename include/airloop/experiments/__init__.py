"""Floor 6: A/B and shadow tests - routing, definitions, statistics, evaluation."""
