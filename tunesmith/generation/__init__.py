"""tunesmith.generation: answers from a model. ``fast_generate`` (a static KV cache, the one-token step
replayed as a CUDA graph on a GPU) behind ``model.generate`` once ``FastLanguageModel.for_inference`` is
called; ``chat`` with the model's own prompt format, one question or a batch."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "fast_generate": "tunesmith.generation.generate",
        "enable_fast_generation": "tunesmith.generation.generate",
        "disable_fast_generation": "tunesmith.generation.generate",
        "last_generation": "tunesmith.generation.generate",
        "chat": "tunesmith.generation.chat",
        "answer_all": "tunesmith.generation.chat",
        "build_prompt": "tunesmith.generation.chat",
        "prompt_ids": "tunesmith.generation.chat",
    },
)
