"""famlab's typed configuration: plain dataclasses (no torch, no model), loaded and merged with OmegaConf.

* :mod:`~famlab.config.errors`: the one error format (``config_error``), ``ConfigError``, the shared checks
* :mod:`~famlab.config.model`: :class:`ModelConfig`, every switch of the method
* :mod:`~famlab.config.data`: :class:`DataConfig`, every data and evaluation setting
* :mod:`~famlab.config.run`: :class:`RunConfig` and its training, logger and LoRA sections
* :mod:`~famlab.config.schema`: a nested dataclass as an OmegaConf schema (unknown keys, merging, building)
* :mod:`~famlab.config.trainable`: :func:`check_trainable`, what ``famlab train`` and sweeps check before building
* :mod:`~famlab.config.loading`: presets (``presets/*.yaml``), overrides, run files -> :class:`RunConfig`
"""

from famlab.config.data import TASKS, TEXT_CORPORA, TEXT_SPLITS, DataConfig, as_data_config
from famlab.config.errors import (
    ConfigError,
    check_choice,
    check_finite,
    check_flag,
    check_int,
    check_keys,
    check_number,
    config_error,
    is_finite,
    is_int,
    is_number,
    reject_unknown_keys,
    unknown_key_error,
)
from famlab.config.loading import (
    PRESET_DIR,
    load_run_config,
    load_run_config_dict,
    load_run_config_file,
    parse_overrides,
    preset_names,
    preset_path,
    run_config_to_yaml,
)
from famlab.config.model import (
    ATTENTION_KINDS,
    FAM_INITS,
    FAM_POSITIONS,
    FF_KINDS,
    INIT_SCHEMES,
    NORM_KINDS,
    ModelConfig,
)
from famlab.config.run import (
    COMPILE_MODES,
    MATMUL_PRECISIONS,
    TRAIN_COMPILE,
    TRAIN_OPTIMIZERS,
    TRAIN_PRECISIONS,
    TRAIN_SCHEDULES,
    WANDB_MODES,
    LoggerConfig,
    LoraConfig,
    RunConfig,
    TrainConfig,
)
from famlab.config.trainable import check_trainable, parameter_count, training_bytes

__all__ = [
    "ATTENTION_KINDS",
    "COMPILE_MODES",
    "FAM_INITS",
    "INIT_SCHEMES",
    "FAM_POSITIONS",
    "FF_KINDS",
    "MATMUL_PRECISIONS",
    "NORM_KINDS",
    "PRESET_DIR",
    "TASKS",
    "TEXT_CORPORA",
    "TEXT_SPLITS",
    "TRAIN_COMPILE",
    "TRAIN_OPTIMIZERS",
    "TRAIN_PRECISIONS",
    "TRAIN_SCHEDULES",
    "WANDB_MODES",
    "ConfigError",
    "DataConfig",
    "LoggerConfig",
    "LoraConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "as_data_config",
    "check_choice",
    "check_finite",
    "check_flag",
    "check_int",
    "check_keys",
    "reject_unknown_keys",
    "check_number",
    "check_trainable",
    "parameter_count",
    "training_bytes",
    "config_error",
    "is_finite",
    "is_int",
    "is_number",
    "load_run_config",
    "load_run_config_dict",
    "load_run_config_file",
    "parse_overrides",
    "preset_names",
    "preset_path",
    "run_config_to_yaml",
    "unknown_key_error",
]
