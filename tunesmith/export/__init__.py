"""tunesmith.export."""
