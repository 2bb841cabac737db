"""The ``audio-continuation`` pipeline and a streamer that yields audio while generation runs."""

from __future__ import annotations

import inspect
import numbers
import queue
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig, Pipeline
from transformers.generation.streamers import BaseStreamer
from transformers.pipelines import PIPELINE_REGISTRY

from .feature_extraction_whisper_gpt import check_sampling_rate

TASK = "audio-continuation"
DEFAULT_NEW_SECONDS = 5.0
# The pipeline's own arguments; generate() takes none of them.
PIPELINE_ARGUMENTS = ("sampling_rate", "max_new_seconds", "return_prompt", "renderer", "seed")
# generate() arguments the pipeline sets itself (from its processor, or because postprocess reads the dict output).
# The frame axis of each (B, R, ...) output of `_forward`.
FRAME_AXES = {"sequences": -1, "attention_mask": -1, "input_features": 2}
SET_BY_PIPELINE = {
    "input_ids": "the pipeline encodes the audio itself",
    "input_features": "the pipeline encodes the audio itself",
    "attention_mask": "the pipeline encodes the audio itself",
    "audio_tokenizer": "the pipeline passes its processor's codec",
    "feature_extractor": "the pipeline passes its processor's feature extractor",
    "return_dict_in_generate": "the pipeline asks for the dict output and renders the audio itself, see renderer=",
    "output_audio": "the pipeline renders the audio itself, see renderer=",
}


@dataclass(frozen=True)
class _Numbered:
    """One input with its position in the call's inputs: item ``index`` samples with the seed ``seed + index``."""

    index: int
    audio: Any


class _NumberedDataset(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> _Numbered:
        return _Numbered(index, self.dataset[index])


def _numbered(inputs: Any) -> Any:
    """The call's inputs, each with its position: a list stays a list, a generator a generator, a torch Dataset a
    Dataset, so transformers still batches, streams or loads them as it does those types."""
    if isinstance(inputs, list):
        return [_Numbered(index, item) for index, item in enumerate(inputs)]
    if isinstance(inputs, types.GeneratorType):
        return (_Numbered(index, item) for index, item in enumerate(inputs))
    if isinstance(inputs, Dataset):
        return _NumberedDataset(inputs)
    return _Numbered(0, inputs)


class AudioContinuationPipeline(Pipeline):
    """Continue a piece of audio with a Whisper-GPT model.

    ```python
    pipe = pipeline("audio-continuation", model="path/or/hub-id", trust_remote_code=True)
    out = pipe(waveform, sampling_rate=16000, max_new_seconds=5.0, do_sample=True, top_k=50)
    out["audio"], out["sampling_rate"]  # float32 (num_samples,), the codec's rate (pipe.sampling_rate, 24000)
    outs = pipe(waveforms, sampling_rate=16000, batch_size=8, seed=0)  # a list of results, one per waveform
    ```

    Inputs: a waveform (any rate, mono or stereo, float or integer PCM) with ``sampling_rate``, a path to an
    audio file, a dict ``{"array": ..., "sampling_rate": ...}`` (as `datasets` yields; its own rate applies, so
    ``sampling_rate=`` is the rate of the raw waveforms of the call), or a list, generator or torch `Dataset` of
    these (a list of results comes back, an iterator for the other two). ``return_prompt=False`` returns only the
    continuation. ``renderer``: "codec" decodes the codes, "mel" renders the mel frames with Griffin-Lim; the
    default "auto" decodes when the codec's decoder is trained and otherwise renders the mel frames (a locally
    calibrated codec's decoder makes noise). Length: ``max_new_seconds`` or ``max_new_tokens`` (frames); without
    either (nor ``max_length`` or a ``generation_config``) 5 seconds.

    Generation options go to `WhisperGPTForCausalLM.generate` (``do_sample``, ``temperature``, ``top_k``,
    ``top_p``, ``num_return_sequences``, ``mel_source``, ``streamer``, ``generation_config`` ...), as keyword
    arguments or in ``generate_kwargs={...}`` / ``forward_params={...}`` as transformers' text-to-audio pipeline
    takes them (at construction or per call). A name given in two of these places, a pipeline argument inside the
    dicts, an argument generate() does not take, and those the pipeline sets itself (`SET_BY_PIPELINE`) raise a
    ValueError.

    Batching and seeds: ``batch_size=N`` encodes and generates N inputs at a time. Greedy decoding gives each
    input the codes it gets alone (a codec mel source's frames for a padded batch agree with those alone to float
    rounding, ~1e-6, so audio rendered from them with ``renderer="mel"`` does too). ``seed=S`` makes sampling
    reproducible per input: the input at position ``i`` of the call (0 for a single input) samples exactly as
    ``model.generate`` on it alone with ``generator=torch.Generator(model.device).manual_seed(S + i)``, whatever
    the batch size; a seeded batch therefore generates input by input, since generate() takes one generator for
    all its rows. Without a seed a batch samples all its rows together from the global RNG
    (`transformers.set_seed`), so the draws depend on the batch size. ``generator=`` is shared by every input it
    serves, so it is refused in a batch (pass ``seed``); ``seed`` is refused with ``generator`` and with greedy
    decoding (it would change nothing).

    Reading a file path needs the ``soundfile`` package. ``sampling_rate`` (and the rate of a file or dict) must be
    a whole number of Hz from 1 kHz to 384 kHz (`check_sampling_rate`).
    """

    _load_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_image_processor = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "The audio-continuation pipeline needs the model's WhisperGPTProcessor: pass processor=processor, "
                "or a model folder that holds one."
            )
        # transformers takes a processor-only pipeline's components from the processor. Its tokenizer is the codec,
        # which the processor saves and loads itself; as the pipeline's tokenizer, save_pretrained would write it
        # over the model's files and batching would look for a text pad token.
        self.tokenizer = None
        self.feature_extractor = self.processor.feature_extractor

    @property
    def sampling_rate(self) -> int:
        """The rate of the audio the pipeline returns: the codec's."""
        return self.processor.audio_tokenizer.sampling_rate

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> dict | list:
        """Continue ``inputs`` (see the class docstring); keyword arguments as `_sanitize_parameters` takes them,
        plus transformers' ``batch_size`` and ``num_workers``."""
        return super().__call__(_numbered(inputs), *args, **kwargs)

    def _sanitize_parameters(
        self,
        sampling_rate: int | None = None,
        max_new_seconds: float | None = None,
        max_new_tokens: int | None = None,
        return_prompt: bool | None = None,
        renderer: str | None = None,
        seed: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        forward_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        options = self._merge_generate_options(kwargs, forward_params, generate_kwargs)
        if max_new_seconds is not None:
            given = [name for name in ("max_new_tokens", "max_length") if name in options]
            if given:
                raise ValueError(f"Pass max_new_seconds or {given[0]} (frames), not both.")
            if max_new_seconds <= 0:
                raise ValueError(f"max_new_seconds must be positive, got {max_new_seconds}.")
            options["max_new_tokens"] = max(1, round(max_new_seconds * self.model.config.frame_rate))
        if seed is not None:
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
                raise ValueError(f"seed must be a non-negative whole number, got {seed!r}.")
            options["seed"] = int(seed)
        preprocess_params = {} if sampling_rate is None else {"sampling_rate": check_sampling_rate(sampling_rate)}
        postprocess_params = {} if return_prompt is None else {"return_prompt": return_prompt}
        if renderer is not None:
            postprocess_params["renderer"] = renderer
        return preprocess_params, options, postprocess_params

    def _merge_generate_options(
        self, keywords: dict[str, Any], forward_params: Any, generate_kwargs: Any
    ) -> dict[str, Any]:
        """One dict of generate() options from the keyword arguments, ``forward_params`` and ``generate_kwargs``;
        ValueError for a name given twice, a pipeline argument inside the dicts, or a name generate() refuses."""
        merged: dict[str, Any] = {}
        where: dict[str, str] = {}
        for source, options in (
            ("keyword arguments", keywords),
            ("forward_params", forward_params),
            ("generate_kwargs", generate_kwargs),
        ):
            if options is None:
                continue
            if not isinstance(options, dict):
                raise ValueError(f"{source} must be a dict of generate() arguments, got {type(options).__name__}.")
            for name, value in options.items():
                if name in PIPELINE_ARGUMENTS:
                    raise ValueError(
                        f"{name} is an argument of the pipeline, not of generate(): pass pipe(..., {name}=...) "
                        f"instead of putting it in {source}."
                    )
                if name in merged:
                    raise ValueError(f"{name} is passed both in {where[name]} and in {source}; pass it once.")
                merged[name], where[name] = value, source
        known = _generate_argument_names(self.model)
        for name in merged:
            if name in SET_BY_PIPELINE:
                raise ValueError(f"{name} is set by the pipeline ({SET_BY_PIPELINE[name]}); drop it.")
        unknown = sorted(name for name in merged if name not in known)
        if unknown:
            raise ValueError(
                f"Unknown argument(s) {unknown} for the audio-continuation pipeline. It takes "
                f"{', '.join(PIPELINE_ARGUMENTS)}, max_new_tokens, generate_kwargs / forward_params, and the arguments "
                f"of {type(self.model).__name__}.generate() (GenerationConfig fields included)."
            )
        return merged

    def preprocess(self, audio: Any, sampling_rate: int | None = None) -> dict[str, torch.Tensor]:
        item = audio if isinstance(audio, _Numbered) else _Numbered(0, audio)
        waveform, rate = _read_audio(item.audio, sampling_rate)
        inputs = self.processor(audio=waveform, sampling_rate=rate, return_tensors="pt")
        return {
            # (1, T, K): transformers' batch collation pads axis 1, the frames; _forward turns it back.
            "input_ids": inputs["input_ids"].transpose(1, 2),
            "input_features": inputs["input_features"],
            "attention_mask": inputs["attention_mask"],
            "item_index": torch.tensor([item.index]),
        }

    def _forward(self, model_inputs: dict[str, torch.Tensor], **options: Any) -> dict[str, torch.Tensor | None]:
        """Generate for a batch of B inputs; returns tensors with the inputs on the first axis (transformers splits
        a batch's output along it): ``sequences`` (B, R, K, L), ``attention_mask`` (B, R, L), ``input_features``
        (B, R, L, M) or None, ``prompt_frames`` (B,), R = ``num_return_sequences``."""
        seed = options.pop("seed", None)
        if not {"max_new_tokens", "max_length", "generation_config"} & options.keys():
            options["max_new_tokens"] = round(DEFAULT_NEW_SECONDS * self.model.config.frame_rate)
        codes = model_inputs["input_ids"].transpose(1, 2)
        features = model_inputs["input_features"]
        mask = model_inputs["attention_mask"]
        indices = model_inputs["item_index"].tolist()
        if seed is not None:
            if "generator" in options:
                raise ValueError("Pass seed or generator, not both (seed gives each input its own generator).")
            if not self._samples(options):
                raise ValueError("seed only matters when sampling, and this call decodes greedily: drop seed.")
        if "generator" in options and len(indices) > 1:
            raise ValueError(
                "generator= is shared by all the inputs of a batch, so what each input gets would depend on "
                "batch_size; pass seed=S instead (input i samples with torch.Generator().manual_seed(S + i))."
            )
        if seed is None:
            runs = [self._generate(codes, features, mask, **options)]
        else:
            runs = []
            for row, index in enumerate(indices):
                # Each input alone, without the batch's padding: exactly the computation batch_size=1 makes.
                frames = int(mask[row].sum())
                generator = torch.Generator(device=self.model.device).manual_seed(seed + index)
                runs.append(
                    self._generate(
                        codes[row : row + 1, :, :frames],
                        features[row : row + 1, :frames],
                        mask[row : row + 1, :frames],
                        generator=generator,
                        **options,
                    )
                )
        outputs = {key: _cat_padded([run[key] for run in runs], axis) for key, axis in FRAME_AXES.items()}
        return {**outputs, "prompt_frames": mask.sum(-1)}

    def _generate(
        self, codes: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, **options: Any
    ) -> dict[str, torch.Tensor | None]:
        """generate() on B prompts; its (B * R, ...) rows regrouped per prompt as (B, R, ...)."""
        output = self.model.generate(
            input_ids=codes,
            input_features=features,
            attention_mask=mask,
            audio_tokenizer=self.processor.audio_tokenizer,
            feature_extractor=self.processor.feature_extractor,
            return_dict_in_generate=True,
            **options,
        )
        batch = codes.shape[0]
        regroup = {"sequences": output.sequences, "attention_mask": output.attention_mask}
        regroup["input_features"] = output.input_features
        return {
            key: None if value is None else value.reshape(batch, value.shape[0] // batch, *value.shape[1:])
            for key, value in regroup.items()
        }

    def _samples(self, options: dict[str, Any]) -> bool:
        """Whether generate() samples with these options (they override the config, as in generate())."""
        if "do_sample" in options:
            return bool(options["do_sample"])
        config = options.get("generation_config") or self.model.generation_config
        return bool(config.do_sample)

    def postprocess(
        self, outputs: dict[str, torch.Tensor | None], return_prompt: bool = True, renderer: str = "auto"
    ) -> dict | list[dict]:
        codes, mask = outputs["sequences"][0], outputs["attention_mask"][0]  # (R, K, L), (R, L)
        features = outputs["input_features"]
        # A batch pads every input's rows to its longest one; cut them back to this input's own longest row, so
        # the audio is rendered from exactly what this input alone would have.
        frames = int(mask.sum(-1).max())
        waves = self.processor.render(
            codes[..., :frames],
            None if features is None else features[0, :, :frames],
            mask[:, :frames],
            renderer=renderer,
        )
        start = (
            0
            if return_prompt
            else int(outputs["prompt_frames"].reshape(-1)[0]) * self.processor.audio_tokenizer.hop_length
        )
        results = [{"audio": wave[start:], "sampling_rate": self.sampling_rate} for wave in waves]
        return results[0] if len(results) == 1 else results


def _generate_argument_names(model: Any) -> set[str]:
    """Names generate() takes: its parameters and the GenerationConfig fields its ``**kwargs`` set."""
    parameters = inspect.signature(model.generate).parameters.values()
    names = {parameter.name for parameter in parameters if parameter.kind is not inspect.Parameter.VAR_KEYWORD}
    return names | {name for name in vars(GenerationConfig()) if not name.startswith("_")}


def _cat_padded(tensors: list[torch.Tensor | None], frame_axis: int) -> torch.Tensor | None:
    """Concatenate runs on axis 0, right-padding their frames (``frame_axis``) with 0 to the longest run's."""
    if tensors[0] is None:
        return None
    frame_axis %= tensors[0].dim()
    length = max(tensor.shape[frame_axis] for tensor in tensors)
    # F.pad lists (before, after) pairs from the last axis backwards.
    pads = [[0, 0] * (tensor.dim() - 1 - frame_axis) + [0, length - tensor.shape[frame_axis]] for tensor in tensors]
    return torch.cat([torch.nn.functional.pad(tensor, pad) for tensor, pad in zip(tensors, pads, strict=True)])


def _read_audio(audio: Any, sampling_rate: int | None) -> tuple[Any, int | None]:
    """(audio, rate) for the processor: a file is read; a dict keeps its own rate (None is passed with it)."""
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
    if isinstance(audio, Mapping):
        return audio, None
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


# The package registers the task when it is imported (its __init__). A copy of this file loaded as remote code
# (trust_remote_code=True: the model's and the processor's code import it) registers it here, so that
# pipeline("audio-continuation", model=model_object, processor=processor) finds the task without the package.
if __name__ != "whisper_gpt.pipeline_whisper_gpt" and TASK not in PIPELINE_REGISTRY.supported_tasks:
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioContinuationPipeline, pt_model=AutoModelForCausalLM)

__all__ = ["AudioContinuationPipeline", "WhisperGPTAudioStreamer"]
