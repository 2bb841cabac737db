"""generate(): transformers' generation config, logits processors, stopping criteria and streamers on frames of
codes; mel frame sources (codec in the loop, exemplar, learned, custom); cache equality; sliding context."""

from __future__ import annotations

import copy
import sys
from unittest import mock

import pytest
import torch
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, real_like_audio, tiny_config
from transformers import GenerationConfig, set_seed
from transformers.generation import BaseStreamer, LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTGenerateOutput
from whisper_gpt import generation_whisper_gpt as generation_module
from whisper_gpt.generation_whisper_gpt import (
    HONOURED_FIELDS,
    REFUSED_ARGUMENTS,
    REFUSED_FIELDS,
    CodecMelSource,
    DecodingSteps,
    ExemplarMelSource,
    MelFrameSource,
)

HOP = 320
# The three kinds of model: hybrid with one codebook (a linear head), hybrid with a depth decoder, token-only.
CONFIGS = {
    "hybrid_k1": {},
    "hybrid_k4": {"num_codebooks": 4},
    "token_k1": {"use_spectrogram": False},
}


def make_model(**overrides) -> WhisperGPTForCausalLM:
    torch.manual_seed(0)
    return WhisperGPTForCausalLM(tiny_config(**overrides)).eval()


def prompt(processor, seconds=(0.3,), **kwargs):
    clips = [real_like_audio(s, seed=i) for i, s in enumerate(seconds)]
    return processor(audio=clips if len(clips) > 1 else clips[0], sampling_rate=24000, **kwargs)


def generate(model, processor, batch, **kwargs):
    return model.generate(
        **batch, audio_tokenizer=processor.audio_tokenizer, feature_extractor=processor.feature_extractor, **kwargs
    )


def new_codes(output: WhisperGPTGenerateOutput, row: int, prompt_length: int) -> torch.Tensor:
    """Row ``row``'s new frames (K, n) of a right-padded output."""
    end = int(output.attention_mask[row].sum())
    return output.sequences[row, :, prompt_length:end]


@pytest.mark.parametrize("num_codebooks", [1, 4])
@pytest.mark.parametrize("use_spectrogram", [True, False])
def test_shapes_short_prompt_continuation_and_beyond_context(tiny_processor, num_codebooks, use_spectrogram):
    model = make_model(num_codebooks=num_codebooks, use_spectrogram=use_spectrogram, max_position_embeddings=24)
    one_frame = prompt(tiny_processor, seconds=(0.01,))
    assert one_frame.input_ids.shape[-1] == 1
    assert generate(model, tiny_processor, one_frame, max_new_tokens=5).shape == (1, num_codebooks, 6)
    batch = prompt(tiny_processor, seconds=(0.2,))  # 15 frames
    out = generate(model, tiny_processor, batch, max_new_tokens=40)  # 55 frames > 24-frame context
    assert out.shape == (1, num_codebooks, 55)
    torch.testing.assert_close(out[:, :, :15], batch.input_ids[:, :num_codebooks])
    assert int(out.max()) < model.config.codebook_size


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("do_sample", [False, True])
def test_with_cache_equals_recomputing_without_cache(tiny_processor, name, do_sample):
    # 15- and 8-frame prompts + 30 frames in a 32-frame context: the window slides (stride 8) on the way.
    model = make_model(max_position_embeddings=32, **CONFIGS[name])
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))

    def run(**kwargs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(4)
        return generate(
            model, tiny_processor, batch, max_new_tokens=30, do_sample=do_sample, generator=generator, **kwargs
        )

    cached = run()
    torch.testing.assert_close(cached, run(use_cache=False), atol=0, rtol=0)
    torch.testing.assert_close(cached, run(cache_implementation="static"), atol=0, rtol=0)
    slid_often = run(context_stride=3)
    torch.testing.assert_close(slid_often, run(context_stride=3, use_cache=False), atol=0, rtol=0)


def test_batched_prompts_of_different_lengths_match_each_alone(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor, seconds=(0.3, 0.12))
    out = generate(model, tiny_processor, batch, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    lengths = batch.attention_mask.sum(-1)
    assert out.attention_mask.sum(-1).tolist() == (lengths + 8).tolist()
    for index, seconds in enumerate((0.3, 0.12)):
        alone = tiny_processor(audio=real_like_audio(seconds, seed=index), sampling_rate=24000)
        single = generate(model, tiny_processor, alone, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
        end = lengths[index] + 8
        torch.testing.assert_close(out.sequences[index, :, :end], single.sequences[0])
        # The mel frames of the generated audio too: the padding of the shorter prompt is never decoded.
        torch.testing.assert_close(out.input_features[index, :end], single.input_features[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padded_prompts_continue_as_right_padded_ones(tiny_processor, name):
    model = make_model(**CONFIGS[name])
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    right = generate(model, tiny_processor, batch, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    length = batch.input_ids.shape[-1]
    pads = (length - batch.attention_mask.sum(-1)).tolist()
    left = {
        "input_ids": torch.stack([row.roll(pad, -1) for row, pad in zip(batch.input_ids, pads, strict=True)]),
        "input_features": torch.stack([row.roll(pad, 0) for row, pad in zip(batch.input_features, pads, strict=True)]),
        "attention_mask": torch.stack([row.roll(pad, 0) for row, pad in zip(batch.attention_mask, pads, strict=True)]),
    }
    assert left["attention_mask"][1, 0] == 0 and left["attention_mask"][1, -1] == 1
    out = generate(model, tiny_processor, left, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    torch.testing.assert_close(out.sequences, right.sequences, atol=0, rtol=0)  # returned right-padded
    torch.testing.assert_close(out.attention_mask, right.attention_mask, atol=0, rtol=0)
    with pytest.raises(ValueError, match="one run of real frames"):
        holes = batch.attention_mask.clone()
        holes[0, 3] = 0
        generate(model, tiny_processor, {**batch, "attention_mask": holes}, max_new_tokens=2)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, tiny_processor, {**batch, "attention_mask": torch.zeros_like(holes)}, max_new_tokens=2)


def test_generated_mel_frames_are_the_feature_extractor_on_decoded_codes(tiny_processor):
    model = make_model()
    # A prompt of whole frames: a partial last frame has zeros where generation later has decoded audio.
    batch = prompt(tiny_processor, seconds=(0.12,), mel_source="codec", mel_num_codebooks=1)
    out = generate(model, tiny_processor, batch, max_new_tokens=6, mel_window_frames=64, return_dict_in_generate=True)
    audio = tiny_processor.audio_tokenizer.decode(out.sequences)  # all codes at once, K = 1
    expected = tiny_processor.feature_extractor.causal_log_mel(audio)
    torch.testing.assert_close(out.input_features, expected, atol=1e-4, rtol=0)


def test_mel_source_codec_uses_the_resynthesised_audio(tiny_processor):
    audio = real_like_audio(0.4, seed=7)
    plain = tiny_processor(audio=audio, sampling_rate=24000)
    codec = tiny_processor(audio=audio, sampling_rate=24000, mel_source="codec", mel_num_codebooks=1)
    torch.testing.assert_close(codec.input_ids, plain.input_ids)
    resynthesised = tiny_processor.audio_tokenizer.decode(plain.input_ids[:, :1])[:, : len(audio)]
    expected = tiny_processor.feature_extractor.causal_log_mel(resynthesised)
    torch.testing.assert_close(codec.input_features, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(codec.input_features, plain.input_features)
    with pytest.raises(ValueError, match="mel_source"):
        tiny_processor(audio=audio, sampling_rate=24000, mel_source="learned-later")


def test_mel_sources_are_strategy_objects_names_build_them(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor, seconds=(0.12,))
    kwargs = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True)
    by_name = generate(model, tiny_processor, batch, mel_source="codec", mel_window_frames=8, **kwargs)
    by_object = generate(model, tiny_processor, batch, mel_source=CodecMelSource(window_frames=8), **kwargs)
    torch.testing.assert_close(by_name.input_features, by_object.input_features, atol=0, rtol=0)
    default = generate(model, tiny_processor, batch, **kwargs)  # window 32 > the 9-frame prompt: all of it
    assert not torch.allclose(default.input_features, by_name.input_features)  # the window reaches the codec

    class Constant(MelFrameSource):
        name = "constant"

        def start(self, model, audio_tokenizer, feature_extractor, codes, mask):
            frame = torch.full((codes.shape[0], 1, model.config.num_mel_bins), -2.0)
            return lambda new_codes, window_codes, window_mask: frame

    out = generate(model, tiny_processor, batch, mel_source=Constant(), **kwargs)
    torch.testing.assert_close(out.input_features[0, 9:], torch.full((5, TINY_MEL_BINS), -2.0))
    torch.testing.assert_close(out.input_features[0, :9], batch.input_features[0])
    assert not torch.allclose(out.logits[-1], default.logits[-1])  # the model reads the frames it is given

    with pytest.raises(ValueError, match="mel_window_frames only applies"):
        generate(make_model(use_mel_head=True), tiny_processor, batch, mel_source="learned", mel_window_frames=4)
    with pytest.raises(ValueError, match="set it on the MelFrameSource"):
        generate(model, tiny_processor, batch, mel_source=CodecMelSource(), mel_window_frames=4)
    with pytest.raises(ValueError, match="mel_window_frames must be at least 1"):
        generate(model, tiny_processor, batch, mel_window_frames=0)
    with pytest.raises(ValueError, match='mel_source must be "codec", "exemplar", "learned", a MelFrameSource'):
        generate(model, tiny_processor, batch, mel_source="griffin-lim")


@pytest.mark.parametrize("num_codebooks", [1, 2])
def test_exemplar_source_object_matches_its_name(tiny_processor, num_codebooks):
    processor = copy.deepcopy(tiny_processor)
    table = torch.randn(TINY_CODEBOOK_SIZE, TINY_MEL_BINS, generator=torch.Generator().manual_seed(0))
    processor.audio_tokenizer.set_mel_exemplars(table, processor.feature_extractor)
    model = make_model(num_codebooks=num_codebooks)
    batch = prompt(processor, seconds=(0.12,))
    kwargs = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    by_name = generate(model, processor, batch, mel_source="exemplar", **kwargs)
    by_object = generate(model, processor, batch, mel_source=ExemplarMelSource(), **kwargs)
    default = generate(model, processor, batch, **kwargs)  # an untrained decoder and exemplars: exemplar
    for out in (by_object, default):
        torch.testing.assert_close(out.sequences, by_name.sequences, atol=0, rtol=0)
    torch.testing.assert_close(by_name.input_features[0, 9:], table[by_name.sequences[0, 0, 9:]])


def test_seeded_sampling_is_reproducible(tiny_processor):
    model = make_model(num_codebooks=4)
    batch = prompt(tiny_processor)

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate(model, tiny_processor, batch, max_new_tokens=12, do_sample=True, top_k=20, generator=generator)

    torch.testing.assert_close(sample(1), sample(1), atol=0, rtol=0)
    assert not torch.equal(sample(1), sample(2))
    set_seed(5)
    first = generate(model, tiny_processor, batch, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)
    set_seed(5)
    second = generate(model, tiny_processor, batch, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_num_return_sequences_and_repetition_penalty(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    out = generate(model, tiny_processor, batch, max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert out.shape == (6, 1, 20)
    torch.testing.assert_close(out[:3, :, :15], batch.input_ids[:1, :1].expand(3, -1, -1))
    assert len({tuple(row[0, 15:].tolist()) for row in out[:3]}) > 1  # three different samples of one prompt
    greedy = generate(model, tiny_processor, batch, max_new_tokens=20, do_sample=False)
    penalised = generate(model, tiny_processor, batch, max_new_tokens=20, do_sample=False, repetition_penalty=50.0)
    assert not torch.equal(greedy, penalised)


def test_shipped_and_saved_generation_configs_are_used(tiny_processor, tmp_path):
    model = make_model(use_spectrogram=False, max_position_embeddings=32)
    assert (model.generation_config.do_sample, model.generation_config.top_k) == (True, 250)
    codes = prompt(tiny_processor).input_ids  # 23 frames
    assert model.generate(codes).shape[-1] == 32  # max_length: the context, in frames
    seeded = [model.generate(codes, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert not torch.equal(*seeded)  # the shipped config samples
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path)
    loaded = WhisperGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.generate(codes).shape[-1] == 23 + 7
    assert loaded.generate(codes, generation_config=GenerationConfig(max_new_tokens=3)).shape[-1] == 23 + 3


@pytest.mark.parametrize("name", CONFIGS)
def test_dict_output_holds_scores_and_the_models_logits(tiny_processor, name):
    model = make_model(**CONFIGS[name])
    batch = prompt(tiny_processor, seconds=(0.2, 0.2))  # equal lengths: 15 frames each
    kwargs = dict(max_new_tokens=4, return_dict_in_generate=True, output_scores=True, output_logits=True)
    out = generate(model, tiny_processor, batch, do_sample=False, **kwargs)
    assert isinstance(out, WhisperGPTGenerateOutput)
    num_codebooks = model.config.num_codebooks
    assert len(out.scores) == len(out.logits) == 4
    assert all(s.shape == (2, num_codebooks, TINY_CODEBOOK_SIZE) for s in out.scores + out.logits)
    assert out.attentions is None and out.hidden_states is None
    for step, scores in enumerate(out.scores):
        torch.testing.assert_close(scores.argmax(-1), out.sequences[:, :, 15 + step], atol=0, rtol=0)
    # The raw logits are the model's own on the finished sequence (position t predicts frame t + 1).
    features = out.input_features if model.config.use_spectrogram else None
    with torch.inference_mode():
        forward = model(out.sequences, features, attention_mask=out.attention_mask).logits  # (B, K, T, V)
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, forward[:, :, 14 + step], atol=1e-4, rtol=1e-4)
    # Sampling: scores are the processed logits (temperature 0.5, no top-k).
    sampled = generate(model, tiny_processor, batch, do_sample=True, temperature=0.5, top_k=0, **kwargs)
    for scores, logits in zip(sampled.scores, sampled.logits, strict=True):
        torch.testing.assert_close(scores, logits / 0.5)
    assert generate(model, tiny_processor, batch, max_new_tokens=2, return_dict_in_generate=True).scores is None


def test_max_length_and_max_new_tokens_count_frames(tiny_processor):
    model = make_model(num_codebooks=4)
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))  # padded to 15 frames
    assert generate(model, tiny_processor, batch, max_length=19).shape == (2, 4, 19)
    assert generate(model, tiny_processor, batch, max_length=19, max_new_tokens=6).shape == (2, 4, 21)
    with pytest.raises(ValueError, match="max_length=15 frames leaves no room"):
        generate(model, tiny_processor, batch, max_length=15)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tiny_processor, batch, max_new_tokens=0)


class StopAfter(StoppingCriteria):
    """Ends row r once it has ``frames[r]`` new frames; records the codes it was shown."""

    def __init__(self, prompt_length: int, frames: list[int]):
        self.prompt_length, self.frames, self.seen = prompt_length, torch.tensor(frames), []

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        self.seen.append(input_ids.clone())
        return input_ids.shape[-1] - self.prompt_length >= self.frames


@pytest.mark.parametrize("name", CONFIGS)
def test_stopping_criteria_end_rows_and_min_new_tokens_holds_them(tiny_processor, name):
    model = make_model(**CONFIGS[name])
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))  # 15 and 8 frames, padded to 15
    kwargs = dict(do_sample=False, return_dict_in_generate=True)
    reference = generate(model, tiny_processor, batch, max_new_tokens=8, **kwargs)
    criterion = StopAfter(15, [2, 5])
    out = generate(model, tiny_processor, batch, max_new_tokens=8, stopping_criteria=[criterion], **kwargs)
    assert out.attention_mask.sum(-1).tolist() == [15 + 2, 8 + 5]
    assert out.sequences.shape[-1] == 15 + 2  # the longest row
    for row, length in enumerate((15, 8)):
        torch.testing.assert_close(new_codes(out, row, length), new_codes(reference, row, length)[:, : 2 + 3 * row])
    assert len(criterion.seen) == 5 and criterion.seen[0].shape == (2, 16)  # codebook 0, left-padded prompt
    torch.testing.assert_close(criterion.seen[0][0], reference.sequences[0, 0, :16])
    # A criterion that ends every row at once: one frame, or min_new_tokens of them.
    stop_all = StoppingCriteriaList([StopAfter(15, [0, 0])])
    assert generate(model, tiny_processor, batch, max_new_tokens=8, stopping_criteria=stop_all).shape[-1] == 16
    held = generate(model, tiny_processor, batch, max_new_tokens=8, min_new_tokens=3, stopping_criteria=stop_all)
    assert held.shape[-1] == 18
    held_by_length = generate(model, tiny_processor, batch, max_new_tokens=8, min_length=19, stopping_criteria=stop_all)
    assert held_by_length.shape[-1] == 19


@pytest.mark.parametrize("name", CONFIGS)
def test_eos_on_codebook_0_ends_a_row_and_min_new_tokens_suppresses_it(tiny_processor, name):
    model = make_model(**CONFIGS[name])
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    lengths = (15, 8)
    kwargs = dict(max_new_tokens=10, do_sample=False, return_dict_in_generate=True)
    reference = generate(model, tiny_processor, batch, **kwargs)
    eos = int(new_codes(reference, 0, 15)[0, 2])  # row 0's third new code on codebook 0
    out = generate(model, tiny_processor, batch, eos_token_id=eos, **kwargs)
    for row, length in enumerate(lengths):
        continuation = new_codes(reference, row, length)
        hits = (continuation[0] == eos).nonzero().flatten().tolist()
        frames = hits[0] + 1 if hits else 10  # the EOS frame is kept, the frames after it are padding
        assert int(out.attention_mask[row].sum()) == length + frames
        torch.testing.assert_close(new_codes(out, row, length), continuation[:, :frames])
        assert not out.sequences[row, :, length + frames :].any()
    # min_new_tokens: no EOS on codebook 0 in the first frames, so row 0 goes on.
    held = generate(model, tiny_processor, batch, eos_token_id=eos, min_new_tokens=6, **kwargs)
    assert int(held.attention_mask[0].sum()) >= 15 + 6
    assert eos not in new_codes(held, 0, 15)[0, :6].tolist()
    with pytest.raises(ValueError, match="eos_token_id must be a code in"):
        generate(model, tiny_processor, batch, eos_token_id=TINY_CODEBOOK_SIZE, max_new_tokens=2)
    with pytest.raises(ValueError, match="pad_token_id only pads"):
        generate(model, tiny_processor, batch, pad_token_id=0, max_new_tokens=2)


class OnlyCode(LogitsProcessor):
    """Allows one code; records the (N, L) codes it is shown."""

    def __init__(self, code: int):
        self.code, self.seen = code, []

    def __call__(self, input_ids, scores):
        self.seen.append(input_ids.clone())
        allowed = torch.full_like(scores, -float("inf"))
        allowed[:, self.code] = 0
        return scores + allowed


@pytest.mark.parametrize("name", CONFIGS)
def test_user_logits_processor_runs_per_codebook_on_its_history(tiny_processor, name):
    model = make_model(**CONFIGS[name])
    num_codebooks = model.config.num_codebooks
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    for do_sample in (False, True):
        processor = OnlyCode(5)
        out = generate(
            model, tiny_processor, batch, max_new_tokens=3, do_sample=do_sample, logits_processor=[processor]
        )
        assert (out[0, :, 15:] == 5).all() and (out[1, :, 8:11] == 5).all()
        assert len(processor.seen) == 3 * num_codebooks
        for call, seen in enumerate(processor.seen):
            step, codebook = divmod(call, num_codebooks)
            assert seen.shape == (2, 15 + step)
            # That codebook's codes: the prompt (the shorter one left-padded with 0), then the frames so far.
            torch.testing.assert_close(seen[0], out[0, codebook, : 15 + step])
            torch.testing.assert_close(seen[1, 7:], out[1, codebook, : 8 + step])
            assert not seen[1, :7].any()


def test_honoured_processor_fields_change_the_codes(tiny_processor):
    model = make_model(num_codebooks=2)
    batch = prompt(tiny_processor, seconds=(0.1,))
    suppressed = generate(model, tiny_processor, batch, max_new_tokens=4, suppress_tokens=list(range(1, 64)))
    assert not suppressed[:, :, 8:].any()  # only code 0 left, on every codebook
    banned = generate(model, tiny_processor, batch, max_new_tokens=4, bad_words_ids=[[c] for c in range(63)])
    assert (banned[:, :, 8:] == 63).all()
    greedy = generate(model, tiny_processor, batch, max_new_tokens=4, do_sample=False)
    code = int(greedy[0, 0, 8])  # greedy's first new code on codebook 0, suppressed on the first frame only
    first = generate(model, tiny_processor, batch, max_new_tokens=4, do_sample=False, begin_suppress_tokens=[code])
    assert code not in first[0, :, 8].tolist() and torch.equal(first[..., :8], greedy[..., :8])
    cfg = GenerationConfig(max_new_tokens=4, do_sample=True, min_p=0.2, typical_p=0.9, top_k=0)
    assert generate(model, tiny_processor, batch, generation_config=cfg).shape == (1, 2, 12)


@pytest.mark.parametrize("mel_source", [None, "learned", "exemplar"])  # None: a token-only model (exemplar frames)
def test_the_frame_loop_reads_nothing_back_to_the_host(tiny_processor, monkeypatch, mel_source):
    """Host reads (bool, int, item, tolist ...) made by the generation code itself do not grow with the frames:
    the prompt is checked once; without criteria beyond max_length no frame is looked at."""
    processor = copy.deepcopy(tiny_processor)
    table = torch.randn(TINY_CODEBOOK_SIZE, TINY_MEL_BINS, generator=torch.Generator().manual_seed(0))
    processor.audio_tokenizer.set_mel_exemplars(table, processor.feature_extractor)
    overrides = {None: {"use_spectrogram": False}, "learned": {"use_mel_head": True}, "exemplar": {}}[mel_source]
    model = make_model(num_codebooks=2, **overrides)
    batch = prompt(processor, seconds=(0.2, 0.1))
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename == generation_module.__file__:
                reads.append(name)
            return original(self, *args, **kwargs)

        return read

    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def count(**kwargs) -> int:
        reads.clear()
        generate(model, processor, batch, mel_source=mel_source, **kwargs)
        return len(reads)

    assert count(max_new_tokens=2) == count(max_new_tokens=12)
    stop_never = StopAfter(15, [99, 99])  # a criterion that needs the codes: one read per frame
    assert count(max_new_tokens=12, stopping_criteria=[stop_never]) == count(max_new_tokens=2) + 12


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value)

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("name", CONFIGS)
def test_a_base_streamer_gets_the_prompt_then_each_frame(tiny_processor, name):
    model = make_model(**CONFIGS[name])
    num_codebooks = model.config.num_codebooks
    batch = prompt(tiny_processor, seconds=(0.1,))
    streamer = Recorder()
    out = generate(model, tiny_processor, batch, max_new_tokens=5, streamer=streamer)
    assert streamer.ended == 1 and len(streamer.puts) == 6
    assert streamer.puts[0].shape == (1, num_codebooks, 8)
    assert all(put.shape == (1, num_codebooks, 1) for put in streamer.puts[1:])
    torch.testing.assert_close(torch.cat(streamer.puts, dim=-1), out)
    with pytest.raises(ValueError, match="A streamer follows one sequence"):
        generate(model, tiny_processor, batch, max_new_tokens=2, num_return_sequences=2, streamer=Recorder())


REFUSED = {
    "num_beams": 2,
    "num_beam_groups": 2,
    "early_stopping": True,
    "length_penalty": 2.0,
    "penalty_alpha": 0.6,
    "dola_layers": "low",
    "prompt_lookup_num_tokens": 3,
    "num_assistant_tokens": 5,
    "guidance_scale": 3.0,
    "encoder_repetition_penalty": 1.5,
    "stop_strings": "end",
    "token_healing": True,
    "bos_token_id": 1,
    "forced_bos_token_id": 1,
    "output_attentions": True,
    "output_hidden_states": True,
    "max_cache_len": 64,
    "cache_implementation": "offloaded",
}


@pytest.mark.parametrize("field", REFUSED)
def test_generation_config_fields_that_cannot_be_honoured_are_refused_by_name(tiny_processor, field):
    model = make_model(use_spectrogram=False)
    codes = prompt(tiny_processor, seconds=(0.1,)).input_ids
    with pytest.raises(ValueError, match=field):
        model.generate(codes, max_new_tokens=2, **{field: REFUSED[field]})
    with pytest.raises(ValueError, match=field):
        model.generate(codes, generation_config=GenerationConfig(max_new_tokens=2, **{field: REFUSED[field]}))


@pytest.mark.parametrize(
    "argument",
    ["assistant_model", "prefix_allowed_tokens_fn", "negative_prompt_ids", "synced_gpus", "custom_generate"],
)
def test_transformers_generate_arguments_that_cannot_be_honoured_are_refused_by_name(tiny_processor, argument):
    model = make_model(use_spectrogram=False)
    codes = prompt(tiny_processor, seconds=(0.1,)).input_ids
    value = {"assistant_model": model, "prefix_allowed_tokens_fn": lambda batch, ids: [0], "synced_gpus": True}
    with pytest.raises(ValueError, match=argument):
        model.generate(codes, max_new_tokens=2, **{argument: value.get(argument, codes)})


def test_every_generation_config_field_is_honoured_or_refused():
    fields = set(GenerationConfig().to_dict()) - {"transformers_version", "_from_model_config"}
    assert not set(HONOURED_FIELDS) & set(REFUSED_FIELDS)
    assert fields == set(HONOURED_FIELDS) | set(REFUSED_FIELDS), fields ^ (set(HONOURED_FIELDS) | set(REFUSED_FIELDS))
    assert not set(REFUSED_ARGUMENTS) & fields


def test_output_audio_renders_as_the_pipeline_does(tiny_processor):
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    hybrid = make_model()
    out = generate(hybrid, tiny_processor, batch, max_new_tokens=4, return_dict_in_generate=True, output_audio=True)
    # A locally calibrated codec's decoder is not trained: Griffin-Lim from the mel frames.
    expected = tiny_processor.render(out.sequences, out.input_features, out.attention_mask, renderer="mel")
    assert [len(wave) for wave in out.audio] == [(15 + 4) * HOP, (8 + 4) * HOP]
    for wave, want in zip(out.audio, expected, strict=True):
        torch.testing.assert_close(wave, torch.from_numpy(want))
    token_only = make_model(use_spectrogram=False)  # no mel frames: the codec decodes the codes
    waves = generate(token_only, tiny_processor, batch, max_new_tokens=4, do_sample=False, output_audio=True)
    codes = generate(token_only, tiny_processor, batch, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert isinstance(waves, list) and len(waves) == 2
    for wave, want in zip(waves, tiny_processor.batch_decode(codes.sequences, codes.attention_mask), strict=True):
        torch.testing.assert_close(wave, torch.from_numpy(want))
    with pytest.raises(ValueError, match="output_audio=True needs audio_tokenizer="):
        token_only.generate(batch.input_ids, max_new_tokens=2, output_audio=True)


def test_generation_errors_are_clear(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor)
    with pytest.raises(ValueError, match="audio_tokenizer"):
        model.generate(**batch, max_new_tokens=2)
    with pytest.raises(TypeError, match="unexpected"):
        generate(model, tiny_processor, batch, max_new_tokens=2, not_a_generation_option=1)
    with pytest.raises(ValueError, match=r"num_beams=2 is not supported.*beam search"):
        generate(model, tiny_processor, batch, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="codebook_size"):
        make_model(codebook_size=128).generate(
            **batch, audio_tokenizer=tiny_processor.audio_tokenizer, max_new_tokens=2
        )
    with pytest.raises(ValueError, match=r"context_stride must be in \[1, 127\]"):
        generate(model, tiny_processor, batch, max_new_tokens=2, context_stride=128)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        generate(model, tiny_processor, {**batch, "attention_mask": batch.attention_mask[:, :-1]}, max_new_tokens=2)
    token_only = make_model(use_spectrogram=False)
    assert token_only.generate(input_ids=batch.input_ids, max_new_tokens=2).shape[-1] == 25  # no codec needed


def test_compiled_static_decoding_steps_give_the_eager_codes():
    # backend="eager" traces the steps with fullgraph=True (no graph break allowed) without paying for code generation.
    from transformers import CompileConfig

    model = make_model(num_codebooks=3, use_mel_head=True, max_position_embeddings=24)
    codes = torch.randint(0, TINY_CODEBOOK_SIZE, (2, 3, 10), generator=torch.Generator().manual_seed(1))
    features = torch.randn(2, 10, TINY_MEL_BINS, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # prompts of different lengths; 30 new frames slide past the 24-frame context
    kwargs = dict(
        input_features=features, attention_mask=mask, do_sample=False, max_new_tokens=30, mel_source="learned"
    )
    eager = model.generate(codes, **kwargs)
    compiled = model.generate(
        codes,
        **kwargs,
        cache_implementation="static",
        compile_config=CompileConfig(fullgraph=True, backend="eager", dynamic=False, mode=None),
    )
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    with pytest.raises(ValueError, match='cache_implementation="static"'):
        model.generate(codes, **kwargs, compile_config=CompileConfig(backend="eager"))


def test_a_static_cache_sized_to_the_continuation_gives_the_codes_of_the_dynamic_one(tiny_processor):
    # 15 prompt frames + 30 new ones in a 300-frame context: the static cache gets 64 slots, not 300.
    model = make_model(max_position_embeddings=300)
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    sizes = []
    new_cache = DecodingSteps.new_cache

    def recording(self, previous=None, frames=None):
        cache = new_cache(self, previous, frames)
        sizes.append(cache.get_max_length())
        return cache

    kwargs = dict(max_new_tokens=30, do_sample=True, generator=torch.Generator().manual_seed(2))
    dynamic = generate(model, tiny_processor, batch, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(2)
    with mock.patch.object(DecodingSteps, "new_cache", recording):
        static = generate(model, tiny_processor, batch, cache_implementation="static", **kwargs)
    torch.testing.assert_close(static, dynamic, atol=0, rtol=0)
    assert sizes == [64]


def test_a_compiled_frame_samples_the_eager_codes_for_one_seed(caplog):
    # The K depth steps, the processors and the draws run as one graph; the uniforms come from the same generator.
    from transformers import CompileConfig

    model = make_model(num_codebooks=3, use_mel_head=True, max_position_embeddings=24)
    codes = torch.randint(0, TINY_CODEBOOK_SIZE, (2, 3, 8), generator=torch.Generator().manual_seed(4))
    features = torch.randn(2, 8, TINY_MEL_BINS, generator=torch.Generator().manual_seed(5))
    kwargs = dict(input_features=features, max_new_tokens=20, mel_source="learned", do_sample=True, top_k=5, top_p=0.9)
    compile_config = CompileConfig(fullgraph=True, backend="eager", dynamic=False, mode=None)

    def run(**extra):
        return model.generate(codes, **kwargs, generator=torch.Generator().manual_seed(6), **extra)

    eager = run()
    torch.testing.assert_close(run(cache_implementation="static", compile_config=compile_config), eager)
    assert not torch.equal(eager, model.generate(codes, **kwargs, generator=torch.Generator().manual_seed(7)))
    with caplog.at_level("WARNING"):  # the penalty reads the codes so far: picked eagerly, said once
        penalised = run(cache_implementation="static", compile_config=compile_config, repetition_penalty=1.3)
    torch.testing.assert_close(penalised, run(repetition_penalty=1.3))
    assert "RepetitionPenaltyLogitsProcessor read the codes generated so far" in caplog.text


@pytest.mark.parametrize("mel_source", ["codec", "exemplar", "learned"])
def test_compiled_generation_gives_the_eager_codes_for_every_mel_source_batched_and_streamed(
    tiny_processor, mel_source, caplog
):
    from transformers import CompileConfig

    processor = copy.deepcopy(tiny_processor)
    table = torch.randn(TINY_CODEBOOK_SIZE, TINY_MEL_BINS, generator=torch.Generator().manual_seed(0))
    processor.audio_tokenizer.set_mel_exemplars(table, processor.feature_extractor)
    model = make_model(num_codebooks=2, use_mel_head=mel_source == "learned", max_position_embeddings=32)
    compiled = dict(
        cache_implementation="static",
        compile_config=CompileConfig(fullgraph=True, backend="eager", dynamic=False, mode=None),
    )

    def run(batch, **extra):
        return generate(
            model,
            processor,
            batch,
            mel_source=mel_source,
            max_new_tokens=30,
            do_sample=True,
            top_k=8,
            generator=torch.Generator().manual_seed(3),
            **extra,
        )

    batch = prompt(processor, seconds=(0.2, 0.1))  # different lengths; 15 + 30 frames slide past the context
    torch.testing.assert_close(run(batch, **compiled), run(batch), atol=0, rtol=0)
    single = prompt(processor, seconds=(0.1,))
    eager_streamer, compiled_streamer = Recorder(), Recorder()
    eager = run(single, streamer=eager_streamer)
    torch.testing.assert_close(run(single, streamer=compiled_streamer, **compiled), eager, atol=0, rtol=0)
    assert len(compiled_streamer.puts) == len(eager_streamer.puts) == 31
    torch.testing.assert_close(torch.cat(compiled_streamer.puts, dim=-1), eager, atol=0, rtol=0)
    assert "torch.compile failed" not in caplog.text  # the compiled steps ran, not the eager fallback


def test_draw_codes_inverts_the_cdf_and_never_draws_an_impossible_code():
    from whisper_gpt.generation_whisper_gpt import draw_codes

    scores = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).repeat(4, 1)
    uniforms = torch.tensor([0.0, 0.49, 0.51, 0.999999])
    assert draw_codes(scores, uniforms)[:, 0].tolist() == [0, 0, 2, 2]
    logits = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    drawn = draw_codes(logits.repeat(20000, 1), torch.rand(20000, generator=torch.Generator().manual_seed(1)))
    frequencies = torch.bincount(drawn[:, 0], minlength=16).float() / 20000
    torch.testing.assert_close(frequencies, logits.softmax(-1)[0], atol=0.015, rtol=0)


def test_a_failing_compiler_falls_back_to_the_eager_steps_with_a_warning(caplog):
    from transformers import CompileConfig

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    model = make_model(num_codebooks=3, use_spectrogram=False)
    codes = torch.randint(0, TINY_CODEBOOK_SIZE, (1, 3, 6), generator=torch.Generator().manual_seed(3))
    eager = model.generate(codes, do_sample=False, max_new_tokens=5)
    with caplog.at_level("WARNING"):
        fallen_back = model.generate(
            codes,
            do_sample=False,
            max_new_tokens=5,
            cache_implementation="static",
            compile_config=CompileConfig(fullgraph=True, backend=no_compiler, mode=None),
        )
    torch.testing.assert_close(fallen_back, eager, atol=0, rtol=0)
    assert "torch.compile failed" in caplog.text and "eager decoding steps" in caplog.text
