"""Readers of the suite's prompts for the tests (tests/test_eval_suite*.py): written from the templates alone,
they stream like FamLM.step and answer what the prompt says."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import torch
from torch import nn

from famlab.config import ModelConfig
from famlab.eval.suite import run_suite
from famlab.eval.suite.ruler import TASKS

VOCAB = 256


def pattern(template: str, **groups: str) -> str:
    out = re.escape(template)
    for name, group in groups.items():
        out = out.replace(re.escape("{" + name + "}"), group)
    return out


WORD, VALUE = r"[a-z]+", r"[A-Za-z0-9-]+"
NAME = r"([A-Za-z]+)"  # a variable: uppercase in text, lowercase as symbols (one symbol per letter, any case)


def solve(task: str, templates: dict[str, str], text: str) -> str | None:
    """The answer a perfect reader of ``text`` (a prompt up to its question) gives, None if it cannot."""
    t = templates
    if task == "vt":
        q = re.search(pattern(t["vt_query"], value=r"(?P<v>\d+)") + "$", text)
        if not q:
            return None
        names = [m.group(1) for m in re.finditer(pattern(t["vt_value"], name=NAME, value=q.group("v")), text)]
        links = re.findall(pattern(t["vt_link"], name=NAME, prev=NAME), text)
        for name, prev in links:  # links come after what they copy
            if prev in names and name not in names:
                names.append(name)
        return t["sep"].join(names) if names else None
    if task == "cwe":
        q = re.search(pattern(t["cwe_query"], k=r"(?P<k>\d+)") + "$", text)
        if not q:
            return None
        words = re.findall(pattern(t["cwe_entry"], i=r"\d+", word=f"({WORD})"), text[: q.start()])
        return t["sep"].join(w for w, _ in Counter(words).most_common(int(q.group("k"))))
    if task == "fwe":
        q = re.search(pattern(t["fwe_query"], k=r"(?P<k>\d+)") + "$", text)
        if not q:
            return None
        words = re.findall(pattern(t["fwe_entry"], word=f"({WORD})"), text[: q.start()])
        return t["sep"].join(w for w, _ in Counter(words).most_common(int(q.group("k"))))
    name = {"niah_multiquery": "query_many", "niah_multivalue": "query_all"}.get(task, "query")
    q = re.search(
        pattern(t[name], noun=r"\w+", key=f"(?P<keys>{WORD})", keys=f"(?P<keys>{WORD}(, {WORD})*)") + "$", text
    )
    if not q:
        return None
    values = []
    for key in q.group("keys").split(", "):
        found = re.findall(pattern(t["needle"], noun=r"\w+", key=key, value=f"({VALUE})"), text[: q.start()])
        values += found if task == "niah_multivalue" else found[:1]
    return t["sep"].join(values) if values else None


def passkey_reader(codec):
    """(question text, a regex of the key sentence) of niah_passkey, from the run's PassKey pieces: the key
    sentence of the key "00..0" decoded, its digits made a group (a text tokenizer may decode spaces its way)."""
    zeros = "0" * codec.key_digits
    sentence, question, _ = codec.passkey.key_parts(zeros)
    text = codec.decode(sentence).strip()
    return codec.decode(question), re.escape(text).replace(zeros, rf"(\d{{{codec.key_digits}}})", 1).replace(
        zeros, r"\d+"
    )


class Reader(nn.Module):
    """Streams like FamLM.step. At each query's end it reads the prompt (only its last ``window`` tokens
    if given), solves the task and says the answer, one token per step; elsewhere (or when it cannot
    solve) its logits are uniform. ``guess``: random logits everywhere instead."""

    def __init__(self, codec, task: str | None, window: int | None = None, guess: bool = False, vocab: int = VOCAB):
        super().__init__()
        self.codec, self.task, self.window, self.guess, self.vocab = codec, task, window, guess, vocab
        self.cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2)
        self.trigger = ":" if codec.kind == "symbols" else "Answer: "
        self.gen = torch.Generator().manual_seed(0)

    class State:
        def __init__(self, b):
            self.pos, self.seen, self.plan = 0, [[] for _ in range(b)], [None] * b

    def init_state(self, b, device=None):
        return self.State(b)

    def passkey_plan(self, seen):
        """niah_passkey: at the question's end, the key read from the key sentence in the window (None: none)."""
        question, sentence = passkey_reader(self.codec)
        if not self.codec.decode(seen[-4 * len(question) :]).endswith(question):
            return None
        found = re.findall(sentence, self.codec.decode(seen[-(self.window or 0) :]))
        return (len(seen), self.codec.passkey.key_parts(found[-1])[2]) if found else None

    def step(self, tokens, state):
        b, n = tokens.shape
        if self.guess:
            state.pos += n
            return torch.randn(b, n, self.vocab, generator=self.gen), state
        logits = torch.zeros(b, n, self.vocab)
        for r in range(b):
            for i in range(n):
                seen = state.seen[r]
                seen.append(int(tokens[r, i]))
                plan = state.plan[r]
                if plan is None and self.task == "niah_passkey":
                    plan = state.plan[r] = self.passkey_plan(seen)
                elif plan is None and self.codec.decode(seen[-12:]).endswith(self.trigger):
                    answer = solve(self.task, self.codec.templates, self.codec.decode(seen[-(self.window or 0) :]))
                    if answer is not None:
                        plan = state.plan[r] = (len(seen), self.codec.encode(answer))
                if plan is not None and len(seen) - plan[0] < len(plan[1]):
                    logits[r, i, plan[1][len(seen) - plan[0]]] = 1.0
        state.pos += n
        return logits, state


def tasks_frame(model_for, cfg, lengths, **kw):
    """run_suite of every synthetic task, each with its own reader."""
    frames = []
    for task in TASKS:
        res = run_suite(model_for(task), cfg, "ruler", block_size=16, seed=0, lengths=lengths, tasks=[task], **kw)
        frames.append(res.table)
    return pd.concat(frames, ignore_index=True)


class Recall(Reader):
    """Answers a repeated key with the token that followed its first occurrence (MQAR's perfect reader)."""

    def step(self, tokens, state):
        b, n = tokens.shape
        logits = torch.zeros(b, n, self.vocab)
        for r in range(b):
            for i in range(n):
                seen = state.seen[r]
                seen.append(int(tokens[r, i]))
                self.largest = max(getattr(self, "largest", 0), seen[-1])
                first = seen.index(seen[-1])
                if first < len(seen) - 1 and (self.window is None or len(seen) - 1 - first < self.window):
                    logits[r, i, seen[first + 1]] = 1.0
        state.pos += n
        return logits, state
