"""The ``tunesmith run`` config: one YAML (or TOML) file, validated in full before any model loads.

Every field has a default, and the defaults are the reference tutorial's (LoRA r=16, alpha=16, dropout 0;
lr 2e-4, batch 2, gradient accumulation 4, warmup 5, linear schedule, adamw_8bit, weight decay 0.01,
seed 3407). Field names follow the tutorial's keyword arguments, so a reader of the tutorial finds
``per_device_train_batch_size`` where they expect it.

Loading order: read the file -> apply ``--set a.b=value`` overrides -> validate once. A bad field gives
one paragraph naming the file, the field path, the bad value and the closest valid field name.
"""

from __future__ import annotations

import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunesmith.errors import TunesmithError, closest_name
from tunesmith.export.gguf_constants import DEFAULT_QUANT, QUANT_METHODS

__all__ = [
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "LoraConfig",
    "TrainingConfig",
    "DPOSection",
    "ORPOSection",
    "GRPOSection",
    "METHODS",
    "GenerationConfig",
    "ExportConfig",
    "OutputConfig",
    "load_config",
    "parse_config",
    "apply_overrides",
    "dump_config",
    "default_config_path",
]

DATA_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text")
EXPORT_FORMATS = ("gguf", "merged", "lora")
METHODS = ("sft", "dpo", "orpo", "grpo")
# TRL 1.16's loss names (its trainers compare against these strings)
DPO_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
              "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft")  # fmt: skip
GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "luspo", "sapo", "cispo", "vespo")
REWARDS = ("format", "exact_match", "length")


class _Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which base model to load and how (``FastLanguageModel.from_pretrained`` arguments)."""

    name: StrictStr = Field(
        "smollm2-135m-instruct", description="hub id, local folder, .gguf file or built-in alias"
    )
    max_seq_length: int = Field(2048, ge=16, description="longest training sequence in tokens")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="weights dtype")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base weights (bitsandbytes)")
    load_in_8bit: bool = False
    trust_remote_code: bool = Field(
        False, description="run code shipped with the model (off unless you trust it)"
    )

    @field_validator("name")
    @classmethod
    def _source_usable(cls, value: str) -> str:
        from tunesmith.models.sources import check_source

        try:
            check_source(value)
        except TunesmithError as err:
            raise ValueError(str(err).rstrip(".")) from None
        return value

    @model_validator(mode="after")
    def _one_quantization(self) -> ModelConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both true; choose one")
        return self


class DataConfig(_Section):
    """The training data: a file, its layout, how each row becomes text, and the held-out split."""

    file: StrictStr | None = Field(
        None,
        description="JSON/JSONL/CSV/Parquet file; empty: the shipped MedQuAD subset (pairs for dpo/orpo)",
    )
    format: Literal[DATA_FORMATS] = Field("auto", description="row layout; auto recognises it")
    prompt_template: StrictStr | None = Field(
        None, description="single-turn template with {instruction}, {input}, {reasoning}, {output}"
    )
    chat_template: StrictStr | None = Field(
        None,
        description=(
            "chat template name (chatml, llama-3, qwen-2.5, mistral, phi-3, gemma, alpaca) or 'tokenizer'"
        ),
    )
    eval_split: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of rows held out for eval loss")
    eval_file: StrictStr | None = Field(None, description="held-out rows from a separate file instead")
    max_rows: int | None = Field(None, ge=1, description="use at most this many training rows")
    fields: dict[StrictStr, StrictStr] | None = Field(
        None, description="map tunesmith's field names to your columns, e.g. {instruction: Question}"
    )
    too_long: Literal["truncate", "error"] = Field("truncate", description="rows over max_seq_length")
    duplicates: Literal["drop", "keep", "error"] = Field("drop", description="exact duplicate rows")
    train_on_responses_only: bool = Field(True, description="loss on answer tokens only")
    encoding: StrictStr | None = Field(None, description="file encoding; empty: UTF-8 (with or without BOM)")

    @field_validator("file", "eval_file")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        base = Path((info.context or {}).get("base_dir", "."))
        path = (base / Path(value).expanduser()).resolve()
        if not path.is_file():
            raise ValueError(
                f"no such file: {path} (relative paths in a config file start at its folder, on the "
                "command line at the current folder)"
            )
        return str(path)

    @field_validator("chat_template")
    @classmethod
    def _chat_template_known(cls, value: str | None) -> str | None:
        from tunesmith.data.chat_templates import OWN_TEMPLATE_NAMES, chat_family

        if value is not None and value.lower() not in OWN_TEMPLATE_NAMES:
            try:
                chat_family(value)
            except TunesmithError as err:
                raise ValueError(str(err).rstrip(".")) from None
        return value

    @field_validator("prompt_template")
    @classmethod
    def _template_valid(cls, value: str | None) -> str | None:
        if value is not None:
            from tunesmith.data.prompt_template import PromptTemplate

            try:
                PromptTemplate(value)
            except TunesmithError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _one_template(self) -> DataConfig:
        if self.prompt_template and self.chat_template:
            raise ValueError("set prompt_template or chat_template, not both")
        return self


class LoraConfig(_Section):
    """LoRA adapter settings (``get_peft_model`` arguments)."""

    r: int = Field(16, ge=1, description="adapter rank")
    lora_alpha: int = Field(16, ge=1, description="adapter scale numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[StrictStr] | None = Field(None, description="empty: every projection of the family")
    bias: Literal["none", "all", "lora_only"] = "none"
    use_gradient_checkpointing: Literal["unsloth", True, False] = "unsloth"
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="GPU memory to plan training for (GPU fast path only; empty: most of the card). With "
        "'unsloth' checkpointing, what does not fit waits in CPU memory",
    )
    random_state: int = 3407
    use_rslora: bool = False


class TrainingConfig(_Section):
    """Trainer settings (``TrainingArguments`` names)."""

    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="rows per optimizer step over all GPUs (--gpus N); sets gradient_accumulation_steps to "
        "global / (per_device_train_batch_size x N), so N can change and the training stays the same",
    )
    warmup_steps: int = Field(5, ge=0)
    max_steps: int = Field(75, ge=1, description="optimizer steps")
    learning_rate: float = Field(2e-4, gt=0.0)
    optim: StrictStr = "adamw_8bit"
    weight_decay: float = Field(0.01, ge=0.0)
    lr_scheduler_type: StrictStr = "linear"
    seed: int = 3407
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (resume after Ctrl-C)")
    packing: bool = False
    bf16: bool | None = Field(
        None, description="empty: bf16 (else fp16) where the hardware has it; false: train in full fp32"
    )
    ddp_timeout: int = Field(
        1800, ge=10, description="with --gpus N: seconds a process waits for the others before giving up"
    )
    method: Literal[METHODS] = Field(
        "sft", description="sft (supervised), dpo or orpo (preference pairs), grpo (reward functions)"
    )

    @field_validator("optim", "lr_scheduler_type")
    @classmethod
    def _trainer_knows(cls, value: str, info: ValidationInfo) -> str:
        # the names transformers' TrainingArguments accepts, from its own enums
        if info.field_name == "optim":
            from transformers.training_args import OptimizerNames as names
        else:
            from transformers.trainer_utils import SchedulerType as names
        valid = [member.value for member in names]
        if value not in valid:
            hint = closest_name(value, valid)
            raise ValueError(
                f"transformers has no such {'optimizer' if info.field_name == 'optim' else 'scheduler'}"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; known: {', '.join(valid)}"
            )
        return value


class DPOSection(_Section):
    """DPO settings (TRL's ``DPOConfig`` names); used when ``training.method`` is dpo."""

    beta: float = Field(0.1, gt=0.0, description="how far the model may move from the reference (KL weight)")
    loss_type: Literal[DPO_LOSSES] = Field("sigmoid", description="TRL's DPO loss")


class ORPOSection(_Section):
    """ORPO settings (TRL's ``ORPOConfig`` names); used when ``training.method`` is orpo."""

    beta: float = Field(0.1, gt=0.0, description="weight of the odds-ratio term beside the SFT loss (lambda)")


class GRPOSection(_Section):
    """GRPO settings (TRL's ``GRPOConfig`` names) and the built-in rewards; used when ``training.method``
    is grpo."""

    rewards: list[Literal[REWARDS]] = Field(["format"], min_length=1, description="built-in reward functions")
    answer_column: StrictStr = Field("answer", description="data column exact_match compares the answer with")
    max_length_tokens: int = Field(
        256, ge=1, description="the length reward penalises completions beyond this"
    )
    num_generations: int = Field(4, ge=2, description="group size: completions per prompt")
    max_completion_length: int = Field(128, ge=1, description="longest completion in tokens")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of the completions")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient (0: no reference model is needed)")
    loss_type: Literal[GRPO_LOSSES] = Field("dapo", description="TRL's GRPO loss")


class GenerationConfig(_Section):
    """How probe answers are generated (greedy, so before/after differ only by training)."""

    max_new_tokens: int = Field(128, ge=1, le=4096)
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description="transformers' repetition penalty (1.0: off): scores of tokens already in the prompt "
        "or the answer are divided by it (multiplied where negative), before and after training alike",
    )
    held_out_questions: int = Field(
        8,
        ge=0,
        le=256,
        description="held-out questions answered before and after training, scored with ROUGE-L",
    )


class ExportConfig(_Section):
    """What to write after training, and whether to check the GGUF in llama.cpp."""

    formats: list[Literal[EXPORT_FORMATS]] = Field(["gguf"], description="any of gguf, merged, lora")
    # the names export writes (QUANT_METHODS), so a typo gets the list and a did-you-mean hint
    quant: Literal[tuple(QUANT_METHODS)] = Field(DEFAULT_QUANT, description="GGUF quantization")
    modelfile: bool = Field(True, description="write an Ollama Modelfile beside the GGUF")
    verify: bool = Field(True, description="load the GGUF in llama.cpp and compare with PyTorch")
    name: StrictStr | None = Field(None, description="model name for Ollama; empty: the output folder's name")


class OutputConfig(_Section):
    """Where the run writes everything."""

    folder: StrictStr = Field("runs/run", description="output folder; left out: runs/<config file name>")
    overwrite: bool = Field(False, description="replace a finished previous run in the folder")


class RunConfig(_Section):
    """The whole ``tunesmith run`` config."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    training: TrainingConfig = TrainingConfig()
    dpo: DPOSection = DPOSection()
    orpo: ORPOSection = ORPOSection()
    grpo: GRPOSection = GRPOSection()
    probes: list[StrictStr] = Field(default_factory=lambda: ["What are common causes of fatigue?"])
    generation: GenerationConfig = GenerationConfig()
    export: ExportConfig = ExportConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("probes")
    @classmethod
    def _probes_not_blank(cls, value: list[str]) -> list[str]:
        for i, probe in enumerate(value):
            if not probe.strip():
                raise ValueError(f"probe {i} is empty")
        return value

    @model_validator(mode="after")
    def _method_sections(self) -> RunConfig:
        method = self.training.method
        for name in ("dpo", "orpo", "grpo"):
            section = getattr(self, name)
            if name != method and section != type(section)():  # settings that would be ignored
                raise ValueError(
                    f"the config has a '{name}:' section, but training.method is '{method}', so it would be "
                    f"ignored; set training.method: {name}, or remove the section"
                )
        if method == "grpo":
            t, g = self.training, self.grpo
            batch = t.per_device_train_batch_size * t.gradient_accumulation_steps
            if batch % g.num_generations:
                raise ValueError(
                    f"GRPO generates groups of grpo.num_generations={g.num_generations} completions, so "
                    f"training.per_device_train_batch_size x gradient_accumulation_steps ({batch}) must be a "
                    f"multiple of it; for example per_device_train_batch_size: {g.num_generations}"
                )
        return self


def _default_data_file(method: str = "sft") -> Path:
    """The shipped MedQuAD subset: its preference pairs for DPO and ORPO, its rows otherwise."""
    from tunesmith.data.builtin import builtin_dataset_path

    return builtin_dataset_path("medquad_pref_en" if method in ("dpo", "orpo") else "medquad_en")


def default_config_path() -> Path:
    """The embedded default config (``examples/medical-en.yaml``, shipped inside the package)."""
    from importlib import resources

    return Path(str(resources.files("tunesmith") / "assets" / "configs" / "medical-en.yaml"))


# -- reading -------------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    """The file's mapping (YAML or TOML by extension)."""
    from tunesmith.data.loading import read_text

    if path.is_dir():
        raise TunesmithError(
            f"The config path {path} is a folder, not a config file. Pass the YAML or TOML file itself, for "
            f"example {path / 'run.yaml'}."
        )
    if not path.is_file():
        raise TunesmithError(
            f"The config file {path} does not exist. Pass the path of a YAML file, for example "
            "examples/medical-en.yaml, or run `tunesmith run` without a file for the built-in default."
        )
    text = read_text(path, option=None)
    toml = path.suffix.lower() == ".toml"
    try:
        if toml:
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
            _refuse_comment_values(text, path)
    except (yaml.YAMLError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError; both name the line
        raise TunesmithError(
            f"The config file {path} is not valid {'TOML' if toml else 'YAML'}: "
            f"{' '.join(str(err).split())}. Fix the syntax at the place named."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunesmithError(
            f"The config file {path} must hold a mapping of sections (model:, data:, lora:, training:, "
            f"probes:, export:, output:), but it holds a {type(data).__name__}."
        )
    return data


def _refuse_comment_values(text: str, path: Path) -> None:
    """Refuse ``field: ### text``: YAML reads a value that starts with ``#`` as a comment (an empty field).

    A comment on the line of an empty string field is taken as a mistaken value when it starts right
    after the colon's space with two or more ``#`` or holds a ``{placeholder}``; other comments warn.
    """
    for dotted, key_node in _empty_values(yaml.compose(text)):
        line = text.splitlines()[key_node.end_mark.line]
        comment = line[key_node.end_mark.column :].lstrip(":").strip()
        if not comment.startswith("#") or not _is_string_field(dotted.split(".")):
            continue
        where = f"In {path}, line {key_node.end_mark.line + 1}, the field '{dotted}'"
        advice = f'quote the value: {dotted.split(".")[-1]}: "{comment}"'
        if comment.startswith("##") or re.search(r"\{\w+\}", comment):
            raise TunesmithError(
                f"{where} is empty, because YAML reads the text after '#' ({_short(comment)}) as a comment. "
                f"To set it, {advice}."
            )
        print(
            f"warning: {where} is empty; YAML reads {_short(comment)} as a comment. If that is the value, "
            f"{advice}.",
            file=sys.stderr,
        )


def _empty_values(node, prefix: str = ""):
    """(dotted field path, key node) of every mapping entry whose value is left empty."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}.{key.value}" if prefix else str(key.value)
            if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null") and value.value == "":
                yield dotted, key
            yield from _empty_values(value, dotted)


def _field_at(parts: list[str]):
    """The pydantic field at a dotted path of ``RunConfig``, or None when there is no such field."""
    model: type[BaseModel] = RunConfig
    field = None
    for part in parts:
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return field


def _is_string_field(parts: list[str]) -> bool:
    """Whether the field at ``parts`` holds text (a string, maybe optional; not a list or a literal)."""
    field = _field_at(parts)
    if field is None:
        return False
    ann = field.annotation
    members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    return any(
        m is str or (typing.get_origin(m) is typing.Annotated and typing.get_args(m)[0] is str)
        for m in members
    )


# Paths typed on the command line start at the current folder (paths in a file at the file's folder).
_PATH_FIELDS = {"data.file", "data.eval_file"}
# Fields that exclude each other: setting one on the command line clears the other one the file set.
_EITHER = {"data.prompt_template": "data.chat_template", "data.chat_template": "data.prompt_template"}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` assignments.

    A text field takes the value as typed (``\\n`` and ``\\t`` become a line break and a tab; an
    empty value, ``null`` or ``~`` clears an optional field); other fields read it as YAML, so ``10`` is an
    int and ``[a, b]`` a list.
    """
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise TunesmithError(
                f"The override --set {item!r} is not of the form SECTION.FIELD=VALUE "
                "(for example --set training.max_steps=10)."
            )
        parts = key.split(".")
        value = _text_value(raw) if _is_string_field(parts) else _override_value(raw)
        if key in _PATH_FIELDS and isinstance(value, str):
            value = str(Path(value).expanduser().absolute())
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        other = _EITHER.get(key)
        if value is not None and other and not any(o.partition("=")[0].strip() == other for o in overrides):
            node.pop(other.rpartition(".")[2], None)
    return data


def _text_value(raw: str) -> str | None:
    """A ``--set`` value for a text field: the text typed, with ``\\n``/``\\t`` escapes read."""
    if raw.strip() in ("", "null", "~"):
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:
            return str(yaml.safe_load(text))  # quoted on purpose: YAML's own escapes
        except yaml.YAMLError:
            pass
    escapes = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}
    return re.sub(r"\\[nt\\]", lambda m: escapes[m.group(0)], raw)


def _override_value(raw: str) -> Any:
    """A ``--set`` value read as YAML; ``[a?, b?]`` (which YAML rejects) is a list of plain strings."""
    text = raw.strip()
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        if text.startswith("[") and text.endswith("]"):
            return [part.strip() for part in text[1:-1].split(",") if part.strip()]
        return raw


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def parse_config(data: dict[str, Any], *, source: str, base_dir: str | os.PathLike = ".") -> RunConfig:
    """Validate a config mapping; ``source`` names it in errors, ``base_dir`` anchors relative data paths."""
    section = data.get("data")
    if section is None or (isinstance(section, dict) and section.get("file") is None):
        # the shipped MedQuAD subset, spelled out so --print-config shows the file that is used
        training = data.get("training")
        method = training.get("method", "sft") if isinstance(training, dict) else "sft"
        data = {**data, "data": {**(section or {}), "file": str(_default_data_file(str(method)))}}
    try:
        return RunConfig.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as err:
        raise TunesmithError(_explain(err, source)) from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a config; ``path=None`` is the embedded default (medical-en)."""
    file = Path(path) if path is not None else default_config_path()
    data = apply_overrides(_read_file(file), overrides or [])
    output = data.get("output")
    if output is None or (isinstance(output, dict) and "folder" not in output):
        data["output"] = {**(output or {}), "folder": f"runs/{file.stem}"}
    source = str(file) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    # the built-in default's relative paths are the user's, so they start at the current folder
    base_dir = file.resolve().parent if path is not None else Path.cwd()
    return parse_config(data, source=source, base_dir=base_dir)


def dump_config(config: RunConfig) -> str:
    """The fully resolved config as YAML (what ``--print-config`` shows)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


# -- errors ----------------------------------------------------------------------------------------------


def _fields_at(loc: tuple) -> list[str]:
    """The valid field names of the section at ``loc`` (a path of field names)."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> str:
    """One paragraph for the first validation problem (and a count of the others)."""
    problems = err.errors(include_url=False)
    first = problems[0]
    loc = tuple(first["loc"])
    path = _dotted(loc)
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        parent = [str(p) for p in loc[:-1]]
        valid = _fields_at(tuple(parent))
        hint = closest_name(str(loc[-1]), valid)
        where = f"section '{'.'.join(parent)}'" if parent else "the top level"
        text = (
            f"In {source}, the field '{path}' is not a known field of {where}. "
            + (f"Did you mean '{'.'.join([*parent, hint])}'? " if hint else "")
            + f"Valid fields there: {', '.join(valid)}."
        )
    else:
        msg = first["msg"].removeprefix("Value error, ").rstrip(".")
        text = f"In {source}, the field '{path}' has the value {_short(value)}, which is not valid: {msg}."
        if not loc:  # a rule across sections: the message names the fields
            text = f"In {source}: {msg}."
        if first["type"] == "literal_error":
            hint = closest_name(str(value), re.findall(r"'([^']*)'", first["ctx"]["expected"]))
            if hint:
                text += f" Did you mean '{hint}'?"
        if loc and loc[0] == "probes":
            text += " Write probes as a list of questions, one per line, each starting with '- '."
    if len(problems) > 1:
        text += f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''} after this one.)"
    return text


def _dotted(loc: tuple) -> str:
    """``("probes", 0)`` -> ``probes[0]``; ``("training", "max_steps")`` -> ``training.max_steps``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
