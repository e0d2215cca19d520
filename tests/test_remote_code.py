"""What `save_pretrained` of a CheXFound model writes for the Hub route: config, weights, the model folder's code
byte-equal to the installed files and free of cxrfm imports, and `auto_map`. Loading that folder where cxrfm is not
installed, with outputs equal to the installed model's, is tests/test_family_contract.py (every family)."""

import json
import os
import re
import sys

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel

MODEL_CODE_FILES = ("configuration_chexfound.py", "modeling_chexfound.py", "pipeline_cxr_feature_extraction.py")


def test_saved_folder_has_config_weights_code_and_auto_map(tmp_path):
    CheXFoundModel(CheXFoundConfig.from_preset("tiny")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "chexfound"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_chexfound.CheXFoundConfig",
        "AutoModel": "modeling_chexfound.CheXFoundModel",
    }
    assert config["custom_pipelines"]["cxr-feature-extraction"]["impl"] == (
        "pipeline_cxr_feature_extraction.CXRFeatureExtractionPipeline"
    )
    assert (tmp_path / "model.safetensors").is_file()
    source_dir = os.path.dirname(sys.modules[CheXFoundModel.__module__].__file__)
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(MODEL_CODE_FILES)
    for name in MODEL_CODE_FILES:
        copied = (tmp_path / name).read_text()
        assert copied == open(os.path.join(source_dir, name)).read(), name
        assert not re.search(r"^\s*(import|from)\s+cxrfm", copied, re.MULTILINE), name
