"""LoRA through PEFT: the default target modules registered for ``model_type="whisper_gpt"``, frozen base weights,
parameters that are not Linear modules, and examples/lora_finetune.py (Trainer, saved adapter, reload)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, tiny_config
from safetensors.torch import load_file

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.peft_support import LORA_TARGET_MODULES

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[1]


def _inputs(num_codebooks: int, frames: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, TINY_CODEBOOK_SIZE, (2, num_codebooks, frames), generator=generator)
    return {"input_ids": codes, "input_features": torch.randn(2, frames, TINY_MEL_BINS, generator=generator)}


def test_lora_without_target_modules_adapts_every_blocks_projections_and_nothing_else() -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=2, use_mel_head=True))
    expected = {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in LORA_TARGET_MODULES}
    base = {name: value.clone() for name, value in model.state_dict().items()}
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    adapted = {
        name.removeprefix("base_model.model.")
        for name, module in lora.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    assert adapted == expected
    # The decoder's, the mel path's and the depth decoder's blocks all take part.
    assert {"model.layers.1.attn.qkv_proj", "model.mel_blocks.0.fc_out", "depth_decoder.blocks.0.fc_in"} <= adapted
    trainable = [name for name, parameter in lora.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)

    start = {name: parameter.detach().clone() for name, parameter in lora.named_parameters() if parameter.requires_grad}
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    inputs = _inputs(2)
    for _ in range(2):
        loss = lora(**inputs, labels=inputs["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = dict(lora.named_parameters())
    assert all(not torch.equal(trained[name], value) for name, value in start.items())  # every LoRA weight learns
    after = lora.get_base_model().state_dict()
    # Wrapped layers keep their weight under base_layer; every base weight is unchanged.
    for name, value in base.items():
        wrapped = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[name if name in after else wrapped], value), name


def test_parameters_outside_linear_modules_are_adapted_with_target_parameters() -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=2))
    inputs = _inputs(2)
    with torch.no_grad():
        before = model(**inputs).logits
    config = peft.LoraConfig(
        r=2,
        target_modules=[],
        target_parameters=["model.fusion.weight", "depth_decoder.heads"],
        init_lora_weights=False,
    )
    lora = peft.get_peft_model(model, config)
    trainable = {name for name, parameter in lora.named_parameters() if parameter.requires_grad}
    assert any(".fusion." in name for name in trainable) and any("depth_decoder.lora_" in name for name in trainable)
    with torch.no_grad():
        assert not torch.allclose(lora(**inputs).logits, before)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_lora_finetune_example_trains_saves_and_reloads_an_adapter(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("lora_finetune", ROOT / "examples" / "lora_finetune.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model_dir, data = example.build_tiny_model(tmp_path / "tiny-model")
    digest = _digest(model_dir)
    result = example.lora_finetune(
        model_dir, data, tmp_path, max_steps=3, eval_steps=3, batch_size=4, cache_dir=str(tmp_path / "cache")
    )
    adapter = Path(result["adapter_dir"])
    assert {"adapter_config.json", "adapter_model.safetensors", "eval_results.json"} <= {
        p.name for p in adapter.iterdir()
    }
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_A" in name or "lora_B" in name for name in weights)  # the adapter only
    assert sum(value.numel() for value in weights.values()) == result["trainable_parameters"]
    # lora_B starts at zero: a nonzero one has been trained.
    assert any(value.abs().max() > 0 for name, value in weights.items() if "lora_B" in name)
    assert result["reload_max_abs_difference"] == 0.0
    assert _digest(model_dir) == digest  # the base model's folder is untouched

    base = WhisperGPTForCausalLM.from_pretrained(model_dir).eval()
    inputs = _inputs(base.config.num_codebooks)
    with torch.no_grad():
        plain = base(**inputs).logits
        reloaded = peft.PeftModel.from_pretrained(base, adapter).eval()
        adapted = reloaded(**inputs).logits
    assert not torch.allclose(adapted, plain)
    with pytest.raises(ValueError, match="overwrite-output-dir"):
        example.lora_finetune(model_dir, data, tmp_path, max_steps=1)
