"""Floor 9: the ``airloop`` command line."""
