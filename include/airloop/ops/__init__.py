"""Process-level operations (preload, topology, sandbox); uses core only."""
