"""Ollama TEMPLATEs render the training prompt format in Go exactly as the Jinja chat template does: the
embedded model's own template, every family tunesmith trains with, declared prompt templates, and the prompt
recognised in texts the tutorial formatted itself."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.api import FastLanguageModel
from tunesmith.data.chat_template_table import CHAT_FAMILIES
from tunesmith.data.chat_templates import get_chat_template
from tunesmith.data.loading import load_dataset_file
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError
from tunesmith.export.ollama import MODELFILE_NAME, modelfile_text, plan_modelfile
from tunesmith.generation.chat import as_messages, build_prompt
from tunesmith.training import SFTTrainer, TrainingArguments

REPO = Path(__file__).resolve().parents[2]

SYSTEM = {"role": "system", "content": "You are a careful doctor. Answer briefly."}
USER = {"role": "user", "content": 'My head hurts after "long" days {at work}.\nWhat helps?'}
ASSISTANT = {"role": "assistant", "content": "Rest, water and short breaks.\n\nSee a doctor if it lasts."}
CONVERSATIONS = {
    "system+user": [SYSTEM, USER],
    "system+user+assistant": [SYSTEM, USER, ASSISTANT],
    "history": [SYSTEM, USER, ASSISTANT, {"role": "user", "content": "And at night?"}],
    "no system": [USER],
}
# The tutorial's prompt (positional fields: question, reasoning, answer) and a named Alpaca-style one.
TUTORIAL_PROMPT = (
    "以下是描述任务的指令。请写出恰当完成该请求的回答。\n\n### Instruction:\n你是一位医学专家。\n\n"
    "### Question:\n{}\n\n### Response:\n<think>\n{}\n</think>\n{}"
)
ALPACA_PROMPT = "Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"


def _jinja(tokenizer, chat_template, messages):
    last_is_assistant = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        tokenize=False,
        add_generation_prompt=not last_is_assistant,
        continue_final_message=last_is_assistant,
    )


def _assert_go_matches(go_render, tokenizer, plan, chat_template):
    for label, messages in CONVERSATIONS.items():
        expected = _jinja(tokenizer, chat_template, messages)
        got = plan.pieces.bos_text + go_render(plan.template, messages)
        assert got == expected, label


def test_embedded_models_own_template(go_render, tokenizer):
    plan = plan_modelfile(tokenizer)
    assert "chatml" in plan.source and plan.stops == ("<|im_end|>", "<|im_start|>")
    _assert_go_matches(go_render, tokenizer, plan, tokenizer.chat_template)


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_every_training_family(go_render, tokenizer, family):
    tokenizer = get_chat_template(AutoTokenizer.from_pretrained(tokenizer.name_or_path), family)
    plan = plan_modelfile(tokenizer)
    _assert_go_matches(go_render, tokenizer, plan, tokenizer.chat_template)
    assert tokenizer.eos_token in plan.stops


@pytest.mark.parametrize("prompt", [TUTORIAL_PROMPT, ALPACA_PROMPT], ids=["tutorial", "alpaca"])
def test_declared_prompt_template_travelling_in_the_tokenizer(go_render, tokenizer, prompt):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    template = PromptTemplate(prompt)
    tokenizer.chat_template = template.to_chat_template()
    plan = plan_modelfile(tokenizer)
    assert plan.source.startswith("the training prompt template")
    _assert_go_matches(go_render, tokenizer, plan, tokenizer.chat_template)
    # What Ollama sends for one question is exactly the training prompt (the model then writes the rest).
    question = {"role": "user", "content": "我头疼怎么办？"}
    assert go_render(plan.template, [question]) == template.prompt("我头疼怎么办？")


def test_modelfile_text_is_what_ollama_reads(tokenizer):
    text = modelfile_text("m.Q8_0.gguf", plan_modelfile(tokenizer), 2048)
    lines = text.splitlines()
    assert "FROM ./m.Q8_0.gguf" in lines and "PARAMETER num_ctx 2048" in lines
    assert text.count('TEMPLATE """') == 1 and text.rstrip().endswith("PARAMETER num_ctx 2048")


def test_template_of_another_shape_is_refused_clearly(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    # Puts the turn count into the text: no fixed text around each message can reproduce that.
    tokenizer.chat_template = "{% for m in messages %}[{{ loop.index }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TunesmithError, match="cannot translate.*prompt_template="):
        plan_modelfile(tokenizer)


# -- the tutorial's own formatting: the Modelfile serves the prompt the texts were trained on ---------------
# The tutorial's English prompt: question, chain of thought (the data's `input` column), answer.
TUTORIAL_EN_PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context.
Write a response that appropriately completes the request.
Before answering, think carefully about the question and create a step-by-step chain of thoughts to ensure a logical and accurate response.

### Instruction:
You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment planning.
Please answer the following medical question.

### Question:
{}

### Response:
<think>
{}
</think>
{}"""
# The Chinese doctor prompt of examples/medical-zh-deepseek-8b.yaml, in the tutorial's positional style.
TUTORIAL_ZH_PROMPT = """以下是描述任务的指令，以及提供进一步上下文的输入。
请写出一个适当完成请求的回答。
在回答之前，请仔细思考问题，并创建一个逻辑连贯的思考过程，以确保回答准确无误。

### 指令：
你是一位精通医学知识的医生，能够回答关于疾病、治疗方案和健康建议的问题。
请回答以下医疗问题。

### 问题：
{}

### 回答：
<think>{}</think>
{}"""


def _tutorial_training(model, tokenizer, dataset, train_prompt_style, output_dir):
    """The tutorial's code: LoRA, its formatting function, its SFTTrainer call (two steps here)."""
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=16,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )
    EOS_TOKEN = tokenizer.eos_token

    def formatting_prompts_func(examples):
        texts = []
        for q, cot, a in zip(examples["instruction"], examples["input"], examples["output"], strict=True):
            texts.append(train_prompt_style.format(q, cot, a) + EOS_TOKEN)
        return {"text": texts}

    dataset = dataset.map(formatting_prompts_func, batched=True)
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=128,
        dataset_num_proc=2,
        packing=False,
        args=TrainingArguments(
            per_device_train_batch_size=2,
            max_steps=2,
            learning_rate=2e-4,
            logging_steps=1,
            seed=3407,
            output_dir=str(output_dir),
            report_to="none",
        ),
    )
    trainer.train()
    return model


def _modelfile_template(folder) -> str:
    text = (folder / MODELFILE_NAME).read_text(encoding="utf-8")
    return text.split('TEMPLATE """', 1)[1].split('"""\n', 1)[0]


def _training_prompt(train_prompt_style: str, question: str) -> str:
    """What a training text holds before the model's own writing (its chain of thought) starts."""
    return train_prompt_style.format(question, "\x00", "").split("\x00")[0]


@pytest.mark.parametrize(
    ("prompt", "rows", "question"),
    [
        (TUTORIAL_EN_PROMPT, "medquad", "Why do my knees hurt when it rains?"),
        (TUTORIAL_ZH_PROMPT, "zh", "我最近总是感到疲劳，可能是什么原因？"),
    ],
    ids=["english", "chinese-doctor"],
)
def test_tutorial_formatted_texts_give_a_modelfile_with_their_prompt(
    go_render, tiny, medquad_rows, prompt, rows, question, tmp_path
):
    model, tokenizer = tiny
    if rows == "medquad":  # every row with a chain of thought, as in shibing624/medical's input column
        data = medquad_rows.select(range(8)).map(
            lambda row: {"input": f"The question asks about {row['instruction'][:30]}; recall the causes."}
        )
    else:  # the Chinese rows, half of them with a chain of thought (empty values elsewhere)
        data = load_dataset_file(REPO / "examples" / "data" / "medical_dialogue_zh.jsonl").select(range(8))
        data = data.map(lambda row, i: {"input": "先想病因，再想治疗。" if i % 2 else ""}, with_indices=True)
    model = _tutorial_training(model, tokenizer, data, prompt, tmp_path / "outputs")
    model.save_pretrained_gguf(str(tmp_path / "gguf"), tokenizer)

    template = _modelfile_template(tmp_path / "gguf")
    rendered = go_render(template, [{"role": "user", "content": question}])
    assert rendered == _training_prompt(prompt, question)  # character for character
    assert rendered.endswith("<think>" if rows == "zh" else "<think>\n")
    assert build_prompt(tokenizer, as_messages(question)) == rendered  # chat and the probes ask the same


def test_plain_texts_of_unknown_format_warn_at_export(go_render, tiny, medquad_rows, tmp_path, caplog):
    model, tokenizer = tiny
    model = FastLanguageModel.get_peft_model(model, r=4)
    data = medquad_rows.select(range(4)).map(  # a row number in the text: no fixed prompt to recognise
        lambda row, i: {"text": f"Case {i}. Q: {row['instruction']}\nA: {row['output']}"}, with_indices=True
    )
    SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=data,
        dataset_text_field="text",
        max_seq_length=64,
        args=TrainingArguments(max_steps=1, output_dir=str(tmp_path / "outputs"), report_to="none"),
    )
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        model.save_pretrained_gguf(str(tmp_path / "gguf"), tokenizer)
    warnings = [r.getMessage() for r in caplog.records if "did not use it" in r.getMessage()]
    assert len(warnings) == 1
    assert "the tokenizer's chat template (chatml)" in warnings[0] and "PromptTemplate(" in warnings[0]
    # Declaring the prompt, as the warning says, serves it and silences the warning.
    caplog.clear()
    tokenizer.chat_template = PromptTemplate("Case 0. Q: {instruction}\nA: {output}").to_chat_template()
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        plan = plan_modelfile(tokenizer)
    assert not caplog.records
    assert go_render(plan.template, [{"role": "user", "content": "Why?"}]) == "Case 0. Q: Why?\nA: "
