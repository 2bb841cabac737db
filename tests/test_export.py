"""A saved folder is a clean trust_remote_code export.

Its ``auto_map`` names every Auto class, its code imports only itself, torch, numpy and transformers, and in a
fresh virtual environment holding only ``torch`` and ``transformers`` it loads and reproduces the in-process
model's inputs, logits and greedy codes exactly.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from conftest import real_like_audio, tiny_config
from transformers import pipeline

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.training.codec_fitting import fit_mel_exemplars

EXPORTED_FILES = {
    f"{kind}_whisper_gpt.py"
    for kind in (
        "configuration",
        "modeling",
        "generation",
        "feature_extraction",
        "tokenization",
        "processing",
        "pipeline",
    )
}
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_whisper_gpt.WhisperGPTConfig",
    "AutoModel": "modeling_whisper_gpt.WhisperGPTModel",
    "AutoModelForCausalLM": "modeling_whisper_gpt.WhisperGPTForCausalLM",
}
FEATURE_EXTRACTOR_AUTO_MAP = {"AutoFeatureExtractor": "feature_extraction_whisper_gpt.WhisperGPTFeatureExtractor"}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_whisper_gpt.WhisperGPTProcessor"}
ALLOWED_PACKAGES = {"torch", "numpy", "transformers"}
# The Hub client is installed wherever transformers is (one of its requirements, checked below).
TRANSFORMERS_REQUIREMENTS = {"huggingface_hub"}
# The fresh venv gets exactly these (and what they require); the versions are the ones this suite runs with.
FRESH_REQUIREMENTS = (f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}")
NEW_FRAMES = 12


@pytest.fixture(scope="module")
def saved(tiny_processor, tmp_path_factory) -> tuple[WhisperGPTForCausalLM, Any, Path]:
    """A K=4 hybrid and a processor (codec with mel exemplars, so generation's default mel source is "exemplar")
    saved into one folder, as a model is published."""
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=4)).eval()
    processor = copy.deepcopy(tiny_processor)
    fit_mel_exemplars(processor.audio_tokenizer, [real_like_audio(2.0, seed=3)], processor.feature_extractor)
    folder = tmp_path_factory.mktemp("export") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def _auto_maps(folder: Path) -> dict[str, dict[str, str]]:
    """auto_map of every JSON config in ``folder`` (a nested component config is named file:key)."""
    maps = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        maps[path.name] = data.get("auto_map", {})
        for key, value in data.items():
            if isinstance(value, dict) and "auto_map" in value:
                maps[f"{path.name}:{key}"] = value["auto_map"]
    return maps


def test_auto_map_names_every_auto_class_and_its_file(saved) -> None:
    _, _, folder = saved
    maps = _auto_maps(folder)
    assert maps["config.json"] == MODEL_AUTO_MAP
    assert maps["processor_config.json"] == PROCESSOR_AUTO_MAP
    assert maps["processor_config.json:feature_extractor"] == {**FEATURE_EXTRACTOR_AUTO_MAP, **PROCESSOR_AUTO_MAP}
    for entries in maps.values():
        for reference in entries.values():
            module, _ = reference.split(".")
            assert (folder / f"{module}.py").exists(), reference


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(name, ast.Name) and name.id in ("ImportError", "ModuleNotFoundError") for name in names)


def _disallowed_imports(path: Path) -> list[str]:
    """Imports of ``path`` (at any depth, inside functions too) that a torch + transformers environment may lack.

    An import in a ``try`` whose ``except ImportError`` handles its absence is optional and allowed."""
    tree = ast.parse(path.read_text())
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(handler) for handler in node.handlers):
            optional.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    allowed = ALLOWED_PACKAGES | TRANSFORMERS_REQUIREMENTS | set(sys.stdlib_module_names)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            if not (path.parent / f"{node.module}.py").exists():
                found.append(f"{path.name}:{node.lineno} from .{node.module} (not in the folder)")
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in optional:
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"{path.name}:{node.lineno} {name}" for name in modules if name.split(".")[0] not in allowed]
    return found


def test_exported_code_imports_only_torch_numpy_transformers_and_itself(saved) -> None:
    _, _, folder = saved
    assert {path.name for path in folder.glob("*.py")} == EXPORTED_FILES
    requirements = {
        requirement.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip().replace("-", "_").lower()
        for requirement in importlib.metadata.requires("transformers")
        if "extra ==" not in requirement
    }
    assert TRANSFORMERS_REQUIREMENTS <= requirements, requirements
    assert [found for path in sorted(folder.glob("*.py")) for found in _disallowed_imports(path)] == []


def probe(model: Any, processor: Any, audio: np.ndarray, new_frames: int) -> dict[str, np.ndarray]:
    """Inputs, logits and a greedy continuation (default mel source) of one clip at the processor's rate.

    The export must reproduce these exactly. Runs in this process and, as source text, in the fresh venv, so
    both sides compute them with the same code."""
    import torch

    batch = processor(audio=audio, sampling_rate=processor.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(
        **batch,
        audio_tokenizer=processor.audio_tokenizer,
        feature_extractor=processor.feature_extractor,
        do_sample=False,
        max_new_tokens=new_frames,
        return_dict_in_generate=True,
    )
    return {
        "input_ids": batch["input_ids"].numpy(),
        "input_features": batch["input_features"].numpy(),
        "logits": logits.numpy(),
        "sequences": generated.sequences.numpy(),
        "generated_features": generated.input_features.numpy(),
    }


# Run by the fresh venv's python: folder, audio .npy, output .npz, folder to save the loaded model into, new frames.
FRESH_SCRIPT = (
    textwrap.dedent(
        """
        from __future__ import annotations

        import importlib.util, json, sys
        from pathlib import Path
        from typing import Any

        import numpy as np
        import torch
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForCausalLM, AutoProcessor
        from transformers import pipeline

        torch.set_num_threads(1)  # as in the test process: the same kernels sum in the same order
        folder, audio_path, out_path, resave, new_frames = sys.argv[1:]
        present = [name for name in ("whisper_gpt", "soxr", "soundfile", "librosa") if importlib.util.find_spec(name)]
        assert not present, f"the fresh venv must not hold {present}"
        """
    )
    + inspect.getsource(probe)
    + textwrap.dedent(
        """


        def load(what: str, loader: Any, *args: Any) -> Any:
            # A failure says what could not load the folder (transformers' messages can run to pages).
            try:
                return loader(*args, trust_remote_code=True)
            except Exception as error:
                sys.exit(f"{what} could not load the folder: {str(error)[:600]}")


        audio = np.load(audio_path)
        config = load("AutoConfig", AutoConfig.from_pretrained, folder)
        model = load("AutoModelForCausalLM", AutoModelForCausalLM.from_pretrained, folder).eval()
        base = load("AutoModel", AutoModel.from_pretrained, folder).eval()
        feature_extractor = load("AutoFeatureExtractor", AutoFeatureExtractor.from_pretrained, folder)
        processor = load("AutoProcessor", AutoProcessor.from_pretrained, folder)
        pipe = load("pipeline", pipeline, "audio-continuation", folder)
        loaded = [config, model, base, feature_extractor, processor, processor.audio_tokenizer, pipe]
        results = probe(model, processor, audio, int(new_frames))
        results["has_exemplars"] = processor.audio_tokenizer.mel_exemplars is not None
        with torch.no_grad():
            results["base_hidden"] = base(**processor(audio=audio, sampling_rate=24000)).last_hidden_state.numpy()
        features = feature_extractor(audio, sampling_rate=24000, return_tensors="np")
        results["extractor_features"] = features.input_features
        results["continuation"] = pipe(
            audio, sampling_rate=24000, max_new_tokens=int(new_frames), do_sample=False, return_prompt=False,
            renderer="codec",
        )["audio"]
        try:
            processor(audio=audio, sampling_rate=16000)
            results["resample_error"] = ""
        except ImportError as error:
            results["resample_error"] = str(error)
        model.save_pretrained(resave)
        results["resaved_auto_map"] = json.dumps(json.loads((Path(resave) / "config.json").read_text())["auto_map"])
        results["classes"] = json.dumps({type(item).__name__: type(item).__module__ for item in loaded})
        np.savez(out_path, **results)
        """
    )
)


def _pip_tail(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


@pytest.fixture(scope="session")
def fresh_python(request) -> Path:
    """Python of a venv with only FRESH_REQUIREMENTS pip-installed, built once and kept in the pytest cache."""
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    venv = Path(request.config.cache.mkdir("-".join(["fresh-venv", version, *FRESH_REQUIREMENTS]).replace("==", "")))
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"  # written last: without it the venv is incomplete and is rebuilt
    if marker.exists() and python.exists() and marker.read_text() == "\n".join(FRESH_REQUIREMENTS):
        return python
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, env=env)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *FRESH_REQUIREMENTS],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if install.returncode != 0:
        download = subprocess.run(
            [str(python), "-m", "pip", "download", "--no-deps", "--dest", str(venv / "probe"), FRESH_REQUIREMENTS[1]],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if download.returncode != 0:
            pytest.skip(f"pip cannot download {FRESH_REQUIREMENTS[1]} (offline?): {_pip_tail(download)}")
        pytest.fail(f"pip install {' '.join(FRESH_REQUIREMENTS)} failed:\n{install.stderr[-3000:]}")
    marker.write_text("\n".join(FRESH_REQUIREMENTS))
    return python


def test_fresh_venv_with_only_torch_and_transformers_reproduces_the_model(saved, fresh_python, tmp_path) -> None:
    model, processor, folder = saved
    audio = real_like_audio(0.8, seed=21)
    np.save(tmp_path / "audio.npy", audio)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    arguments = [str(folder), str(tmp_path / "audio.npy"), str(tmp_path / "out.npz"), str(tmp_path / "resaved")]
    result = subprocess.run(
        [str(fresh_python), "-c", FRESH_SCRIPT, *arguments, str(NEW_FRAMES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    remote = np.load(tmp_path / "out.npz")

    classes = json.loads(str(remote["classes"]))
    assert set(classes) >= {"WhisperGPTForCausalLM", "WhisperGPTModel", "WhisperGPTProcessor", "WhisperGPTConfig"}
    assert all(module.startswith("transformers_modules.") for module in classes.values()), classes
    assert bool(remote["has_exemplars"])  # loaded with the codec, so the default mel source is the same
    local = probe(model, processor, audio, NEW_FRAMES)
    assert local["sequences"].shape[-1] == local["input_ids"].shape[-1] + NEW_FRAMES
    for name, expected in local.items():
        np.testing.assert_array_equal(remote[name], expected, err_msg=name)

    batch = processor(audio=audio, sampling_rate=24000)
    with torch.no_grad():
        np.testing.assert_array_equal(remote["base_hidden"], model.model(**batch).last_hidden_state.numpy())
    np.testing.assert_array_equal(remote["extractor_features"], local["input_features"])
    local_pipe = pipeline("audio-continuation", model=model, processor=processor)
    expected = local_pipe(
        audio, sampling_rate=24000, max_new_tokens=NEW_FRAMES, do_sample=False, return_prompt=False, renderer="codec"
    )["audio"]
    assert len(remote["continuation"]) == NEW_FRAMES * processor.audio_tokenizer.hop_length
    np.testing.assert_array_equal(remote["continuation"], expected)
    assert "pip install soxr, or pass audio recorded or resampled at 24000 Hz" in str(remote["resample_error"])
    assert json.loads(str(remote["resaved_auto_map"])) == MODEL_AUTO_MAP
