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

    if config.training.method != "sft":
        return _check_method_data(config)
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


def _check_method_data(config: RunConfig) -> str:
    """The same checks for DPO/ORPO pairs and GRPO prompts (and the column exact_match reads)."""
    from tunesmith.data import load_dataset_file
    from tunesmith.data.layouts import PREFERENCE, PROMPTS, detect_method_layout
    from tunesmith.data.prepare import drop_duplicates, held_out_size
    from tunesmith.data.validation import validate_preference_rows, validate_prompt_rows
    from tunesmith.errors import closest_name

    d, method, summaries = config.data, config.training.method, []
    layout = PROMPTS if method == "grpo" else PREFERENCE
    for path in filter(None, [d.file, None if method == "grpo" else d.eval_file]):
        data = load_dataset_file(path, encoding=d.encoding, encoding_option="--set data.encoding=")
        mapping = detect_method_layout(data.column_names, layout, d.fields, path)
        rows = data.to_list()[: d.max_rows] if path == d.file else data.to_list()
        if method == "grpo":
            validate_prompt_rows(rows, mapping, path)
            column = config.grpo.answer_column
            if "exact_match" in config.grpo.rewards and column not in data.column_names:
                hint = closest_name(column, data.column_names)
                raise TunesmithError(
                    f"grpo.rewards has exact_match, which compares each answer with the column "
                    f"grpo.answer_column='{column}', but {path} has no such column"
                    + (f" (did you mean '{hint}'?)" if hint else "")
                    + f"; its columns: {', '.join(data.column_names)}. Set grpo.answer_column."
                )
            summaries.append(f"{Path(path).name}: {len(rows)} prompts")
            continue
        validate_preference_rows(rows, mapping, path)
        kept, _, repeats = drop_duplicates(rows, mapping, d.duplicates, path)
        if path == d.file and not d.eval_file and d.eval_split:
            held_out_size(len(kept), d.eval_split, path, repeats if d.duplicates == "drop" else 0)
        summaries.append(f"{Path(path).name}: {len(rows)} preference pairs, {repeats} exact duplicates")
    return "; ".join(summaries)
