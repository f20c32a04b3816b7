"""tunesmith.export: merged / adapter folders, GGUF files with an Ollama Modelfile, verification in llama.cpp
(which always runs in a child process: ``llama_cpp``)."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "save_pretrained_merged": "tunesmith.export.merge",
        "save_pretrained_gguf": "tunesmith.export.gguf",
        "verify_gguf": "tunesmith.export.verify",
    },
)
