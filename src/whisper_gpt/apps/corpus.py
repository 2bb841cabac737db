"""Real-audio corpora built without any hub, and plain folders of audio used the same way.

``build_corpus("speech", out_dir)`` downloads Debian packages that ship recorded audio (``apt-get download``,
no root needed), unpacks them with ``dpkg-deb -x``, decodes every audio file to 24 kHz mono 16-bit WAV under
``OUT_DIR/audio/`` and writes:

* ``OUT_DIR/manifest.jsonl``: one JSON object per file with ``path`` (relative to OUT_DIR), ``duration``
  (seconds), ``source`` (Debian package or ``music21``), ``licence``, ``split`` (``train``/``validation``)
  and ``origin`` (the file's path inside its package);
* ``OUT_DIR/train.txt`` and ``OUT_DIR/validation.txt``: the same split as relative paths, one per line;
* ``OUT_DIR/corpus.json``: the arguments the corpus was built with (domain, minutes, seed, validation fraction,
  ``max_file_seconds``) and its sources;
* ``OUT_DIR/licenses/SOURCE.txt``: each source's full copyright file, since several licences (GPL, CC BY-SA)
  require it to travel with the audio.

Each recording is used at most once, as a whole or as one excerpt: its middle ``max_file_seconds`` (30 s by default
for music, no cap for speech) or, when less is left of its source's share, its middle part that fits. The Debian
music tracks run from under a minute to over seven, so without the cap a 20-minute corpus held about a dozen
recordings and the by-file split put a single piece from a single source into validation; with 30-s excerpts it
draws on about 40 recordings and validation gets one piece from each source, while no recording is in both splits.
The packages with only three tracks (asc-music, frozen-bubble-data) then give 90 s each and the others fill the rest.

Music also includes Bach chorales from the music21 corpus rendered with tinysoundfont and the ``TimGM6mb.sf2``
soundfont inside the pretty_midi wheel. Those three packages are optional: without them the chorales are skipped
with a warning naming the install command (``pip install music21 pretty_midi`` then
``pip install --no-deps tinysoundfont``; tinysoundfont declares a dependency on PyAudio, which has no Linux wheel
and only builds against the PortAudio C headers, yet is imported only for live playback, never for rendering).

Downloads and unpacked packages are kept in ``OUT_DIR/cache/`` and finished WAVs are reused, so a second run with
the same arguments takes seconds. Every file is written under a temporary name and moved into place, so a crash
never leaves a half-written WAV or manifest that a later run would trust.

``audio_files`` and ``load_manifest`` accept either a built corpus or any folder of the user's own audio files
(wav, flac, ogg, opus, mp3; searched recursively), which is split by a hash of each relative path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
MIN_SECONDS = 0.2
# A file longer than what is left of its source's share is cut to its middle part, but only if that part is at
# least this long: cutting a one-second word down to a fragment would make useless training audio.
MIN_EXCERPT_SECONDS = 5.0
# Longest audio taken from one recording, per domain (its middle part): music recordings are long and few, and a
# by-file split needs many files to give validation more than one piece. math.inf: no cap.
MAX_FILE_SECONDS = {"speech": math.inf, "music": 30.0}
# Peak amplitude below which a decoded file counts as silent (-60 dBFS).
SILENCE_PEAK = 1e-3
DOMAINS = ("speech", "music")
SPLITS = ("train", "validation")
MANIFEST = "manifest.jsonl"
METADATA = "corpus.json"
MUSIC_EXTRAS_COMMAND = "pip install music21 pretty_midi && pip install --no-deps tinysoundfont"
_PARTIAL = ".partial"
# Written into each unpacked package, last, so an unpacked folder without it is incomplete.
_INDEX = ".whisper_gpt_durations.json"
# Decoded lengths differ from header lengths by a few samples after resampling.
_TOLERANCE = 0.05


@dataclass(frozen=True)
class _Item:
    """One candidate audio file of a source, decoded only when it is selected."""

    origin: str  # where it comes from, e.g. its path inside the Debian package
    output: PurePosixPath  # path under OUT_DIR/audio/SOURCE/, with a .wav suffix
    duration: float | None  # seconds, when known without decoding
    load: Callable[[], np.ndarray]  # returns 24 kHz mono float32 audio


@dataclass(frozen=True)
class _Collected:
    """What a source offers: its files, their total seconds, its licence and the licence text to ship."""

    items: list[_Item]
    available: float  # total seconds; math.inf where lengths are unknown until rendered but plentiful
    licence: str
    licence_text: str


def _is_audio(path: PurePosixPath) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _codec2_speech(path: PurePosixPath) -> bool:
    # sine*/test_data* are modem test signals; all.wav is a concatenation of the other recordings, so keeping it
    # would put the same speech in train and validation. The headerless .raw files are skipped by _is_audio:
    # they mostly duplicate the wav/ folder.
    return _is_audio(path) and not path.name.startswith(("sine", "test_data")) and path.name != "all.wav"


def _zik(path: PurePosixPath) -> bool:
    # frozen-bubble-data holds mostly sound effects; its music tracks are the *zik*.ogg files.
    return path.suffix == ".ogg" and "zik" in path.name


def apt_download(package: str, dest_dir: Path) -> Path:
    """Download ``package``'s .deb into ``dest_dir`` with ``apt-get download`` and return its path.

    Uses the system package lists when they know the package; otherwise (empty lists in a fresh container, or a
    user who cannot run ``apt-get update``) it fetches private lists into ``dest_dir/apt`` first. Works as root
    and as an ordinary user.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    # As root apt drops privileges to the _apt user, who cannot write into our directories.
    options = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as tmp:
        result = _apt(["download", package], tmp, options)
        if result.returncode != 0:
            logger.info("system package lists do not provide %s; using private lists", package)
            lists, cache = dest_dir / "apt" / "lists", dest_dir / "apt" / "cache"
            private = [*options, "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}"]
            if not any(lists.glob("*Packages*")):
                (lists / "partial").mkdir(parents=True, exist_ok=True)
                (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
                _check(_apt(["update"], tmp, private), "apt-get update")
            _check(_apt(["download", package], tmp, private), f"apt-get download {package}")
        debs = sorted(Path(tmp).glob("*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no .deb file")
        # Moved into place only once complete, so an interrupted download is never mistaken for a cached one.
        target = dest_dir / debs[0].name
        os.replace(debs[0], target)
    return target


def _apt(arguments: list[str], cwd: str, options: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["apt-get", *options, *arguments], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise RuntimeError("apt-get is not available: the corpus sources are Debian packages") from error


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stderr.strip()[-2000:]}")
    return result


@dataclass(frozen=True)
class DebianSource:
    """Audio files inside one Debian package.

    ``include`` selects files by their path inside the package. ``fetch(package, download_dir)`` returns the path
    of the package's .deb; the default downloads it with ``apt-get``, and tests pass a local package instead.
    """

    package: str
    include: Callable[[PurePosixPath], bool] = _is_audio
    fetch: Callable[[str, Path], Path] = apt_download

    @property
    def name(self) -> str:
        return self.package

    def collect(self, cache_dir: Path) -> _Collected:
        """Download (once) and unpack (once) the package and list its audio files."""
        downloads = cache_dir / "debs"
        cached = sorted(downloads.glob(f"{self.package}_*.deb"))
        deb = cached[-1] if cached else self.fetch(self.package, downloads)
        root = _unpack(deb, cache_dir / "unpacked")
        durations = json.loads((root / _INDEX).read_text())
        copyright_file = root / "usr" / "share" / "doc" / self.package / "copyright"
        licence_text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
        items = []
        for relative, duration in sorted(durations.items()):
            path = PurePosixPath(relative)
            if self.include(path):
                # usr/share/ is the same for every file and only makes the output paths longer.
                short = path.relative_to("usr/share") if path.is_relative_to("usr/share") else path
                items.append(_Item(relative, short.with_suffix(".wav"), duration, _file_loader(root / path)))
        # A file whose header is unreadable will almost surely fail to decode, so it counts for nothing here.
        available = sum(item.duration or 0.0 for item in items)
        return _Collected(items, available, _licence_from_copyright(licence_text), licence_text)


def _unpack(deb: Path, unpacked_dir: Path) -> Path:
    """Extract ``deb`` once (with an index of its audio durations) and return the extracted root."""
    target = unpacked_dir / deb.stem
    if (target / _INDEX).is_file():
        return target
    partial = unpacked_dir / (deb.stem + _PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.mkdir(parents=True)
    _check(subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], capture_output=True, text=True), "dpkg-deb")
    # Durations from the file headers, read once here: choosing files under a --minutes cap needs them and
    # reading thousands of headers again on every run would make a rerun slow.
    durations = {}
    for path in sorted(partial.rglob("*")):
        if path.is_file() and _is_audio(PurePosixPath(path.name)):
            try:
                durations[path.relative_to(partial).as_posix()] = sf.info(str(path)).duration
            except (sf.LibsndfileError, RuntimeError) as error:
                logger.debug("no header duration for %s: %s", path, error)
                durations[path.relative_to(partial).as_posix()] = None
    (partial / _INDEX).write_text(json.dumps(durations))
    os.replace(partial, target)
    return target


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: _decode(path)


def _decode(path: Path) -> np.ndarray:
    """Read any soundfile-supported file as 24 kHz mono float32."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return _to_mono_24k(data, rate)


def _to_mono_24k(data: np.ndarray, rate: int) -> np.ndarray:
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    # Resampling can overshoot a full-scale input slightly; clip rather than wrap around in 16-bit PCM.
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def _licence_from_copyright(text: str) -> str:
    """A short licence identifier from a Debian copyright file.

    Machine-readable (DEP-5) files: the licence of the ``Files: *`` stanza, else the first ``License:`` field.
    Free-form files: a Creative Commons licence recognised from its text, else a pointer to the file.
    """
    stanzas = re.split(r"\n\s*\n", text)
    for stanza in stanzas:
        if re.search(r"^Files:\s*\*\s*$", stanza, re.MULTILINE):
            match = re.search(r"^License:\s*(\S.*)$", stanza, re.MULTILINE)
            if match:
                return match.group(1).strip()
    match = re.search(r"^License:\s*(\S.*)$", text, re.MULTILINE)
    if match:
        return match.group(1).strip()
    elements = re.search(r"License Elements[^:]*:\s*([A-Za-z ,-]+)\.", text)
    if "CREATIVE COMMONS" in text.upper() and elements:
        codes = {"attribution": "BY", "noncommercial": "NC", "noderivs": "ND", "sharealike": "SA"}
        parts = [codes[word.lower()] for word in re.findall(r"[A-Za-z]+", elements.group(1)) if word.lower() in codes]
        version = re.search(r"(?:Attribution|ShareAlike|NoDerivs|NonCommercial)\s+(\d\.\d)", text)
        return "CC-" + "-".join(parts) + (f"-{version.group(1)}" if version else "")
    return "see licenses/ (no machine-readable licence field)"


@dataclass(frozen=True)
class ChoraleSource:
    """Bach chorales from the music21 corpus, rendered to audio with tinysoundfont and pretty_midi's soundfont.

    The scores are public-domain compositions encoded in music21's BSD-3-Clause corpus; the soundfont
    ``TimGM6mb.sf2`` (by Tim Brechbill, shipped in the MIT-licensed pretty_midi wheel) is under GPL-2.
    """

    name: str = "music21"
    licence: str = "BSD-3-Clause (music21 corpus; public-domain scores) + GPL-2 (TimGM6mb.sf2 soundfont)"
    tail_seconds: float = field(default=1.0, repr=False)  # lets the last notes ring out

    def collect(self, cache_dir: Path) -> _Collected:
        """List the chorale scores; nothing is rendered until a chorale is selected."""
        try:
            import pretty_midi
            import tinysoundfont  # noqa: F401  (checked here so a missing package is reported once, up front)
            from music21 import corpus
        except ImportError as error:
            raise _OptionalMissing(
                f"Bach chorales skipped: {error.name} is not installed (install with: {MUSIC_EXTRAS_COMMAND})"
            ) from error
        soundfont = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        # Only the .mxl scores: a few chorales also exist as .krn/.xml copies, which would leak across the split.
        scores = sorted(Path(path) for path in corpus.getComposer("bach") if str(path).endswith(".mxl"))
        items = []
        for score in scores:
            loader = _chorale_loader(score, soundfont, self.tail_seconds)
            items.append(
                _Item(f"music21/corpus/bach/{score.name}", PurePosixPath("bach", score.stem + ".wav"), None, loader)
            )
        text = f"{self.licence}\nScores: the music21 corpus, bach/*.mxl; rendered with {soundfont.name}.\n"
        # Over 400 chorales of about a minute: more than any cap asks for, so treat the supply as unlimited.
        return _Collected(items, math.inf, self.licence, text)


class _OptionalMissing(RuntimeError):
    """An optional source cannot run because an optional Python package is missing."""


def _chorale_loader(score: Path, soundfont: Path, tail_seconds: float) -> Callable[[], np.ndarray]:
    return lambda: _render_score(score, soundfont, tail_seconds)


def _render_score(score: Path, soundfont: Path, tail_seconds: float) -> np.ndarray:
    """Render a score file to 24 kHz mono: music21 writes MIDI, tinysoundfont plays it offline."""
    import tinysoundfont
    from music21 import converter

    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "score.mid"
        converter.parse(str(score)).write("midi", fp=str(midi))
        synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
        synth.sfload(str(soundfont))
        sequencer = tinysoundfont.Sequencer(synth)
        sequencer.midi_load(str(midi))
        blocks = []
        while not sequencer.is_empty():
            blocks.append(np.frombuffer(synth.generate(SAMPLE_RATE), dtype=np.float32))
        blocks.append(np.frombuffer(synth.generate(int(tail_seconds * SAMPLE_RATE)), dtype=np.float32))
    stereo = np.concatenate(blocks).reshape(-1, 2)
    return _to_mono_24k(stereo, SAMPLE_RATE)


Source = DebianSource | ChoraleSource

SOURCES: dict[str, tuple[Source, ...]] = {
    "speech": (
        DebianSource("ktuberling-data"),
        DebianSource("klettres-data"),
        DebianSource("codec2-examples", include=_codec2_speech),
    ),
    "music": (
        DebianSource("singularity-music"),
        DebianSource("asc-music"),
        DebianSource("frozen-bubble-data", include=_zik),
        ChoraleSource(),
    ),
}


def build_corpus(
    domain: str,
    out_dir: str | Path,
    minutes: float | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    progress: bool = True,
    *,
    max_file_seconds: float | None = None,
    sources: Sequence[Source] | None = None,
) -> dict:
    """Build (or reuse) a real-audio corpus of ``domain`` ("speech" or "music") in ``out_dir``.

    Args:
        domain: "speech" or "music"; selects the default sources in ``SOURCES``.
        out_dir: output folder; see the module docstring for its layout.
        minutes: cap on the total duration. Every source gets an equal share (a share a source cannot fill goes
            to the others) and fills it with its files in a seeded random order; a file longer than what is left
            is cut to its middle part. None takes everything.
        seed: seeds the file order and the split; the same arguments always give the same corpus.
        validation_fraction: about this fraction of the seconds goes to validation, split by file and picked across
            sources in turn; with two or more files validation gets at least one.
        progress: show tqdm progress bars.
        max_file_seconds: longest audio taken from one recording: a longer one contributes only its middle this
            many seconds (one excerpt per recording, so no recording is in both splits). None: the domain's default
            in ``MAX_FILE_SECONDS`` (30 s for music, no cap for speech); math.inf: no cap.
        sources: replaces the domain's default sources (e.g. local packages for offline tests).

    Returns:
        A summary: ``out_dir``, ``domain``, ``max_file_seconds`` (None for no cap), ``files``, ``seconds`` per
        split, per-source ``files``/``seconds``, ``skipped`` (files that failed to decode or were too short or
        silent) and ``failed_sources``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    cap = MAX_FILE_SECONDS[domain] if max_file_seconds is None else float(max_file_seconds)
    if not cap >= MIN_SECONDS:  # also rejects NaN
        raise ValueError(f"max_file_seconds must be at least {MIN_SECONDS}, got {max_file_seconds}")
    out = Path(out_dir)
    cache_dir = out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    collected: dict[str, _Collected] = {}
    failed: dict[str, str] = {}
    for source in tqdm(sources or SOURCES[domain], desc=f"{domain} sources", unit="source", disable=not progress):
        try:
            collected[source.name] = source.collect(cache_dir)
        except _OptionalMissing as error:
            logger.warning("%s", error)
            failed[source.name] = str(error)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            # One unavailable package should not cost the user the rest of the corpus.
            logger.error("source %s unavailable: %s", source.name, error)
            failed[source.name] = str(error)
    if not collected:
        raise RuntimeError(f"no {domain} source could be obtained: {failed}")

    shares = _shares({name: _capped_available(source, cap) for name, source in collected.items()}, minutes)
    rows, skipped = [], 0
    for name, source in collected.items():
        order = list(source.items)
        random.Random(f"{seed}:{name}").shuffle(order)
        chosen, source_skipped = _fill(name, order, shares[name], cap, out, progress)
        skipped += source_skipped
        rows += [{**row, "source": name, "licence": source.licence} for row in chosen]
        _write_text(out / "licenses" / f"{name}.txt", source.licence_text or f"{source.licence}\n")

    rows.sort(key=lambda row: row["path"])
    _assign_splits(rows, validation_fraction, seed)
    _write_text(out / MANIFEST, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    for split in SPLITS:
        _write_text(out / f"{split}.txt", "".join(row["path"] + "\n" for row in rows if row["split"] == split))
    _remove_stale_audio(out, {row["path"] for row in rows})
    recorded_cap = cap if math.isfinite(cap) else None
    metadata = {
        "domain": domain,
        "minutes": minutes,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "max_file_seconds": recorded_cap,
        "sources": sorted(collected),
        "failed_sources": sorted(failed),
    }
    _write_text(out / METADATA, json.dumps(metadata, indent=2) + "\n")
    return {**_summary(out, domain, rows, skipped, failed), "max_file_seconds": recorded_cap}


def _capped_available(source: _Collected, cap: float) -> float:
    """Seconds a source can give when each recording contributes at most ``cap`` seconds."""
    if not math.isfinite(source.available) or not math.isfinite(cap):
        return source.available
    return sum(min(item.duration or 0.0, cap) for item in source.items)


def _shares(available: dict[str, float], minutes: float | None) -> dict[str, float]:
    """Split the total budget equally between sources, giving what a small source cannot use to the others."""
    if minutes is None:
        return dict.fromkeys(available, math.inf)
    shares, left = {}, minutes * 60.0
    pending = sorted(available, key=available.__getitem__)
    while pending:
        equal = left / len(pending)
        if available[pending[0]] > equal:
            shares.update(dict.fromkeys(pending, equal))
            break
        name = pending.pop(0)
        shares[name] = available[name]
        left -= available[name]
    return shares


def _fill(name: str, order: list[_Item], share: float, cap: float, out: Path, progress: bool) -> tuple[list[dict], int]:
    """Decode files of one source in ``order`` until ``share`` seconds are used; return rows and skip count.

    Each file gives at most ``cap`` seconds (its middle part), and is used at most once.
    """
    rows, skipped, used = [], 0, 0.0
    bounded = math.isfinite(share)
    total, unit = (round(share), "s") if bounded else (len(order), "file")
    with tqdm(total=total, desc=name, unit=unit, disable=not progress) as bar:
        for item in order:
            left = share - used
            if left < MIN_SECONDS:
                break
            limit = min(left, cap)
            # The first file of a source may be cut as short as needed so that every source is represented; a cut
            # to ``cap`` is what the caller asked for, so it is always allowed.
            shortest_excerpt = min(MIN_EXCERPT_SECONDS if rows else MIN_SECONDS, cap)
            if item.duration is not None and item.duration > limit + _TOLERANCE and limit < shortest_excerpt:
                continue  # known too long: look further for a file that fits
            try:
                row = _materialise(name, item, limit, shortest_excerpt, out)
            except _NoRoom:
                break  # only rendering told us it is too long; rendering more to find out is too costly
            except Exception as error:  # any decoder failure means "skip this file", never abort the build
                logger.warning("skipped %s/%s: cannot decode (%s)", name, item.origin, error)
                row = None
            if row is None:
                skipped += 1
            else:
                rows.append(row)
                used += row["duration"]
            # A bounded bar counts whole seconds: its total is the rounded share, and fractions would print as floats.
            bar.update(round(used) - bar.n if bounded else 1)
    return rows, skipped


class _NoRoom(Exception):
    """A file turned out longer than what is left of its source's share, and too little is left to cut it."""


def _materialise(name: str, item: _Item, left: float, shortest_excerpt: float, out: Path) -> dict | None:
    """Write (or reuse) the WAV for ``item`` within ``left`` seconds and return its row; None if unusable.

    ``left`` is what is left of the source's share, or the per-file cap if that is smaller. A file longer than
    ``left`` is cut to its middle ``left`` seconds if that is at least ``shortest_excerpt``.
    A WAV already at its final path is trusted because it was only ever moved there once complete.
    """
    full = PurePosixPath("audio", name) / item.output
    # Excerpt names carry their length: the middle N seconds of a given file are always the same audio.
    excerpt = full.with_name(f"{full.stem}.middle{left:.2f}s.wav")
    if item.duration is None:  # length unknown until rendered: reuse whichever version fits, if any
        for candidate in (full, excerpt):
            if (out / candidate).is_file() and sf.info(str(out / candidate)).duration <= left + _TOLERANCE:
                return _row(item, candidate, out)
    elif (out / (full if item.duration <= left + _TOLERANCE else excerpt)).is_file():
        return _row(item, full if item.duration <= left + _TOLERANCE else excerpt, out)

    audio = item.load()
    target = full
    if len(audio) / SAMPLE_RATE > left + _TOLERANCE:
        if left < shortest_excerpt:
            raise _NoRoom
        keep = round(float(f"{left:.2f}") * SAMPLE_RATE)
        start = (len(audio) - keep) // 2
        audio, target = audio[start : start + keep], excerpt
    if len(audio) < MIN_SECONDS * SAMPLE_RATE:
        logger.warning("skipped %s/%s: too short (%.3f s)", name, item.origin, len(audio) / SAMPLE_RATE)
        return None
    if np.abs(audio).max() < SILENCE_PEAK:
        logger.warning("skipped %s/%s: silent", name, item.origin)
        return None
    _write_wav(out / target, audio)
    return _row(item, target, out)


def _row(item: _Item, path: PurePosixPath, out: Path) -> dict:
    return {"path": path.as_posix(), "duration": round(sf.info(str(out / path)).duration, 3), "origin": item.origin}


def _write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + _PARTIAL)
    sf.write(str(partial), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(partial, path)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, leaving the file (and its mtime) alone when it already holds exactly that."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + _PARTIAL)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _assign_splits(rows: list[dict], validation_fraction: float, seed: int) -> None:
    """Mark each row train or validation, by file, deterministically.

    Validation takes about ``validation_fraction`` of the total seconds: files are offered one source at a time in
    turn (seeded order) so validation covers the sources, and a file is taken only if it does not overshoot the
    target, except the first, so that with two or more files validation is never empty and train never is.
    """
    rng = random.Random(f"split:{seed}")
    by_source: dict[str, list[dict]] = {}
    for row in rng.sample(rows, len(rows)):
        by_source.setdefault(row["source"], []).append(row)
    queues = [by_source[name] for name in rng.sample(sorted(by_source), len(by_source))]
    interleaved = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
    target = validation_fraction * sum(row["duration"] for row in rows)
    taken, seconds = 0, 0.0
    for row in interleaved:
        first = taken == 0 and len(rows) >= 2 and validation_fraction > 0
        fits = seconds + row["duration"] <= target and taken < len(rows) - 1
        row["split"] = "validation" if first or fits else "train"
        if row["split"] == "validation":
            taken, seconds = taken + 1, seconds + row["duration"]


def _remove_stale_audio(out: Path, keep: set[str]) -> None:
    """Delete WAVs (and leftovers of interrupted writes) under OUT_DIR/audio that the manifest does not list."""
    audio_dir = out / "audio"
    if not audio_dir.is_dir():
        return
    for path in audio_dir.rglob("*"):
        if path.is_file() and path.relative_to(out).as_posix() not in keep:
            logger.info("removing %s (not in this corpus)", path)
            path.unlink()


def _summary(out: Path, domain: str, rows: list[dict], skipped: int, failed: dict[str, str]) -> dict:
    sources: dict[str, dict] = {}
    for row in rows:
        entry = sources.setdefault(row["source"], {"files": 0, "seconds": 0.0})
        entry["files"] += 1
        entry["seconds"] = round(entry["seconds"] + row["duration"], 3)
    seconds = {split: round(sum((r["duration"] for r in rows if r["split"] == split), 0.0), 3) for split in SPLITS}
    return {
        "out_dir": str(out),
        "domain": domain,
        "files": {split: sum(r["split"] == split for r in rows) for split in SPLITS},
        "seconds": seconds,
        "sources": sources,
        "skipped": skipped,
        "failed_sources": failed,
    }


def load_manifest(out_dir: str | Path) -> list[dict]:
    """The manifest rows of a built corpus, or equivalent rows for a plain folder of audio files.

    For a plain folder ``source`` is "user", ``licence`` "unknown" and ``split`` comes from a hash of each
    relative path (see ``audio_files``); files whose header cannot be read are left out with a warning.
    """
    folder = _folder(out_dir)
    manifest = folder / MANIFEST
    if manifest.is_file():
        return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for path, split in _hashed_split(folder):
        try:
            duration = round(sf.info(str(path)).duration, 3)
        except (sf.LibsndfileError, RuntimeError) as error:
            logger.warning("skipped %s: %s", path, error)
            continue
        relative = path.relative_to(folder).as_posix()
        rows.append({"path": relative, "duration": duration, "source": "user", "licence": "unknown", "split": split})
    return rows


def audio_files(folder_or_corpus: str | Path, split: str | None = None) -> list[Path]:
    """Audio files of a built corpus (from its manifest) or of any folder (recursive), optionally one split.

    A plain folder is split by file: a file is in validation when a hash of its relative path falls in the
    lowest 10%, so the split never changes as long as the files keep their names, and with two or more files
    each split gets at least one.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)} or None")
    folder = _folder(folder_or_corpus)
    if (folder / MANIFEST).is_file():
        return [folder / row["path"] for row in load_manifest(folder) if split in (None, row["split"])]
    return [path for path, file_split in _hashed_split(folder) if split in (None, file_split)]


def _folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder of audio files or a built corpus")
    return folder


def _hashed_split(folder: Path, validation_fraction: float = 0.1) -> Iterator[tuple[Path, str]]:
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and _is_audio(PurePosixPath(p.name)) and _PARTIAL not in p.name
    )
    if not paths:
        return
    scores = [_hash_unit(p.relative_to(folder).as_posix()) for p in paths]
    splits = ["validation" if score < validation_fraction else "train" for score in scores]
    if len(paths) >= 2 and "validation" not in splits:
        splits[int(np.argmin(scores))] = "validation"
    if len(paths) >= 2 and "train" not in splits:
        splits[int(np.argmax(scores))] = "train"
    yield from zip(paths, splits, strict=True)


def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt corpus DOMAIN OUT_DIR [--minutes N] [--seed S] ...`` to an argparse subparsers object."""
    parser = subparsers.add_parser("corpus", help="build a real speech or music corpus from Debian packages")
    parser.add_argument("domain", choices=DOMAINS)
    parser.add_argument("out_dir", help="output folder (audio/, manifest.jsonl, train.txt, validation.txt)")
    parser.add_argument("--minutes", type=float, default=None, help="cap on total duration (default: everything)")
    parser.add_argument("--seed", type=int, default=0, help="seed for file choice and the train/validation split")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.1, help="fraction of the seconds for validation, split by file"
    )
    parser.add_argument(
        "--max-file-seconds",
        type=float,
        default=None,
        help="longest excerpt (the middle part) taken from one recording; default 30 for music, no cap for speech; "
        "'inf' for no cap",
    )
    parser.set_defaults(handler=_corpus_command)


def _corpus_command(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = build_corpus(
        args.domain,
        args.out_dir,
        minutes=args.minutes,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        max_file_seconds=args.max_file_seconds,
    )
    print(json.dumps(summary, indent=2))
