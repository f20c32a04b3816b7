"""tunesmith.recipe."""
