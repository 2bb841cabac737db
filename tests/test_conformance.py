"""Transformers conformance of WhisperGPTModel / WhisperGPTForCausalLM, in the spirit of ModelTesterMixin.

Every check runs on the three kinds of model: the hybrid with one codebook (the paper), the hybrid with a depth
decoder over three codebooks, and the token-only baseline with three codebooks. Generation is tested in
test_generation.py; golden values in test_golden.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, tiny_config
from transformers.cache_utils import Cache, DynamicCache, StaticCache

from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM, WhisperGPTModel

CONFIGS = {
    "hybrid_k1": {"num_codebooks": 1},
    "hybrid_k3": {"num_codebooks": 3},
    "token_k3": {"num_codebooks": 3, "use_spectrogram": False},
}
HYBRID_CONFIGS = ["hybrid_k1", "hybrid_k3"]
MODEL_CLASSES = [WhisperGPTModel, WhisperGPTForCausalLM]
BATCH, FRAMES = 2, 10

all_configs = pytest.mark.parametrize("name", list(CONFIGS))


def config_of(name: str, **overrides: Any) -> WhisperGPTConfig:
    return tiny_config(**{**CONFIGS[name], **overrides})


def build(model_class: type, name: str, **overrides: Any) -> torch.nn.Module:
    """A seeded tiny model in eval mode."""
    torch.manual_seed(0)
    return model_class(config_of(name, **overrides)).eval()


def make_inputs(
    config: WhisperGPTConfig, batch: int = BATCH, frames: int = FRAMES, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Codes (B, K, T) and, for the hybrid, mel frames (B, T, M), from their own generator."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "input_ids": torch.randint(0, TINY_CODEBOOK_SIZE, (batch, config.num_codebooks, frames), generator=generator)
    }
    if config.use_spectrogram:
        inputs["input_features"] = torch.randn(batch, frames, TINY_MEL_BINS, generator=generator)
    return inputs


def frames_of(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """The frames start..stop-1 of codes and mel frames."""
    sliced = {"input_ids": inputs["input_ids"][..., start:stop]}
    if "input_features" in inputs:
        sliced["input_features"] = inputs["input_features"][:, start:stop]
    return sliced


def rows_of(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    return {key: value[row : row + 1] for key, value in inputs.items()}


def decoder_states(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    """Last decoder states (B, T, H) of either model class."""
    out = model(**kwargs, output_hidden_states=True)
    return out.last_hidden_state if isinstance(model, WhisperGPTModel) else out.hidden_states[-1]


def assert_same_structure(actual: Any, expected: Any, path: str = "output") -> None:
    """Element-wise equality of nested tuples of tensors and caches (the same values, not just the same shapes)."""
    if expected is None:  # e.g. the keys of a cache layer nothing was written to
        assert actual is None, f"{path}: {type(actual).__name__} instead of None"
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: {type(actual).__name__} instead of a tensor"
        torch.testing.assert_close(actual, expected, atol=0, rtol=0, msg=lambda m: f"{path}: {m}")
    elif isinstance(expected, Cache):
        assert type(actual) is type(expected), f"{path}: {type(actual).__name__} instead of {type(expected).__name__}"
        assert len(actual.layers) == len(expected.layers), f"{path}: layer counts differ"
        for index, (got, want) in enumerate(zip(actual.layers, expected.layers, strict=True)):
            assert_same_structure(got.keys, want.keys, f"{path}.layers[{index}].keys")
            assert_same_structure(got.values, want.values, f"{path}.layers[{index}].values")
    elif isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), f"{path}: tuple lengths differ"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_same_structure(got, want, f"{path}[{index}]")
    else:
        raise AssertionError(f"{path}: unexpected {type(expected).__name__}")


# ------------------------------------------------------------------------------------------ outputs


@all_configs
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_config_output_flags_and_return_dict_are_honoured_and_call_kwargs_override_them(model_class, name) -> None:
    model = build(
        model_class,
        name,
        attn_implementation="eager",
        output_hidden_states=True,
        output_attentions=True,
        return_dict=False,
    )
    config = model.config
    inputs = make_inputs(config)
    extra = {"labels": inputs["input_ids"]} if model_class is WhisperGPTForCausalLM else {}
    as_tuple = model(**inputs, **extra)
    assert isinstance(as_tuple, tuple)
    as_dict = model(**inputs, **extra, return_dict=True)
    assert as_dict.hidden_states is not None and as_dict.attentions is not None  # from the config
    assert len(as_dict.hidden_states) == config.num_hidden_layers + 1
    assert len(as_dict.attentions) == config.num_hidden_layers
    # to_tuple() keeps every field that is not None: the tuple output is complete and equal element-wise.
    assert_same_structure(as_tuple, as_dict.to_tuple())
    overridden = model(**inputs, **extra, output_hidden_states=False, output_attentions=False, return_dict=True)
    assert overridden.hidden_states is None and overridden.attentions is None
    torch.testing.assert_close(overridden[0], as_dict[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("name", "overrides", "fields"),
    [
        *[(name, {}, []) for name in CONFIGS],
        ("hybrid_k1", {"use_mel_head": True}, ["mel_loss", "predicted_mel"]),
    ],
    ids=[*CONFIGS, "hybrid_k1_mel_head"],
)
def test_tuple_output_holds_every_field_in_order(name, overrides, fields) -> None:
    model = build(WhisperGPTForCausalLM, name, attn_implementation="eager", **overrides)
    inputs = make_inputs(model.config)
    kwargs = {"labels": inputs["input_ids"], "use_cache": True, "output_hidden_states": True, "output_attentions": True}
    as_dict = model(**inputs, **kwargs)
    as_tuple = model(**inputs, **kwargs, return_dict=False)
    assert list(as_dict.keys()) == ["loss", "logits", "cache", "hidden_states", "attentions", *fields]
    assert len(as_tuple) == 5 + len(fields)
    assert_same_structure(as_tuple, as_dict.to_tuple())


@all_configs
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_hidden_states_and_attentions_have_one_entry_per_layer(model_class, name) -> None:
    model = build(model_class, name, attn_implementation="eager")
    config = model.config
    out = model(**make_inputs(config), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(state.shape == (BATCH, FRAMES, config.hidden_size) for state in out.hidden_states)
    if model_class is WhisperGPTModel:  # the last entry is the output after the final norm
        torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, atol=0, rtol=0)
    assert len(out.attentions) == config.num_hidden_layers
    causal = torch.ones(FRAMES, FRAMES, dtype=torch.bool).tril()
    for weights in out.attentions:
        assert weights.shape == (BATCH, config.num_attention_heads, FRAMES, FRAMES)
        torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, config.num_attention_heads, FRAMES))
        assert bool((weights[..., ~causal] == 0).all()), "a frame attends to a later frame"


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_output_attentions_with_sdpa_is_refused(model_class) -> None:
    model = build(model_class, "hybrid_k1", attn_implementation="sdpa")
    with pytest.raises(ValueError, match="set_attn_implementation"):
        model(**make_inputs(model.config), output_attentions=True)


@all_configs
def test_hidden_states_and_attentions_retain_gradients_from_the_loss(name) -> None:
    model = build(WhisperGPTForCausalLM, name, attn_implementation="eager").train()
    inputs = make_inputs(model.config)
    out = model(**inputs, labels=inputs["input_ids"], output_hidden_states=True, output_attentions=True)
    hidden, attentions = out.hidden_states[0], out.attentions[0]
    hidden.retain_grad()
    attentions.retain_grad()
    out.loss.backward()
    for tensor in (hidden, attentions):
        assert tensor.grad is not None
        assert bool(tensor.grad.abs().sum() > 0)


# ------------------------------------------------------------------------------------------ caches


def make_cache(kind: str, config: WhisperGPTConfig, length: int) -> Cache:
    return DynamicCache(config=config) if kind == "dynamic" else StaticCache(config=config, max_cache_len=length)


@all_configs
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
@pytest.mark.parametrize("left_pad", [0, 3])
def test_incremental_decoding_with_a_cache_matches_the_full_forward(name, cache_kind, left_pad) -> None:
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config, frames=12)
    mask = torch.ones(BATCH, 12, dtype=torch.long)
    mask[1, :left_pad] = 0  # a left-padded row, as in batched generation
    with torch.no_grad():
        full = model(**inputs, attention_mask=mask, output_hidden_states=True)
        cache = make_cache(cache_kind, model.config, 12)
        prefill = 5
        out = model(**frames_of(inputs, 0, prefill), attention_mask=mask[:, :prefill], cache=cache)
        assert out.cache is cache
        logits, states = [out.logits[:, 0]], [None]
        for t in range(prefill, 12):
            step = model(
                **frames_of(inputs, t, t + 1),
                attention_mask=mask[:, : t + 1],
                cache=cache,
                output_hidden_states=True,
            )
            assert step.cache is cache
            logits.append(step.logits[:, 0])
            states.append(step.hidden_states[-1])
    real = slice(left_pad, None)  # padded positions are never read, whatever they hold
    # Codebook 0 only: for K > 1 the later codebooks are teacher-forced with the next frame's codes.
    torch.testing.assert_close(torch.cat(logits, dim=1)[:, real], full.logits[:, 0, real], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(states[1:], dim=1), full.hidden_states[-1][:, prefill:], atol=1e-5, rtol=0)


@all_configs
def test_use_cache_returns_a_cache_that_continues_the_sequence(name) -> None:
    model = build(WhisperGPTModel, name)
    inputs = make_inputs(model.config, frames=12)
    with torch.no_grad():
        full = model(**inputs).last_hidden_state
        prefix = model(**frames_of(inputs, 0, 8), use_cache=True)
        assert isinstance(prefix.cache, DynamicCache) and prefix.cache.get_seq_length() == 8
        rest = model(**frames_of(inputs, 8, 12), cache=prefix.cache)
        assert model(**inputs, use_cache=False).cache is None
    torch.testing.assert_close(rest.last_hidden_state, full[:, 8:], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ loss and inputs


@all_configs
def test_shift_labels_give_the_same_loss_and_logits_as_labels(name) -> None:
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config)
    labels = inputs["input_ids"].clone()
    labels[0, :, 4] = -100  # ignored, in both conventions
    shift_labels = torch.nn.functional.pad(labels[..., 1:], (0, 1), value=-100)
    with torch.no_grad():
        plain = model(**inputs, labels=labels)
        shifted = model(**inputs, shift_labels=shift_labels)
    torch.testing.assert_close(shifted.loss, plain.loss, atol=1e-6, rtol=0)
    # The depth decoder is teacher-forced with the next frame's codes; position 3 reads code 0 in place of the
    # ignored label, so its later codebooks differ; every other position sees the same codes both ways.
    keep = torch.ones(FRAMES, dtype=torch.bool)
    if model.config.num_codebooks > 1:
        keep[3] = False
    torch.testing.assert_close(shifted.logits[0, :, keep], plain.logits[0, :, keep], atol=1e-6, rtol=0)
    torch.testing.assert_close(shifted.logits[1], plain.logits[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        model(**inputs, labels=labels, shift_labels=shift_labels)


def test_shift_labels_are_refused_for_a_mel_head_which_learns_from_the_next_frame() -> None:
    model = build(WhisperGPTForCausalLM, "hybrid_k1", use_mel_head=True)
    inputs = make_inputs(model.config)
    with pytest.raises(ValueError, match="train it with labels"):
        model(**inputs, shift_labels=inputs["input_ids"])


@all_configs
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_inputs_embeds_and_unknown_arguments_are_refused(model_class, name) -> None:
    model = build(model_class, name)
    inputs = make_inputs(model.config)
    with pytest.raises(ValueError, match="input_ids"):
        model(**inputs, inputs_embeds=torch.zeros(BATCH, FRAMES, model.config.hidden_size))
    with pytest.raises(TypeError):
        model(**inputs, not_an_argument=1)


def test_resize_token_embeddings_is_refused_and_leaves_the_model_usable() -> None:
    model = build(WhisperGPTForCausalLM, "hybrid_k3")
    inputs = make_inputs(model.config)
    with torch.no_grad():
        before = model(**inputs).logits
    with pytest.raises(ValueError, match="codebook_size"):
        model.resize_token_embeddings(40)
    assert model.get_input_embeddings().num_embeddings == 3 * TINY_CODEBOOK_SIZE
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, atol=0, rtol=0)


BAD_INPUTS: list[tuple[str, Callable[[dict], dict], str]] = [
    ("code at codebook_size", lambda i: dict(i, input_ids=i["input_ids"].index_fill(2, torch.tensor([3]), 64)), "pad"),
    ("negative code", lambda i: dict(i, input_ids=i["input_ids"].index_fill(2, torch.tensor([0]), -1)), "pad"),
    ("float codes", lambda i: dict(i, input_ids=i["input_ids"].float()), "integer codes"),
    ("bool codes", lambda i: dict(i, input_ids=i["input_ids"] > 0), "integer codes"),
    ("codes without a codebook axis", lambda i: dict(i, input_ids=i["input_ids"][:, 0]), "WhisperGPTProcessor"),
]
BAD_FEATURES: list[tuple[str, Callable[[dict], dict], str]] = [
    ("missing features", lambda i: {"input_ids": i["input_ids"]}, "use_spectrogram=False"),
    ("2-D features", lambda i: dict(i, input_features=i["input_features"][0]), "num_mel_bins"),
    ("other mel bins", lambda i: dict(i, input_features=i["input_features"][..., :-2]), "num_mel_bins"),
    ("fewer frames than codes", lambda i: dict(i, input_features=i["input_features"][:, :-1]), "same audio"),
]


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize(
    ("name", "case", "make_bad", "message"),
    [(name, *bad) for name in CONFIGS for bad in BAD_INPUTS]
    + [(name, *bad) for name in HYBRID_CONFIGS for bad in BAD_FEATURES],  # a token-only model reads no features
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_inputs_are_refused_at_the_public_entry(model_class, name, case, make_bad, message) -> None:
    model = build(model_class, name)
    with pytest.raises(ValueError, match=message):
        model(**make_bad(make_inputs(model.config)))


# ------------------------------------------------------------------------------------------ batching, attention


@all_configs
@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_a_batch_gives_each_row_the_logits_it_gets_alone(name, padding) -> None:
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config, batch=3)
    lengths = [FRAMES, 7, 4] if padding != "none" else [FRAMES] * 3
    real = torch.arange(FRAMES)[None] < torch.tensor(lengths)[:, None]  # right padding
    if padding == "left":  # real frames at the end, as generate() aligns prompts: positions count from each start
        real = real.flip(-1)
    with torch.no_grad():
        batched = model(**inputs, attention_mask=real.long()).logits
        for row, length in enumerate(lengths):
            start = FRAMES - length if padding == "left" else 0
            alone = model(**frames_of(rows_of(inputs, row), start, start + length)).logits
            torch.testing.assert_close(batched[row : row + 1, :, start : start + length], alone, atol=1e-5, rtol=0)


@all_configs
def test_eager_and_sdpa_attention_give_the_same_logits_with_padding(name) -> None:
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config, batch=3)
    mask = torch.ones(3, FRAMES, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    real = mask[:, None, :, None].bool().expand(-1, model.config.num_codebooks, -1, TINY_CODEBOOK_SIZE)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**inputs, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        eager = model(**inputs, attention_mask=mask).logits
    torch.testing.assert_close(eager[real], sdpa[real], atol=1e-5, rtol=0)


def test_flex_attention_gives_the_same_logits_as_sdpa_with_padding() -> None:
    # One config: flex attention compiles its kernels on first use (about 10 s here); the mask path is shared.
    model = build(WhisperGPTForCausalLM, "hybrid_k3")
    inputs = make_inputs(model.config, batch=2)
    mask = torch.ones(2, FRAMES, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    real = mask[:, None, :, None].bool().expand(-1, model.config.num_codebooks, -1, TINY_CODEBOOK_SIZE)
    with torch.no_grad():
        sdpa = model(**inputs, attention_mask=mask).logits
        model.set_attn_implementation("flex_attention")
        flex = model(**inputs, attention_mask=mask).logits
    torch.testing.assert_close(flex[real], sdpa[real], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ saving, loading, dtypes


@all_configs
def test_save_and_load_round_trip_keeps_weights_and_logits(name, tmp_path) -> None:
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config)
    model.save_pretrained(tmp_path)
    loaded = WhisperGPTForCausalLM.from_pretrained(tmp_path).eval()
    expected, actual = model.state_dict(), loaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, atol=0, rtol=0, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["hybrid_k3", "token_k3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loading_in_half_precision(name, dtype, tmp_path) -> None:
    model = build(WhisperGPTForCausalLM, name)
    model.save_pretrained(tmp_path)
    loaded = WhisperGPTForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert loaded.dtype == dtype
    assert all(parameter.dtype == dtype for parameter in loaded.parameters())
    inputs = make_inputs(model.config)  # mel frames stay float32: the model casts them to its dtype
    with torch.no_grad():
        logits = loaded(**inputs, labels=inputs["input_ids"])
        reference = model(**inputs).logits
    assert logits.logits.dtype == dtype
    assert bool(torch.isfinite(logits.logits).all()) and bool(torch.isfinite(logits.loss))
    torch.testing.assert_close(logits.logits.float(), reference, atol=2e-2, rtol=0)


# ------------------------------------------------------------------------------------------ training behaviour


def parameter_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: parameter.grad.clone() for key, parameter in model.named_parameters() if parameter.grad is not None}


@all_configs
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name) -> None:
    losses, grads = [], []
    inputs = make_inputs(config_of(name))
    for checkpointing in (False, True):
        model = build(WhisperGPTForCausalLM, name).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(parameter_grads(model))
    torch.testing.assert_close(losses[1], losses[0], atol=0, rtol=0)
    assert grads[1].keys() == grads[0].keys() == {key for key, _ in model.named_parameters()}
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, atol=1e-7, rtol=1e-5, msg=key)


def test_the_deprecated_gradient_checkpointing_spelling_still_enables_checkpointing() -> None:
    model = build(WhisperGPTForCausalLM, "hybrid_k1").train()
    with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    assert all(block.gradient_checkpointing for block in [*model.model.layers, *model.model.mel_blocks])


@pytest.mark.parametrize("name", HYBRID_CONFIGS)
def test_reentrant_checkpointing_trains_a_lone_mel_block_parameter(name) -> None:
    """What an adapter in the mel blocks needs: frozen everything else, reentrant checkpointing, input grads."""
    model = build(WhisperGPTForCausalLM, name).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = model.model.mel_blocks[0].attn.qkv_proj.weight
    trained.requires_grad_(True)
    model.enable_input_require_grads()
    inputs = make_inputs(model.config)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert trained.grad is not None
    assert bool(trained.grad.abs().sum() > 0)
    assert [key for key, parameter in model.named_parameters() if parameter.grad is not None] == [
        "model.mel_blocks.0.attn.qkv_proj.weight"
    ]


@all_configs
def test_eval_mode_is_deterministic_and_has_no_dropout(name) -> None:
    model = build(WhisperGPTForCausalLM, name, dropout=0.3)
    inputs = make_inputs(model.config)
    with torch.no_grad():
        first, second = model(**inputs).logits, model(**inputs).logits
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        model.train()
        trained = model(**inputs).logits
        model.eval()
        after = model(**inputs).logits
    assert not torch.allclose(trained, first), "dropout=0.3 had no effect in training mode"
    torch.testing.assert_close(after, first, atol=0, rtol=0)
    # Without dropout, eval and train differ in nothing else.
    plain = build(WhisperGPTForCausalLM, name)
    with torch.no_grad():
        torch.testing.assert_close(plain.train()(**inputs).logits, plain.eval()(**inputs).logits, atol=0, rtol=0)


@all_configs
def test_parameters_are_initialised_from_the_seed(name) -> None:
    model = build(WhisperGPTForCausalLM, name)
    again = build(WhisperGPTForCausalLM, name)
    for (key, parameter), other in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert bool(torch.isfinite(parameter).all()), f"{key} holds non-finite values"
        # Weights far above the init scale are memory torch.empty left behind, not an init.
        assert float(parameter.abs().max()) <= 1.0 + 1e-6, f"{key} reaches {float(parameter.abs().max())}"
        torch.testing.assert_close(other, parameter, atol=0, rtol=0, msg=key)


@all_configs
def test_weights_missing_from_a_checkpoint_are_initialised_and_the_others_loaded(name, tmp_path) -> None:
    model = build(WhisperGPTForCausalLM, name)
    state = model.state_dict()
    missing = ["model.position_embeddings.weight", "model.layers.0.attn.out_proj.weight"]
    for key in missing:
        del state[key]
    model.save_pretrained(tmp_path, state_dict=dict(state))  # saving may consume the dict it is given
    loaded, info = WhisperGPTForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(missing)
    for key, value in loaded.state_dict().items():
        if key in missing:
            std = float(value.std())
            assert bool(torch.isfinite(value).all()) and 0 < std < 0.05, f"{key} re-initialised with std {std}"
        else:
            torch.testing.assert_close(value, state[key], atol=0, rtol=0, msg=key)


# ------------------------------------------------------------------------------------------ torch.compile


def prefilled_cache(model: WhisperGPTForCausalLM, inputs: dict, mask: torch.Tensor, kind: str, frames: int) -> Cache:
    cache = make_cache(kind, model.config, frames + 2)
    with torch.no_grad():
        model(**frames_of(inputs, 0, frames), attention_mask=mask[:, :frames], cache=cache)
    return cache


# Each compile traces the model anew (seconds): the hybrid with a depth decoder on both caches covers the mel
# blocks' cache layers; the token-only model, the path without them.
@pytest.mark.parametrize(
    ("name", "cache_kind"), [("hybrid_k3", "dynamic"), ("hybrid_k3", "static"), ("token_k3", "static")]
)
def test_compiled_decoding_step_matches_eager(name, cache_kind) -> None:
    torch._dynamo.reset()
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config, frames=7)
    mask = torch.ones(BATCH, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding, as generate() pads
    eager_cache = prefilled_cache(model, inputs, mask, cache_kind, 6)
    compiled_cache = copy.deepcopy(eager_cache)
    step = frames_of(inputs, 6, 7)
    args = (step["input_ids"], step.get("input_features"), mask)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
    compiled = torch.compile(model.decoding_step, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model.decoding_step(*args, position_ids, eager_cache)
        actual = compiled(*args, position_ids, compiled_cache)
        full = decoder_states(model, **inputs, attention_mask=mask)
    assert actual.shape == (BATCH, 1, model.config.hidden_size)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual, full[:, -1:], atol=1e-5, rtol=0)
    assert compiled_cache.get_seq_length() == eager_cache.get_seq_length() == 7


@pytest.mark.parametrize("name", ["hybrid_k3"])
def test_compiled_forward_matches_eager(name) -> None:
    torch._dynamo.reset()
    model = build(WhisperGPTForCausalLM, name)
    inputs = make_inputs(model.config)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(**inputs, use_cache=False).logits, model(**inputs, use_cache=False).logits, atol=1e-6, rtol=0
        )
