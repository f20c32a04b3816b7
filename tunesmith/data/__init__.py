"""tunesmith.data: read files, recognise layouts, chat and prompt templates, validation, response-only masking."""

from tunesmith.data.builtin import builtin_dataset_path
from tunesmith.data.chat_templates import get_chat_template, template_family
from tunesmith.data.layouts import detect_layout
from tunesmith.data.loading import load_dataset_file
from tunesmith.data.masking import train_on_responses_only
from tunesmith.data.prepare import PreparedData, prepare_dataset
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.data.sharegpt import standardize_sharegpt
from tunesmith.data.stats import DataStats

__all__ = [
    "DataStats",
    "PreparedData",
    "PromptTemplate",
    "builtin_dataset_path",
    "detect_layout",
    "get_chat_template",
    "load_dataset_file",
    "prepare_dataset",
    "standardize_sharegpt",
    "template_family",
    "train_on_responses_only",
]
