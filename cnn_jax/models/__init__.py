"""Model zoo: every network of the lecture, built by name (see registry.py)."""
