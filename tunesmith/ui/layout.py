"""The page's components, built tab by tab (Model, Data, Prompt, Train, Compare, Export), each with its
words taken from ``i18n`` and registered, so the language switch can relabel all of them."""

from __future__ import annotations

from tunesmith.ui import views
from tunesmith.ui.i18n import LANGUAGES, text
from tunesmith.ui.runconfig import Choices

__all__ = ["Page", "BUILTIN", "UPLOAD", "CHAT_TEMPLATES", "DATA_TYPES"]

BUILTIN, UPLOAD = "builtin", "upload"
CHAT_TEMPLATES = ["tokenizer", "chatml", "llama-3", "qwen-2.5", "mistral", "alpaca"]
DATA_TYPES = [".json", ".jsonl", ".csv", ".tsv", ".parquet"]
_EN = "en"
# (field of Choices, i18n key, decimals) of the training settings, in rows of four
_SETTINGS = (
    (("max_steps", 0), ("learning_rate", None), ("batch_size", 0), ("grad_accum", 0)),
    (("warmup_steps", 0), ("save_steps", 0), ("lora_r", 0), ("lora_alpha", 0)),
)


class Page:
    """Every component of the page as an attribute; ``labels`` lists (component, attribute, i18n key)."""

    def __init__(self, gr) -> None:
        self.gr = gr
        self.labels: list[tuple] = []
        self.settings: dict = {}

    def _words(self, component, **keys):
        """Register ``attribute=key`` pairs of ``component`` for the language switch; the component."""
        self.labels += [(component, attr, key) for attr, key in keys.items()]
        return component

    def _make(self, factory, *args, label: str | None = None, info: str | None = None, **kwargs):
        """``factory(*args, **kwargs)`` with its label and help line in English, registered."""
        words = {k: v for k, v in (("label", label), ("info", info)) if v}
        component = factory(*args, **{a: text(_EN, k) for a, k in words.items()}, **kwargs)
        return self._words(component, **words)

    def _heading(self, key: str, level: int = 3):
        return self._words(self.gr.Markdown(f"{'#' * level} {text(_EN, key)}"), **{f"value#h{level}": key})

    def _tab(self, key: str, name: str):
        return self._words(self.gr.Tab(text(_EN, key), id=name, elem_id=f"ts-tab-{name}"), label=key)

    def _button(self, key: str, **kwargs):
        return self._words(self.gr.Button(text(_EN, key), **kwargs), value=key)

    def build(self) -> None:
        """Lay the page out (inside a ``gr.Blocks`` context)."""
        gr = self.gr
        self.lang = gr.State(_EN)
        self.draft = gr.State(None)  # this session's next run folder (it holds the chosen data)
        self.data_path = gr.State(None)
        self.shown = gr.State({})  # what the timer last put on the page, so only changes are sent
        with gr.Row():
            self._heading("title", 2)
            self.lang_pick = gr.Radio(list(LANGUAGES), value="English", label=text(_EN, "language"), scale=0)
        self._words(gr.Markdown(text(_EN, "intro")), value="intro")
        self.message = gr.HTML("", elem_id="ts-message")
        with gr.Tabs():
            for build in (self._model, self._data, self._prompt, self._train, self._compare, self._export):
                build()
        self.timer = gr.Timer(1.0)

    def _model(self) -> None:
        gr = self.gr
        with self._tab("tab_model", "model"):
            self.model = self._make(gr.Textbox, Choices.model, label="model_name", info="model_help",
                                    elem_id="ts-model")  # fmt: skip
            with gr.Row():
                self.four_bit = self._make(gr.Checkbox, False, label="load_in_4bit", info="load_in_4bit_help")
                self.max_seq = self._make(gr.Number, Choices.max_seq_length, precision=0, minimum=16,
                                          label="max_seq_length", info="max_seq_length_help",
                                          elem_id="ts-max-seq")  # fmt: skip
            self._heading("environment")
            self.environment = gr.Dataframe(
                headers=["check", "result", "fix"], interactive=False, elem_id="ts-env", wrap=True
            )
            self.env_again = self._button("env_check", size="sm")

    def _data(self) -> None:
        gr = self.gr
        with self._tab("tab_data", "data"):
            choices = [(text(_EN, "data_builtin"), BUILTIN), (text(_EN, "data_upload"), UPLOAD)]
            self.source = self._make(gr.Radio, choices, value=BUILTIN, label="data_source",
                                     elem_id="ts-data-source")  # fmt: skip
            self._words(self.source, choices=("data_builtin", "data_upload"))
            self.upload = self._make(gr.File, label="data_file", file_types=DATA_TYPES, elem_id="ts-upload")
            self.eval_split = self._make(gr.Slider, 0.0, 0.5, Choices.eval_split, step=0.01,
                                         label="eval_split", info="eval_split_help")  # fmt: skip
            self.check_data = self._button("data_preview", elem_id="ts-check-data")
            self.data_view = gr.HTML(views.data_view(None, _EN), elem_id="ts-data-preview")

    def _prompt(self) -> None:
        gr = self.gr
        with self._tab("tab_prompt", "prompt"):
            choices = [(text(_EN, "use_chat_template"), "chat"), (text(_EN, "use_prompt_template"), "prompt")]
            self.kind = self._make(
                gr.Radio, choices, value="chat", label="prompt_kind", elem_id="ts-prompt-kind"
            )
            self._words(self.kind, choices=("use_chat_template", "use_prompt_template"))
            self.chat_template = self._make(gr.Dropdown, CHAT_TEMPLATES, value="tokenizer",
                                            label="chat_template", info="chat_template_help")  # fmt: skip
            self.prompt_template = self._make(gr.Textbox, Choices.prompt_template, lines=5,
                                              label="prompt_template", info="prompt_template_help",
                                              elem_id="ts-prompt-template")  # fmt: skip
            self._heading("prompt_preview")
            self.prompt_view = gr.HTML("", elem_id="ts-prompt-preview")

    def _number(self, name: str, precision):
        return self._make(self.gr.Number, getattr(Choices, name), precision=precision, minimum=0,
                          label=name, info=f"{name}_help",
                          elem_id=f"ts-{name.replace('_', '-')}")  # fmt: skip

    def _train(self) -> None:
        gr = self.gr
        with self._tab("tab_train", "train"):
            self._heading("settings")
            for row in _SETTINGS:
                with gr.Row():
                    self.settings.update({name: self._number(name, digits) for name, digits in row})
            with gr.Row():
                self.probes = self._make(gr.Textbox, "\n".join(Choices().probes), lines=3, label="probes",
                                         info="probes_help", elem_id="ts-probes", scale=3)  # fmt: skip
                self.max_new = self._number("max_new_tokens", 0)
            with gr.Row():
                self.start = self._button("start", variant="primary", elem_id="ts-start")
                self.stop = self._button("stop", variant="stop", elem_id="ts-stop")
                self.resume = self._button("resume", elem_id="ts-resume")
            self.progress = gr.HTML(views.progress_view(None, _EN), elem_id="ts-progress")
            self._heading("loss_curve")
            # no label: the block's label would push the legend out of the plot's box
            self.curve = gr.LinePlot(x="step", y="loss", color="series", show_label=False, elem_id="ts-curve",
                                     height=340)  # fmt: skip
            self.log = self._make(gr.Textbox, "", lines=12, max_lines=12, label="log", elem_id="ts-log")

    def _compare(self) -> None:
        gr = self.gr
        with self._tab("tab_compare", "compare"):
            self.compare = gr.HTML(views.compare_view(None, _EN), elem_id="ts-compare")
            self._heading("chat")
            self.chatbot = gr.Chatbot(elem_id="ts-chatbot", height=300)
            with gr.Row():
                self.question = self._make(gr.Textbox, label="chat_input", elem_id="ts-chat-input", scale=4)
                self.send = self._button("send", elem_id="ts-send", scale=1)

    def _export(self) -> None:
        from tunesmith.export.gguf_constants import QUANT_METHODS

        gr = self.gr
        with self._tab("tab_export", "export"):
            self._words(gr.Markdown(text(_EN, "export_note")), value="export_note")
            with gr.Row():
                self.quant = self._make(gr.Dropdown, list(QUANT_METHODS), value=Choices.quant, label="quant",
                                        info="quant_help", elem_id="ts-quant")  # fmt: skip
                self.modelfile = self._make(gr.Checkbox, Choices.modelfile, label="modelfile")
                self.verify = self._make(gr.Checkbox, Choices.verify, label="verify")
            self._heading("verification")
            self.verification = gr.HTML(views.verification_view(None, None, _EN), elem_id="ts-verification")
            self.downloads = self._make(gr.File, label="downloads", file_count="multiple", interactive=False,
                                        elem_id="ts-downloads")  # fmt: skip
            self._heading("commands")
            self.commands = gr.Markdown(text(_EN, "no_export"), elem_id="ts-commands")

    def form(self) -> dict:
        """The components that hold a field of ``Choices``, by field name."""
        return {
            "model": self.model, "load_in_4bit": self.four_bit, "max_seq_length": self.max_seq,
            "eval_split": self.eval_split, "use_prompt_template": self.kind,
            "chat_template": self.chat_template, "prompt_template": self.prompt_template, **self.settings,
            "probes": self.probes, "max_new_tokens": self.max_new, "quant": self.quant,
            "modelfile": self.modelfile, "verify": self.verify,
        }  # fmt: skip

    def relabel(self, lang: str) -> list:
        """One update per registered label: its words in ``lang``."""
        return [_relabel(self.gr, attr, key, lang) for _, attr, key in self.labels]


def _relabel(gr, attr: str, key, lang: str):
    """The update that puts ``key``'s text in ``lang`` into a component's ``attr``."""
    if attr == "choices":
        values = {"data_builtin": BUILTIN, "data_upload": UPLOAD, "use_chat_template": "chat"}
        return gr.update(choices=[(text(lang, k), values.get(k, "prompt")) for k in key])
    if attr.startswith("value#"):  # a heading: "value#h2" -> "## text"
        return gr.update(value="#" * int(attr[-1]) + " " + text(lang, key))
    return gr.update(**{attr: text(lang, key)})
