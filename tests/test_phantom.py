"""Phantom set (processing/datasets/phantom.py) and the shared schema helpers (processing/datasets/_common.py,
through the public cxrfm.processing.datasets)."""

import re

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Value, load_from_disk
from datasets import Image as HFImage

from cxrfm.processing.datasets import (
    collate_labels,
    cxr_features,
    encode_labels,
    get_label_names,
    is_frontal_view,
    labels_to_tensor,
    normalize_view,
    patient_level_split,
)
from cxrfm.processing.datasets.phantom import (
    PHANTOM_IMPRESSIONS,
    PHANTOM_NEGATIONS,
    PHANTOM_PREVALENCE,
    PHANTOM_SENTENCES,
    _draw_findings,
    load_phantom,
    make_phantom_files,
    render_phantom_images,
)
from cxrfm.processing.labels import CHEXPERT_5, CHEXPERT_13, CHEXPERT_14, CXR_LT_40
from cxrfm.processing.text import extract_sections, split_sentences


@pytest.fixture(scope="module")
def phantom():
    return load_phantom(num_images=300, image_size=48, seed=7, with_survival=True)


def _raw_images(dataset):
    return [row["bytes"] for row in dataset.cast_column("image", HFImage(decode=False))["image"]]


# ---------------------------------------------------------------- schema / label sets -----------


def test_label_sets():
    assert len(CXR_LT_40) == 40 and list(CXR_LT_40) == sorted(CXR_LT_40, key=str.lower)
    assert CXR_LT_40[0] == "Adenopathy" and CXR_LT_40[-1] == "Tuberculosis" and "Round(ed) Atelectasis" in CXR_LT_40
    assert len(CHEXPERT_14) == 14 and CHEXPERT_14[0] == "No Finding" and CHEXPERT_13 == CHEXPERT_14[1:]
    assert set(CHEXPERT_5) <= set(CHEXPERT_13)


def test_cxr_features_columns_and_errors():
    features = cxr_features(["A", "B"], with_masks=True, with_survival=True, extra={"age": Value("float32")})
    assert list(features)[:4] == ["image", "image_path", "labels", "positive_labels"]
    assert {"report", "findings", "impression", "view", "is_frontal", "patient_id", "study_id", "boxes", "masks",
            "survival_time", "survival_event", "age"} <= set(features)
    assert features["labels"].length == 2
    assert "report" not in cxr_features(["A"], with_report=False)
    with pytest.raises(ValueError, match="duplicates"):
        cxr_features(["A", "A"])
    with pytest.raises(ValueError, match="clashes"):
        cxr_features(["A"], extra={"view": Value("string")})
    with pytest.raises(TypeError, match="single string"):
        cxr_features("Atelectasis")


def test_label_names_survive_transforms_and_disk(phantom, tmp_path):
    train = phantom["train"]
    assert get_label_names(phantom) == list(CXR_LT_40)
    transformed = [
        train.filter(lambda row: row["is_frontal"]),
        train.select(range(5)),
        train.map(lambda row: {"report": row["report"].lower(), "labels": row["labels"]}),
        train.train_test_split(test_size=0.5, seed=0)["test"],
        train.to_iterable_dataset(),
    ]
    for dataset in transformed:
        assert get_label_names(dataset) == list(CXR_LT_40)
    phantom.save_to_disk(str(tmp_path / "saved"))
    reloaded = load_from_disk(str(tmp_path / "saved"))
    assert get_label_names(reloaded) == list(CXR_LT_40)
    assert get_label_names(reloaded["test"].features) == list(CXR_LT_40)
    assert reloaded["train"][0]["report"] == train[0]["report"]
    with pytest.raises(ValueError, match="positive_labels"):
        get_label_names(Dataset.from_dict({"labels": [[1.0]]}))
    with pytest.raises(TypeError, match="Expected a datasets"):
        get_label_names([1, 2])


def test_encode_labels_by_name_and_tensors():
    names = ["Atelectasis", "Edema", "Pleural Effusion"]
    vector = encode_labels({"Pleural Effusion": 1, "Atelectasis": 0.0, "Unrelated": 1}, names)
    assert vector[0] == 0.0 and np.isnan(vector[1]) and vector[2] == 1.0
    numpy_values = encode_labels({"Atelectasis": np.float32("nan"), "Edema": np.int64(1), "Pleural Effusion": True}, names)
    assert np.isnan(numpy_values[0]) and numpy_values[1:] == [1.0, 1.0]
    with pytest.raises(ValueError, match="Edema.*-1"):
        encode_labels({"Edema": -1}, names)
    batch = collate_labels([{"labels": vector}, {"labels": [1.0, 0.0, float("nan")]}])
    assert batch["labels"].shape == (2, 3) and batch["labels"].dtype == torch.float32
    assert batch["label_mask"].tolist() == [[True, False, True], [True, True, False]]
    assert torch.equal(batch["labels"], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        labels_to_tensor([1.0, 2.0])


def test_views():
    assert normalize_view(" ap supine ") == "AP" and normalize_view("Lateral") == "LATERAL"
    assert normalize_view(None) == "" and normalize_view(float("nan")) == ""
    assert is_frontal_view("PA") and is_frontal_view("ap") and is_frontal_view("AP AXIAL")
    assert not is_frontal_view("LATERAL") and not is_frontal_view("LL") and not is_frontal_view("")


# ---------------------------------------------------------------- splits -------------------------


def test_patient_level_split_disjoint_deterministic_order_free():
    rng = np.random.default_rng(0)
    patients = [f"p{int(i)}" for i in rng.integers(0, 200, size=1000)]
    splits = patient_level_split(patients, (0.8, 0.1, 0.1), seed=3)
    assert sum(len(index) for index in splits.values()) == len(patients)
    groups = {name: {patients[i] for i in index} for name, index in splits.items()}
    assert not (groups["train"] & groups["validation"]) and not (groups["train"] & groups["test"])
    assert not (groups["validation"] & groups["test"])
    n_unique = len(set(patients))
    assert len(groups["train"]) == round(0.8 * n_unique) and len(groups["test"]) == n_unique - round(0.9 * n_unique)
    again = patient_level_split(patients, (0.8, 0.1, 0.1), seed=3)
    assert all(np.array_equal(splits[name], again[name]) for name in splits)
    shuffled_order = rng.permutation(len(patients))
    shuffled = patient_level_split([patients[i] for i in shuffled_order], (0.8, 0.1, 0.1), seed=3)
    assert {patients[shuffled_order[i]] for i in shuffled["test"]} == groups["test"]
    other_seed = patient_level_split(patients, (0.8, 0.1, 0.1), seed=4)
    assert {patients[i] for i in other_seed["test"]} != groups["test"]
    with pytest.raises(ValueError, match="sum to 1"):
        patient_level_split(patients, (0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="no patient id"):
        patient_level_split(["a", None], (0.5, 0.5), split_names=("x", "y"))
    with pytest.raises(ValueError, match="no patient id"):
        patient_level_split(["a", float("nan")], (0.5, 0.5), split_names=("x", "y"))


def test_phantom_splits_are_patient_disjoint(phantom):
    patients = {name: set(split["patient_id"]) for name, split in phantom.items()}
    assert set(phantom) == {"train", "validation", "test"}
    assert not (patients["train"] & patients["validation"]) and not (patients["train"] & patients["test"])
    assert not (patients["validation"] & patients["test"])
    assert sum(split.num_rows for split in phantom.values()) == 300


# ---------------------------------------------------------------- determinism / speed ---------------


def test_phantom_deterministic_by_seed():
    first = load_phantom(num_images=24, image_size=32, seed=1)
    second = load_phantom(num_images=24, image_size=32, seed=1)
    other = load_phantom(num_images=24, image_size=32, seed=2)
    for split in first:
        assert _raw_images(first[split]) == _raw_images(second[split])
        assert first[split]["report"] == second[split]["report"]
        assert first[split]["labels"] == second[split]["labels"]
    all_first = sum((_raw_images(first[s]) for s in first), [])
    all_other = sum((_raw_images(other[s]) for s in other), [])
    assert all(a != b for a, b in zip(sorted(all_first), sorted(all_other)))


def test_phantom_image_properties(phantom):
    row = phantom["train"][0]
    image = np.asarray(row["image"])
    assert image.shape == (48, 48) and image.dtype == np.uint8
    assert row["image_path"] == ""
    # CXR-like: dark air outside the body, dark lungs, bright mediastinum/spine in the middle.
    assert image[:, :3].mean() < 40 and image[20:30, 22:26].mean() > image[20:30, 10:16].mean() + 40
    views = set(phantom["train"]["view"])
    assert {"PA", "AP", "LATERAL"} <= views
    assert all(row_view != "LATERAL" for row_view, frontal in zip(phantom["train"]["view"], phantom["train"]["is_frontal"]) if frontal)
    sixteen = load_phantom(num_images=4, image_size=32, seed=0, bit_depth=16, with_masks=False)
    big = np.asarray(sixteen["train"][0]["image"])
    assert big.dtype in (np.uint16, np.int32) and big.max() > 255


# ---------------------------------------------------------------- labels / prevalence ---------------


def test_prevalence_is_long_tailed():
    present = _draw_findings(np.random.default_rng(0), 100_000)
    observed = present.mean(axis=0)
    expected = np.array([PHANTOM_PREVALENCE[name] for name in CXR_LT_40])
    finding = np.array([name != "Normal" for name in CXR_LT_40])
    assert np.all(np.abs(observed[finding] - expected[finding]) <= 4 * np.sqrt(expected[finding] * (1 - expected[finding]) / 1e5) + 1e-4)
    assert (expected[finding] < 0.01).sum() >= 10 and (expected[finding] >= 0.15).sum() >= 4
    assert expected[finding].max() / expected[finding].min() >= 100
    normal = present[:, CXR_LT_40.index("Normal")]
    assert np.array_equal(normal, ~present[:, finding].any(axis=1))


# ---------------------------------------------------------------- images vs findings --------------


def _dilate(mask, radius=2):
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


@pytest.mark.parametrize("image_size", [64])
def test_each_finding_changes_only_its_mask(image_size):
    ids = [0, 1, 2, 3]
    lateral = np.array([False, False, False, True])
    clean, clean_masks = render_phantom_images(np.zeros((4, 40), bool), image_size=image_size, seed=0, lateral=lateral, image_ids=ids)
    assert all(not masks for masks in clean_masks)
    for k, name in enumerate(CXR_LT_40):
        present = np.zeros((4, 40), bool)
        present[:, k] = True
        images, masks = render_phantom_images(present, image_size=image_size, seed=0, lateral=lateral, image_ids=ids)
        for i in range(4):
            diff = np.abs(images[i].astype(float) - clean[i].astype(float)) / 255
            if name == "Normal":
                assert not masks[i] and diff.max() == 0
                continue
            mask = masks[i][name]
            assert mask.sum() >= 5, (name, i)
            assert diff[mask].mean() >= 0.08, (name, i, diff[mask].mean())
            assert diff[~_dilate(mask)].sum() <= 0.05 * diff.sum(), (name, i)


def test_one_sided_findings_are_on_the_reported_side(phantom):
    checked = 0
    for row in phantom["train"]:
        if not row["is_frontal"]:
            continue
        for box, label in zip(row["boxes"], row["box_labels"]):
            name = CXR_LT_40[label]
            if "{side}" not in PHANTOM_SENTENCES[name] or name in ("Edema", "Fibrosis"):
                continue
            sentence = next(s for s in split_sentences(row["findings"]) if _matches(PHANTOM_SENTENCES[name], s))
            centre_x = (box[0] + box[2]) / 2 / 48
            # The patient's right is on the image's left.
            assert (centre_x < 0.5) == (" right " in f" {sentence} "), (name, sentence, centre_x)
            checked += 1
    assert checked >= 20


def test_boxes_and_masks_match_labels(phantom):
    row = next(r for r in phantom["train"] if len(r["box_labels"]) >= 2)
    for box, mask_image in zip(row["boxes"], row["masks"]):
        mask = np.asarray(mask_image) > 0
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    for row in phantom["validation"]:
        positives = {i for i, value in enumerate(row["labels"]) if value == 1}
        assert set(row["positive_labels"]) == positives
        assert set(row["box_labels"]) <= positives - {CXR_LT_40.index("Normal")}


# ---------------------------------------------------------------- reports ------------------------


def _matches(template, sentence):
    pattern = re.escape(template).replace(re.escape("{side}"), "(right|left)")
    return re.fullmatch(pattern, sentence) is not None


def test_reports_state_present_and_negate_only_absent(phantom):
    negation_of = {sentence: name for name, sentence in PHANTOM_NEGATIONS.items()}
    n_negations = 0
    for split in phantom.values():
        for row in split:
            present = {name for name, value in zip(CXR_LT_40, row["labels"]) if value == 1}
            stated, negated = set(), set()
            for sentence in split_sentences(row["findings"]):
                if sentence in negation_of:
                    negated.add(negation_of[sentence])
                    continue
                owners = [name for name, template in PHANTOM_SENTENCES.items() if _matches(template, sentence)]
                assert len(owners) == 1, sentence
                stated.add(owners[0])
            assert stated == present, (row["findings"], present)
            assert negated and not (negated & present)
            n_negations += len(negated)
            impression = set(split_sentences(row["impression"]))
            assert impression == {PHANTOM_IMPRESSIONS[name] for name in present}
            sections = extract_sections(row["report"])
            assert (sections["findings"], sections["impression"]) == (row["findings"], row["impression"])
    assert n_negations > 300


def test_nan_unmentioned_labels():
    dataset = load_phantom(num_images=40, image_size=32, seed=3, nan_unmentioned=True, with_masks=False)["train"]
    negation_of = {sentence: name for name, sentence in PHANTOM_NEGATIONS.items()}
    for row in dataset:
        negated = {negation_of[s] for s in split_sentences(row["findings"]) if s in negation_of}
        for name, value in zip(CXR_LT_40, row["labels"]):
            if name in negated:
                assert value == 0
            elif value != 1:
                assert np.isnan(value), (name, value)


# ---------------------------------------------------------------- survival / files ----------------


def test_survival_correlates_with_risk_findings():
    from lifelines.utils import concordance_index

    dataset = load_phantom(num_images=600, image_size=16, seed=5, with_survival=True, with_masks=False)["train"]
    frontal = dataset.filter(lambda row: row["is_frontal"])
    risk = np.array([row[CXR_LT_40.index("Cardiomegaly")] + row[CXR_LT_40.index("Pleural Effusion")] + row[CXR_LT_40.index("Edema")]
                     for row in frontal["labels"]])
    time, event = np.array(frontal["survival_time"]), np.array(frontal["survival_event"])
    assert 0.1 < event.mean() < 0.9 and time.min() > 0 and time.max() <= 12.0
    assert concordance_index(time, -risk, event) > 0.6


def test_make_phantom_files_round_trip(tmp_path):
    in_memory = load_phantom(num_images=12, image_size=32, seed=4, with_masks=False)
    on_disk = make_phantom_files(tmp_path, num_images=12, image_size=32, seed=4, with_masks=False)
    for split in in_memory:
        assert on_disk[split].features == in_memory[split].features
        for memory_row, disk_row in zip(in_memory[split], on_disk[split]):
            assert disk_row["image_path"].startswith(str(tmp_path)) and disk_row["image_path"].endswith(".png")
            assert np.array_equal(np.asarray(disk_row["image"]), np.asarray(memory_row["image"]))
    assert isinstance(on_disk["train"].features, Features)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        load_phantom(num_images=0)
    with pytest.raises(ValueError, match="image_size"):
        render_phantom_images(np.zeros((1, 40), bool), image_size=8)
    with pytest.raises(ValueError, match=r"\(B, 40\)"):
        render_phantom_images(np.zeros((1, 14), bool))


# ---------------------------------------------------------------- streaming ----------------------


def test_streaming_matches_in_memory_and_shards_by_node():
    from datasets.distributed import split_dataset_by_node

    in_memory = load_phantom(num_images=120, image_size=24, seed=9)
    streamed = load_phantom(num_images=120, image_size=24, seed=9, streaming=True, num_shards=4)
    assert get_label_names(streamed) == list(CXR_LT_40)
    rows = list(streamed["train"])
    assert len(rows) == in_memory["train"].num_rows
    undecoded = in_memory["train"].cast_column("image", HFImage(decode=False))
    for streamed_row, memory_row, raw in zip(rows, in_memory["train"], undecoded):
        assert streamed_row["study_id"] == memory_row["study_id"] and streamed_row["report"] == memory_row["report"]
        assert streamed_row["labels"] == memory_row["labels"] and streamed_row["boxes"] == memory_row["boxes"]
        assert np.array_equal(np.asarray(streamed_row["image"]), np.asarray(memory_row["image"]))
    per_node = [[row["study_id"] + row["view"] for row in split_dataset_by_node(streamed["train"], rank, 2)]
                for rank in range(2)]
    assert per_node[0] and per_node[1] and not set(per_node[0]) & set(per_node[1])
    assert sorted(per_node[0] + per_node[1]) == sorted(row["study_id"] + row["view"] for row in rows)


def test_streaming_memory_is_flat():
    """Rows are rendered chunk by chunk and not retained: after warm-up, memory does not grow with rows
    (380 retained rows would hold ~1 MB: PNG, report, 40 labels each)."""
    import tracemalloc

    streamed = load_phantom(num_images=600, image_size=16, seed=0, streaming=True, with_masks=False, chunk_size=32)
    tracemalloc.start()
    try:
        for index, _ in enumerate(streamed["train"]):
            if index == 100:
                after_warm_up = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index > 400
    assert current - after_warm_up < 500_000 and peak - after_warm_up < 4_000_000, (after_warm_up, current, peak)


def test_labels_only_phantom_has_the_same_rows_without_pixels():
    images = load_phantom(num_images=30, image_size=32, seed=3)
    stats = load_phantom(num_images=30, image_size=32, seed=3, labels_only=True)
    for split in images:
        assert "image" not in stats[split].column_names and "masks" not in stats[split].column_names
        for column in ("labels", "report", "patient_id", "view"):
            assert stats[split][column] == images[split][column]
    with pytest.raises(ValueError, match="labels_only=True is not supported"):
        make_phantom_files("/nonexistent", labels_only=True)
