"""Check a run's data before any model loads (``--dry-run`` and the first stage): no tokenizer needed."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError
from tunesmith.recipe.config import RunConfig

__all__ = ["check_data"]


def check_data(config: RunConfig) -> str:
    """Read and validate the data file(s) without a tokenizer: layout, fields, template, every row."""
    from tunesmith.data import detect_layout, load_dataset_file
    from tunesmith.data.prepare import drop_duplicates, held_out_size
    from tunesmith.data.validation import check_template_fields, validate_rows

    d, summaries = config.data, []
    for path in filter(None, [d.file, d.eval_file]):
        data = load_dataset_file(path, encoding=d.encoding, encoding_option="--set data.encoding=")
        layout, mapping = detect_layout(data.column_names, d.fields, path)
        if d.format != "auto" and layout.name != d.format:
            raise TunesmithError(
                f"data.format is '{d.format}', but {path} looks like '{layout.name}' data (columns: "
                f"{', '.join(data.column_names)}). Set data.format to '{layout.name}' or 'auto', or fix "
                "the file."
            )
        if d.prompt_template:
            check_template_fields(PromptTemplate(d.prompt_template), mapping, data.column_names, path)
        rows = data.to_list()[: d.max_rows] if path == d.file else data.to_list()
        validate_rows(rows, layout, mapping, path)
        kept, _, repeats = drop_duplicates(rows, mapping, d.duplicates, path)
        if path == d.file and not d.eval_file and d.eval_split:
            held_out_size(len(kept), d.eval_split, path, repeats if d.duplicates == "drop" else 0)
        summaries.append(f"{Path(path).name}: {len(rows)} {layout.name} rows, {repeats} exact duplicates")
    return "; ".join(summaries)
