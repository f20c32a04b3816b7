"""tunesmith.data: read files, recognise layouts, chat and prompt templates, validation, answer masking."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "builtin_dataset_path": "tunesmith.data.builtin",
        "get_chat_template": "tunesmith.data.chat_templates",
        "template_family": "tunesmith.data.chat_templates",
        "detect_layout": "tunesmith.data.layouts",
        "load_dataset_file": "tunesmith.data.loading",
        "train_on_responses_only": "tunesmith.data.masking",
        "PreparedData": "tunesmith.data.prepare",
        "prepare_dataset": "tunesmith.data.prepare",
        "PromptTemplate": "tunesmith.data.prompt_template",
        "standardize_sharegpt": "tunesmith.data.sharegpt",
        "DataStats": "tunesmith.data.stats",
    },
)
