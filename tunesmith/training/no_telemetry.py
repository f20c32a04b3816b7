"""tunesmith's trainers send no usage telemetry.

TRL's trainers report each trainer's creation to the hub (trainer class, model family, GPU name, how the
data was loaded) unless ``HF_HUB_DISABLE_TELEMETRY`` was set before huggingface_hub was first imported.
tunesmith sets that default when it is imported (``tunesmith/__init__.py``), but a script that imported
transformers or datasets first has already read the variable, so the trainers also refuse the ping.
"""

from __future__ import annotations

__all__ = ["NoTelemetryMixin"]


class NoTelemetryMixin:
    """Put before a TRL trainer class in the bases: its creation then makes no network request."""

    def _send_telemetry(self) -> None:
        """TRL's usage ping, not sent: tunesmith is offline unless the user names a hub model."""
