"""The app: what each button and field does (the layout is ``layout.Page``), and the wiring.

Handlers turn the page's values into ``Choices`` and hand them to the glue modules (``runconfig``,
``preview``, ``session``, ``progress``, ``views``, ``chatbox``). Every failure becomes one paragraph in the
page's message box (``views.error_message``), never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.ui import views
from tunesmith.ui.chatbox import TrainedModel, history_messages
from tunesmith.ui.i18n import language_of, text
from tunesmith.ui.layout import BUILTIN, UPLOAD, Page
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
_CHOICE_FIELDS = [f.name for f in fields(Choices) if f.name != "data_file"]
_DONE = ("finished", "unverified")  # a run with a trained model and its export
_SHOWN = ("progress", "curve", "log", "compare", "verification", "downloads", "commands", "stop")


@dataclass
class UiState:
    """What the app keeps across browser sessions: its folder, the one training process, the chat model."""

    workspace: Workspace
    job: TrainingJob = field(default_factory=TrainingJob)
    chat: TrainedModel = field(default_factory=TrainedModel)
    current_run: Path | None = None  # the run the Train, Compare and Export tabs show
    environment: list | None = None

    def __post_init__(self) -> None:
        runs = sorted(p for p in self.workspace.root.glob("run-*") if (p / CONFIG_NAME).is_file())
        self.current_run = runs[-1] if runs else None  # after a restart: show (and resume) the latest run


def _choices(values: dict) -> Choices:
    """``Choices`` from the form's values (field name -> value; the probes as text, one per line)."""
    values = dict(values)
    values["probes"] = [line for line in str(values.get("probes") or "").splitlines() if line.strip()]
    values["use_prompt_template"] = values.get("use_prompt_template") == "prompt"
    return Choices(**{k: values[k] for k in _CHOICE_FIELDS}, data_file=values.get("data_file"))


def _builtin_data() -> Path:
    from tunesmith.data.builtin import builtin_dataset_path

    return builtin_dataset_path("medquad_en")


def _upload_path(uploaded) -> str:
    """The local path of a ``gr.File`` value (a path string, or an object with ``.path``/``.name``)."""
    if isinstance(uploaded, (str, os.PathLike)):
        return os.fspath(uploaded)
    return getattr(uploaded, "path", None) or uploaded.name


def _draft(folder) -> Path | None:
    """A session's draft run folder, while it is one (no run has been started in it)."""
    return Path(folder) if folder and not (Path(folder) / CONFIG_NAME).exists() else None


class _Handlers:
    """The page's event handlers over the app's state (each returns values for its outputs)."""

    def __init__(self, gr, state: UiState, page: Page) -> None:
        self.gr, self.state, self.page = gr, state, page
        self.names = list(page.form())

    def choices_of(self, values) -> tuple[str, Choices]:
        """(language, choices) from ``[lang, data_path, *form values]``."""
        lang, data_file, *rest = values
        return language_of(lang), _choices(
            {**dict(zip(self.names, rest, strict=True)), "data_file": data_file}
        )

    def _report(self, folder: Path | None):
        if folder is None or not (Path(folder) / CONFIG_NAME).is_file():
            return None
        return run_report(Path(folder) / OUTPUT_DIR, read_config(Path(folder)))

    # -- data --------------------------------------------------------------------------------------------

    def keep(self, lang, src, folder):
        """Copy a data file into the session's draft run folder; (message, data path, draft folder)."""
        lang = language_of(lang)
        try:
            if not src:
                return "", None, folder
            folder = _draft(folder) or self.state.workspace.new_run_folder()
            kept = self.state.workspace.keep_data(src, folder, lang)
            return "", str(kept), str(folder)
        except Exception as err:  # every failure is one paragraph on the page
            return views.error_message(err, lang), None, folder

    def keep_choice(self, lang, chosen, uploaded, folder):
        """The data source radio: the built-in example, or the uploaded file."""
        return self.keep(
            lang, _builtin_data() if chosen == BUILTIN else uploaded and _upload_path(uploaded), folder
        )

    def keep_upload(self, lang, uploaded, folder):
        """A new upload: keep it and switch the source to it."""
        return (*self.keep(lang, uploaded and _upload_path(uploaded), folder), UPLOAD)

    def _config(self, lang: str, choices: Choices):
        inside(choices.data_file, self.state.workspace.allowed_roots(), lang)
        return build_config(choices, Path(choices.data_file).parent.parent)

    def show_data(self, *values):
        """The data preview and the prompt preview for the form as it is."""
        lang, choices = self.choices_of(values)
        if not choices.data_file:
            return views.data_view(None, lang), views.prompt_view(None, lang)
        try:
            config = self._config(lang, choices)
        except Exception as err:  # every failure is one paragraph on the page
            return views.error_message(err, lang), ""
        return views.data_view(preview_data(config), lang), views.prompt_view(preview_prompt(config), lang)

    def show_prompt(self, *values):
        """The prompt preview alone (live while the template is typed)."""
        lang, choices = self.choices_of(values)
        if not choices.data_file:
            return views.prompt_view(None, lang)
        try:
            return views.prompt_view(preview_prompt(self._config(lang, choices)), lang)
        except Exception as err:  # every failure is one paragraph on the page
            return views.error_message(err, lang)

    # -- training ----------------------------------------------------------------------------------------

    def start(self, folder, *values):
        """Check everything, write ``run.yaml`` into the run folder and start ``tunesmith run`` on it."""
        lang, choices = self.choices_of(values)
        skip = self.gr.skip()
        try:
            self._refuse_if_running(lang)
            if not choices.data_file:
                raise TunesmithError(text(lang, "no_data"))
            run_folder = _draft(folder) or self.state.workspace.new_run_folder()
            inside(choices.data_file, self.state.workspace.allowed_roots(), lang)
            choices.data_file = str(self.state.workspace.keep_data(choices.data_file, run_folder, lang))
            config = build_config(choices, run_folder)
            checked = preview_data(config)
            if not checked.ok:
                blocked = views.message(text(lang, "data_errors_block"), "error")
                return blocked, views.data_view(checked, lang), str(run_folder), skip
            write_config(config, run_folder)
            self.state.job.start(run_folder, lang)
            self.state.current_run = run_folder
            return views.message(text(lang, "started", folder=run_folder)), skip, None, {}
        except Exception as err:  # every failure is one paragraph on the page
            return views.error_message(err, lang), skip, folder, skip

    def _refuse_if_running(self, lang: str) -> None:
        self.state.job.settle()
        if self.state.job.running:
            raise TunesmithError(text(lang, "already_running", folder=self.state.job.folder))

    def stop(self, lang):
        """Ctrl-C for the run: it stops after the current step and keeps a checkpoint."""
        lang = language_of(lang)
        return views.message(text(lang, "stopping" if self.state.job.stop() else "nothing_to_stop"))

    def resume(self, lang):
        """Run the stopped run's command again: the pipeline continues from its checkpoint."""
        lang = language_of(lang)
        try:
            self._refuse_if_running(lang)
            folder, report = self.state.current_run, self._report(self.state.current_run)
            if report is None or report.status == "finished":
                raise TunesmithError(text(lang, "nothing_to_resume"))
            self.state.job.start(folder, lang)
            return views.message(text(lang, "resumed", folder=folder)), {}
        except Exception as err:  # every failure is one paragraph on the page
            return views.error_message(err, lang), self.gr.skip()

    # -- the run, shown every second -----------------------------------------------------------------------

    def refresh(self, lang, last):
        """What the current run's files say now; only what changed since the last tick is sent."""
        lang, skip = language_of(lang), self.gr.skip()
        if self.state.current_run is None:
            return [skip] * len(_SHOWN) + [last]
        try:
            values = self._shown(Path(self.state.current_run), lang)
        except Exception as err:  # e.g. a file being replaced: the next tick reads it again
            return [views.error_message(err, lang)] + [skip] * (len(_SHOWN) - 1) + [last]
        last = dict(last or {})
        out = []
        for key in _SHOWN:
            value = values[key]
            if last.get(key) == value or (key == "curve" and not value):
                out.append(skip)
                continue
            last[key] = value
            out.append(self._component_value(key, value))
        return [*out, last]

    def _shown(self, folder: Path, lang: str) -> dict:
        config = read_config(folder)
        out = folder / OUTPUT_DIR
        progress = read_progress(out, config.training.max_steps, log_tail(folder / LOG_NAME, 200))
        report = run_report(out, config)
        roots = self.state.workspace.allowed_roots()
        files = (
            [str(inside(p, roots, lang)) for p in views.export_files(report, out)]
            if progress.status in _DONE
            else []
        )
        files = [p for p in files if Path(p).is_file()]
        result = self._verify_result(out)
        return {
            "progress": views.progress_view(progress, lang),
            "curve": views.curve_points(progress),
            "log": log_tail(folder / LOG_NAME, 12),
            "compare": views.compare_view(report, lang),
            "verification": views.verification_view(report, result, lang),
            "downloads": files,
            "commands": views.commands_view(report, out, lang) if files else text(lang, "no_export"),
            "stop": self.state.job.running,
        }

    def _component_value(self, key: str, value):
        if key == "curve":  # typed columns: an empty or object column is drawn as categories
            import pandas as pd

            frame = pd.DataFrame(value, columns=["step", "loss", "series"])
            return frame.astype({"step": "int64", "loss": "float64", "series": "str"})
        if key == "stop":
            return self.gr.update(interactive=value)
        if key == "downloads":
            return value or None
        return value

    @staticmethod
    def _verify_result(output_folder: Path):
        from tunesmith.recipe.state import RunState

        state = RunState.read(output_folder) if output_folder.is_dir() else None
        return state.results.verify if state else None

    # -- chat, environment, language ------------------------------------------------------------------------

    def ask(self, lang, question, history, tokens):
        """The trained model's answer, added to the chat; (history, question box, message)."""
        lang = language_of(lang)
        if not (question or "").strip():
            return self.gr.skip(), self.gr.skip(), ""
        try:
            folder = self.state.current_run
            report = self._report(folder)
            if report is None or report.status not in _DONE:
                raise TunesmithError(text(lang, "chat_not_ready"))
            messages = history_messages(history, question)
            reply = self.state.chat.answer(Path(folder) / OUTPUT_DIR / "lora", messages, int(tokens))
        except Exception as err:  # every failure is one paragraph on the page
            return self.gr.skip(), question, views.error_message(err, lang)
        answered = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        return [*(history or []), *answered], "", ""

    def environment(self, again: bool = False):
        """``tunesmith check``'s rows (checked once per app; the button checks again)."""
        from tunesmith.recipe.environment import check_environment

        if self.state.environment is None or again:
            self.state.environment = views.environment_table(check_environment())
        return self.state.environment

    def switch(self, choice):
        """The language switch: every label in the new language (the views follow on the next tick)."""
        lang = language_of(choice)
        return [lang, {}, *self.page.relabel(lang)]


def _wire(h: _Handlers, page: Page, demo) -> None:
    """Connect the page's events to the handlers."""
    form = [page.lang, page.data_path, *page.form().values()]
    previews = [page.data_view, page.prompt_view]
    keep_io = {"inputs": [page.lang, page.source, page.upload, page.draft],
               "outputs": [page.message, page.data_path, page.draft]}  # fmt: skip
    demo.load(h.environment, None, page.environment)
    demo.load(h.keep_choice, **keep_io).then(h.show_data, form, previews)
    page.env_again.click(lambda: h.environment(True), None, page.environment)
    page.source.input(h.keep_choice, **keep_io).then(h.show_data, form, previews)
    upload_out = [page.message, page.data_path, page.draft, page.source]
    page.upload.upload(h.keep_upload, [page.lang, page.upload, page.draft], upload_out).then(
        h.show_data, form, previews
    )
    page.upload.clear(lambda: None, None, page.data_path).then(h.show_data, form, previews)
    page.check_data.click(h.show_data, form, previews)
    for component in (page.kind, page.chat_template, page.prompt_template):
        component.change(h.show_prompt, form, page.prompt_view)
    for component in (page.eval_split, page.max_seq):
        component.change(h.show_data, form, previews)
    page.start.click(h.start, [page.draft, *form], [page.message, page.data_view, page.draft, page.shown])
    page.stop.click(h.stop, page.lang, page.message)
    page.resume.click(h.resume, page.lang, [page.message, page.shown])
    shown = [getattr(page, key) for key in _SHOWN]
    page.timer.tick(h.refresh, [page.lang, page.shown], [*shown, page.shown])
    for event in (page.send.click, page.question.submit):
        event(h.ask, [page.lang, page.question, page.chatbot, page.max_new],
              [page.chatbot, page.question, page.message])  # fmt: skip
    relabelled = [component for component, _, _ in page.labels]
    page.lang_pick.change(h.switch, page.lang_pick, [page.lang, page.shown, *relabelled]).then(
        h.show_data, form, previews
    )


def build_app(state: UiState):
    """The ``gr.Blocks`` app over ``state`` (``tunesmith.ui.server.serve`` launches it)."""
    import gradio as gr

    page = Page(gr)
    with gr.Blocks(title="tunesmith", analytics_enabled=False) as demo:
        page.build()
        _wire(_Handlers(gr, state, page), page, demo)
    return demo
