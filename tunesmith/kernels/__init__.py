"""tunesmith.kernels."""
