"""The processor with transformers' Trainer (saved in checkpoints), pickle and datasets' fingerprinted map."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_like_audio, tiny_config
from datasets import Dataset, load_from_disk
from transformers import Trainer, TrainingArguments

from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor

INPUT_NAMES = ("input_ids", "input_features", "attention_mask")


def assert_same_encoding(processor: WhisperGPTProcessor, expected: WhisperGPTProcessor, audio: np.ndarray) -> None:
    got, want = processor(audio=audio, sampling_rate=24000), expected(audio=audio, sampling_rate=24000)
    for name in INPUT_NAMES:
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0, msg=name)
    np.testing.assert_array_equal(processor.batch_decode(got.input_ids)[0], expected.batch_decode(want.input_ids)[0])


def test_trainer_saves_the_processor_in_its_checkpoints(tiny_processor, tmp_path) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config())
    batch = tiny_processor(audio=[real_like_audio(0.2, seed=seed) for seed in range(4)], sampling_rate=24000)
    examples = [{**{name: batch[name][i] for name in INPUT_NAMES}, "labels": batch.input_ids[i]} for i in range(4)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        save_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=examples, processing_class=tiny_processor)
    trainer.train()
    for step in (1, 2):
        checkpoint = tmp_path / "run" / f"checkpoint-{step}"
        assert (checkpoint / "processor_config.json").exists()
        assert (checkpoint / "audio_tokenizer" / "model.safetensors").exists()
        loaded = WhisperGPTProcessor.from_pretrained(checkpoint)
        assert loaded.audio_tokenizer.calibrated
        assert_same_encoding(loaded, tiny_processor, real_like_audio(0.3, seed=9))


def test_processor_pickles_with_identical_outputs(tiny_processor) -> None:
    restored = pickle.loads(pickle.dumps(tiny_processor))
    assert type(restored) is WhisperGPTProcessor and restored is not tiny_processor
    assert_same_encoding(restored, tiny_processor, real_like_audio(0.4, seed=4))
    padded = {"padding": "max_length", "max_length": 4000, "truncation": True}
    clips = [real_like_audio(0.3, seed=5), real_like_audio(0.1, seed=6)]
    for name in INPUT_NAMES:
        torch.testing.assert_close(
            restored(audio=clips, sampling_rate=24000, **padded)[name],
            tiny_processor(audio=clips, sampling_rate=24000, **padded)[name],
            atol=0,
            rtol=0,
        )


def encode(example: dict, processor: WhisperGPTProcessor) -> dict[str, np.ndarray]:
    """A `Dataset.map` function: one row's audio dict -> its model inputs."""
    inputs = processor(audio=example["audio"], return_tensors="np")
    return {name: inputs[name][0] for name in INPUT_NAMES}


@pytest.fixture
def fingerprint_log() -> Iterator[list[str]]:
    """The messages datasets' fingerprinting logs (at every level: it warns about a failed hash only once per
    process and logs later failures at INFO)."""
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("datasets.fingerprint")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_dataset_map_fingerprint_is_deterministic_and_caches(tiny_processor, tmp_path, fingerprint_log) -> None:
    tiny_processor.save_pretrained(tmp_path / "processor")
    first, second = (WhisperGPTProcessor.from_pretrained(tmp_path / "processor") for _ in range(2))
    rows = [{"array": real_like_audio(0.1, seed=seed), "sampling_rate": 24000} for seed in range(3)]
    Dataset.from_dict({"audio": rows}).save_to_disk(str(tmp_path / "data"))
    dataset = load_from_disk(str(tmp_path / "data"))  # on disk, so map results are cached in files

    mapped = dataset.map(encode, fn_kwargs={"processor": first})
    again = dataset.map(encode, fn_kwargs={"processor": second})
    assert not [message for message in fingerprint_log if "couldn't be hashed" in message], fingerprint_log
    assert mapped._fingerprint == again._fingerprint
    assert again.cache_files == mapped.cache_files and Path(mapped.cache_files[0]["filename"]).exists()
    np.testing.assert_array_equal(
        np.asarray(mapped[1]["input_ids"]), encode(dataset[1], first)["input_ids"]
    )  # the cached rows are the processor's output

    with torch.no_grad():
        next(second.audio_tokenizer.codec.encoder.parameters()).add_(1.0)
    changed = dataset.map(encode, fn_kwargs={"processor": second})
    assert changed._fingerprint != mapped._fingerprint  # a different codec is a different transform
