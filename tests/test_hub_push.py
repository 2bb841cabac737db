"""`whisper-gpt push` against a local stand-in for the Hub: a thread serving HTTP on 127.0.0.1 that answers the
calls `HfApi.create_repo` and `HfApi.upload_folder` make (repo creation, metadata check, preupload, LFS batch, LFS
upload and verify, commit) and records every request. No request leaves the machine."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import yaml
from audio_folder import write_audio_folder
from conftest import tiny_config

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.apps import cli
from whisper_gpt.training import TrainingConfig
from whisper_gpt.training.data import prepare_dataset
from whisper_gpt.training.evaluation import evaluate_model
from whisper_gpt.training.loop import save_final
from whisper_gpt.training.model_card import REPO_PLACEHOLDER, push_to_hub

TOKEN = "hf_stub_token"
COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


class _Hub(BaseHTTPRequestHandler):
    """Answers the Hub API's upload calls; `requests` (a class attribute set per server) records them."""

    protocol_version = "HTTP/1.1"
    requests: list[dict[str, Any]]

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        body = self._body()
        path = self.path.split("?")[0]
        self.requests.append(
            {
                "method": self.command,
                "path": path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        base = f"http://{self.headers['Host']}"
        if self.command == "POST" and path == "/api/repos/create":
            request = json.loads(body)
            return self._answer(200, {"url": f"{base}/{request['organization']}/{request['name']}"})
        if self.command == "POST" and path == "/api/validate-yaml":
            return self._answer(200, {"errors": [], "warnings": []})
        if self.command == "POST" and path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            # As the Hub does for weights: safetensors files go through LFS, small text files into the commit.
            modes = [("lfs" if f["path"].endswith(".safetensors") else "regular") for f in files]
            answer = [
                {"path": f["path"], "uploadMode": m, "shouldIgnore": False} for f, m in zip(files, modes, strict=True)
            ]
            return self._answer(200, {"files": answer})
        if self.command == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            actions = {
                "upload": {"href": f"{base}/lfs-storage/{{oid}}"},
                "verify": {"href": f"{base}/lfs-verify"},
            }
            answer = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "actions": {name: {"href": a["href"].format(oid=o["oid"])} for name, a in actions.items()},
                }
                for o in objects
            ]
            return self._answer(200, {"transfer": "basic", "objects": answer})
        if self.command == "PUT" and path.startswith("/lfs-storage/"):
            return self._answer(200, {})
        if self.command == "POST" and path == "/lfs-verify":
            return self._answer(200, {})
        if self.command == "POST" and path.startswith("/api/models/") and "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            return self._answer(200, {"commitUrl": f"{base}/{repo}/commit/{COMMIT_OID}", "commitOid": COMMIT_OID})
        return self._answer(404, {"error": f"the stand-in Hub does not answer {self.command} {path}"})

    do_GET = do_POST = do_PUT = _handle


@pytest.fixture
def hub(monkeypatch):
    """(address, recorded requests) of a stand-in Hub running for one test."""
    handler = type("Hub", (_Hub,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The stand-in speaks the LFS protocol; with hf_xet installed upload_folder would use Xet storage instead.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def final(tmp_path_factory, tiny_processor) -> Path:
    """The folder a training run's save_final writes: model, processor and codec, card, eval_results.json."""
    root = tmp_path_factory.mktemp("push")
    write_audio_folder(root / "audio", seconds=(1.5, 2.0, 1.0))
    model = WhisperGPTForCausalLM(tiny_config())
    dataset = prepare_dataset(
        root / "audio", tiny_processor, split="validation", cache_dir=root / "cache", progress=False
    )
    metrics = evaluate_model(model, dataset, window=64, progress=False)
    config = TrainingConfig(output_dir=str(root / "run"), train_data=str(root / "audio"), command="whisper-gpt train")
    save_final(model, tiny_processor, root / "run" / "final", config, metrics)
    return root / "run" / "final"


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _commits(requests: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [
        [json.loads(line) for line in request["body"].splitlines()]
        for request in requests
        if request["method"] == "POST" and "/commit/" in request["path"]
    ]


def _committed(commit: list[dict[str, Any]], requests: list[dict[str, Any]]) -> dict[str, bytes]:
    """path -> content of every file in a commit, LFS files resolved through the bytes the stand-in received."""
    stored = {r["path"].removeprefix("/lfs-storage/"): r["body"] for r in requests if r["method"] == "PUT"}
    contents = {}
    for line in commit[1:]:
        value = line["value"]
        if line["key"] == "file":
            contents[value["path"]] = base64.b64decode(value["content"])
        else:
            assert line["key"] == "lfsFile", line
            assert hashlib.sha256(stored[value["oid"]]).hexdigest() == value["oid"]
            contents[value["path"]] = stored[value["oid"]]
    return contents


def _metadata(readme: bytes) -> dict[str, Any]:
    return yaml.safe_load(readme.decode().split("---")[1])


def test_push_uploads_the_whole_folder_in_one_commit_with_the_card_metadata(hub, final) -> None:
    address, requests = hub
    before = _files(final)
    commit = push_to_hub(
        final,
        "someone/whisper-gpt-tiny",
        private=True,
        token=TOKEN,
        license="apache-2.0",
        base_model="someone/whisper-gpt-base",
        datasets=["someone/speech-clips"],
        endpoint=address,
    )
    assert commit.oid == COMMIT_OID
    assert not [r for r in requests if r["method"] == "GET"]  # nothing is downloaded or re-saved first
    create = [json.loads(r["body"]) for r in requests if r["path"] == "/api/repos/create"]
    assert create == [{"name": "whisper-gpt-tiny", "organization": "someone", "visibility": "private"}]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in requests if r["path"].startswith("/api/"))

    commits = _commits(requests)
    assert len(commits) == 1
    assert requests[-1]["path"] == "/api/models/someone/whisper-gpt-tiny/commit/main"
    uploaded = _committed(commits[0], requests)
    # Every file of the folder, byte for byte, and the card rewritten for the Hub.
    assert set(uploaded) == set(before)
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json"):
        assert name in uploaded
    assert {"audio_tokenizer/model.safetensors", "audio_tokenizer/config.json", "eval_results.json"} <= set(uploaded)
    assert all(uploaded[name] == content for name, content in before.items() if name != "README.md")
    assert [r["path"] for r in requests if r["method"] == "PUT"] and all(
        line["key"] == "lfsFile" for line in commits[0][1:] if line["value"]["path"].endswith(".safetensors")
    )

    metadata = _metadata(uploaded["README.md"])
    assert metadata["license"] == "apache-2.0"
    assert metadata["base_model"] == "someone/whisper-gpt-base"
    assert metadata["datasets"] == ["someone/speech-clips"]
    assert metadata["library_name"] == "transformers" and metadata["model-index"]  # the saved card's own metadata
    text = uploaded["README.md"].decode()
    assert 'from_pretrained("someone/whisper-gpt-tiny"' in text and REPO_PLACEHOLDER not in text
    assert _files(final) == before  # the local folder is not modified


def test_cli_push_leaves_unknown_metadata_out_and_builds_a_missing_card(hub, final, monkeypatch, capsys) -> None:
    address, requests = hub
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", address)  # what HF_ENDPOINT sets
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cli.main(["push", str(final), "someone/model"])
    assert f"{address}/someone/model/commit/{COMMIT_OID}" in capsys.readouterr().out
    create = [json.loads(r["body"]) for r in requests if r["path"] == "/api/repos/create"]
    assert create == [{"name": "model", "organization": "someone"}]  # no --private: the account's default
    (commit,) = _commits(requests)
    metadata = _metadata(_committed(commit, requests)["README.md"])
    assert not {"license", "base_model", "datasets"} & set(metadata)

    # A folder saved without a card (e.g. by a Trainer) gets one built from its model and evaluation.
    bare = final.parent / "bare"
    bare.mkdir(exist_ok=True)
    for name, content in _files(final).items():
        if name != "README.md":
            (bare / name).parent.mkdir(parents=True, exist_ok=True)
            (bare / name).write_bytes(content)
    requests.clear()
    cli.main(["push", str(bare), "someone/bare", "--license", "mit"])
    (commit,) = _commits(requests)
    readme = _committed(commit, requests)["README.md"]
    metadata = _metadata(readme)
    assert metadata["license"] == "mit" and metadata["pipeline_tag"] == "audio-to-audio"
    nll = json.loads((final / "eval_results.json").read_text())["codebook_0"]["nll"]
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(nll)
    assert not (bare / "README.md").exists()


def test_bad_pushes_are_refused_before_any_request(hub, final) -> None:
    address, requests = hub
    with pytest.raises(ValueError, match="base_model must be a Hub id"):
        push_to_hub(final, "someone/model", token=TOKEN, base_model=str(final), endpoint=address)
    with pytest.raises(ValueError, match="a dataset must be a Hub id"):
        push_to_hub(final, "someone/model", token=TOKEN, datasets=["./data/clips"], endpoint=address)
    with pytest.raises(ValueError, match="license"):
        push_to_hub(final, "someone/model", token=TOKEN, license=" ", endpoint=address)
    with pytest.raises(FileNotFoundError, match=r"missing config\.json.*its final/ folder is the one to push"):
        push_to_hub(final.parent, "someone/model", token=TOKEN, endpoint=address)
    assert requests == []
