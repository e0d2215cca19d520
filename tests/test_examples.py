"""`make demo` keeps telling the whole story: run end to end in --quick mode, every promised artefact checked."""

import importlib.util
import json
from pathlib import Path

import torch
from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_story_end_to_end(tmp_path, capsys):
    from cxrfm.hub import check_publishable
    from cxrfm.modeling import CheXFoundModel, GLoRIForMultiLabel

    spec = importlib.util.spec_from_file_location("cxrfm_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "demo"
    summary = demo.main(["--quick", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert "[8/8] summary" in printed and printed.rstrip().endswith("*_metrics.json, *.csv")
    assert f"Everything is in {out.resolve()}" in printed
    assert "step" in printed.splitlines()[-len(summary["rows"]) - 4]  # the summary table header

    backbone, glori, clip, mgca = summary["folders"]
    for folder in summary["folders"]:
        assert check_publishable(folder) == [], folder
    # GLoRI was trained on the saved backbone folder: its frozen backbone is that folder's weights, bit for bit.
    trained = GLoRIForMultiLabel.from_pretrained(glori).backbone.state_dict()
    for key, value in CheXFoundModel.from_pretrained(backbone).state_dict().items():
        assert torch.equal(trained[key], value), key
    backbone_card = (backbone / "README.md").read_text()
    try:
        import cxrfm.training.pretrain_chexfound  # noqa: F401
        assert "pretrained 2 steps" in backbone_card and "pretraining_last_loss" in backbone_card
    except ImportError:
        assert "RANDOM weights" in backbone_card

    # The recipe's test AUROC and the one recomputed from the PNG files through `cxrfm predict/evaluate` agree.
    from_files = json.loads((out / "glori_metrics.json").read_text())["test"]
    recipe = summary["glori_results"]["test"]
    assert abs(from_files["macro"]["auroc"] - recipe["macro"]["auroc"]) < 1e-6
    glori_card = (glori / "README.md").read_text()
    assert "(20 resamples, seed 0)" in glori_card and "model-index" in glori_card
    assert "(20 resamples, seed 0)" in (clip / "README.md").read_text()
    assert summary["zero_shot"]["test"]["n_bootstrap"] == 20
    import pandas as pd

    labels = pd.read_csv(out / "labels.csv").drop(columns="file")
    both_classes = sorted(name.replace(" ", "_") for name in labels.columns if labels[name].nunique() == 2)
    assert len(both_classes) >= 2
    for kind in ("roc_glori", "roc_zero_shot"):  # one curve per finding with positives and negatives
        assert sorted(p.stem[4:] for p in (out / "plots" / kind).glob("roc_*.png")) == both_classes
    assert len(list((out / "plots" / "attention").glob("*.png"))) == 4
    # MGCA: pretrained (2 steps in --quick), probed with CIs from the saved folder, word maps drawn
    assert json.loads((mgca / "results.json").read_text())["steps"] == 2 and "MGCA" in (mgca / "README.md").read_text()
    probe = json.loads((out / "mgca_linear_probe.json").read_text())
    assert probe["args"]["model_name_or_path"] == str(mgca) and probe["results"]["1.0"]["auroc_ci"] is not None
    assert Image.open(out / "plots" / "mgca_words.png").size[0] > 0

    # The folder is marked as the demo's own (the next `make demo` replaces it); any other non-empty folder is
    # refused before any work is done.
    import pytest

    assert (out / ".cxrfm-demo").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
        demo.main(["--quick", "--output-dir", str(other)])
    assert (other / "notes.txt").read_text() == "keep"
