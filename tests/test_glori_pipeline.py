"""The `cxr-classification` pipeline (library and remote-code routes), the standard image-classification pipeline on
a saved GLoRI folder, and the attention overlays."""

import json
import os

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


def test_saved_pipeline_folder_runs_image_classification_and_cxr_classification(model_and_processor, image, tmp_path):
    model, processor = model_and_processor
    folder = save_classification_pipeline(model, processor, tmp_path / "glori")
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["cxr-classification"]["impl"] == "pipeline_cxr_classification.CXRClassificationPipeline"
    assert {"modeling_glori.py", "pipeline_cxr_classification.py", "image_processing_cxr.py"} <= set(os.listdir(folder))
    expected = expected_scores(model, processor, image)

    # Standard transformers pipeline: multi-label problem_type -> sigmoid scores.
    standard = pipeline("image-classification", model=str(folder), top_k=None)(image)
    np.testing.assert_allclose(sorted(item["score"] for item in standard), sorted(expected), atol=1e-5)

    # Library route: cxrfm is imported, so the installed pipeline serves the folder without trust_remote_code. The
    # Hub route (no cxrfm, trust_remote_code=True) is tests/test_family_contract.py.
    classifier = pipeline("cxr-classification", model=str(folder))
    assert type(classifier).__module__ == "cxrfm.modeling.chexfound.pipeline_cxr_classification"
    results = classifier(image, return_attention_maps=True)
    np.testing.assert_allclose([r["score"] for r in results], expected, atol=1e-6)
    assert results[0]["attention_map"].shape == (4, 4)


def test_plain_save_pretrained_folder_runs_cxr_classification(model_and_processor, image, tmp_path):
    """What recipes and `cxrfm convert glori` write (model.save_pretrained, no pipeline object) carries the pipeline."""
    model, processor = model_and_processor
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert list(config["custom_pipelines"]) == ["cxr-classification"]
    assert (tmp_path / "pipeline_cxr_classification.py").is_file()
    assert "custom_pipelines" not in config["backbone_config"]
    scores = {r["label"]: r["score"] for r in pipeline("cxr-classification", model=str(tmp_path))(image)}
    expected = expected_scores(model, processor, image)
    for index, label in LABELS.items():
        assert scores[label] == pytest.approx(float(expected[index]), abs=1e-6)


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
