"""The embedded default model (SmolLM2-135M-Instruct), LoRA-trained for two steps, exports to f16, q8_0 and
q4_k_m; each file loads in llama.cpp and passes verification (tokens identical, top-1 >= 99% / 90%)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunesmith.export.gguf import save_pretrained_gguf
from tunesmith.export.merge import save_pretrained_merged
from tunesmith.export.ollama import MODELFILE_NAME
from tunesmith.export.verify import verify_gguf

QUANTS = {"f16": 0.99, "q8_0": 0.99, "q4_k_m": 0.90}
GREEDY_TOKENS = {"f16": 32, "q8_0": 8, "q4_k_m": 8}  # the full 32 once; shorter runs keep CI time down


@pytest.fixture(scope="module")
def exported(trained_smollm, tmp_path_factory, llama_cpp_works):
    model, tokenizer = trained_smollm
    folder = tmp_path_factory.mktemp("smollm-gguf")
    paths = {
        q: save_pretrained_gguf(model, folder, tokenizer, q, name="smollm2", overwrite=True) for q in QUANTS
    }
    return folder, paths


@pytest.mark.parametrize("quant", list(QUANTS))
def test_exports_pass_verification_in_llama_cpp(exported, trained_smollm, quant):
    _, paths = exported
    assert paths[quant].name == f"smollm2.{quant.upper()}.gguf"
    report = verify_gguf(paths[quant], trained_smollm, max_new_tokens=GREEDY_TOKENS[quant])
    print(f"\n{report.summary()}")  # the measured numbers, for the record (pytest -s)
    assert report.tokenization_identical
    assert report.top1_threshold == QUANTS[quant]
    assert report.passed, report.summary()


def test_folder_holds_the_files_and_a_chatml_modelfile(exported):
    folder, paths = exported
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [MODELFILE_NAME, *(p.name for p in paths.values())]
    )  # no partial or 16-bit leftovers
    modelfile = (folder / MODELFILE_NAME).read_text()
    assert "FROM ./smollm2.Q4_K_M.gguf" in modelfile  # the last export wrote it
    assert (
        'PARAMETER stop "<|im_end|>"' in modelfile
        and "You are a helpful AI assistant named SmolLM" in modelfile
    )


def test_cli_verify_against_a_merged_folder(exported, trained_smollm, tmp_path):
    model, tokenizer = trained_smollm
    merged = save_pretrained_merged(model, tmp_path / "merged", tokenizer)
    _, paths = exported
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli.main", "verify", str(paths["q8_0"]), "--against", str(merged)]
        + ["--max-new-tokens", "4"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "tokenization identical: yes" in done.stdout
