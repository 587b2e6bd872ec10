"""Code run inside each python kernel of the local service at start-up (not imported by it)."""
