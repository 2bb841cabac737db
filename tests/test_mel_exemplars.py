"""The codec's mel exemplars: one real log-mel frame per codebook-0 code, fed back and rendered in generation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_MEL_BINS, real_like_audio, tiny_config
from transformers import pipeline

from whisper_gpt import WhisperGPTFeatureExtractor, WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.tokenization_whisper_gpt import MEL_EXEMPLARS_NAME, WhisperGPTAudioTokenizer
from whisper_gpt.training.codec_fitting import calibrate, fit_encoder_to_mel, fit_mel_exemplars

SR = 24_000


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [real_like_audio(3.0, seed=seed) for seed in range(3)]


@pytest.fixture(scope="module")
def exemplar_processor(tiny_processor, clips) -> WhisperGPTProcessor:
    """A copy of the tiny processor (the session's one stays as it is) whose codec has mel exemplars."""
    processor = copy.deepcopy(tiny_processor)
    stats = fit_mel_exemplars(processor.audio_tokenizer, clips, processor.feature_extractor)
    assert stats["frames"] == sum(-(-len(clip) // 320) for clip in clips) and stats["codes_seen"] > 1
    return processor


def codes_and_frames(processor, clips) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook-0 codes (N,) and causal log-mel frames (N, M) of the clips, frame by frame."""
    codes = [processor.audio_tokenizer.encode_clips([clip])[0][0] for clip in clips]
    frames = [processor.feature_extractor.causal_log_mel(torch.from_numpy(clip)[None])[0] for clip in clips]
    assert [len(c) for c in codes] == [len(f) for f in frames] == [-(-len(clip) // 320) for clip in clips]
    return torch.cat(codes), torch.cat(frames)


def test_each_exemplar_is_the_real_frame_nearest_its_codes_median(exemplar_processor, clips) -> None:
    tokenizer = exemplar_processor.audio_tokenizer
    exemplars = tokenizer.mel_exemplars
    assert exemplars.shape == (tokenizer.codebook_size, TINY_MEL_BINS) and exemplars.dtype == torch.float32
    codes, frames = codes_and_frames(exemplar_processor, clips)
    for code in codes.unique().tolist():
        members = frames[codes == code]
        distances = (members - members.median(dim=0).values).abs().sum(dim=1)
        torch.testing.assert_close(exemplars[code], members[distances.argmin()], atol=0, rtol=0)
    # Generation looks them up by the codebook-0 code of each frame.
    looked_up = tokenizer.mel_exemplar_frames(codes[None, None].repeat(1, 2, 1))
    torch.testing.assert_close(looked_up[0], exemplars[codes], atol=0, rtol=0)


def test_codes_never_seen_borrow_the_nearest_seen_codes_exemplar(tiny_processor) -> None:
    tokenizer = copy.deepcopy(tiny_processor.audio_tokenizer)
    short = real_like_audio(0.1, seed=5)  # 8 frames: most of the 64 codes never occur
    fit_mel_exemplars(tokenizer, [short], tiny_processor.feature_extractor)
    seen = tokenizer.encode_clips([short])[0][0].unique()
    codebook = tokenizer.codec.quantizer.layers[0].codebook.embed
    unseen = [code for code in range(tokenizer.codebook_size) if code not in seen.tolist()]
    assert len(unseen) > tokenizer.codebook_size // 2
    for code in unseen:
        nearest = seen[torch.cdist(codebook[code][None], codebook[seen]).argmin()]
        torch.testing.assert_close(tokenizer.mel_exemplars[code], tokenizer.mel_exemplars[nearest], atol=0, rtol=0)


def test_exemplars_are_saved_loaded_and_cleared_when_the_codes_change(exemplar_processor, tmp_path, clips) -> None:
    tokenizer = copy.deepcopy(exemplar_processor.audio_tokenizer)
    tokenizer.save_pretrained(tmp_path)
    loaded = WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.mel_exemplars, tokenizer.mel_exemplars, atol=0, rtol=0)
    assert loaded.mel_exemplar_geometry == tokenizer.mel_exemplar_geometry
    assert loaded.mel_exemplar_geometry["n_fft"] == 1024 and loaded.mel_exemplar_geometry["framing"] == "causal"
    # New codebooks: the exemplars described the old codes, so they go, and a later save removes the stale file.
    calibrate(tokenizer, clips, SR, iterations=2)
    assert tokenizer.mel_exemplars is None and tokenizer.mel_exemplar_geometry is None
    tokenizer.save_pretrained(tmp_path)
    assert not (tmp_path / MEL_EXEMPLARS_NAME).exists()
    assert WhisperGPTAudioTokenizer.from_pretrained(tmp_path).mel_exemplars is None
    # A processor folder carries them in audio_tokenizer/.
    exemplar_processor.save_pretrained(tmp_path / "processor")
    again = WhisperGPTProcessor.from_pretrained(tmp_path / "processor").audio_tokenizer
    torch.testing.assert_close(again.mel_exemplars, exemplar_processor.audio_tokenizer.mel_exemplars)


def test_exemplar_errors_say_what_to_do(exemplar_processor, tiny_processor, tmp_path, clips) -> None:
    tokenizer = exemplar_processor.audio_tokenizer
    extractor = exemplar_processor.feature_extractor
    with pytest.raises(ValueError, match="n_fft=1024, but the feature extractor has n_fft=512"):
        tokenizer.mel_exemplar_frames(torch.zeros(1, 1, 3, dtype=torch.long), WhisperGPTFeatureExtractor(n_fft=512))
    with pytest.raises(ValueError, match="valid codes are 0 to"):
        tokenizer.mel_exemplar_frames(torch.full((1, 1, 2), tokenizer.codebook_size))
    with pytest.raises(ValueError, match="has no mel exemplars: run fit_mel_exemplars"):
        tiny_processor.audio_tokenizer.mel_exemplar_frames(torch.zeros(1, 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="framing='causal'"):
        fit_mel_exemplars(copy.deepcopy(tokenizer), clips, WhisperGPTFeatureExtractor(framing="centered"))
    with pytest.raises(ValueError, match="got no audio"):
        fit_mel_exemplars(copy.deepcopy(tokenizer), [], extractor)
    size = (tokenizer.codebook_size, TINY_MEL_BINS)
    with pytest.raises(ValueError, match=r"have shape \(3, 16\); this codec and feature extractor need \(64, 16\)"):
        copy.deepcopy(tokenizer).set_mel_exemplars(torch.zeros(3, TINY_MEL_BINS), extractor)
    with pytest.raises(ValueError, match="must be a float tensor"):
        copy.deepcopy(tokenizer).set_mel_exemplars(torch.zeros(size, dtype=torch.long), extractor)
    fresh = copy.deepcopy(tokenizer)
    fit_encoder_to_mel(fresh, clips, extractor, steps=1, batch_size=1, crop_frames=8, progress=False)
    assert fresh.mel_exemplars is None  # the codes changed
    with pytest.raises(ValueError, match="run calibrate"):
        fit_mel_exemplars(fresh, clips, extractor)
    # A file of another codec's or mel geometry's size is refused on load, and so is a missing one.
    copy.deepcopy(tokenizer).save_pretrained(tmp_path)
    for shape in ((3, TINY_MEL_BINS), (tokenizer.codebook_size, TINY_MEL_BINS + 1), (tokenizer.codebook_size,)):
        np.save(tmp_path / MEL_EXEMPLARS_NAME, np.zeros(shape, dtype=np.float32))
        with pytest.raises(ValueError, match="made for another codec or mel geometry"):
            WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    (tmp_path / MEL_EXEMPLARS_NAME).unlink()
    with pytest.raises(ValueError, match=r"mel_exemplars\.npy is missing; save the codec again"):
        WhisperGPTAudioTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("num_codebooks", [1, 2])
def test_generation_feeds_back_and_returns_the_exemplar_of_each_new_code(exemplar_processor, num_codebooks) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
    tokenizer = exemplar_processor.audio_tokenizer
    batch = exemplar_processor(audio=[real_like_audio(0.2), real_like_audio(0.1, seed=1)], sampling_rate=SR)
    # Greedy (the shipped generation config samples): the cached and recomputed runs must pick the same codes.
    kwargs = dict(
        audio_tokenizer=tokenizer,
        mel_source="exemplar",
        max_new_tokens=12,
        do_sample=False,
        return_dict_in_generate=True,
    )
    cached = model.generate(**batch, **kwargs)
    recomputed = model.generate(**batch, use_cache=False, **kwargs)
    torch.testing.assert_close(cached.sequences, recomputed.sequences, atol=0, rtol=0)
    torch.testing.assert_close(cached.input_features, recomputed.input_features, atol=0, rtol=0)
    for row, length in enumerate(batch.attention_mask.sum(-1).tolist()):
        new = cached.sequences[row : row + 1, :, length : length + 12]
        expected = tokenizer.mel_exemplar_frames(new)[0]
        torch.testing.assert_close(cached.input_features[row, length : length + 12], expected, atol=0, rtol=0)
        # The prompt keeps its own frames.
        torch.testing.assert_close(cached.input_features[row, :length], batch.input_features[row, :length])


def test_default_mel_source_prefers_exemplars_for_a_codec_that_cannot_be_heard(
    exemplar_processor, tiny_processor
) -> None:
    with_exemplars, without = exemplar_processor.audio_tokenizer, tiny_processor.audio_tokenizer
    hybrid, head = WhisperGPTForCausalLM(tiny_config()), WhisperGPTForCausalLM(tiny_config(use_mel_head=True))
    token_only = WhisperGPTForCausalLM(tiny_config(use_spectrogram=False))
    assert hybrid.resolve_mel_source(None, with_exemplars) == "exemplar"
    assert head.resolve_mel_source(None, with_exemplars) == "exemplar"
    assert head.resolve_mel_source(None, without) == "learned"
    assert hybrid.resolve_mel_source(None, without) == "codec"
    # A token-only model reads no mel frames, but with exemplars its continuation can be rendered from them.
    assert token_only.resolve_mel_source(None, with_exemplars) == "exemplar"
    assert token_only.resolve_mel_source(None, without) is None
    trained = copy.deepcopy(with_exemplars)
    trained.decoder_trained = True  # a decoder made for listening: decoding is exact
    assert hybrid.resolve_mel_source(None, trained) == "codec"
    assert hybrid.resolve_mel_source("exemplar", trained) == "exemplar"
    with pytest.raises(ValueError, match='mel_source="exemplar" needs audio_tokenizer= with mel exemplars'):
        hybrid.resolve_mel_source("exemplar", without)
    with pytest.raises(ValueError, match="needs audio_tokenizer= with mel exemplars"):
        hybrid.resolve_mel_source("exemplar", None)
    with pytest.raises(ValueError, match='use "codec" or "learned"'):
        head.resolve_mel_source("exemplar", without)


def test_a_token_only_model_gets_exemplar_frames_to_render_even_without_prompt_features(exemplar_processor) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(use_spectrogram=False)).eval()
    tokenizer = exemplar_processor.audio_tokenizer
    batch = exemplar_processor(audio=real_like_audio(0.2), sampling_rate=SR)
    greedy = dict(audio_tokenizer=tokenizer, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    with_features = model.generate(**batch, **greedy)
    codes_only = model.generate(input_ids=batch.input_ids, **greedy)
    # It reads no mel frames: the same codes either way; the frames are the prompt's own or its codes' exemplars.
    torch.testing.assert_close(with_features.sequences, codes_only.sequences, atol=0, rtol=0)
    torch.testing.assert_close(codes_only.input_features, tokenizer.mel_exemplar_frames(codes_only.sequences))
    torch.testing.assert_close(with_features.input_features[:, :15], batch.input_features)


def test_pipeline_renders_the_exemplar_frames_by_default(exemplar_processor) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    pipe = pipeline("audio-continuation", model=model, processor=exemplar_processor)
    audio = real_like_audio(0.3)
    sampling = dict(do_sample=True, top_k=50)
    auto = pipe(
        audio,
        sampling_rate=SR,
        max_new_seconds=0.2,
        return_prompt=False,
        generator=torch.Generator().manual_seed(1),
        **sampling,
    )["audio"]
    output = model.generate(
        **exemplar_processor(audio=audio, sampling_rate=SR),
        audio_tokenizer=exemplar_processor.audio_tokenizer,
        mel_source="exemplar",
        max_new_tokens=15,
        generator=torch.Generator().manual_seed(1),
        return_dict_in_generate=True,
        **sampling,
    )
    expected = exemplar_processor.feature_extractor.mel_to_audio(output.input_features)[0, -15 * 320 :].numpy()
    np.testing.assert_allclose(auto, expected, atol=1e-5)
