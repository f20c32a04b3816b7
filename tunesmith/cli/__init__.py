"""tunesmith.cli."""
