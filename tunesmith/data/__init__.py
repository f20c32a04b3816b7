"""tunesmith.data."""
