"""Loading models (hub id, local folder, GGUF file, built-in alias), 4-bit, inference, fast patches."""

__all__ = ["device", "loader", "registry", "sources", "gguf_cache", "quantization"]
