"""Input pipeline (see the package modules)."""
