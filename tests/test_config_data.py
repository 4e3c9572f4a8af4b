"""famlab.config.data: DataConfig's checks, its curriculum, and the forms a data config may come in."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from famlab.config import DataConfig, as_data_config


def test_config_errors_name_key_value_and_allowed():  # moved from tests/test_data.py
    with pytest.raises(ValueError, match=re.escape("DataConfig.task='foo' is not allowed: expected one of passkey")):
        DataConfig(task="foo")
    with pytest.raises(ValueError, match="DataConfig.batch_size=0 is not allowed: expected an integer >= 1"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match="DataConfig.seq_len_schedule=.*steps strictly increasing from 0"):
        DataConfig(seq_len=128, seq_len_schedule=[[5, 64], [10, 128]])
    with pytest.raises(ValueError, match="DataConfig.seq_len_schedule=.*last seq_len equal to seq_len=256"):
        DataConfig(seq_len_schedule=[[0, 64], [10, 128]])
    with pytest.raises(ValueError, match="DataConfig.stateful=True is not allowed"):
        DataConfig(task="passkey", stateful=True)
    with pytest.raises(ValueError, match="DataConfig has no key 'seq_length' \\(did you mean 'seq_len'\\?\\)"):
        DataConfig.from_dict({"seq_length": 3})


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(passkey_pack=1), "DataConfig.passkey_pack=1 is not allowed: expected true or false"),
        (dict(recall_gap_max=-2), "DataConfig.recall_gap_max=-2 is not allowed: expected an integer >= -1"),
        (dict(text_repeat_weight=-0.5), "DataConfig.text_repeat_weight=-0.5 is not allowed: expected a number >= 0"),
        (dict(text_eval_split="dev"), "DataConfig.text_eval_split='dev' is not allowed: expected one of train, val"),
        (dict(passkey_eval_lengths=[]), "DataConfig.passkey_eval_lengths=[] is not allowed: expected a non-empty"),
        (dict(passkey_eval_lengths=[1, 0]), "expected multiples of seq_len > 0"),
        (dict(task="text", tokenizer="symbols"), "DataConfig.tokenizer='symbols' is not allowed: expected 'bytes' for"),
        (dict(recall_num_pairs=9, recall_key_vocab=8), "expected at most recall_key_vocab=8"),
        (dict(recall_num_queries=9), "expected 0 (all pairs) or at most recall_num_pairs=8"),
        (dict(passkey_train_blocks_min=3, passkey_train_blocks_max=2), "or >= passkey_train_blocks_min=3"),
        (dict(task="text", stateful=True, text_repeat_segment=4), "expected 0 when stateful=true"),
        (dict(seq_len=15, text_repeat_segment=9), "expected at most (shortest seq_len + 1) // 2 = 8"),
    ],
)
def test_cross_field_and_type_checks(changes, message):
    with pytest.raises(ValueError) as err:
        DataConfig(**changes)
    assert message in str(err.value)


def test_curriculum_lengths():
    cfg = DataConfig(seq_len=128, seq_len_schedule=((0, 32), (10, 64), (20, 128)))
    assert cfg.seq_len_schedule == [[0, 32], [10, 64], [20, 128]]  # plain lists, as YAML writes them
    assert [cfg.seq_len_at(k) for k in (0, 9, 10, 19, 20, 1000)] == [32, 32, 64, 64, 128, 128]
    assert cfg.min_seq_len == 32 and DataConfig(seq_len=96).min_seq_len == 96
    assert DataConfig(recall_num_pairs=5).num_queries == 5 and DataConfig(recall_num_queries=3).num_queries == 3


def test_replace_and_round_trip_validate():
    cfg = DataConfig(task="recall", seq_len=64)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(batch_size=4).batch_size == 4 and cfg.batch_size == 32
    with pytest.raises(ValueError, match="no key 'seq_lenn'"):
        cfg.replace(seq_lenn=3)
    with pytest.raises(ValueError, match="DataConfig.batch_size=0"):
        cfg.replace(batch_size=0)


def test_as_data_config_accepts_structured_and_plain_forms():
    cfg = DataConfig(task="recall", seq_len=128, seq_len_schedule=[[0, 64], [3, 128]])
    assert as_data_config(cfg) is cfg
    structured = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        OmegaConf.from_dotlist(["task=recall", "seq_len=128", "seq_len_schedule=[[0,64],[3,128]]"]),
    )
    assert as_data_config(structured) == cfg
    assert (
        as_data_config(OmegaConf.create({"task": "recall", "seq_len": 128, "seq_len_schedule": [[0, 64], [3, 128]]}))
        == cfg
    )
    assert as_data_config({"task": "recall", "seq_len": 128, "seq_len_schedule": [[0, 64], [3, 128]]}) == cfg
    with pytest.raises(ValueError, match="no key 'tsk'"):
        as_data_config({"tsk": "recall"})
    with pytest.raises(TypeError, match="expected a DataConfig, DictConfig or dict, got list"):
        as_data_config([("task", "recall")])
