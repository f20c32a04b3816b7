"""Loading models (hub id, local folder, GGUF file, built-in alias), 4-bit, inference, fast patches."""
