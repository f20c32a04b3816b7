"""The data and prompt previews: the data layer's own reading, checking and formatting, on the page.

The preview formats rows with exactly the call the run makes (``prepare_dataset`` with the run's
``dataset_arguments``), so the text shown is the text trained on: template applied, EOS once. Every bad
row is listed (the run stops at the first), each with its row number and field.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field

from tunesmith.data.stats import DataStats
from tunesmith.errors import TunesmithError
from tunesmith.recipe.config import RunConfig
from tunesmith.recipe.pipeline import dataset_arguments

__all__ = ["DataPreview", "preview_data", "preview_prompt", "tokenizer_for", "ROWS_SHOWN", "ERRORS_LISTED"]

ROWS_SHOWN = 3
ERRORS_LISTED = 20  # bad rows listed at most (a file with thousands would drown the page)
_TOKENIZERS: dict[tuple[str, bool], object] = {}
_LOCK = threading.Lock()


@dataclass
class DataPreview:
    """What the data tab shows: the layout and counts, the first formatted rows, or what to fix."""

    stats: DataStats | None = None
    rows: list[str] = field(default_factory=list)  # formatted texts, EOS included
    eos: str | None = None
    errors: list[str] = field(default_factory=list)  # one paragraph per bad row (or the file's problem)

    @property
    def ok(self) -> bool:
        """Whether training can start on this data."""
        return not self.errors and self.stats is not None


def tokenizer_for(model_name: str, trust_remote_code: bool = False):
    """A private copy of the model's tokenizer (loaded once per model; formatting changes its template)."""
    from tunesmith.models.loader import load_tokenizer

    key = (model_name, trust_remote_code)
    with _LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = load_tokenizer(model_name, trust_remote_code=trust_remote_code)
        return copy.deepcopy(_TOKENIZERS[key])


def _row_problems(config: RunConfig) -> list[str]:
    """Every bad row of the data file (the file's own problem, if it cannot be read, as the only one)."""
    from tunesmith.data import detect_layout, load_dataset_file
    from tunesmith.data.validation import row_errors

    d = config.data
    data = load_dataset_file(d.file, encoding=d.encoding)
    layout, mapping = detect_layout(data.column_names, d.fields, d.file)
    return row_errors(data.to_list()[: d.max_rows], layout, mapping, d.file, limit=ERRORS_LISTED)


def preview_data(config: RunConfig) -> DataPreview:
    """Check and format the whole data file as the run will (counts, first rows, or every bad row)."""
    from tunesmith.data import prepare_dataset

    try:
        problems = _row_problems(config)
        if problems:
            return DataPreview(errors=problems)
        tokenizer = tokenizer_for(config.model.name, config.model.trust_remote_code)
        prepared = prepare_dataset(tokenizer=tokenizer, **dataset_arguments(config))
    except TunesmithError as err:
        return DataPreview(errors=[str(err)])
    texts = prepared.train["text"][:ROWS_SHOWN]
    return DataPreview(stats=prepared.stats, rows=list(texts), eos=tokenizer.eos_token)


def preview_prompt(config: RunConfig) -> DataPreview:
    """The first row of the data in the chosen prompt format (quick: one row, no split, no counts)."""
    from tunesmith.data import prepare_dataset

    arguments = {**dataset_arguments(config), "limit": 1, "eval_split": None, "duplicates": "keep"}
    try:
        tokenizer = tokenizer_for(config.model.name, config.model.trust_remote_code)
        prepared = prepare_dataset(tokenizer=tokenizer, **arguments)
    except TunesmithError as err:
        return DataPreview(errors=[str(err)])
    return DataPreview(stats=prepared.stats, rows=list(prepared.train["text"][:1]), eos=tokenizer.eos_token)
