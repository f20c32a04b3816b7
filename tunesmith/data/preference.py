"""Data for preference tuning (DPO, ORPO: prompt/chosen/rejected) and for reinforcement learning (GRPO:
prompts, with any other columns kept for the reward functions).

The same steps as :func:`tunesmith.data.prepare_dataset`, in the same order: load -> recognise the fields ->
choose the template -> validate every row -> duplicates -> format -> split off held-out rows. Each field is
text or a list of role/content messages; the declared prompt template or the chat template formats the
prompt and the answers exactly as supervised fine-tuning does
(:func:`tunesmith.data.formatting.render_turns`), so TRL receives finished texts and the model trains on
the format it is served with.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.formatting import render_turns
from tunesmith.data.layouts import PREFERENCE, PROMPTS, detect_method_layout
from tunesmith.data.loading import load_dataset_file
from tunesmith.data.prepare import choose_template, drop_duplicates, source_name, split_held_out
from tunesmith.data.stats import DataStats
from tunesmith.data.validation import validate_preference_rows, validate_prompt_rows
from tunesmith.errors import TunesmithError

__all__ = ["prepare_preference_dataset", "prepare_prompt_dataset", "ROW_COLUMN", "MethodData"]

ROW_COLUMN = "tunesmith_row"  # the 1-based row number in the user's file, so errors can name the row


@dataclass
class MethodData:
    """Formatted ``train`` (and optional ``eval``) ``datasets.Dataset`` and the statistics."""

    train: object
    eval: object | None
    stats: DataStats


def _load(source, tokenizer, layout, *, template, fields, limit, encoding):
    data = load_dataset_file(source, encoding=encoding)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    name = source_name(source)
    mapping = detect_method_layout(data.column_names, layout, fields, name)
    rows = data.to_list()
    conversational = any(isinstance(rows[0].get(c), list) for c in mapping.values()) if rows else False
    prompt_template, label = choose_template(template, tokenizer, "messages" if conversational else "alpaca")
    return name, mapping, rows, prompt_template, label, conversational


def prepare_preference_dataset(
    source,
    tokenizer,
    *,
    template=None,
    fields: dict[str, str] | None = None,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    duplicates: str = "drop",
    eval_split: float | None = None,
    encoding: str | None = None,
    limit: int | None = None,
    seed: int = 3407,
) -> MethodData:
    """Load, validate and format prompt/chosen/rejected pairs (module docstring); columns prompt, chosen,
    rejected (finished texts) and :data:`ROW_COLUMN`. ``template`` and ``fields`` as in ``prepare_dataset``.
    TRL cuts a pair longer than ``max_length`` (keeping its start, or its end with ``truncation_mode=
    "keep_end"``); a pair whose two answers are then the same tokens teaches nothing (its preference loss
    has no gradient) and is dropped, as SFT drops a row whose answer is cut off; when that leaves no pair,
    the error says which ``max_length`` keeps them apart."""
    import datasets

    name, mapping, rows, prompt_template, label, conversational = _load(
        source, tokenizer, PREFERENCE, template=template, fields=fields, limit=limit, encoding=encoding
    )
    validate_preference_rows(rows, mapping, name)
    rows, numbers, n_duplicates = drop_duplicates(rows, mapping, duplicates, name)
    held_out, rows, numbers = split_held_out(rows, numbers, eval_split or None, seed, name)

    def formatted(part_rows, part_numbers):
        out = {"prompt": [], "chosen": [], "rejected": [], ROW_COLUMN: []}
        for row, number in zip(part_rows, part_numbers, strict=True):
            where = f"{name}, row {number}"
            prompt, chosen = render_turns(
                row[mapping["prompt"]], row[mapping["chosen"]], tokenizer, prompt_template, where
            )
            _, rejected = render_turns(
                row[mapping["prompt"]], row[mapping["rejected"]], tokenizer, prompt_template, where
            )
            out["prompt"].append(prompt)
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
            out[ROW_COLUMN].append(number)
        return datasets.Dataset.from_dict(out)

    train = formatted(rows, numbers)
    pairs = _token_ids(train, tokenizer)
    train, pairs, dropped = _without_same_pairs(train, pairs, max_length, truncation_mode, name)
    evaluation = formatted(*held_out) if held_out else None
    if evaluation is not None and max_length:  # without a cut, no pair can become the same
        evaluation, _, dropped_held_out = _without_same_pairs(
            evaluation, _token_ids(evaluation, tokenizer), max_length, truncation_mode, name, held_out=True
        )
        dropped += dropped_held_out
    stats = _pair_stats(train, pairs, max_length, name, conversational, label, n_duplicates, duplicates)
    stats.dropped_same_pair = dropped
    stats.eval_rows = len(evaluation) if evaluation is not None else 0
    return MethodData(train, evaluation, stats)


def _token_ids(part, tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids of every pair, each text alone, as TRL tokenizes them."""
    return [
        tuple(
            tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "chosen", "rejected")
        )
        for row in part
    ]


def _same_once_cut(prompt, chosen, rejected, max_length: int | None, truncation_mode: str) -> bool:
    """Whether TRL's cut to ``max_length`` leaves the two sequences of a pair the same tokens."""
    if not max_length:
        return False  # validation already refused identical answers
    window = slice(-max_length, None) if truncation_mode == "keep_end" else slice(None, max_length)
    return (prompt + chosen)[window] == (prompt + rejected)[window]


def _without_same_pairs(part, pairs, max_length, truncation_mode, name, held_out: bool = False):
    """``part`` and its token ids without the pairs that are the same once cut; how many went."""
    keep = [i for i, ids in enumerate(pairs) if not _same_once_cut(*ids, max_length, truncation_mode)]
    if pairs and not keep and not held_out:
        longest = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
        raise TunesmithError(
            f"{name}: every preference pair's chosen and rejected answers are the same tokens once cut to "
            f"max_length={max_length} (the prompt and the answers' shared start fill it), so training would "
            f"learn no preference. Raise max_length (max_seq_length in a run config) towards {longest}, the "
            "longest pair, or shorten the prompts."
        )
    if len(keep) == len(pairs):
        return part, pairs, 0
    return part.select(keep), [pairs[i] for i in keep], len(pairs) - len(keep)


def _pair_stats(train, pairs, max_length, name, conversational, label, n_duplicates, policy) -> DataStats:
    """Token counts of the pairs: all tokens, answer tokens, the longest pair, how many exceed max_length."""
    longest, tokens, answer_tokens, too_long = 0, 0, 0, 0
    for prompt_ids, chosen_ids, rejected_ids in pairs:
        prompt, answers = len(prompt_ids), [len(chosen_ids), len(rejected_ids)]
        tokens += 2 * prompt + sum(answers)
        answer_tokens += sum(answers)
        longest = max(longest, prompt + max(answers))
        too_long += bool(max_length) and prompt + max(answers) > max_length
    return DataStats(
        source=name,
        layout="preference (conversations)" if conversational else "preference",
        template=label,
        rows=len(train),
        tokens=tokens,
        answer_tokens=answer_tokens,
        max_tokens=longest,
        truncated=too_long,
        duplicates=n_duplicates,
        duplicates_dropped=policy == "drop" and n_duplicates > 0,
        max_seq_length=max_length or 0,
    )


def prepare_prompt_dataset(
    source,
    tokenizer,
    *,
    template=None,
    fields: dict[str, str] | None = None,
    encoding: str | None = None,
    limit: int | None = None,
) -> MethodData:
    """Load, validate and format prompts for GRPO: column ``prompt`` (the finished prompt text, ending where
    the model starts to write), :data:`ROW_COLUMN`, and every other column of the file unchanged (reward
    functions receive them by name, e.g. ``answer``)."""
    import datasets

    name, mapping, rows, prompt_template, label, conversational = _load(
        source, tokenizer, PROMPTS, template=template, fields=fields, limit=limit, encoding=encoding
    )
    validate_prompt_rows(rows, mapping, name)
    prompt_column = mapping["prompt"]
    out: dict[str, list] = {"prompt": [], ROW_COLUMN: []}
    for number, row in enumerate(rows, start=1):
        text, _ = render_turns(row[prompt_column], None, tokenizer, prompt_template, f"{name}, row {number}")
        out["prompt"].append(text)
        out[ROW_COLUMN].append(number)
    for column in rows[0]:
        if column not in (prompt_column, "prompt", ROW_COLUMN):
            out[column] = [row.get(column) for row in rows]
    train = datasets.Dataset.from_dict(out)
    prompt_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in out["prompt"]]
    stats = DataStats(
        source=name,
        layout="prompts (conversations)" if conversational else "prompts",
        template=label,
        rows=len(train),
        tokens=sum(prompt_tokens),
        max_tokens=max(prompt_tokens),
    )
    return MethodData(train, None, stats)
