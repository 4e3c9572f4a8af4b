"""famlab.allocator: with FAMLAB_MALLOC=heap (the default) the big blocks a training step frees are reused
by the next steps, which then page-fault (almost) nothing; with FAMLAB_MALLOC=default glibc unmaps them and
every step faults all its pages in again. Each case runs in a fresh process (the setting is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from famlab.allocator import malloc_mode

MIB = (8, 16, 32, 16, 8)  # float32 Mi-elements per "activation": 320 MiB per step
PROBE = f"""
import resource, torch
from famlab.allocator import reuse_freed_memory
mode = reuse_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):  # a training step in miniature: activations written, kept, then freed together
    before = faults()
    acts = [torch.ones(n * 2**20) for n in {MIB}]
    del acts
print(mode, faults() - before)  # of the last step
"""


def probe(mode: str) -> tuple[str, int]:
    env = {**os.environ, "FAMLAB_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got, faults = out.stdout.split()
    return got, int(faults)


def test_heap_mode_reuses_freed_memory():
    heap, heap_faults = probe("heap")
    default, default_faults = probe("default")
    assert default == "default"
    if heap == "unavailable":
        pytest.skip("not glibc")
    assert heap == "heap"
    pages = sum(MIB) * 4 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert default_faults > pages // 2  # glibc's default: the block was unmapped, its pages fault again
    assert heap_faults < pages // 20  # reused


def test_bad_mode_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("FAMLAB_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match=r"FAMLAB_MALLOC='jemalloc' is not allowed: expected one of heap, default"):
        malloc_mode()
