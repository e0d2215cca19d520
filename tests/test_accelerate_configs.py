"""The shipped Accelerate configs parse, and FSDP's transformer-based wrap finds each model's blocks."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

import cxrfm.training
from cxrfm import (CheXFoundConfig, CheXFoundModel, GLoRIConfig, GLoRIForMultiLabel, RelaxedCLIPConfig,
                   RelaxedCLIPModel)

CONFIGS = Path(cxrfm.training.__file__).parent / "configs" / "accelerate"

EXPECTED = {
    "cpu_2proc.yaml": (DistributedType.MULTI_CPU, 2),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8),
    "fsdp2.yaml": (DistributedType.FSDP, 8),
}


def test_every_config_is_shipped_and_parses():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    for name, (kind, processes) in EXPECTED.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert (config.distributed_type, config.num_processes) == (kind, processes), name
    zero3 = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config
    # Without it ZeRO-3 saves only sharded global_step folders, and save_pretrained has no weights.
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True
    assert load_config_from_file(str(CONFIGS / "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("model_cls, config", [
    (CheXFoundModel, lambda: CheXFoundConfig.from_preset("tiny")),
    (GLoRIForMultiLabel, lambda: GLoRIConfig.from_preset("tiny")),
    (RelaxedCLIPModel, lambda: RelaxedCLIPConfig.from_preset("tiny")),
])
def test_fsdp_wrap_classes_exist_in_each_model(model_cls, config):
    # TRANSFORMER_BASED_WRAP defaults to the model's _no_split_modules: every name must match a submodule
    # class, or FSDP raises "Could not find the transformer layer class" at launch.
    model = model_cls(config())
    present = {type(module).__name__ for module in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= present
