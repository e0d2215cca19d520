"""The Hub contract, for every family in `cxrfm.contract.FAMILIES`: a saved folder loads and runs its pipelines in a
process where cxrfm and every package a Hub user lacks are blocked, with outputs equal to the installed code's;
with cxrfm imported the same folder loads without `trust_remote_code`. One subprocess per family."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, pipeline

import cxrfm  # noqa: F401  (library route: registers every family, processor and pipeline)
from cxrfm.contract import FAMILIES, check_folder, save_family_folder

pydicom = pytest.importorskip("pydicom")
from dicom_fixtures import make_dicom, save_dicom  # noqa: E402

# Runs in a fresh interpreter. Hides the editable cxrfm install (its meta-path finder and any sys.path entry with a
# `cxrfm` folder), then blocks every installed top-level package that is neither in the plain Hub set nor one of its
# dependencies (what `pip install` of the plain set brings): `sys.modules[name] = None` makes `import name` raise
# and `importlib.util.find_spec(name)` return None, so transformers sees the package as absent, as in a fresh venv.
# pydicom is blocked too until the DICOM case, which then unblocks it.
SUBPROCESS_SCRIPT = textwrap.dedent(
    r'''
    import time
    START = time.perf_counter()
    import importlib.metadata as metadata, importlib.util, json, os, re, sys
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path[:] = [p for p in sys.path if "__editable__" not in p and not os.path.isdir(os.path.join(p or ".", "cxrfm"))]
    sys.path_importer_cache.clear()
    assert importlib.util.find_spec("cxrfm") is None, "cxrfm is importable in the remote-code subprocess"

    from packaging.requirements import Requirement

    def canonical(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    allowed, todo = set(), ["torch", "torchvision", "transformers", "timm", "safetensors", "huggingface-hub",
                            "tokenizers", "pillow", "numpy", "pyyaml"]
    while todo:
        dist = canonical(todo.pop())
        if dist in allowed:
            continue
        allowed.add(dist)
        try:
            requirements = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    blocked = sorted(
        module for module, dists in metadata.packages_distributions().items()
        if module.isidentifier() and module not in sys.stdlib_module_names
        and not any(canonical(dist) in allowed for dist in dists)
    )
    for module in blocked:
        sys.modules[module] = None
    result_blocking_seconds = time.perf_counter() - START
    assert "pydicom" in blocked and "sklearn" in blocked and "accelerate" in blocked, blocked

    import numpy as np
    import torch
    import transformers
    from PIL import Image

    spec = json.load(open(sys.argv[1]))
    folder, inputs = spec["folder"], spec["inputs"]
    result = {"blocking_seconds": result_blocking_seconds, "blocked_count": len(blocked), "model_modules": {}, "outputs": {}, "pipelines": {}, "errors": {}}

    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    result["config_module"] = type(config).__module__
    models = {name: getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval()
              for name in spec["auto_classes"]}
    for name, model in models.items():
        result["model_modules"][name] = type(model).__module__
    model = models[spec["auto_classes"][0]]
    processor = getattr(transformers, spec["processor_auto_class"]).from_pretrained(folder, trust_remote_code=True)
    result["processor_module"] = type(processor).__module__

    def run_model(image):
        text = {"text": spec["text_inputs"]} if spec["text_inputs"] else {}
        batch = processor(images=image, return_tensors="pt", **text)
        with torch.no_grad():
            output = model(**batch)
        return {key: output[key].tolist() for key in spec["output_names"]}

    def scores(output):
        if isinstance(output, list) and output and isinstance(output[0], dict):
            return {item.get("label", item.get("finding")): item.get("score", item.get("probability")) for item in output}
        return output

    pipes = {task: transformers.pipeline(task, model=folder, trust_remote_code=True) for task in spec["tasks"]}
    result["pipeline_modules"] = {task: type(pipe).__module__ for task, pipe in pipes.items()}

    def run_all(kind, image, tasks):
        result["outputs"][kind] = run_model(image)
        for task in tasks:
            result["pipelines"].setdefault(task, {})[kind] = scores(pipes[task](image, **spec["tasks"][task]))

    png16 = inputs["png16"]
    run_all("array", np.load(inputs["array"]), [])
    run_all("png16_path", png16, spec["custom_tasks"])
    run_all("png16_bytes", open(png16, "rb").read(), [])
    run_all("pil8", Image.open(inputs["pil8"]), spec["tasks"])
    for task in spec["tasks"]:
        if task not in spec["custom_tasks"]:  # transformers' own pipelines decode paths to 8-bit first
            try:
                pipes[task](png16, **spec["tasks"][task])
            except ValueError as error:
                result["errors"][task + " png16"] = str(error)
    try:
        run_model(inputs["dicom"])
    except ImportError as error:
        result["errors"]["dicom without pydicom"] = str(error)
    del sys.modules["pydicom"]  # the DICOM case: pydicom allowed
    run_all("dicom_path", inputs["dicom"], spec["custom_tasks"])
    result["cxrfm_imported"] = any(
        (name == "cxrfm" or name.startswith("cxrfm.")) and module is not None for name, module in sys.modules.items()
    )
    result["seconds"] = time.perf_counter() - START
    print(json.dumps(result))
    '''
)


def _scores(output):
    if isinstance(output, list) and output and isinstance(output[0], dict):
        return {item.get("label", item.get("finding")): item.get("score", item.get("probability")) for item in output}
    return output


def _inputs(root):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (44, 40), dtype=np.uint8)
    np.save(root / "array.npy", array)
    png16 = root / "sixteen.png"
    values = rng.integers(20913, 55182, (40, 36)).astype(np.uint16)
    values[0, 0], values[-1, -1] = 20913, 55181
    Image.fromarray(values).save(png16)
    pil8 = root / "eight.png"
    Image.fromarray(rng.integers(0, 256, (36, 44), dtype=np.uint8)).save(pil8)
    dicom = save_dicom(make_dicom(rng.integers(0, 4096, (40, 40)).astype(np.uint16)), root / "x.dcm")
    return {"array": str(root / "array.npy"), "png16": str(png16), "pil8": str(pil8), "dicom": str(dicom)}


def _run_model(family, model, processor, image):
    text = {"text": list(family.text_inputs)} if family.text_inputs else {}
    with torch.no_grad():
        output = model(**processor(images=image, return_tensors="pt", **text))
    return {key: output[key] for key in family.output_names}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """family name -> (family, folder, installed model, processor, inputs, subprocess report). The subprocesses (one
    per family) run at the same time: each mostly waits on imports."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    running = {}
    for name, family in FAMILIES.items():
        root = tmp_path_factory.mktemp(name)
        model, processor = family.make_tiny_model(), family.make_processor()
        folder = save_family_folder(family, root / "folder", model, processor)
        inputs = _inputs(root)
        spec = {
            "folder": str(folder),
            "inputs": inputs,
            "auto_classes": list(family.auto_classes),
            "processor_auto_class": family.processor_auto_class,
            "text_inputs": list(family.text_inputs),
            "output_names": list(family.output_names),
            "tasks": family.pipeline_tasks,
            "custom_tasks": [task for task in family.pipeline_tasks if task in family.custom_tasks],
        }
        (root / "spec.json").write_text(json.dumps(spec))
        process = subprocess.Popen(
            [sys.executable, "-c", SUBPROCESS_SCRIPT, str(root / "spec.json")],
            cwd=root, env={**env, "HF_MODULES_CACHE": str(root / "modules")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        running[name] = (process, (family, folder, model, processor, inputs))
    results = {}
    for name, (process, saved) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {stderr[-4000:]}"
        report = json.loads(stdout.strip().splitlines()[-1])
        print(f"{name}: subprocess {report['seconds']:.1f} s (blocking {report['blocking_seconds']:.1f} s)")
        results[name] = (*saved, report)
    return results


@pytest.fixture(params=sorted(FAMILIES))
def saved(request, reports):
    return reports[request.param]


def test_folder_passes_check_folder(saved):
    family, folder, *_ = saved
    assert check_folder(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert set(family.auto_classes) | {"AutoConfig"} <= set(config["auto_map"])
    assert set(config.get("custom_pipelines", {})) == set(family.custom_tasks)


def test_remote_code_loads_without_cxrfm_or_extra_packages(saved):
    family, _, _, _, _, report = saved
    assert report["cxrfm_imported"] is False and report["blocked_count"] > 10
    modules = [report["config_module"], report["processor_module"], *report["model_modules"].values()]
    modules += [report["pipeline_modules"][task] for task in family.custom_tasks]
    assert all(module.startswith("transformers_modules.") for module in modules), modules
    assert "reading DICOM needs pydicom" in report["errors"]["dicom without pydicom"]


def test_remote_outputs_equal_installed_outputs_at_full_precision(saved):
    family, _, model, processor, inputs, report = saved
    images = {
        "array": np.load(inputs["array"]),
        "png16_path": inputs["png16"],
        "png16_bytes": open(inputs["png16"], "rb").read(),
        "pil8": Image.open(inputs["pil8"]),
        "dicom_path": inputs["dicom"],
    }
    for kind, image in images.items():
        expected = _run_model(family, model, processor, image)
        for name, value in expected.items():
            # equal up to float rounding: the two processes may pick different attention kernels
            torch.testing.assert_close(torch.tensor(report["outputs"][kind][name]), value, atol=1e-6, rtol=1e-5)
    # the 16-bit PNG path and its bytes reach the image processor undecoded: same result as the 16-bit array
    sixteen = np.asarray(Image.open(inputs["png16"])).astype(np.uint16)
    for name, value in _run_model(family, model, processor, sixteen).items():
        torch.testing.assert_close(torch.tensor(report["outputs"]["png16_path"][name]), value, atol=1e-6, rtol=1e-5)


def test_every_pipeline_runs_and_keeps_each_labels_score(saved):
    family, folder, model, processor, inputs, report = saved
    for task, kwargs in family.pipeline_tasks.items():
        # library route: cxrfm is imported here, so no trust_remote_code
        installed = pipeline(task, model=str(folder))
        assert type(installed).__module__.startswith(("cxrfm.", "transformers.pipelines")), type(installed)
        kinds = ["pil8"] + (["png16_path", "dicom_path"] if task in family.custom_tasks else [])
        for kind in kinds:
            image = Image.open(inputs["pil8"]) if kind == "pil8" else inputs[kind.removesuffix("_path")]
            expected, remote = _scores(installed(image, **kwargs)), report["pipelines"][task][kind]
            if isinstance(expected, dict):
                assert set(remote) == set(expected), (task, kind)
                for label, score in expected.items():  # per label, not after sorting
                    assert remote[label] == pytest.approx(score, abs=1e-6), (task, kind, label)
                assert len({round(score, 6) for score in expected.values()}) == len(expected), "scores tie: weak test"
            else:
                np.testing.assert_allclose(np.asarray(remote), np.asarray(expected), atol=1e-6)
        if task not in family.custom_tasks:  # stock pipelines read the 16-bit PNG as all-white: refused, not embedded
            assert "the image is constant" in report["errors"][f"{task} png16"]


def test_cxr_classification_scores_are_the_models_sigmoids_per_label(saved):
    family, _, model, processor, inputs, report = saved
    if "cxr-classification" not in family.pipeline_tasks:
        pytest.skip("no cxr-classification pipeline in this family")
    for kind, image in (("pil8", Image.open(inputs["pil8"])), ("png16_path", inputs["png16"])):
        with torch.no_grad():
            probabilities = torch.sigmoid(model(**processor(image, return_tensors="pt")).logits)[0]
        for index, label in model.config.id2label.items():
            assert report["pipelines"]["cxr-classification"][kind][label] == pytest.approx(
                float(probabilities[int(index)]), abs=1e-6
            )


def test_feature_extraction_pipeline_keeps_16_bit_range(saved):
    family, _, model, processor, inputs, report = saved
    if "cxr-feature-extraction" not in family.pipeline_tasks:
        pytest.skip("no cxr-feature-extraction pipeline in this family")
    sixteen = np.asarray(Image.open(inputs["png16"])).astype(np.uint16)
    with torch.no_grad():
        expected = model(**processor(sixteen, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(torch.tensor(report["pipelines"]["cxr-feature-extraction"]["png16_path"]), expected)


def test_a_folder_of_another_family_is_refused_naming_both(tmp_path):
    folders = {}
    for name, family in FAMILIES.items():
        folders[name] = tmp_path / name
        family.make_tiny_model().config.save_pretrained(folders[name])
    for name, family in FAMILIES.items():
        for other, folder in folders.items():
            if family.model_type == FAMILIES[other].model_type:
                continue
            for model_class in set(family.auto_classes.values()):
                with pytest.raises(ValueError, match=rf"'{family.model_type}'.*'{FAMILIES[other].model_type}'"):
                    model_class.from_pretrained(folder)
    # the Auto classes still pick the right family for each folder
    for name, family in FAMILIES.items():
        assert type(AutoConfig.from_pretrained(folders[name])) is family.config_class


def test_check_folder_names_what_breaks_the_contract(tmp_path):
    family = FAMILIES["glori"]
    folder = save_family_folder(family, tmp_path / "glori")
    config = json.loads((folder / "config.json").read_text())
    del config["custom_pipelines"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").unlink()
    (folder / "modeling_glori.py").write_text((folder / "modeling_glori.py").read_text() + "\nimport sklearn\n")
    problems = check_folder(folder)
    assert "config.json: custom_pipelines has no 'cxr-classification'" in problems
    assert any(problem.startswith("no processor config") for problem in problems)
    assert any("modeling_glori.py" in problem and "imports sklearn" in problem for problem in problems)
    assert check_folder(tmp_path / "missing") == [f"{tmp_path / 'missing'}: not a folder"]


def test_copied_helpers_stay_equal_to_their_originals():
    """Model folders import only their own files, so shared helpers are copied and marked `# Copied from`."""
    from cxrfm.modeling.chexfound import configuration_chexfound
    from cxrfm.modeling.relaxed_clip import configuration_relaxed_clip, pipeline_cxr_zero_shot_classification
    from cxrfm.processing import text

    mixins = {next(base for base in family.config_class.__mro__ if base.__name__ == "HubConfigMixin")
              for family in FAMILIES.values()}
    assert configuration_relaxed_clip.HubConfigMixin in mixins and len(mixins) == len(
        {family.config_class.__module__.rsplit(".", 2)[-2] for family in FAMILIES.values()}
    ), "every family folder holds its own HubConfigMixin copy"
    pairs = [(configuration_chexfound.HubConfigMixin, mixin) for mixin in mixins - {configuration_chexfound.HubConfigMixin}]
    pairs.append((text.prompt_pairs, pipeline_cxr_zero_shot_classification.prompt_pairs))
    for original, copy in pairs:
        assert inspect.getsource(copy) == inspect.getsource(original), copy.__qualname__
        marker = f"# Copied from {original.__module__}.{original.__qualname__}"
        assert marker in inspect.getsource(sys.modules[copy.__module__]), marker
    assert pipeline_cxr_zero_shot_classification.CHEXZERO_TEMPLATES == text.CHEXZERO_TEMPLATES
