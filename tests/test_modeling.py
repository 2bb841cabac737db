"""WhisperGPTConfig and WhisperGPTForCausalLM: shapes, loss, padding, cache, init, checkpointing, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, tiny_config
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache

from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM


def random_inputs(batch: int = 2, codebooks: int = 8, frames: int = 20) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(0, TINY_CODEBOOK_SIZE, (batch, codebooks, frames)),
        "input_features": torch.randn(batch, frames, TINY_MEL_BINS),
    }


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("preset", "paper_params"),
    [("paper_gpt_s", 3.7e6), ("paper_hybrid", 4.0e6), ("paper_gpt_l", 40e6)],
)
def test_paper_presets_match_paper_sizes(preset: str, paper_params: float) -> None:
    model = WhisperGPTForCausalLM(getattr(WhisperGPTConfig, preset)())
    assert abs(num_params(model) - paper_params) / paper_params < 0.15


def test_presets_differ_only_where_the_paper_says() -> None:
    hybrid, gpt_s = WhisperGPTConfig.paper_hybrid(), WhisperGPTConfig.paper_gpt_s()
    assert hybrid.use_spectrogram and not gpt_s.use_spectrogram
    assert (hybrid.hidden_size, hybrid.num_hidden_layers) == (gpt_s.hidden_size, gpt_s.num_hidden_layers)
    assert hybrid.num_codebooks == gpt_s.num_codebooks == 1


@pytest.mark.parametrize("num_codebooks", [1, 4])
def test_logits_shape_and_loss_is_shifted_cross_entropy(num_codebooks: int) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
    inputs = random_inputs()
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (2, num_codebooks, 20, TINY_CODEBOOK_SIZE)
    targets = inputs["input_ids"][:, :num_codebooks, 1:]
    expected = F.cross_entropy(out.logits[:, :, :-1].reshape(-1, TINY_CODEBOOK_SIZE), targets.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_label_ignore_index_and_attention_mask_exclude_positions() -> None:
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    inputs = random_inputs()
    labels = inputs["input_ids"].clone()
    labels[:, :, 10:] = -100
    masked = model(**inputs, labels=labels).loss
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[:, 10:] = 0
    by_mask = model(**inputs, attention_mask=mask, labels=inputs["input_ids"]).loss
    logits = model(**inputs).logits
    expected = F.cross_entropy(logits[:, 0, :9].reshape(-1, TINY_CODEBOOK_SIZE), labels[:, 0, 1:10].reshape(-1))
    torch.testing.assert_close(masked, expected)
    torch.testing.assert_close(by_mask, expected)


@pytest.mark.parametrize("num_codebooks", [1, 4])
def test_padded_batch_matches_each_item_alone(num_codebooks: int) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
    inputs = random_inputs(batch=3)
    lengths = [20, 13, 7]
    mask = torch.zeros(3, 20, dtype=torch.long)
    for index, length in enumerate(lengths):
        mask[index, :length] = 1
    batch = model(**inputs, attention_mask=mask)
    for index, length in enumerate(lengths):
        item = {key: value[index : index + 1, ..., :length] for key, value in inputs.items()}
        item["input_features"] = inputs["input_features"][index : index + 1, :length]
        alone = model(**item, labels=item["input_ids"])
        torch.testing.assert_close(batch.logits[index, :, :length], alone.logits[0], atol=1e-5, rtol=0)
        item_mask = mask[index : index + 1]
        item_loss = model.next_frame_loss(
            batch.logits[index : index + 1], inputs["input_ids"][index : index + 1], item_mask
        )
        torch.testing.assert_close(item_loss, alone.loss, atol=1e-5, rtol=0)


def test_token_only_model_has_no_mel_parameters_and_ignores_features() -> None:
    model = WhisperGPTForCausalLM(tiny_config(use_spectrogram=False)).eval()
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if "mel" in name or "fusion" in name]
    inputs = random_inputs()
    with_features = model(**inputs).logits
    without = model(input_ids=inputs["input_ids"]).logits
    other_features = model(input_ids=inputs["input_ids"], input_features=torch.randn(2, 20, 3)).logits
    torch.testing.assert_close(with_features, without, atol=0, rtol=0)
    torch.testing.assert_close(other_features, without, atol=0, rtol=0)


def test_hybrid_logits_depend_on_features() -> None:
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    inputs = random_inputs()
    changed = dict(inputs, input_features=inputs["input_features"] + 1.0)
    assert not torch.allclose(model(**inputs).logits, model(**changed).logits)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_fusion_starts_as_token_embedding_plus_small_mel_term(fusion: str) -> None:
    config = WhisperGPTConfig.paper_hybrid(fusion=fusion)
    model = WhisperGPTForCausalLM(config)
    fusion_module = model.model.fusion
    tokens = model.model.code_embeddings(torch.randint(0, config.codebook_size, (2, 50)))
    mel_states = torch.randn(2, 50, config.spectrogram_hidden_size)  # unit scale, like the mel_norm output
    fused = fusion_module(tokens, mel_states)
    relative = ((fused - tokens).norm() / tokens.norm()).item()
    assert relative < 3 * config.mel_init_scale, relative  # a default init would give ~10x the token scale
    if fusion == "concat":
        token_block = fusion_module.weight[:, : config.hidden_size]
        torch.testing.assert_close(token_block, torch.eye(config.hidden_size))


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_a_gated_hybrid_starts_as_the_token_only_model_and_learns_to_open_the_gate(fusion: str, tmp_path) -> None:
    model = WhisperGPTForCausalLM(tiny_config(fusion=fusion, mel_gate=True))
    inputs = random_inputs()
    changed = dict(inputs, input_features=inputs["input_features"] + 1.0)
    # Closed at first: the mel frames change nothing, so training starts from the token-only model.
    torch.testing.assert_close(model(**inputs).logits, model(**changed).logits, rtol=0, atol=0)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert model.model.fusion.mel_gate.grad.abs() > 0  # the loss can open it
    with torch.no_grad():
        model.model.fusion.mel_gate.fill_(0.5)
    assert not torch.allclose(model(**inputs).logits, model(**changed).logits)
    model.save_pretrained(tmp_path)
    loaded = WhisperGPTForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.mel_gate and loaded.model.fusion.mel_gate.item() == 0.5
    assert WhisperGPTForCausalLM(tiny_config()).model.fusion.mel_gate is None  # off by default (paper presets)
    with pytest.raises(ValueError, match="token-only model"):
        tiny_config(use_spectrogram=False, mel_gate=True)


def test_fusion_init_survives_save_and_load(tmp_path) -> None:
    model = WhisperGPTForCausalLM(tiny_config())
    with torch.no_grad():
        model.model.fusion.weight.add_(0.5)  # as after training
    model.save_pretrained(tmp_path)
    loaded = WhisperGPTForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.model.fusion.weight, model.model.fusion.weight)


@pytest.mark.parametrize("num_codebooks", [1, 4])
def test_kv_cache_decoding_matches_full_forward(num_codebooks: int) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
    inputs = random_inputs(frames=16)
    full = model(**inputs, output_hidden_states=True)
    prefix = model(input_ids=inputs["input_ids"][..., :10], input_features=inputs["input_features"][:, :10])
    cache, states = (
        prefix.cache,
        [
            model.model(
                **{k: v[..., :10] if k == "input_ids" else v[:, :10] for k, v in inputs.items()}
            ).last_hidden_state
        ],
    )
    assert cache.get_seq_length() == 10
    for t in range(10, 16):
        step = model.model(
            input_ids=inputs["input_ids"][..., t : t + 1],
            input_features=inputs["input_features"][:, t : t + 1],
            cache=cache,
        )
        states.append(step.last_hidden_state)
    torch.testing.assert_close(torch.cat(states, dim=1), full.hidden_states[-1], atol=1e-5, rtol=0)
    if num_codebooks == 1:
        step_logits = model.frame_logits(torch.cat(states, dim=1))
        torch.testing.assert_close(step_logits, full.logits, atol=1e-5, rtol=0)


def test_depth_decoder_steps_with_a_cache_match_its_teacher_forced_forward() -> None:
    torch.manual_seed(0)
    depth = WhisperGPTForCausalLM(tiny_config(num_codebooks=4)).eval().depth_decoder
    frame_states = torch.randn(3, depth.in_proj.in_features)
    codes = torch.randint(0, TINY_CODEBOOK_SIZE, (3, 3))
    with torch.no_grad():
        expected = depth(frame_states, codes)  # (3, 4, V): all codebooks at once, as in training
        cache, projected = DynamicCache(), depth.in_proj(frame_states)
        stepped = [depth.step(projected, codes[:, k - 1] if k else None, k, cache) for k in range(4)]
    torch.testing.assert_close(torch.stack(stepped, dim=1), expected, atol=1e-5, rtol=0)


def test_cache_with_padding_mask_matches_full_forward() -> None:
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    inputs = random_inputs(frames=12)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0  # left padding, as in batched generation
    full = model(**inputs, attention_mask=mask).logits
    prefix = model(
        input_ids=inputs["input_ids"][..., :8],
        input_features=inputs["input_features"][:, :8],
        attention_mask=mask[:, :8],
    )
    logits = [prefix.logits]
    for t in range(8, 12):
        step = model(
            input_ids=inputs["input_ids"][..., t : t + 1],
            input_features=inputs["input_features"][:, t : t + 1],
            attention_mask=mask[:, : t + 1],
            cache=prefix.cache,
        )
        logits.append(step.logits)
    torch.testing.assert_close(torch.cat(logits, dim=2)[1, :, 3:], full[1, :, 3:], atol=1e-5, rtol=0)


def test_eager_and_sdpa_attention_agree() -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=4)).eval()
    inputs = random_inputs()
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0
    sdpa = model(**inputs, attention_mask=mask).logits
    model.config._attn_implementation = "eager"
    eager = model(**inputs, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa, atol=1e-5, rtol=0)
    assert eager.attentions[0].shape == (2, 2, 20, 20)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    config = tiny_config(num_codebooks=4)
    inputs = random_inputs()
    grads, block_calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = WhisperGPTForCausalLM(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        calls = [0]

        def count_call(*args, calls=calls) -> None:
            calls[0] += 1

        model.model.layers[0].attn.register_forward_hook(count_call)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        block_calls.append(calls[0])
    assert block_calls == [1, 2]  # the checkpointed block ran again during backward
    torch.testing.assert_close(grads[0], grads[1])


def test_hidden_states_on_request() -> None:
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    out = model(**random_inputs(), output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (2, 20, 32)


@pytest.mark.parametrize("num_codebooks", [1, 4])
def test_save_and_load_give_identical_logits(tmp_path, num_codebooks: int) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
    inputs = random_inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "modeling_whisper_gpt.py").exists()
    for loader in (WhisperGPTForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is WhisperGPTForCausalLM
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


BAD_INPUTS = [
    ("codes out of range", lambda i: dict(i, input_ids=i["input_ids"] + TINY_CODEBOOK_SIZE), "outside"),
    ("negative codes", lambda i: dict(i, input_ids=i["input_ids"] - TINY_CODEBOOK_SIZE), "outside"),
    ("float codes", lambda i: dict(i, input_ids=i["input_ids"].float()), "integer"),
    ("2-D codes", lambda i: dict(i, input_ids=i["input_ids"][:, 0]), "batch, codebooks, frames"),
    ("too few codebooks", lambda i: dict(i, input_ids=i["input_ids"][:, :1]), "higher codec bandwidth"),
    (
        "features shorter than codes",
        lambda i: dict(i, input_features=i["input_features"][:, :-1]),
        "same audio",
    ),
    (
        "features with other mel bins",
        lambda i: dict(i, input_features=i["input_features"][..., :-1]),
        "num_mel_bins",
    ),
    ("missing features", lambda i: {"input_ids": i["input_ids"]}, "use_spectrogram=False"),
    ("wrong mask shape", lambda i: dict(i, attention_mask=torch.ones(2, 19)), "attention_mask"),
    (
        "NaN features",
        lambda i: dict(i, input_features=i["input_features"].index_fill(1, torch.tensor([3]), float("nan"))),
        "NaN",
    ),
    (
        "Inf features",
        lambda i: dict(i, input_features=i["input_features"].index_fill(1, torch.tensor([0]), float("inf"))),
        "NaN or Inf",
    ),
    ("labels all ignored", lambda i: dict(i, labels=torch.full_like(i["input_ids"], -100)), "No position has a target"),
    (
        "padding everywhere",
        lambda i: dict(i, labels=i["input_ids"], attention_mask=torch.zeros(2, i["input_ids"].shape[-1])),
        "No position",
    ),
    (
        "one frame with labels",
        lambda i: dict(
            i,
            input_ids=i["input_ids"][..., :1],
            input_features=i["input_features"][:, :1],
            labels=i["input_ids"][..., :1],
        ),
        "at least 2 frames",
    ),
    ("float labels", lambda i: dict(i, labels=i["input_ids"].float()), "integer codes"),
    (
        "no frames",
        lambda i: dict(i, input_ids=i["input_ids"][..., :0], input_features=i["input_features"][:, :0]),
        "no frames",
    ),
    ("labels and shift_labels", lambda i: dict(i, labels=i["input_ids"], shift_labels=i["input_ids"]), "not both"),
    ("inputs_embeds", lambda i: dict(i, inputs_embeds=torch.zeros(2, 3, 4)), "inputs_embeds"),
]


@pytest.mark.parametrize(("case", "make_bad", "message"), BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_inputs_raise_clear_value_errors(case: str, make_bad, message: str) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=4)).eval()
    with pytest.raises(ValueError, match=message):
        model(**make_bad(random_inputs()))


def test_context_longer_than_positions_is_refused() -> None:
    model = WhisperGPTForCausalLM(tiny_config(max_position_embeddings=16)).eval()
    with pytest.raises(ValueError, match="sliding window"):
        model(**random_inputs(frames=17))


@pytest.mark.parametrize(
    "overrides",
    [
        {"hidden_size": 31},
        {"fusion": "gated"},
        {"num_codebooks": 0},
        {"dropout": 1.5},
        {"spectrogram_layers": -1},
    ],
)
def test_invalid_configs_are_refused(overrides: dict) -> None:
    with pytest.raises(ValueError):
        tiny_config(**overrides)


def test_spectrogram_layers_zero_still_uses_mel() -> None:
    model = WhisperGPTForCausalLM(tiny_config(spectrogram_layers=0)).eval()
    assert not model.model.mel_blocks
    inputs = random_inputs()
    changed = dict(inputs, input_features=inputs["input_features"] * 2)
    assert not torch.allclose(model(**inputs).logits, model(**changed).logits)


def test_int32_codes_and_labels_give_the_int64_loss() -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=2)).eval()
    inputs = random_inputs()
    codes = inputs["input_ids"][:, :2]
    expected = model(**dict(inputs, input_ids=codes, labels=codes)).loss
    narrow = codes.to(torch.int32)
    torch.testing.assert_close(model(**dict(inputs, input_ids=narrow, labels=narrow)).loss, expected)
