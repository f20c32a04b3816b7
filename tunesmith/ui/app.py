"""The page: the ``gr.Blocks`` layout and its event wiring, nothing else.

Handlers turn the page's values into ``Choices`` and hand them to the glue modules (``runconfig``,
``preview``, ``session``, ``progress``, ``views``, ``chatbox``); every failure becomes one paragraph in
the message box (``views.error_message``), never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.ui import views
from tunesmith.ui.chatbox import TrainedModel, history_messages
from tunesmith.ui.i18n import LANGUAGES, language_of, text
from tunesmith.ui.preview import preview_data, preview_prompt
from tunesmith.ui.progress import log_tail, read_progress, run_report
from tunesmith.ui.runconfig import Choices, build_config, read_config, write_config
from tunesmith.ui.session import CONFIG_NAME, LOG_NAME, OUTPUT_DIR, TrainingJob, Workspace, inside

__all__ = ["UiState", "build_app", "CSS"]

CSS = """
.ts-msg {padding: .6em .9em; border-radius: 6px; margin: .3em 0;}
.ts-info {background: #eef6ff; border: 1px solid #9cc3f0;}
.ts-error {background: #fff1f0; border: 1px solid #f0a09c; color: #8a1f17;}
.ts-row {white-space: pre-wrap; background: #f6f8fa; padding: .6em; border-radius: 6px; font-size: .85em;}
.ts-eos {background: #ffe08a; padding: 0 .15em; border-radius: 3px;}
.ts-bar {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden;}
.ts-fill {height: 100%; background: #2f7de1; transition: width .5s;}
.ts-compare td, .ts-compare th {vertical-align: top; padding: .4em; border: 1px solid #ddd;
  white-space: pre-wrap;}
.ts-compare {border-collapse: collapse; width: 100%;}
.ts-pass {color: #137333;} .ts-fail {color: #a50e0e;}
"""
_BUILTIN, _UPLOAD = "builtin", "upload"


@dataclass
class UiState:
    """What the app keeps across browser sessions: its folder, the one training process, the chat model."""

    workspace: Workspace
    job: TrainingJob = field(default_factory=TrainingJob)
    chat: TrainedModel = field(default_factory=TrainedModel)
    current_run: Path | None = None  # the run the Train/Compare/Export tabs show
    environment: list | None = None

    def __post_init__(self) -> None:
        runs = sorted(p for p in self.workspace.root.glob("run-*") if (p / CONFIG_NAME).is_file())
        self.current_run = runs[-1] if runs else None  # after a restart, show (and resume) the latest run


# the form's inputs, in this order, are the fields of Choices (plus the data source and language)
_CHOICE_FIELDS = [f.name for f in fields(Choices) if f.name != "data_file"]


def _choices(values: dict) -> Choices:
    values = dict(values)
    values["probes"] = [line for line in str(values.get("probes") or "").splitlines() if line.strip()]
    values["use_prompt_template"] = values.get("use_prompt_template") == "prompt"
    return Choices(**{k: values[k] for k in _CHOICE_FIELDS}, data_file=values.get("data_file"))


def _builtin_data() -> Path:
    from tunesmith.data.builtin import builtin_dataset_path

    return builtin_dataset_path("medquad_en")


def build_app(state: UiState):
    """The ``gr.Blocks`` app over ``state`` (launch it with ``tunesmith.ui.server.launch``)."""
    import gradio as gr

    labels: list[tuple] = []  # (component, attribute, key) relabelled by the language switch

    def tr(component, attr: str, key: str):
        labels.append((component, attr, key))
        return component

    en = "en"
    with gr.Blocks(title="tunesmith", analytics_enabled=False) as demo:
        lang = gr.State(en)
        draft = gr.State(None)  # this session's next run folder (holds its uploaded data)
        data_path = gr.State(None)
        shown = gr.State({})  # what the timer last put on the page, to send only changes
        with gr.Row():
            tr(gr.Markdown(f"## {text(en, 'title')}"), "value#h2", "title")
            lang_pick = gr.Radio(
                list(LANGUAGES), value="English", label=text(en, "language"), elem_id="ts-lang", scale=0
            )
        tr(gr.Markdown(text(en, "intro")), "value", "intro")
        msg = gr.HTML("", elem_id="ts-message")
        with gr.Tabs():
            with tr(gr.Tab(text(en, "tab_model"), id="model", elem_id="ts-tab-model"), "label", "tab_model"):
                model = gr.Textbox(Choices.model, label=text(en, "model_name"), info=text(en, "model_help"),
                                   elem_id="ts-model")  # fmt: skip
                tr(tr(model, "label", "model_name"), "info", "model_help")
                with gr.Row():
                    four_bit = gr.Checkbox(
                        False, label=text(en, "load_in_4bit"), info=text(en, "load_in_4bit_help")
                    )
                    tr(tr(four_bit, "label", "load_in_4bit"), "info", "load_in_4bit_help")
                    max_seq = gr.Number(
                        Choices.max_seq_length, precision=0, minimum=16, label=text(en, "max_seq_length"),
                        info=text(en, "max_seq_length_help"), elem_id="ts-max-seq",
                    )  # fmt: skip
                    tr(tr(max_seq, "label", "max_seq_length"), "info", "max_seq_length_help")
                tr(gr.Markdown(f"### {text(en, 'environment')}"), "value#h3", "environment")
                env = gr.Dataframe(
                    headers=["check", "result", "fix"], interactive=False, elem_id="ts-env", wrap=True
                )
                env_again = tr(gr.Button(text(en, "env_check"), size="sm"), "value", "env_check")
            with tr(gr.Tab(text(en, "tab_data"), id="data", elem_id="ts-tab-data"), "label", "tab_data"):
                source = gr.Radio(
                    [(text(en, "data_builtin"), _BUILTIN), (text(en, "data_upload"), _UPLOAD)],
                    value=_BUILTIN, label=text(en, "data_source"), elem_id="ts-data-source",
                )  # fmt: skip
                tr(tr(source, "label", "data_source"), "choices", ("data_builtin", "data_upload"))
                upload = gr.File(
                    label=text(en, "data_file"), file_types=[".json", ".jsonl", ".csv", ".tsv", ".parquet"],
                    elem_id="ts-upload",
                )  # fmt: skip
                tr(upload, "label", "data_file")
                eval_split = gr.Slider(0.0, 0.5, Choices.eval_split, step=0.01, label=text(en, "eval_split"),
                                       info=text(en, "eval_split_help"))  # fmt: skip
                tr(tr(eval_split, "label", "eval_split"), "info", "eval_split_help")
                check_data = tr(
                    gr.Button(text(en, "data_preview"), elem_id="ts-check-data"), "value", "data_preview"
                )
                data_view = gr.HTML(views.data_view(None, en), elem_id="ts-data-preview")
            with tr(
                gr.Tab(text(en, "tab_prompt"), id="prompt", elem_id="ts-tab-prompt"), "label", "tab_prompt"
            ):
                kind = gr.Radio(
                    [(text(en, "use_chat_template"), "chat"), (text(en, "use_prompt_template"), "prompt")],
                    value="chat", label=text(en, "prompt_kind"), elem_id="ts-prompt-kind",
                )  # fmt: skip
                tr(tr(kind, "label", "prompt_kind"), "choices", ("use_chat_template", "use_prompt_template"))
                chat_template = gr.Dropdown(
                    ["tokenizer", "chatml", "llama-3", "qwen-2.5", "mistral", "alpaca"], value="tokenizer",
                    label=text(en, "chat_template"), info=text(en, "chat_template_help"),
                )  # fmt: skip
                tr(tr(chat_template, "label", "chat_template"), "info", "chat_template_help")
                prompt_template = gr.Textbox(
                    Choices.prompt_template, lines=5, label=text(en, "prompt_template"),
                    info=text(en, "prompt_template_help"), elem_id="ts-prompt-template",
                )  # fmt: skip
                tr(tr(prompt_template, "label", "prompt_template"), "info", "prompt_template_help")
                tr(gr.Markdown(f"### {text(en, 'prompt_preview')}"), "value#h3", "prompt_preview")
                prompt_view = gr.HTML("", elem_id="ts-prompt-preview")
            with tr(gr.Tab(text(en, "tab_train"), id="train", elem_id="ts-tab-train"), "label", "tab_train"):
                tr(gr.Markdown(f"### {text(en, 'settings')}"), "value#h3", "settings")
                numbers = {}
                with gr.Row():
                    for name, key, precision in (
                        ("max_steps", "max_steps", 0), ("learning_rate", "learning_rate", None),
                        ("batch_size", "batch_size", 0), ("grad_accum", "grad_accum", 0),
                    ):  # fmt: skip
                        numbers[name] = _number(gr, getattr(Choices, name), key, precision, tr)
                with gr.Row():
                    for name, key in (("warmup_steps", "warmup_steps"), ("save_steps", "save_steps"),
                                      ("lora_r", "lora_r"), ("lora_alpha", "lora_alpha")):  # fmt: skip
                        numbers[name] = _number(gr, getattr(Choices, name), key, 0, tr)
                with gr.Row():
                    probes = gr.Textbox(
                        "\n".join(Choices().probes), lines=3, label=text(en, "probes"),
                        info=text(en, "probes_help"),
                        elem_id="ts-probes", scale=3,
                    )  # fmt: skip
                    tr(tr(probes, "label", "probes"), "info", "probes_help")
                    max_new = _number(gr, Choices.max_new_tokens, "max_new_tokens", 0, tr)
                with gr.Row():
                    start = tr(
                        gr.Button(text(en, "start"), variant="primary", elem_id="ts-start"), "value", "start"
                    )
                    stop = tr(gr.Button(text(en, "stop"), variant="stop", elem_id="ts-stop"), "value", "stop")
                    resume = tr(gr.Button(text(en, "resume"), elem_id="ts-resume"), "value", "resume")
                progress = gr.HTML(views.progress_view(None, en), elem_id="ts-progress")
                curve = gr.LinePlot(
                    x="step", y="loss", color="series", label=text(en, "loss_curve"), elem_id="ts-curve",
                    height=380,
                )  # fmt: skip
                tr(curve, "label", "loss_curve")
                log = gr.Textbox(
                    "", lines=12, max_lines=12, label=text(en, "log"), elem_id="ts-log", autoscroll=True
                )
                tr(log, "label", "log")
            with tr(
                gr.Tab(text(en, "tab_compare"), id="compare", elem_id="ts-tab-compare"),
                "label",
                "tab_compare",
            ):
                compare = gr.HTML(views.compare_view(None, en), elem_id="ts-compare")
                tr(gr.Markdown(f"### {text(en, 'chat')}"), "value#h3", "chat")
                chatbot = gr.Chatbot(elem_id="ts-chatbot", height=300)
                with gr.Row():
                    question = gr.Textbox(label=text(en, "chat_input"), elem_id="ts-chat-input", scale=4)
                    tr(question, "label", "chat_input")
                    send = tr(gr.Button(text(en, "send"), elem_id="ts-send", scale=1), "value", "send")
            with tr(
                gr.Tab(text(en, "tab_export"), id="export", elem_id="ts-tab-export"), "label", "tab_export"
            ):
                tr(gr.Markdown(text(en, "export_note")), "value", "export_note")
                with gr.Row():
                    from tunesmith.export.gguf_constants import QUANT_METHODS

                    quant = gr.Dropdown(list(QUANT_METHODS), value=Choices.quant, label=text(en, "quant"),
                                        info=text(en, "quant_help"), elem_id="ts-quant")  # fmt: skip
                    tr(tr(quant, "label", "quant"), "info", "quant_help")
                    modelfile = tr(
                        gr.Checkbox(Choices.modelfile, label=text(en, "modelfile")), "label", "modelfile"
                    )
                    verify = tr(gr.Checkbox(Choices.verify, label=text(en, "verify")), "label", "verify")
                tr(gr.Markdown(f"### {text(en, 'verification')}"), "value#h3", "verification")
                verification = gr.HTML(views.verification_view(None, None, en), elem_id="ts-verification")
                downloads = gr.File(label=text(en, "downloads"), file_count="multiple", interactive=False,
                                    elem_id="ts-downloads")  # fmt: skip
                tr(downloads, "label", "downloads")
                tr(gr.Markdown(f"### {text(en, 'commands')}"), "value#h3", "commands")
                commands = gr.Markdown(text(en, "no_export"), elem_id="ts-commands")
        timer = gr.Timer(1.0)

        # -- the form as Choices ---------------------------------------------------------------------------
        form = {
            "model": model, "load_in_4bit": four_bit, "max_seq_length": max_seq, "eval_split": eval_split,
            "use_prompt_template": kind, "chat_template": chat_template, "prompt_template": prompt_template,
            **numbers, "probes": probes, "max_new_tokens": max_new, "quant": quant, "modelfile": modelfile,
            "verify": verify,
        }  # fmt: skip
        names = list(form)
        inputs = [lang, data_path, *form.values()]

        def choices_of(values) -> tuple[str, Choices]:
            lang_code, data_file, *rest = values
            return lang_code, _choices({**dict(zip(names, rest, strict=True)), "data_file": data_file})

        # -- data ----------------------------------------------------------------------------------
        def keep(lang_code, src, folder):
            """Copy a data file into this session's draft run folder; (message, data path, draft folder)."""
            lang_code = language_of(lang_code)
            try:
                if not src:
                    return "", None, folder
                folder = folder if folder and not (Path(folder) / CONFIG_NAME).exists() else None
                folder = folder or state.workspace.new_run_folder()
                kept = state.workspace.keep_data(src, Path(folder), lang_code)
                return "", str(kept), str(folder)
            except Exception as err:  # every failure is one paragraph on the page
                return views.error_message(err, lang_code), None, folder

        def keep_choice(lang_code, chosen, uploaded, folder):
            src = _builtin_data() if chosen == _BUILTIN else (uploaded and _upload_path(uploaded))
            return keep(lang_code, src, folder)

        def keep_upload(lang_code, uploaded, folder):
            return (*keep(lang_code, uploaded and _upload_path(uploaded), folder), _UPLOAD)

        def show_data(*values):
            lang_code, choices = choices_of(values)
            if not choices.data_file:
                return views.data_view(None, lang_code), views.prompt_view(None, lang_code)
            try:
                config = build_config(choices, Path(choices.data_file).parent.parent)
                inside(choices.data_file, state.workspace.allowed_roots(), lang_code)
            except TunesmithError as err:
                return views.message(str(err), "error"), ""
            return (
                views.data_view(preview_data(config), lang_code),
                views.prompt_view(preview_prompt(config), lang_code),
            )

        def show_prompt(*values):
            lang_code, choices = choices_of(values)
            if not choices.data_file:
                return views.prompt_view(None, lang_code)
            try:
                config = build_config(choices, Path(choices.data_file).parent.parent)
            except TunesmithError as err:
                return views.message(str(err), "error")
            return views.prompt_view(preview_prompt(config), lang_code)

        keep_io = dict(inputs=[lang, source, upload, draft], outputs=[msg, data_path, draft])
        source.input(keep_choice, **keep_io).then(show_data, inputs, [data_view, prompt_view])
        upload.upload(keep_upload, [lang, upload, draft], [msg, data_path, draft, source]).then(
            show_data, inputs, [data_view, prompt_view]
        )
        upload.clear(lambda: (None,), None, [data_path]).then(show_data, inputs, [data_view, prompt_view])
        check_data.click(show_data, inputs, [data_view, prompt_view])
        for component in (kind, chat_template, prompt_template):
            component.change(show_prompt, inputs, prompt_view)
        for component in (eval_split, max_seq):
            component.change(show_data, inputs, [data_view, prompt_view])

        # -- training ------------------------------------------------------------------------------
        def start_run(folder, *values):
            lang_code, choices = choices_of(values)
            try:
                if state.job.running:
                    raise TunesmithError(text(lang_code, "already_running", folder=state.job.folder))
                if not choices.data_file:
                    raise TunesmithError(text(lang_code, "no_data"))
                run_folder = Path(folder) if folder and not (Path(folder) / CONFIG_NAME).exists() else None
                run_folder = run_folder or state.workspace.new_run_folder()
                inside(choices.data_file, state.workspace.allowed_roots(), lang_code)
                choices.data_file = str(state.workspace.keep_data(choices.data_file, run_folder, lang_code))
                config = build_config(choices, run_folder)
                checked = preview_data(config)
                if not checked.ok:
                    return (views.message(text(lang_code, "data_errors_block"), "error"),
                            views.data_view(checked, lang_code), folder, {})  # fmt: skip
                write_config(config, run_folder)
                state.job.start(run_folder, lang_code)
                state.current_run = run_folder
                return views.message(text(lang_code, "started", folder=run_folder)), gr.skip(), None, {}
            except Exception as err:  # every failure is one paragraph on the page
                return views.error_message(err, lang_code), gr.skip(), folder, gr.skip()

        def stop_run(lang_code):
            lang_code = language_of(lang_code)
            done = state.job.stop()
            return views.message(text(lang_code, "stopping" if done else "nothing_to_stop"))

        def resume_run(lang_code):
            lang_code = language_of(lang_code)
            try:
                if state.job.running:
                    raise TunesmithError(text(lang_code, "already_running", folder=state.job.folder))
                folder = state.current_run
                report = _report(folder)
                if folder is None or (report is not None and report.status == "finished"):
                    raise TunesmithError(text(lang_code, "nothing_to_resume"))
                state.job.start(folder, lang_code)
                return views.message(text(lang_code, "resumed", folder=folder)), {}
            except Exception as err:  # every failure is one paragraph on the page
                return views.error_message(err, lang_code), gr.skip()

        start.click(start_run, [draft, *inputs], [msg, data_view, draft, shown])
        stop.click(stop_run, lang, msg)
        resume.click(resume_run, lang, [msg, shown])

        # -- what the run shows, refreshed every second -----------------------------------------------------
        def _report(folder):
            if folder is None or not (Path(folder) / CONFIG_NAME).is_file():
                return None
            return run_report(Path(folder) / OUTPUT_DIR, read_config(Path(folder)))

        def refresh(lang_code, last):
            lang_code = language_of(lang_code)
            folder = state.current_run
            if folder is None:
                return [gr.skip()] * 8 + [last]
            try:
                return _refresh(Path(folder), lang_code, dict(last or {}))
            except Exception as err:  # a half-written file is read again on the next tick
                return [views.error_message(err, lang_code)] + [gr.skip()] * 7 + [last]

        def _refresh(folder: Path, lang_code: str, last: dict):
            import pandas as pd

            config = read_config(folder)
            out = folder / OUTPUT_DIR
            prog = read_progress(out, config.training.max_steps, log_tail(folder / LOG_NAME, 200))
            report = run_report(out, config)
            verify_result = _verify_result(out)
            files = [
                str(inside(p, state.workspace.allowed_roots(), lang_code))
                for p in views.export_files(report, out)
            ]
            files = (
                [p for p in files if Path(p).is_file()] if prog.status in ("finished", "unverified") else []
            )
            values = {
                "progress": views.progress_view(prog, lang_code),
                "curve": views.curve_points(prog),
                "log": log_tail(folder / LOG_NAME, 12),
                "compare": views.compare_view(report, lang_code),
                "verification": views.verification_view(report, verify_result, lang_code),
                "downloads": files,
                "commands": views.commands_view(report, out, lang_code)
                if files
                else text(lang_code, "no_export"),
            }
            changed = {k: v for k, v in values.items() if last.get(k) != v and (k != "curve" or v)}
            last.update(values)
            result = []
            for key, value in values.items():
                if key not in changed:
                    result.append(gr.skip())
                elif key == "curve":  # typed columns: an empty or object column would be drawn as categories
                    frame = pd.DataFrame(value, columns=["step", "loss", "series"])
                    result.append(frame.astype({"step": "int64", "loss": "float64", "series": "str"}))
                else:
                    result.append(value or None if key == "downloads" else value)
            running = state.job.running
            buttons = gr.update(interactive=running)
            return [*result, buttons, last]

        timer.tick(
            refresh,
            [lang, shown],
            [progress, curve, log, compare, verification, downloads, commands, stop, shown],
        )

        # -- chat ----------------------------------------------------------------------------------
        def ask(lang_code, text_in, history, tokens):
            lang_code = language_of(lang_code)
            if not (text_in or "").strip():
                return gr.skip(), gr.skip(), ""
            try:
                folder = state.current_run
                report = _report(folder)
                if report is None or report.status not in ("finished", "unverified"):
                    raise TunesmithError(text(lang_code, "chat_not_ready"))
                adapter = Path(folder) / OUTPUT_DIR / "lora"
                reply = state.chat.answer(
                    adapter, history_messages(history, text_in), max_new_tokens=int(tokens)
                )
            except Exception as err:  # every failure is one paragraph on the page
                return gr.skip(), text_in, views.error_message(err, lang_code)
            history = [
                *(history or []),
                {"role": "user", "content": text_in},
                {"role": "assistant", "content": reply},
            ]
            return history, "", ""

        for event in (send.click, question.submit):
            event(ask, [lang, question, chatbot, max_new], [chatbot, question, msg])

        # -- environment and language --------------------------------------------------------------
        def environment(again: bool = False):
            from tunesmith.recipe.environment import check_environment

            if state.environment is None or again:
                state.environment = views.environment_table(check_environment())
            return state.environment

        demo.load(environment, None, env)
        demo.load(keep_choice, **keep_io).then(show_data, inputs, [data_view, prompt_view])
        env_again.click(lambda: environment(True), None, env)

        def switch(choice):
            code = language_of(choice)
            updates = [_relabel(gr, attr, key, code) for _, attr, key in labels]
            return [code, {}, *updates]

        lang_pick.change(switch, lang_pick, [lang, shown, *[c for c, _, _ in labels]]).then(
            show_data, inputs, [data_view, prompt_view]
        )
    return demo


def _relabel(gr, attr: str, key, lang: str):
    """The update that puts ``key``'s text in ``lang`` into a component's ``attr``."""
    if attr == "choices":
        values = {"data_builtin": _BUILTIN, "data_upload": _UPLOAD, "use_chat_template": "chat"}
        return gr.update(choices=[(text(lang, k), values.get(k, "prompt")) for k in key])
    if attr.startswith("value#"):  # a heading: "value#h2" -> "## text"
        return gr.update(value="#" * int(attr[-1]) + " " + text(lang, key))
    return gr.update(**{attr: text(lang, key)})


def _number(gr, value, key: str, precision, tr):
    box = gr.Number(value, precision=precision, label=text("en", key), info=text("en", f"{key}_help"),
                    elem_id=f"ts-{key.replace('_', '-')}", minimum=0)  # fmt: skip
    tr(tr(box, "label", key), "info", f"{key}_help")
    return box


def _upload_path(uploaded) -> str:
    """The local path of a ``gr.File`` value (a path string, or an object with ``.name``/``path``)."""
    if isinstance(uploaded, (str, os.PathLike)):
        return os.fspath(uploaded)
    return getattr(uploaded, "path", None) or uploaded.name


def _verify_result(output_folder: Path):
    from tunesmith.recipe.state import RunState

    state = RunState.read(output_folder) if output_folder.is_dir() else None
    return state.results.verify if state else None
