"""`cxrfm push` / `cxrfm.hub.push` against a loopback HTTP server standing in for the Hub (HF_ENDPOINT).

The stub implements the four endpoints huggingface_hub 2.x's `create_repo` + `upload_folder` call (read from
`huggingface_hub/hf_api.py`, `_commit_api.py` and `_upload_pipeline.py`): `POST /api/repos/create`,
`POST /api/validate-yaml` (the card's metadata, checked before hashing),
`POST /api/models/{repo}/preupload/{revision}` (answering "regular" for every file, so no LFS/Xet transfer) and
`POST /api/models/{repo}/commit/{revision}` (an NDJSON header line and one base64 line per file). It listens on
127.0.0.1 only, answers anything else with 404, and shuts itself down after 60 s at the latest.
"""

import base64
import hashlib
import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from cxrfm.cli import main
from cxrfm.hub import files_to_upload, push, resolve_model_path
from cxrfm.model_cards import write_results_and_card

LIFETIME_SECONDS = 60


class HubStub:
    def __init__(self):
        self.requests, self.repos, self.commits, self.card_metadata = [], [], [], []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append(("POST", self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    payload = json.loads(body)
                    repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") \
                        else payload["name"]
                    stub.repos.append(payload)
                    return self._json({"url": f"{stub.endpoint}/{repo_id}", "name": repo_id})
                if parts[:2] == ["api", "validate-yaml"]:
                    content = json.loads(body)["content"]
                    try:
                        stub.card_metadata.append(yaml.safe_load(content.split("---")[1]))
                    except (yaml.YAMLError, IndexError) as error:
                        return self._json({"errors": [{"message": str(error)}]}, status=400)
                    return self._json({"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in files]})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = next(line["value"] for line in lines if line["key"] == "header")
                    files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                             for line in lines if line["key"] == "file"}
                    oid = hashlib.sha1(body).hexdigest()
                    stub.commits.append({"repo_id": "/".join(parts[2:4]), "revision": parts[5], "header": header,
                                         "files": files, "keys": sorted({line["key"] for line in lines})})
                    return self._json({"commitUrl": f"{stub.endpoint}/{parts[2]}/{parts[3]}/commit/{oid}",
                                       "commitOid": oid})
                self._json({"error": f"stub does not implement POST {self.path}"}, status=404)

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                self._json({"error": f"stub does not implement GET {self.path}"}, status=404)

            def _json(self, data, status=200):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.watchdog = threading.Timer(LIFETIME_SECONDS, self.server.shutdown)

    def __enter__(self):
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc):
        self.watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def hub(monkeypatch):
    with HubStub() as stub:
        import huggingface_hub.constants as constants

        monkeypatch.setattr(constants, "ENDPOINT", stub.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_stub_token")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield stub


@pytest.fixture
def contract(monkeypatch):
    """The contract helper's `cxrfm.contract.check_folder` when it exists; until then a stand-in with the same
    name that checks the one thing this test relies on (a loadable config)."""
    try:
        import cxrfm.contract  # noqa: F401
    except ImportError:
        from transformers import AutoConfig

        fake = types.ModuleType("cxrfm.contract")
        fake.check_folder = lambda folder: AutoConfig.from_pretrained(folder) and None
        monkeypatch.setitem(sys.modules, "cxrfm.contract", fake)


@pytest.fixture
def glori_folder(tmp_path):
    from cxrfm.modeling import CheXFoundConfig, GLoRIConfig, GLoRIForMultiLabel
    from cxrfm.pipelines import save_classification_pipeline
    from cxrfm.processing import CXRImageProcessor

    torch.manual_seed(0)
    backbone = CheXFoundConfig.from_preset("tiny", num_hidden_layers=4, image_size=32, patch_size=8)
    config = GLoRIConfig(backbone_config=backbone, decoder_dim=8, num_heads=2, ffn_dim=16, id2label={0: "Edema"})
    folder = tmp_path / "glori-tiny"
    processor = CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    save_classification_pipeline(GLoRIForMultiLabel(config).eval(), processor, folder)
    write_results_and_card(folder, "glori", {"seconds": 1.0}, model_id="org/glori-tiny")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "state.bin").write_bytes(b"training state, never uploaded")
    return folder


def test_push_uploads_every_file_in_one_commit(hub, contract, glori_folder):
    result = push(glori_folder, "org/glori-tiny", commit_message="first version")
    assert [payload["name"] for payload in hub.repos] in (["org/glori-tiny"], ["glori-tiny"])
    (commit,) = hub.commits
    assert commit["repo_id"] == "org/glori-tiny" and commit["revision"] == "main"
    assert commit["header"]["summary"] == "first version"
    expected = files_to_upload(glori_folder)
    assert sorted(commit["files"]) == expected == result.files
    assert {"README.md", "results.json", "config.json", "model.safetensors", "preprocessor_config.json",
            "modeling_glori.py"} <= set(expected)
    assert not any(name.startswith("checkpoints/") for name in expected)
    for name, content in commit["files"].items():
        assert content == (glori_folder / name).read_bytes(), name
    assert result.commit_url.startswith(hub.endpoint) and result.commit_oid in result.commit_url
    (metadata,) = hub.card_metadata
    assert metadata["pipeline_tag"] == "image-classification" and metadata["library_name"] == "transformers"


def test_cli_dry_run_lists_files_and_contacts_nobody(hub, contract, glori_folder, capsys):
    assert main(["push", str(glori_folder), "org/glori-tiny", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == files_to_upload(glori_folder)
    assert hub.requests == []


def test_folder_without_card_or_failing_contract_is_refused(hub, contract, glori_folder, capsys, monkeypatch):
    (glori_folder / "README.md").unlink()
    assert main(["push", str(glori_folder), "org/glori-tiny"]) == 2
    err = capsys.readouterr().err
    assert f"{glori_folder / 'README.md'} is missing (render the card with `cxrfm card FOLDER`" in err
    assert hub.requests == []

    write_results_and_card(glori_folder, "glori", {}, model_id="org/glori-tiny")
    failing = types.ModuleType("cxrfm.contract")

    def check_folder(folder):
        raise ValueError(f"{folder}: model.safetensors does not reload strictly")

    failing.check_folder = check_folder
    monkeypatch.setitem(sys.modules, "cxrfm.contract", failing)
    with pytest.raises(ValueError, match="model.safetensors does not reload strictly"):
        push(glori_folder, "org/glori-tiny")
    assert hub.requests == []


def test_missing_model_path_is_named_not_a_repo_id_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"backbone './no_such_model': no such folder"):
        resolve_model_path("./no_such_model", "backbone")
    assert resolve_model_path("org/name") == "org/name"
