"""Golden tensors of tiny seeded Whisper-GPT models, checked by tests/test_golden.py.

Run ``python tests/golden/make_golden.py`` from the repository root to rewrite tests/golden/*.safetensors after a
deliberate change of the model's numbers (say which in the commit). Each case builds a tiny model from
``tiny_config`` with ``torch.manual_seed``, runs it on fixed inputs drawn from a seeded generator, and records
logits at a few positions, the loss and greedy continuations.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file

GOLDEN_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/: tiny_config lives in conftest.py, shared with the suite

from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, tiny_config  # noqa: E402

from whisper_gpt import WhisperGPTForCausalLM  # noqa: E402

REGENERATE = "python tests/golden/make_golden.py"
WEIGHT_SEED, INPUT_SEED = 1234, 5678
BATCH, FRAMES, ROW1_FRAMES, NEW_FRAMES = 2, 12, 9, 8
# Real frames of both rows (row 1 is right-padded after frame 8), kept to keep the files small.
LOGIT_POSITIONS = (0, 3, 6, 8)
# Greedy codes are compared exactly, so each pick must win by more than float noise across machines.
MIN_MARGIN = 1e-4

# At the default init (std 0.02, the mel path at a tenth of that) attention is nearly uniform and logits nearly 0:
# scaling the attention scores by 1.002 moved the logits by 2e-6, under the tolerance. At these scales it moves them
# by 5e-3, and greedy picks win by 6e-3 or more.
GOLDEN_INIT = {"initializer_range": 0.2, "mel_init_scale": 1.0}
# name -> (config overrides, mel source for generate(); None: no generation golden).
# The K=3 hybrid has no mel head, so its generation needs a codec in the loop: logits and loss only.
CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "hybrid_k1_mel_head": ({"num_codebooks": 1, "use_mel_head": True}, "learned"),
    "hybrid_k3": ({"num_codebooks": 3}, None),
    "token_k3": ({"num_codebooks": 3, "use_spectrogram": False}, "none"),
}


def path_of(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.safetensors"


def build_model(name: str) -> WhisperGPTForCausalLM:
    """The case's model in eval mode, its weights from ``torch.manual_seed(WEIGHT_SEED)`` alone."""
    overrides, _ = CASES[name]
    torch.manual_seed(WEIGHT_SEED)
    model = WhisperGPTForCausalLM(tiny_config(**GOLDEN_INIT, **overrides))
    return model.eval()


def build_inputs(model: WhisperGPTForCausalLM) -> dict[str, torch.Tensor]:
    """Codes (B, K, T), a mask with row 1 right-padded and, for models that read or learn from them, mel frames."""
    config = model.config
    generator = torch.Generator().manual_seed(INPUT_SEED)
    shape = (BATCH, config.num_codebooks, FRAMES)
    inputs = {"input_ids": torch.randint(0, TINY_CODEBOOK_SIZE, shape, generator=generator)}
    inputs["attention_mask"] = torch.ones(BATCH, FRAMES, dtype=torch.long)
    inputs["attention_mask"][1, ROW1_FRAMES:] = 0
    inputs["input_ids"][1, :, ROW1_FRAMES:] = 0  # padding holds a valid code, as the processor pads
    if config.trains_on_mel_frames:
        inputs["input_features"] = torch.randn(BATCH, FRAMES, TINY_MEL_BINS, generator=generator)
        inputs["input_features"][1, ROW1_FRAMES:] = 0
    return inputs


def parameter_sums(model: torch.nn.Module) -> torch.Tensor:
    """One float64 sum per state-dict entry: when logits drift, this tells whether the initialisation changed."""
    return torch.stack([value.double().sum() for value in model.state_dict().values()])


def greedy_margin(model: WhisperGPTForCausalLM, generated: Any, prompt_lengths: torch.Tensor) -> float:
    """Smallest gap between the best and second-best logit over every greedy pick, from a teacher-forced forward
    over the generated sequences (the depth decoder sees the codes picked before each codebook, as in decoding)."""
    features = generated.input_features if model.config.use_spectrogram else None
    logits = model(generated.sequences, input_features=features, attention_mask=generated.attention_mask).logits
    margins = []
    for row, length in enumerate(prompt_lengths.tolist()):
        picks = logits[row, :, length - 1 : length - 1 + NEW_FRAMES]  # (K, N, V): the logits of each new frame
        top = picks.topk(2, dim=-1).values
        margins.append((top[..., 0] - top[..., 1]).min())
        expected = generated.sequences[row, :, length : length + NEW_FRAMES]
        if not torch.equal(picks.argmax(-1), expected):
            raise RuntimeError("greedy generate() does not pick the argmax of the forward logits; fix generation first")
    return float(torch.stack(margins).min())


@torch.no_grad()
def compute(name: str) -> dict[str, torch.Tensor]:
    """Every golden tensor of one case, computed now."""
    model = build_model(name)
    inputs = build_inputs(model)
    out = model(**inputs, labels=inputs["input_ids"])
    tensors = {
        "parameter_sums": parameter_sums(model),
        **{f"input.{key}": value for key, value in inputs.items()},
        "logits": out.logits[:, :, list(LOGIT_POSITIONS)].contiguous(),  # (B, K, len(LOGIT_POSITIONS), V)
        "loss": out.loss,
    }
    if model.config.use_mel_head:
        tensors["mel_loss"] = out.mel_loss
        tensors["predicted_mel"] = out.predicted_mel[:, list(LOGIT_POSITIONS)].contiguous()
    _, mel_source = CASES[name]
    if mel_source is not None:
        generated = model.generate(
            inputs["input_ids"],
            input_features=inputs.get("input_features") if model.config.use_spectrogram else None,
            attention_mask=inputs["attention_mask"],
            mel_source=None if mel_source == "none" else mel_source,
            do_sample=False,
            max_new_tokens=NEW_FRAMES,
            return_dict_in_generate=True,
        )
        tensors["greedy_codes"] = generated.sequences
        tensors["greedy_margin"] = torch.tensor(greedy_margin(model, generated, inputs["attention_mask"].sum(-1)))
    return tensors


def load(name: str) -> dict[str, torch.Tensor]:
    return load_file(path_of(name))


def metadata(name: str) -> dict[str, str]:
    """The safetensors header: torch and transformers versions that wrote the file, the command, the seeds."""
    from safetensors import safe_open

    with safe_open(path_of(name), framework="pt") as handle:
        return handle.metadata()


def same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def main() -> None:
    torch.set_num_threads(1)  # as the test suite runs (conftest.py)
    for name in CASES:
        tensors = compute(name)
        if "greedy_margin" in tensors and float(tensors["greedy_margin"]) < MIN_MARGIN:
            raise RuntimeError(
                f"{name}: a greedy pick wins by only {float(tensors['greedy_margin']):.2e}; change INPUT_SEED so "
                "the codes do not hinge on float rounding."
            )
        header = {
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "regenerate": REGENERATE,
            "weight_seed": str(WEIGHT_SEED),
            "input_seed": str(INPUT_SEED),
            "config_overrides": str({**GOLDEN_INIT, **CASES[name][0]}),
        }
        # safetensors writes the header in no fixed order: leave an unchanged file alone, so git shows no change.
        if path_of(name).exists() and metadata(name) == header and same_tensors(load(name), tensors):
            print(f"unchanged {path_of(name)}")
            continue
        save_file({key: value.contiguous() for key, value in tensors.items()}, path_of(name), metadata=header)
        print(f"wrote {path_of(name)} ({', '.join(sorted(tensors))})")


if __name__ == "__main__":
    main()
