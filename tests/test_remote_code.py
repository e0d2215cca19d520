"""Hub route: a saved folder loads with `trust_remote_code=True` in a process where `cxrfm` cannot be imported."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel

try:
    from cxrfm.processing import CXRImageProcessor
except (ImportError, AttributeError):  # helper B's processor not there yet
    CXRImageProcessor = None

MODEL_CODE_FILES = ("configuration_chexfound.py", "modeling_chexfound.py")

# Runs in a fresh interpreter. The editable install puts a meta-path finder (module `__editable___cxrfm_*`)
# on sys.meta_path from a .pth file; removing it (and any sys.path entry holding a `cxrfm` folder) leaves the
# venv's site-packages usable while `cxrfm` is not importable, which the script asserts before loading.
SUBPROCESS_SCRIPT = r"""
import importlib.util, json, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p and not os.path.isdir(os.path.join(p or ".", "cxrfm"))]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("cxrfm") is None, "cxrfm is importable in the remote-code subprocess"

import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, pipeline

folder, io_path, image_path = sys.argv[1:4]
io = load_file(io_path)
result = {}
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
result["model_module"] = type(model).__module__
with torch.no_grad():
    out = model(io["pixel_values"])
    features = model.get_intermediate_layers(io["pixel_values"], n=2)
result["last_hidden_state_equal"] = torch.equal(out.last_hidden_state, io["last_hidden_state"])
result["pooler_output_equal"] = torch.equal(out.pooler_output, io["pooler_output"])
result["intermediate_equal"] = torch.equal(features[0][0], io["first_patch_tokens"])
if os.path.exists(os.path.join(folder, "preprocessor_config.json")):
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    result["processor_module"] = type(processor).__module__
    processed = processor(image_path, return_tensors="pt")["pixel_values"]
    result["pixel_values_equal"] = torch.equal(processed, io["processed"])
    extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    embeddings = torch.tensor(extractor(image_path))
    pooled = torch.tensor(extractor(image_path, pool=True))
    result["pipeline_shape"] = list(embeddings.shape)
    result["pipeline_max_abs_diff"] = (embeddings - io["pipeline_tokens"]).abs().max().item()
    result["pipeline_pool_max_abs_diff"] = (pooled - io["pipeline_pooled"]).abs().max().item()
result["cxrfm_imported"] = any(name == "cxrfm" or name.startswith("cxrfm.") for name in sys.modules)
print(json.dumps(result))
"""


def _randomized_tiny_model() -> CheXFoundModel:
    model = CheXFoundModel(CheXFoundConfig.from_preset("tiny")).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def _processor_ready() -> bool:
    return CXRImageProcessor is not None and getattr(CXRImageProcessor, "_auto_class", None) == "AutoImageProcessor"


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Save model (+ processor when available), run the subprocess once, return (folder, its JSON report)."""
    root = tmp_path_factory.mktemp("hub")
    folder = root / "chexfound-tiny"
    model = _randomized_tiny_model()
    model.save_pretrained(folder)

    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    image_path = root / "cxr.png"
    # 8-bit: the pipeline reads paths with transformers' load_image, which converts to 8-bit RGB.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)).save(image_path)
    with torch.no_grad():
        out = model(pixel_values)
        io = {
            "pixel_values": pixel_values,
            "last_hidden_state": out.last_hidden_state,
            "pooler_output": out.pooler_output,
            "first_patch_tokens": model.get_intermediate_layers(pixel_values, n=2)[0][0],
        }
        if _processor_ready():
            processor = CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
            processor.save_pretrained(folder)
            processed = processor(str(image_path), return_tensors="pt")["pixel_values"]
            image_out = model(processed)
            io.update(processed=processed, pipeline_tokens=image_out.last_hidden_state,
                      pipeline_pooled=image_out.pooler_output)
    save_file({k: v.contiguous().clone() for k, v in io.items()}, root / "io.safetensors")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(root / "modules"))
    completed = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, str(folder), str(root / "io.safetensors"), str(image_path)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return folder, json.loads(completed.stdout.strip().splitlines()[-1])


def test_saved_folder_has_config_weights_code_and_auto_map(round_trip):
    folder, _ = round_trip
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "chexfound"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_chexfound.CheXFoundConfig",
        "AutoModel": "modeling_chexfound.CheXFoundModel",
    }
    assert (folder / "model.safetensors").is_file()
    source_dir = os.path.dirname(sys.modules[CheXFoundModel.__module__].__file__)
    for name in MODEL_CODE_FILES:
        copied = (folder / name).read_text()
        assert copied == open(os.path.join(source_dir, name)).read(), name
        assert not re.search(r"^\s*(import|from)\s+cxrfm", copied, re.MULTILINE), name


def test_model_loads_as_remote_code_without_cxrfm(round_trip):
    _, report = round_trip
    assert report["model_module"].startswith("transformers_modules."), report["model_module"]
    assert report["cxrfm_imported"] is False
    assert report["last_hidden_state_equal"] and report["pooler_output_equal"] and report["intermediate_equal"]


@pytest.mark.skipif(
    not _processor_ready(),
    reason="cxrfm.processing.CXRImageProcessor missing or not registered for AutoImageProcessor",
)
def test_processor_and_feature_extraction_pipeline_without_cxrfm(round_trip):
    folder, report = round_trip
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoImageProcessor"].endswith("CXRImageProcessor")
    assert report["processor_module"].startswith("transformers_modules.")
    assert report["pixel_values_equal"]
    assert report["pipeline_shape"] == [1, 1 + 2 + 4, 32]  # [CLS, 2 registers, 2x2 patches]
    assert report["pipeline_max_abs_diff"] < 1e-5 and report["pipeline_pool_max_abs_diff"] < 1e-5
