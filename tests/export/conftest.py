"""Export test set-up: the Go renderer, the real SmolLM2 tokenizer, a tiny LoRA model of its vocabulary, and a
LoRA-trained copy of the embedded default model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _models import tiny_model, with_lora
from transformers import AutoTokenizer

GO_PROGRAM = Path(__file__).parent / "gotemplate"


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """A function rendering an Ollama TEMPLATE with Go's text/template: render(template, messages) -> str."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is missing: apt-get install golang-go (CI installs it; Ollama templates are Go templates)"
        )
    build = tmp_path_factory.mktemp("go")
    binary = build / "gotemplate"
    env = {
        **os.environ,
        "GOCACHE": str(build / "cache"),
        "GOPATH": str(build / "gopath"),
        "GOFLAGS": "-mod=mod",
    }
    subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=GO_PROGRAM, env=env, check=True, capture_output=True
    )

    def render(template: str, messages: list[dict]) -> str:
        payload = json.dumps({"template": template, "messages": messages})
        done = subprocess.run([str(binary)], input=payload, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    """The embedded default's real tokenizer (SmolLM2, ChatML template), one per test module."""
    return AutoTokenizer.from_pretrained(default_model_path)


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny random Llama of that tokenizer's vocabulary with a LoRA adapter (random B), one per module."""
    return with_lora(tiny_model(vocab_size=len(tokenizer)))


@pytest.fixture(scope="session")
def trained_smollm():
    """The embedded default model with a LoRA adapter after two optimizer steps on a medical answer."""
    from tunesmith.models.loader import load
    from tunesmith.training.lora import get_peft_model

    model, tokenizer = load("smollm2-135m-instruct", dtype=torch.float32)
    model = get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False, random_state=0)
    text = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "What are common causes of fatigue?"},
            {
                "role": "assistant",
                "content": "Poor sleep, anemia, thyroid problems and stress are common causes.",
            },
        ],
        tokenize=False,
    )
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tokenizer
