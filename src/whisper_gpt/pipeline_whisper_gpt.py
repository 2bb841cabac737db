"""The ``audio-continuation`` pipeline and a streamer that yields audio while generation runs."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.generation.streamers import BaseStreamer

from .feature_extraction_whisper_gpt import check_sampling_rate

TASK = "audio-continuation"


class AudioContinuationPipeline(Pipeline):
    """Continue a piece of audio with a Whisper-GPT model.

    ```python
    pipe = pipeline("audio-continuation", model="path/or/hub-id", trust_remote_code=True)
    out = pipe(waveform, sampling_rate=16000, max_new_seconds=5.0, do_sample=True, top_k=50)
    out["audio"], out["sampling_rate"]  # float32 (num_samples,), the codec's rate (24000)
    ```

    Inputs: a waveform (any rate, mono or stereo, float or integer PCM) with ``sampling_rate``, a path to an
    audio file, a dict ``{"array": ..., "sampling_rate": ...}`` (as `datasets` yields), or a list of these (a
    list of results comes back). ``return_prompt=False`` returns only the continuation. ``renderer``: "codec"
    decodes the codes, "mel" renders the mel frames with Griffin-Lim; the default "auto" decodes when the
    codec's decoder is trained and otherwise renders the mel frames (a locally calibrated codec's decoder makes
    noise). Other keyword arguments go to `WhisperGPTForCausalLM.generate` (``do_sample``, ``temperature``,
    ``top_k``, ``top_p``, ``generator``, ``num_return_sequences``, ``mel_source``, ``streamer`` ...); the pipeline
    asks for the dict output itself and renders the audio in postprocess, so ``return_dict_in_generate`` and
    ``output_audio`` are refused. Reading a file path needs the ``soundfile`` package. ``sampling_rate`` (and the
    rate of a file or dict) must be a whole number of Hz from 1 kHz to 384 kHz (`check_sampling_rate`).
    """

    _load_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_image_processor = False

    def _sanitize_parameters(
        self,
        sampling_rate: int | None = None,
        max_new_seconds: float | None = None,
        max_new_tokens: int | None = None,
        return_prompt: bool | None = None,
        renderer: str | None = None,
        **generate_kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        for name in ("return_dict_in_generate", "output_audio"):
            if name in generate_kwargs:
                raise ValueError(
                    f"{name} is set by the pipeline (it renders the audio itself, see renderer=); drop it."
                )
        if max_new_seconds is not None and max_new_tokens is not None:
            raise ValueError("Pass max_new_seconds or max_new_tokens (frames), not both.")
        if max_new_seconds is not None:
            if max_new_seconds <= 0:
                raise ValueError(f"max_new_seconds must be positive, got {max_new_seconds}.")
            max_new_tokens = max(1, round(max_new_seconds * self.model.config.frame_rate))
        forward_params = dict(generate_kwargs)
        if max_new_tokens is not None:
            forward_params["max_new_tokens"] = max_new_tokens
        preprocess_params = {} if sampling_rate is None else {"sampling_rate": check_sampling_rate(sampling_rate)}
        postprocess_params = {} if return_prompt is None else {"return_prompt": return_prompt}
        if renderer is not None:
            postprocess_params["renderer"] = renderer
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, audio: Any, sampling_rate: int | None = None) -> dict[str, Any]:
        waveform, rate = _read_audio(audio, sampling_rate)
        inputs = self.processor(audio=waveform, sampling_rate=rate, return_tensors="pt")
        return dict(inputs)

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        generate_kwargs.setdefault("max_new_tokens", round(5.0 * self.model.config.frame_rate))
        prompt_frames = int(model_inputs["attention_mask"].sum())
        output = self.model.generate(
            **model_inputs,
            audio_tokenizer=self.processor.audio_tokenizer,
            feature_extractor=self.processor.feature_extractor,
            return_dict_in_generate=True,
            **generate_kwargs,
        )
        return {**output, "prompt_frames": prompt_frames}

    def postprocess(
        self, outputs: dict[str, Any], return_prompt: bool = True, renderer: str = "auto"
    ) -> dict | list[dict]:
        waves = self.processor.render(
            outputs["sequences"], outputs.get("input_features"), outputs["attention_mask"], renderer=renderer
        )
        start = 0 if return_prompt else outputs["prompt_frames"] * self.processor.audio_tokenizer.hop_length
        results = [
            {"audio": wave[start:], "sampling_rate": self.processor.audio_tokenizer.sampling_rate} for wave in waves
        ]
        return results[0] if len(results) == 1 else results


def _read_audio(audio: Any, sampling_rate: int | None) -> tuple[Any, int]:
    """Accept a waveform + rate, a file path, or a {"array"/"raw", "sampling_rate"} dict."""
    if isinstance(audio, str):
        try:
            import soundfile
        except ImportError as error:  # not a transformers dependency
            raise ImportError(
                f"Reading the audio file {audio} needs the soundfile package: pip install soundfile. Or pass the "
                "waveform itself with its sampling_rate."
            ) from error

        data, file_rate = soundfile.read(audio, dtype="float32", always_2d=False)
        file_rate = check_sampling_rate(file_rate, f"the sampling rate of {audio}")
        if sampling_rate is not None and check_sampling_rate(sampling_rate) != file_rate:
            raise ValueError(f"{audio} is at {file_rate} Hz but sampling_rate={sampling_rate} was passed; drop it.")
        return data, file_rate
    if isinstance(audio, dict):
        array = audio.get("array", audio.get("raw"))
        if array is None or "sampling_rate" not in audio:
            raise ValueError('An audio dict needs "array" (or "raw") and "sampling_rate" keys.')
        return array, check_sampling_rate(audio["sampling_rate"], 'the audio dict\'s "sampling_rate"')
    if sampling_rate is None:
        raise ValueError(
            "sampling_rate is required with a raw waveform: pipe(waveform, sampling_rate=16000). It is resampled "
            "to the codec's rate when it differs."
        )
    return audio, check_sampling_rate(sampling_rate)


class WhisperGPTAudioStreamer(BaseStreamer):
    """Receives codes from `generate(..., streamer=...)` and hands out playable audio chunks as they are ready.

    ```python
    streamer = WhisperGPTAudioStreamer(processor.audio_tokenizer, chunk_frames=75)  # ~1 s chunks
    thread = threading.Thread(target=model.generate, kwargs={**prompt, "streamer": streamer, ...})
    thread.start()
    for chunk in streamer:  # float32 numpy arrays at the codec's rate
        play(chunk)
    ```

    Chunks come from the codec's streaming decoder (`WhisperGPTAudioTokenizer.streaming_decoder`), started on
    the whole prompt, so each new frame is decoded once with all the context before it: the chunks concatenate
    to the continuation part of decoding the final codes in one go (to float rounding). ``skip_prompt=False``
    also emits the prompt's audio first.
    Batch size 1 only, as transformers' streamers. ``on_chunk`` is called with each chunk as well.
    """

    def __init__(
        self,
        audio_tokenizer: Any,
        chunk_frames: int = 75,
        skip_prompt: bool = True,
        timeout: float | None = None,
        on_chunk: Any = None,
    ):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}.")
        self.audio_tokenizer = audio_tokenizer
        self.chunk_frames = chunk_frames
        self.skip_prompt = skip_prompt
        self.timeout = timeout
        self.on_chunk = on_chunk
        self._chunks: queue.Queue = queue.Queue()
        self._decoder = None
        self._pending: list[torch.Tensor] = []

    def put(self, codes: torch.Tensor) -> None:
        """First call: the prompt's codes (1, K, T); then each new frame (1, K, 1)."""
        if codes.shape[0] != 1:
            raise ValueError("WhisperGPTAudioStreamer streams one sequence: use batch size 1 and one return sequence.")
        if self._decoder is None:
            self.audio_tokenizer.warn_if_decoder_untrained()
            self._decoder = self.audio_tokenizer.streaming_decoder()
            prompt_audio = self._decoder.start(codes)
            if not self.skip_prompt:
                self._emit(prompt_audio)
            return
        self._pending.append(codes)
        if sum(pending.shape[-1] for pending in self._pending) >= self.chunk_frames:
            self._flush()

    def end(self) -> None:
        self._flush()
        self._decoder = None  # a later generate() call starts a new stream
        self._chunks.put(None)

    def _flush(self) -> None:
        if self._pending:
            self._emit(self._decoder.step(torch.cat(self._pending, dim=-1)))
            self._pending = []

    def _emit(self, audio: torch.Tensor) -> None:
        chunk = audio[0].cpu().numpy().astype(np.float32)
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        self._chunks.put(chunk)

    def __iter__(self) -> WhisperGPTAudioStreamer:
        return self

    def __next__(self) -> np.ndarray:
        chunk = self._chunks.get(timeout=self.timeout)
        if chunk is None:
            raise StopIteration
        return chunk


__all__ = ["AudioContinuationPipeline", "WhisperGPTAudioStreamer"]
