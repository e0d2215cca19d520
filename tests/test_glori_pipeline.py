"""The `cxr-classification` pipeline (library and remote-code routes), the standard image-classification pipeline on
a saved GLoRI folder, and the attention overlays."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from cxrfm.modeling import GLoRIConfig, GLoRIForMultiLabel
from cxrfm.modeling.chexfound.configuration_chexfound import CheXFoundConfig
from cxrfm.pipelines import save_classification_pipeline
from cxrfm.processing import CXRImageProcessor
from cxrfm.visualization import overlay_attention, save_attention_overlays, upsample_attention

LABELS = {0: "Cardiomegaly", 1: "Edema", 2: "Pleural Effusion"}


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    backbone = CheXFoundConfig.from_preset("tiny", num_hidden_layers=4, image_size=32, patch_size=8)
    config = GLoRIConfig(backbone_config=backbone, decoder_dim=8, num_heads=2, ffn_dim=16, id2label=LABELS)
    processor = CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return GLoRIForMultiLabel(config).eval(), processor


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((40, 36)).astype(np.float32)


def expected_scores(model, processor, image) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(**processor(image, return_tensors="pt")).logits)[0].numpy()


def test_pipeline_scores_every_finding_with_attention(model_and_processor, image, tmp_path):
    model, processor = model_and_processor
    classifier = pipeline("cxr-classification", model=model, image_processor=processor)
    results = classifier(image, return_attention_maps=True)
    assert [item["label"] for item in results] == list(LABELS.values())  # all findings, model order
    np.testing.assert_allclose([item["score"] for item in results], expected_scores(model, processor, image), atol=1e-6)
    for item in results:
        assert item["attention_map"].shape == (4, 4) and item["attention_map"].sum() == pytest.approx(1.0, abs=1e-5)

    png = tmp_path / "cxr.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(png)  # paths are read by the image processor itself
    top = classifier([str(png), str(png)], top_k=2)
    assert len(top) == 2 and len(top[0]) == 2 and "attention_map" not in top[0][0]
    assert top[0][0]["score"] >= top[0][1]["score"]
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        classifier(image, top_k=0)


def test_saved_folder_loads_with_remote_code_and_image_classification(model_and_processor, image, tmp_path):
    model, processor = model_and_processor
    folder = save_classification_pipeline(model, processor, tmp_path / "glori")
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["cxr-classification"]["impl"] == "pipeline_cxr_classification.CXRClassificationPipeline"
    assert {"modeling_glori.py", "pipeline_cxr_classification.py", "image_processing_cxr.py"} <= set(os.listdir(folder))
    expected = expected_scores(model, processor, image)

    # Standard transformers pipeline: multi-label problem_type -> sigmoid scores.
    standard = pipeline("image-classification", model=str(folder), top_k=None)(image)
    np.testing.assert_allclose(sorted(item["score"] for item in standard), sorted(expected), atol=1e-5)

    # Hub route: a fresh interpreter where cxrfm cannot be imported; everything comes from the folder.
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["cxrfm"] = None
        import numpy as np
        from transformers import pipeline
        classifier = pipeline("cxr-classification", model={str(folder)!r}, trust_remote_code=True)
        results = classifier(np.load({str(tmp_path / 'image.npy')!r}), return_attention_maps=True)
        print(json.dumps({{"modules": [type(classifier).__module__, type(classifier.model).__module__],
                          "scores": [r["score"] for r in results], "map_shape": list(results[0]["attention_map"].shape)}}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in remote["modules"])
    np.testing.assert_allclose(remote["scores"], expected, atol=1e-4)
    assert remote["map_shape"] == [4, 4]


def test_attention_overlay_and_png(tmp_path):
    attention = np.zeros((4, 4), dtype=np.float32)
    attention[0, 3] = 1.0  # all attention on the top-right patch
    upsampled = upsample_attention(attention, (32, 32))
    assert upsampled.shape == (32, 32) and upsampled.max() == pytest.approx(1.0)
    assert upsampled[:8, 24:].mean() > 0.5 and upsampled[16:, :16].max() == 0.0

    grey = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    overlay = overlay_attention(np.stack([grey] * 3), attention, max_alpha=0.5)  # (C, H, W) input
    assert overlay.shape == (32, 32, 3) and 0.0 <= overlay.min() and overlay.max() <= 1.0
    np.testing.assert_allclose(overlay[31, 0], [grey[31, 0]] * 3)  # far from the attention: the image itself
    assert overlay[2, 29, 1] > overlay[2, 29, 0]  # attended region is tinted green

    findings = [{"label": "Edema", "score": 0.9, "attention_map": attention},
                {"label": "Cardiomegaly", "score": 0.1, "attention_map": attention.T}]
    path = save_attention_overlays(grey, findings, tmp_path / "overlays.png")
    assert Image.open(path).size[0] > 100
    with pytest.raises(ValueError, match="return_attention_maps=True"):
        save_attention_overlays(grey, [{"label": "Edema", "score": 0.9}], tmp_path / "x.png")
