"""Training engine."""
