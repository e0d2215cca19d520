"""Model cards render evaluation results into model-index metadata and a CI table."""

import pytest
from huggingface_hub import ModelCard

from cxrfm.model_cards import metrics_table, render_model_card

RESULTS = {
    "macro": {"auroc": 0.8125, "auroc_ci": (0.78, 0.84), "auprc": 0.5, "auprc_ci": (0.45, 0.55)},
    "per_class": {
        "Cardiomegaly": {"auroc": 0.9, "auroc_ci": (0.85, 0.95), "auprc": 0.6, "auprc_ci": (0.5, 0.7)},
        "Edema": {"auroc": 0.725, "auroc_ci": (0.7, 0.75), "auprc": 0.4, "auprc_ci": (0.35, 0.45)},
    },
}


def test_metrics_table_rows_and_ci_format():
    table = metrics_table(RESULTS).splitlines()
    assert table[2] == "| **macro** | 0.812 (0.780-0.840) | 0.500 (0.450-0.550) |"
    assert table[3].startswith("| Cardiomegaly | 0.900 (0.850-0.950)")
    assert len(table) == 2 + 1 + 2


def test_card_round_trips_eval_results(tmp_path):
    card = render_model_card(model_id="cxrfm/chexfound-tiny", family="chexfound",
                             architecture="ViT-L/16, 512 px", evaluations={"CheXpert": RESULTS},
                             training_data="Synthetic phantoms.")
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.pipeline_tag == "image-feature-extraction"
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert values == {("CheXpert", "auroc"): 0.8125, ("CheXpert", "auprc"): 0.5}
    assert "| Edema | 0.725 (0.700-0.750)" in loaded.text
    assert "not a medical device" in loaded.text


def test_card_without_results_says_so():
    card = render_model_card(model_id="m", family="mgca", architecture="ViT-B/16")
    assert "No evaluation results" in card.text
    assert card.data.eval_results is None


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="family='dino'"):
        render_model_card(model_id="m", family="dino", architecture="x")
