"""`cxrfm demo [--output-dir DIR] [--quick]`: the whole cxrfm story on the synthetic phantom set, on a CPU.

1. phantom CXRs written as 16-bit PNG files with a labels CSV;
2. a tiny CheXFound backbone: pretrained for a few minutes with `cxrfm.training.pretrain_chexfound` when that
   recipe is installed, otherwise a RANDOM backbone, labelled as such everywhere; saved with its processor and card;
3. the saved backbone folder reloaded through the Auto classes (same embeddings), then GLoRI trained ON THAT FOLDER
   (`train_glori --backbone FOLDER`), evaluated with bootstrap CIs, saved as a Hub-ready pipeline folder with card;
4. `cxrfm predict` (attention overlays) and `cxrfm evaluate` (metrics JSON with CIs, ROC curves) on the PNG files;
5. a tiny relaxed CLIP fine-tuned on the phantom reports, `cxrfm zero-shot` + `cxrfm evaluate`, folder with card;
6. a tiny MGCA pretrained on the phantom image-report pairs (`pretrain_mgca`), its frozen encoder linear-probed
   (`linear_transfer`, AUROC with CIs) and one report's word-to-patch maps drawn;
7. every model folder checked against its family contract (`cxrfm push --dry-run` would accept it);
8. a summary table, and the output folder named at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_MARKER = ".cxrfm-demo"
FINDINGS = ["Cardiomegaly", "Edema", "Support Devices", "Pleural Effusion"]
# (num_images, pretraining steps, GLoRI epochs, GLoRI learning-rate grid, CLIP epochs, bootstrap resamples,
#  MGCA pretraining steps)
SETTINGS = {"full": (400, 60, 5, None, 4, 200, 150), "quick": (120, 2, 1, ["1e-3"], 1, 20, 2)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help="run the whole story on synthetic CXRs (a few minutes on a CPU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("cxrfm-demo"), help="where everything is written")
    parser.add_argument("--quick", action="store_true", help="fewer images, epochs and resamples (for tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser


class Story:
    """Numbered steps with timings on stdout, and the rows of the final summary table."""

    def __init__(self, total: int):
        self.total, self.index, self.rows = total, 0, []

    @contextmanager
    def step(self, title: str):
        self.index += 1
        print(f"[{self.index}/{self.total}] {title} ...", flush=True)
        start = time.perf_counter()
        record = {"step": title, "result": ""}
        yield record
        record["seconds"] = time.perf_counter() - start
        print(f"      {record['result']} ({record['seconds']:.1f} s)", flush=True)
        self.rows.append(record)

    def table(self) -> str:
        width = max(len(row["step"]) for row in self.rows)
        lines = [f"{'step':<{width}}  {'time':>7}  result", f"{'-' * width}  {'-' * 7}  {'-' * 6}"]
        lines += [f"{row['step']:<{width}}  {row['seconds']:>6.1f}s  {row['result']}" for row in self.rows]
        return "\n".join(lines)


def write_phantom_files(split, folder: Path) -> tuple[Path, list[str]]:
    """Test images as 16-bit PNGs (8-bit phantoms scaled by 257, so values are exact) and labels.csv."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from cxrfm.processing.datasets import get_label_names

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = get_label_names(split)
    columns = [names.index(f) for f in FINDINGS]
    rows = []
    for index, example in enumerate(split):
        path = images / f"phantom_{index:04d}.png"
        Image.fromarray(np.asarray(example["image"].convert("L"), dtype=np.uint16) * 257).save(path)
        labels = np.asarray(example["labels"])[columns]
        rows.append({"file": str(path), **{f: int(v) for f, v in zip(FINDINGS, labels)}})
    labels_csv = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(labels_csv, index=False)
    return labels_csv, [row["file"] for row in rows]


def make_backbone(folder: Path, runs: Path, max_steps: int, num_images: int) -> dict:
    """Pretrain a tiny CheXFound when the recipe exists, else save a random one; returns the facts for its card."""
    from cxrfm.modeling import CheXFoundConfig, CheXFoundModel
    from cxrfm.processing import CXRImageProcessor

    try:
        from cxrfm.training import pretrain_chexfound
    except ImportError:  # the demo still tells the rest of the story, with the backbone labelled RANDOM
        pretrain_chexfound = None
    if pretrain_chexfound is not None:
        config_path = Path(pretrain_chexfound.__file__).parent / "configs" / "pretrain_chexfound_tiny.yaml"
        summary = pretrain_chexfound.main(["--config", str(config_path), "--output_dir", str(runs / "pretrain"),
                                           "--max_steps", str(max_steps), "--phantom_num_images", str(num_images)])
        shutil.copytree(summary["export_dir"], folder)
        losses = [entry["loss"] for entry in summary["history"]]
        return {"backbone": f"pretrained {summary['step']} steps (DINO + iBOT + KoLeo on phantoms)",
                "pretraining_steps": summary["step"], "pretraining_first_loss": round(float(losses[0]), 4),
                "pretraining_last_loss": round(float(losses[-1]), 4)}
    config = CheXFoundConfig.from_preset("tiny", image_size=32, patch_size=4)
    CheXFoundModel(config).save_pretrained(folder)
    CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return {"backbone": "RANDOM weights (cxrfm.training.pretrain_chexfound is not installed)"}


def reload_check(folder: Path) -> float:
    """Max |difference| of embeddings between the installed class and the folder's remote code."""
    import numpy as np
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from cxrfm.modeling import CheXFoundModel

    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        original = CheXFoundModel.from_pretrained(folder).eval()(pixel_values=pixels).pooler_output
        return float((reloaded(pixel_values=pixels).pooler_output - original).abs().max())


def _macro(metrics: dict) -> str:
    macro = metrics["macro"]
    ci = macro.get("auroc_ci")
    return f"macro AUROC {macro['auroc']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _cli(argv: list[str]) -> None:
    """Run a `cxrfm` command in this process; its stdout (paths, tables) is the demo's to summarise, not to print."""
    from cxrfm.cli import main

    with redirect_stdout(io.StringIO()):
        code = main(argv + ["--no-progress"] if argv[0] in ("embed", "predict", "zero-shot") else argv)
    if code != 0:
        raise RuntimeError(f"`cxrfm {' '.join(argv)}` exited with {code}")


def run_demo(output_dir: Path, quick: bool = False, overwrite: bool = False) -> dict:
    """Run every step into `output_dir`; returns {"rows": summary rows, "folders": model folders, ...}."""
    import torch
    from transformers import set_seed

    import cxrfm  # noqa: F401  (registers the families)
    from cxrfm.hub import check_publishable
    from cxrfm.model_cards import write_results_and_card
    from cxrfm.processing.datasets.phantom import load_phantom

    num_images, pretrain_steps, glori_epochs, learning_rates, clip_epochs, n_bootstrap, mgca_steps = \
        SETTINGS["quick" if quick else "full"]
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        # A folder an earlier demo wrote (it carries the marker) is replaced, so `make demo` can run twice.
        if not (overwrite or (output_dir / DEMO_MARKER).is_file()):
            raise FileExistsError(f"{output_dir} is not empty; pass --overwrite or another --output-dir.")
        shutil.rmtree(output_dir)
    models, runs, plots = output_dir / "models", output_dir / "runs", output_dir / "plots"
    for folder in (models, runs, plots):
        folder.mkdir(parents=True, exist_ok=True)
    (output_dir / DEMO_MARKER).write_text("written by cxrfm demo; replaced by the next run\n")
    set_seed(0)
    story = Story(total=8)
    started = time.perf_counter()
    # The recipes log every step at INFO; the demo prints its own progress.
    for name in ("cxrfm", "accelerate", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)

    with story.step("phantom set -> 16-bit PNG files + labels.csv") as record:
        data = load_phantom(num_images=num_images, image_size=64, seed=0)
        labels_csv, files = write_phantom_files(data["test"], output_dir)
        record["result"] = f"{num_images} phantoms; {len(files)} test PNGs in {output_dir / 'images'}"

    backbone = models / "chexfound-tiny"
    with story.step("tiny CheXFound backbone, saved with processor and card") as record:
        facts = make_backbone(backbone, runs, pretrain_steps, num_images)
        write_results_and_card(backbone, "chexfound", {"dataset": "phantom", **facts}, datasets=["phantom"],
                               training_data="The synthetic phantom set of cxrfm (no patient data).")
        record["result"] = facts["backbone"]

    glori = models / "glori-tiny"
    with story.step("reload the backbone folder, train GLoRI on it, evaluate with CIs") as record:
        difference = reload_check(backbone)
        if difference > 1e-5:
            raise RuntimeError(f"{backbone}: remote code and installed class disagree by {difference:.2e}")
        from cxrfm.training import train_glori

        config = Path(train_glori.__file__).parent / "configs" / "glori_tiny.yaml"
        results = train_glori.main([
            "--config", str(config), "--backbone", str(backbone), "--image_processor", str(backbone),
            "--output_dir", str(runs / "glori"), "--phantom_num_images", str(num_images), "--num_epochs",
            str(glori_epochs), "--n_bootstrap", str(n_bootstrap), "--label_names", *FINDINGS,
            *(["--learning_rates", *learning_rates] if learning_rates else [])])
        shutil.copytree(runs / "glori" / "model", glori)
        write_results_and_card(glori, "glori", {"dataset": "phantom", "backbone_folder": str(backbone), **results},
                               datasets=["phantom"], training_data="cxrfm's synthetic phantom set, train split; "
                               f"head selected on validation; backbone: {facts['backbone']}.")
        record["result"] = f"reload max |diff| {difference:.1e}; test {_macro(results['test'])}"

    with story.step("cxrfm predict + evaluate on the PNG files (ROC curves, attention)") as record:
        predictions = output_dir / "glori_predictions.csv"
        _cli(["predict", str(glori), str(output_dir / "images"), "-o", str(predictions)])
        _cli(["predict", str(glori), *files[:4], "-o", str(runs / "attention.csv"), "--attention-dir",
              str(plots / "attention")])
        _cli(["evaluate", str(predictions), str(labels_csv), "-o", str(output_dir / "glori_metrics.json"),
              "--n-bootstrap", str(n_bootstrap), "--dataset", "phantom", "--roc-dir", str(plots / "roc_glori")])
        metrics = json.loads((output_dir / "glori_metrics.json").read_text())["test"]
        record["result"] = f"{_macro(metrics)} from the files; {len(list(plots.rglob('*.png')))} PNGs"

    clip = models / "relaxed-clip-tiny"
    with story.step("tiny relaxed CLIP on phantom reports, cxrfm zero-shot + evaluate") as record:
        from cxrfm.training import finetune_clip

        config = Path(finetune_clip.__file__).parent / "configs" / "finetune_clip_tiny.yaml"
        summary = finetune_clip.main(["--config", str(config), "--output_dir", str(runs / "clip"), "--num_epochs",
                                      str(clip_epochs), "--phantom_num_images", str(num_images)])
        best = max(summary["checkpoints"], key=lambda item: item[1])[0]
        shutil.copytree(best, clip, ignore=shutil.ignore_patterns("adapter"))
        scores = output_dir / "zero_shot_scores.csv"
        _cli(["zero-shot", str(clip), str(output_dir / "images"), "--findings", ",".join(FINDINGS), "-o", str(scores)])
        _cli(["evaluate", str(scores), str(labels_csv), "-o", str(output_dir / "zero_shot_metrics.json"),
              "--n-bootstrap", str(n_bootstrap), "--dataset", "phantom", "--roc-dir", str(plots / "roc_zero_shot")])
        zero_shot = json.loads((output_dir / "zero_shot_metrics.json").read_text())
        write_results_and_card(clip, "relaxed_clip", {"dataset": "phantom", "epochs": clip_epochs, **zero_shot},
                               datasets=["phantom"], training_data="Report sentences of cxrfm's synthetic phantoms.")
        record["result"] = f"zero-shot {_macro(zero_shot['test'])} ({', '.join(FINDINGS)})"

    mgca = models / "mgca-tiny"
    with story.step("tiny MGCA on phantom image-report pairs, linear probe with CIs, word maps") as record:
        from cxrfm.modeling.mgca import MGCAModel, MGCAProcessor
        from cxrfm.modeling.mgca.visualization_mgca import save_word_patch_overlays
        from cxrfm.training import linear_transfer, pretrain_mgca

        config = Path(pretrain_mgca.__file__).parent / "configs" / "mgca_tiny.yaml"
        pretrained = pretrain_mgca.main(["--config", str(config), "--output_dir", str(runs / "mgca"), "--max_steps",
                                         str(mgca_steps), "--phantom_num_images", str(num_images)])
        shutil.copytree(pretrained["model_dir"], mgca)
        probe = linear_transfer.main([
            "--model_name_or_path", str(mgca), "--dataset", "phantom", "--output_dir", str(runs / "mgca_linear"),
            "--fractions", "1.0", "--num_epochs", "30", "--n_bootstrap", str(n_bootstrap), "--label_names", *FINDINGS,
        ])[1.0]
        shutil.copy(runs / "mgca_linear" / "results.json", output_dir / "mgca_linear_probe.json")
        first = data["test"][0]
        save_word_patch_overlays(MGCAModel.from_pretrained(mgca).eval(), MGCAProcessor.from_pretrained(mgca),
                                 first["image"], pretrain_mgca.mgca_caption(first["report"]), plots / "mgca_words.png")
        low, high = probe["auroc_ci"]
        record["result"] = (f"{pretrained['step']} steps; probe macro AUROC {probe['auroc']:.3f} (95% CI {low:.3f}-"
                            f"{high:.3f}); word maps in plots/mgca_words.png")

    folders = [backbone, glori, clip, mgca]
    with story.step("check the model folders against their family contracts") as record:
        problems = {folder.name: check_publishable(folder) for folder in folders}
        failing = {name: reasons for name, reasons in problems.items() if reasons}
        if failing:
            raise RuntimeError(f"folders fail the contract: {failing}")
        record["result"] = f"{len(folders)} Hub-ready folders: " + ", ".join(folder.name for folder in folders)

    with story.step("summary") as record:
        record["result"] = f"total {time.perf_counter() - started:.0f} s, torch threads {torch.get_num_threads()}"
    print("\n" + story.table())
    print(f"\nEverything is in {output_dir.resolve()}: models/ (cards in README.md), plots/ (ROC, attention), "
          "*_metrics.json, *.csv")
    return {"rows": story.rows, "folders": folders, "glori_results": results, "zero_shot": zero_shot,
            "output_dir": output_dir}


def run(args: argparse.Namespace) -> int:
    run_demo(args.output_dir, quick=args.quick, overwrite=args.overwrite)
    return 0
