"""The child process that does tunesmith's llama.cpp work, so that a native crash ends it and not the caller.

Run as ``python -m tunesmith.export._llama_cpp_child JOB_DIR``. It reads ``JOB_DIR/job.json``, does one job
and writes ``JOB_DIR/result.json`` (logits go beside it as ``.npy`` files). The parent side, which starts
this process and turns a crash into a clear error, is :mod:`tunesmith.export.llama_cpp`. This module
imports only the standard library, numpy and llama_cpp: starting it costs a fraction of a second.

Jobs:
- ``evaluate``: tokenize each prompt, the logits at every position of the given token ids, and a greedy
  continuation (verification);
- ``quantize``: llama.cpp's own quantizer (K-quants);
- ``selftest``: load a GGUF file and decode a batch of several tokens (``tunesmith check``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

FAULT_ENV = "TUNESMITH_LLAMA_CPP_FAULT"  # "segv": the child kills itself with SIGSEGV (tests of recovery)
JOB_FILE = "job.json"
RESULT_FILE = "result.json"


def _inject_fault() -> None:
    if os.environ.get(FAULT_ENV) == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)


def _greedy(llm, ids: list[int], steps: int, eos: set[int]) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in eos:
            break
        llm.eval([token])
    return out


def evaluate(llama_cpp, job: dict, folder: Path) -> dict:
    """Per prompt: llama.cpp's own tokenization, the logits for the given ids, a greedy continuation."""
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=job["gguf"], logits_all=True, n_ctx=job["n_ctx"], n_threads=job["n_threads"], verbose=False
    )
    eos = set(job["eos"]) | {llm.token_eos()}
    prompts = []
    try:
        for index, prompt in enumerate(job["prompts"]):
            ids = prompt["ids"]
            tokens = llm.tokenize(prompt["text"].encode("utf-8"), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            np.save(folder / f"logits-{index}.npy", np.array(llm.scores[: len(ids)], dtype=np.float32))
            greedy = _greedy(llm, ids, job["max_new_tokens"], eos)
            prompts.append({"tokens": list(tokens), "greedy": greedy, "logits": f"logits-{index}.npy"})
    finally:
        llm.close()
    return {"prompts": prompts}


def quantize(llama_cpp, job: dict, folder: Path) -> dict:
    """Quantize ``job["source"]`` into ``job["target"]`` with the llama.cpp file type ``job["ftype"]``."""
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(job["ftype"])
    params.nthread = int(job["n_threads"])
    code = llama_cpp.llama_model_quantize(
        os.fsencode(job["source"]), os.fsencode(job["target"]), ctypes.byref(params)
    )
    return {"code": int(code)}


def selftest(llama_cpp, job: dict, folder: Path) -> dict:
    """Load a GGUF file and decode a batch of several tokens, then two single tokens."""
    import numpy as np

    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=256, n_threads=job["n_threads"], verbose=False)
    try:
        ids = llm.tokenize(job["text"].encode("utf-8"), add_bos=True, special=False)
        llm.eval(ids)  # one llama_decode of the whole batch: where broken builds crash
        for _ in range(2):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    finally:
        llm.close()
    return {"batch_tokens": len(ids), "seconds": time.perf_counter() - start}


JOBS = {"evaluate": evaluate, "quantize": quantize, "selftest": selftest}


def main(argv: list[str]) -> int:
    """Run the job in ``argv[1]``; the result (or the error) goes to its ``result.json``."""
    folder = Path(argv[1])
    job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    try:
        import llama_cpp

        _inject_fault()
        result = {"ok": True, **JOBS[job["kind"]](llama_cpp, job, folder)}
    except Exception as err:  # reported to the parent, which turns it into one clear error
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    partial = folder / (RESULT_FILE + ".partial")
    partial.write_text(json.dumps(result), encoding="utf-8")
    os.replace(partial, folder / RESULT_FILE)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
