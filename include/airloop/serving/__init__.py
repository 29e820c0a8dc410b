"""Floor 7: the prediction server (MLServer-style split) and its HTTP client."""
