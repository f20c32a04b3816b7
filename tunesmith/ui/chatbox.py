"""The chat box: the trained model (base model + the run's LoRA adapter), loaded once in the app's process.

Loading goes through ``export.source.load_for_export`` (what ``tunesmith export``/``verify`` use for an
adapter folder) and answering through ``generation.chat.chat``, so the prompt is the training format stored
in the saved tokenizer. Greedy decoding: the same question gets the same answer as in the Compare table.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tunesmith.errors import TunesmithError

__all__ = ["TrainedModel", "history_messages"]


def history_messages(history: list, question: str) -> list[dict]:
    """A Gradio chat history (messages, maybe with content parts) plus the new question, as chat messages."""
    messages = []
    for item in history or []:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if isinstance(content, str) and item.get("role") in ("user", "assistant"):
            messages.append({"role": item["role"], "content": content})
    return [*messages, {"role": "user", "content": question}]


class TrainedModel:
    """The model of one finished run, loaded on the first question and kept (one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._model = None
        self._tokenizer = None

    def _load(self, adapter_folder: Path) -> None:
        from tunesmith.export.source import load_for_export

        if self._folder != adapter_folder:
            self._model, self._tokenizer = load_for_export(adapter_folder)
            self._folder = adapter_folder

    def answer(self, adapter_folder: Path, messages: list[dict], max_new_tokens: int = 256) -> str:
        """The trained model's greedy answer to the last message (loading it first when needed)."""
        from tunesmith.generation.chat import chat

        if not (Path(adapter_folder) / "adapter_config.json").is_file():
            raise TunesmithError(
                f"There is no trained adapter in {adapter_folder} yet: finish a training run first (the "
                "chat box uses the run's saved LoRA adapter)."
            )
        with self._lock:
            self._load(Path(adapter_folder))
            return chat(self._model, self._tokenizer, messages, max_new_tokens=max_new_tokens, stream=False)
