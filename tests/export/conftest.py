"""Export test set-up: the Go renderer and a LoRA-trained copy of the embedded default model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

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
