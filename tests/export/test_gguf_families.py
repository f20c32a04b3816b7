"""Real tokenizers of the families users train, each on a tiny random model of matching vocabulary: the GGUF
file tokenizes a multilingual text exactly as Hugging Face does in llama.cpp, computes the same logits, and
its Modelfile TEMPLATE renders the tokenizer's chat template character for character in Go."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from _models import TEXT, tiny_model
from transformers import AutoTokenizer

from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.export.gguf import save_pretrained_gguf
from tunesmith.export.llama_cpp import evaluate_in_llama_cpp
from tunesmith.export.ollama import MODELFILE_NAME

CONVERSATION = [
    {"role": "system", "content": "You are a careful doctor."},
    {"role": "user", "content": "我头疼，怎么办? What should I do?"},
    {"role": "assistant", "content": "Rest, drink water.\n\nSee a doctor if it lasts."},
]
# (tokenizer folder, model family, extra config, expected llama.cpp pre-tokenizer / vocab kind)
CASES = [
    (
        "llama3",
        "llama",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
        "llama-bpe",
    ),
    ("llama3_1", "llama", {"tie_word_embeddings": True}, "llama-bpe"),
    ("qwen3", "qwen3", {"head_dim": 32, "tie_word_embeddings": True}, "qwen2"),
    ("qwen3", "qwen2", {}, "qwen2"),
    ("deepseek_v3", "llama", {}, "deepseek-v3"),
    ("llama2", "mistral", {}, "llama"),
    # Gemma: 262,145 tokens, SentencePiece-style without a space prefix; six layers so that a global layer
    # follows five sliding-window ones (window 16, shorter than the text), norms random around Gemma's 1 + w.
    ("gemma3", "gemma3_text", {"num_hidden_layers": 6, "tie_word_embeddings": True}, "llama"),
]
# ggml computes GELU (Gemma's MLP) through a float16 table: its logits differ more than SiLU models' do.
LOGIT_TOLERANCE = {"gemma3_text": 5e-3}
# Llama 2 has no chat template: its Modelfile comes from a declared prompt template.
LLAMA2_PROMPT = "### Question:\n{instruction}\n\n### Answer:\n{output}"


def _read_field(path, key):
    field = gguf.GGUFReader(path).get_field(key)
    return None if field is None else field.contents()


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def exported(request, shared_dir, tmp_path_factory):
    name, kind, extra, expected = request.param
    tokenizer = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / name)
    vocab = -(-len(tokenizer) // 64) * 64  # padded like real checkpoints: GGUF gets [PAD] tokens
    model = tiny_model(kind, vocab_size=vocab, **extra)
    prompt_template = PromptTemplate(LLAMA2_PROMPT) if name == "llama2" else None
    out = tmp_path_factory.mktemp(f"{name}-{kind}")
    path = save_pretrained_gguf(model, out, tokenizer, "f32", prompt_template=prompt_template)
    return path, model, tokenizer, expected, prompt_template, kind


def test_llama_cpp_tokenizes_like_hugging_face(exported, llama_cpp_works):
    path, _, tokenizer, expected, _, _ = exported
    specials = "".join(tokenizer.all_special_tokens[:3])
    texts = (TEXT, specials + TEXT + specials, "a")
    prompts = [(text, tokenizer(text)["input_ids"]) for text in texts]
    for (_, ids), seen in zip(
        prompts, evaluate_in_llama_cpp(path, prompts, max_new_tokens=0, eos=set()), strict=True
    ):
        assert seen.tokens == ids
    kind = gguf.Keys.Tokenizer.MODEL if expected == "llama" else gguf.Keys.Tokenizer.PRE
    assert _read_field(path, kind) == expected


def test_llama_cpp_computes_the_same_logits(exported, llama_cpp_works):
    path, model, tokenizer, _, _, kind = exported
    ids = tokenizer(TEXT)["input_ids"][:48]
    (seen,) = evaluate_in_llama_cpp(path, [(TEXT, ids)], max_new_tokens=0, eos=set(), n_ctx=128)
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(seen.logits - theirs).max() < LOGIT_TOLERANCE.get(kind, 1e-3)


def test_modelfile_template_matches_the_chat_template_in_go(exported, go_render):
    path, _, tokenizer, _, prompt_template, _ = exported
    modelfile = (path.parent / MODELFILE_NAME).read_text()
    assert f"FROM ./{path.name}\n" in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    chat_template = prompt_template.to_chat_template() if prompt_template else tokenizer.chat_template
    adds_bos = tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    for messages in (CONVERSATION[:2], CONVERSATION, [*CONVERSATION, {"role": "user", "content": "Thanks!"}]):
        last_is_assistant = messages[-1]["role"] == "assistant"
        jinja = tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=not last_is_assistant,
            continue_final_message=last_is_assistant,
        )
        # llama.cpp adds BOS itself when the tokenizer does, so the TEMPLATE leaves it out.
        go = (tokenizer.bos_token if adds_bos and jinja.startswith(tokenizer.bos_token) else "") + go_render(
            template, messages
        )
        assert go == jinja
    eos_line = f'PARAMETER stop "{tokenizer.eos_token}"'
    assert eos_line in modelfile and "PARAMETER num_ctx 512" in modelfile
