"""Corpus builder tests on tiny Debian packages built locally with dpkg-deb: nothing is downloaded."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import soundfile as sf

from whisper_gpt.apps import corpus
from whisper_gpt.apps.corpus import DebianSource, audio_files, build_corpus, load_manifest

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build test packages")

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2024, Nobody
License: CC0-1.0

Files: debian/*
Copyright: 2024, Nobody
License: GPL-2+
"""


def _tone(seconds: float, rate: int, channels: int = 1, frequency: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * frequency * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _make_deb(
    root: Path, package: str, files: dict[str, tuple[float, int, int]], extra: dict[str, bytes], compression="xz"
) -> Path:
    """Build ``package``'s .deb holding tones ``{relative path: (seconds, rate, channels)}`` and raw ``extra`` files."""
    tree = root / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Nobody <nobody@example.org>\n"
        "Description: test audio\n"
    )
    doc = tree / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    for index, (relative, (seconds, rate, channels)) in enumerate(files.items()):
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _tone(seconds, rate, channels, 200.0 + 50 * index), rate)
    for relative, data in extra.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(data)
    deb = root / f"{package}_1.0-1_all.deb"
    command = ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(deb)]
    subprocess.run(command, check=True, capture_output=True)
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("debs")
    words = {
        "usr/share/fake/sounds/en/cat.wav": (1.0, 44100, 2),
        "usr/share/fake/sounds/en/dog.ogg": (0.8, 22050, 1),
        "usr/share/fake/sounds/de/hund.flac": (1.2, 48000, 1),
        "usr/share/fake/sounds/de/katze.wav": (0.9, 8000, 1),
        "usr/share/fake/sounds/tiny.wav": (0.05, 24000, 1),
    }
    broken = {"usr/share/fake/sounds/en/broken.ogg": b"OggS" + bytes(range(256)) * 4, "usr/share/fake/notes.txt": b"x"}
    sentences = {"usr/share/talk/long.wav": (12.0, 16000, 1), "usr/share/talk/short.wav": (2.0, 16000, 1)}
    return {
        "fake-words": _make_deb(root, "fake-words", words, broken),
        "fake-talk": _make_deb(root, "fake-talk", sentences, {}),
    }


class Fetcher:
    """Stands in for apt-get download: copies a local .deb and counts the calls."""

    def __init__(self, debs: dict[str, Path]):
        self.debs, self.calls = debs, 0

    def __call__(self, package: str, dest_dir: Path) -> Path:
        self.calls += 1
        dest_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.debs[package], dest_dir))


def _sources(fetch: Fetcher, packages=("fake-words", "fake-talk")) -> list[DebianSource]:
    return [DebianSource(package, fetch=fetch) for package in packages]


def _build(out: Path, fetch: Fetcher, **kwargs) -> dict:
    return build_corpus("speech", out, progress=False, sources=_sources(fetch), **kwargs)


def test_decodes_to_24k_mono_pcm16_and_skips_bad_files(tmp_path, debs, caplog):
    summary = _build(tmp_path, Fetcher(debs))
    rows = load_manifest(tmp_path)
    origins = {row["origin"].rsplit("/", 1)[-1] for row in rows}
    assert origins == {"cat.wav", "dog.ogg", "hund.flac", "katze.wav", "long.wav", "short.wav"}
    for row in rows:
        info = sf.info(tmp_path / row["path"])
        assert (info.samplerate, info.channels, info.subtype, info.format) == (24000, 1, "PCM_16", "WAV")
        assert info.duration == pytest.approx(row["duration"], abs=1e-3)
    by_name = {Path(row["origin"]).name: row for row in rows}
    assert by_name["cat.wav"]["duration"] == pytest.approx(1.0, abs=0.01)
    assert by_name["katze.wav"]["duration"] == pytest.approx(0.9, abs=0.01)
    audio, _ = sf.read(tmp_path / by_name["hund.flac"]["path"])
    assert 0.25 < np.abs(audio).max() < 0.35  # level kept through resampling and 16-bit PCM
    assert summary["skipped"] == 2  # broken.ogg and tiny.wav
    assert "broken.ogg" in caplog.text and "tiny.wav" in caplog.text and "too short" in caplog.text
    assert not list(tmp_path.rglob("*.partial"))


def test_manifest_rows_licence_and_summary(tmp_path, debs):
    summary = _build(tmp_path, Fetcher(debs))
    rows = load_manifest(tmp_path)
    assert all(set(row) == {"path", "duration", "source", "licence", "split", "origin"} for row in rows)
    assert {row["licence"] for row in rows} == {"CC0-1.0"}  # the "Files: *" stanza, not debian/*
    assert {row["source"] for row in rows} == {"fake-words", "fake-talk"}
    assert (
        next(row for row in rows if row["origin"].endswith("cat.wav"))["path"]
        == "audio/fake-words/fake/sounds/en/cat.wav"
    )
    assert (tmp_path / "licenses" / "fake-words.txt").read_text() == COPYRIGHT
    assert summary["sources"]["fake-words"]["files"] == 4 and summary["sources"]["fake-talk"]["files"] == 2
    assert sum(summary["files"].values()) == len(rows)
    assert sum(summary["seconds"].values()) == pytest.approx(sum(row["duration"] for row in rows), abs=0.01)
    assert summary["out_dir"] == str(tmp_path) and summary["failed_sources"] == {}


def test_split_by_file_is_disjoint_deterministic_and_listed(tmp_path, debs):
    fetch = Fetcher(debs)
    splits = []
    for run in ("a", "b"):
        _build(tmp_path / run, fetch, seed=3, validation_fraction=0.3)
        rows = load_manifest(tmp_path / run)
        splits.append({row["path"]: row["split"] for row in rows})
        train, validation = (set(audio_files(tmp_path / run, split)) for split in ("train", "validation"))
        assert train and validation and not train & validation
        assert train | validation == set(audio_files(tmp_path / run))
        listed = (tmp_path / run / "validation.txt").read_text().split("\n")[:-1]
        assert {tmp_path / run / path for path in listed} == validation
    assert splits[0] == splits[1]


def test_validation_takes_its_fraction_of_seconds_across_sources():
    rows = [{"path": f"{source}/{i}.wav", "source": source, "duration": 2.0} for source in "abc" for i in range(10)]
    corpus._assign_splits(rows, 0.1, seed=0)
    validation = [row for row in rows if row["split"] == "validation"]
    assert len(validation) == 3 and {row["source"] for row in validation} == {"a", "b", "c"}
    again = [dict(row) for row in rows]
    corpus._assign_splits(again, 0.1, seed=0)
    assert again == rows
    # A single file longer than the target still gives validation one file, and train keeps the rest.
    pair = [{"path": "x.wav", "source": "a", "duration": 100.0}, {"path": "y.wav", "source": "a", "duration": 1.0}]
    corpus._assign_splits(pair, 0.1, seed=0)
    assert sorted(row["split"] for row in pair) == ["train", "validation"]


def test_minutes_cap_keeps_every_source_and_cuts_long_files(tmp_path, debs):
    # 3 s for two sources, 1.5 s each: fake-words fits whole words; every fake-talk file is longer, so its first
    # file is cut to 1.5 s rather than leaving the source out.
    summary = _build(tmp_path / "small", Fetcher(debs), minutes=3 / 60)
    assert sum(summary["seconds"].values()) <= 3.0 + 0.1
    assert summary["sources"]["fake-words"]["files"] >= 1
    assert summary["sources"]["fake-talk"] == {"files": 1, "seconds": 1.5}
    (excerpt,) = [row for row in load_manifest(tmp_path / "small") if row["source"] == "fake-talk"]
    assert excerpt["path"].endswith(".middle1.50s.wav")
    audio, rate = sf.read(tmp_path / "small" / excerpt["path"])
    assert rate == 24000 and len(audio) == 36000 and np.abs(audio).max() > 0.25
    # 16 s: fake-words holds only 3.9 s, so fake-talk gets 12.1 s and must cut its 12 s file or take both.
    summary = _build(tmp_path / "large", Fetcher(debs), minutes=16 / 60)
    assert summary["sources"]["fake-words"]["files"] == 4
    assert sum(summary["seconds"].values()) <= 16.0 + 0.1
    talk = [row for row in load_manifest(tmp_path / "large") if row["source"] == "fake-talk"]
    assert sum(row["duration"] for row in talk) == pytest.approx(16.0 - 3.9, abs=0.15)


def test_a_share_bar_counts_whole_seconds(tmp_path, capsys):
    seconds = [1.37, 0.91, 1.23]  # 3.51 s in all: a float count would print as 3.51/4
    items = [
        corpus._Item(f"tone{index}.wav", PurePosixPath(f"tone{index}.wav"), length, lambda n=length: _tone(n, 24000))
        for index, length in enumerate(seconds)
    ]
    rows, skipped = corpus._fill("tones", items, share=3.6, cap=math.inf, out=tmp_path, progress=True)
    assert skipped == 0 and sum(row["duration"] for row in rows) == pytest.approx(sum(seconds))
    counts = re.findall(r"(\S+)/(\S+) \[", capsys.readouterr().err)
    assert counts and all(done.isdigit() and total == "4" for done, total in counts), counts
    assert counts[-1][0] == "4"


def test_second_run_reuses_downloads_and_audio(tmp_path, debs):
    fetch = Fetcher(debs)
    first = _build(tmp_path, fetch, minutes=10 / 60)
    manifest = (tmp_path / "manifest.jsonl").read_text()
    mtimes = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    second = _build(tmp_path, fetch, minutes=10 / 60)
    assert second == first and fetch.calls == 2  # one download per package, in the first run only
    assert (tmp_path / "manifest.jsonl").read_text() == manifest
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == mtimes


def test_interrupted_write_is_not_trusted(tmp_path, debs):
    _build(tmp_path, Fetcher(debs))
    row = load_manifest(tmp_path)[0]
    wav = tmp_path / row["path"]
    # What a crash during writing leaves behind: the temporary file, never the final name.
    wav.rename(wav.with_name(wav.name + ".partial"))
    (tmp_path / "manifest.jsonl.partial").write_text("garbage")
    _build(tmp_path, Fetcher(debs))
    assert sf.info(wav).samplerate == 24000
    assert not list((tmp_path / "audio").rglob("*.partial"))
    assert load_manifest(tmp_path)[0] == row


def test_plain_folder_works_like_a_corpus(tmp_path):
    names = ["a.wav", "b.flac", "sub/c.ogg", "sub/deeper/d.wav", "e.wav", "f.wav"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / name, _tone(0.5, 16000), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    everything = audio_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in everything) == sorted(names)
    train, validation = audio_files(tmp_path, "train"), audio_files(tmp_path, "validation")
    assert train and validation and not set(train) & set(validation)
    assert set(train) | set(validation) == set(everything)
    assert audio_files(tmp_path, "validation") == validation
    rows = load_manifest(tmp_path)
    assert {row["split"] for row in rows} == {"train", "validation"}
    assert all(row["duration"] == pytest.approx(0.5) and row["source"] == "user" for row in rows)
    with pytest.raises(ValueError, match="split"):
        audio_files(tmp_path, "test")


def test_missing_music_packages_skip_the_chorales_with_the_install_command(tmp_path, debs, monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # makes "import tinysoundfont" fail
    sources = [DebianSource("fake-talk", fetch=Fetcher(debs)), corpus.ChoraleSource()]
    summary = build_corpus("music", tmp_path, progress=False, sources=sources)
    assert set(summary["sources"]) == {"fake-talk"}
    assert corpus.MUSIC_EXTRAS_COMMAND in summary["failed_sources"]["music21"]


def test_unknown_domain_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown domain 'noise'"):
        build_corpus("noise", tmp_path)
    with pytest.raises(NotADirectoryError):
        audio_files(tmp_path / "missing")


def test_licence_identifiers():
    assert corpus._licence_from_copyright(COPYRIGHT) == "CC0-1.0"
    assert corpus._licence_from_copyright("Format: x\n\nFiles: a\nLicense: GPL-2\n") == "GPL-2"
    creative_commons = (
        'CREATIVE COMMONS PUBLIC LICENSE ("CCPL")\n e. "License Elements" means the following high-level license\n'
        "attributes as selected by Licensor: Attribution, ShareAlike.\n (e.g., Attribution-ShareAlike 3.0 US)\n"
    )
    assert corpus._licence_from_copyright(creative_commons) == "CC-BY-SA-3.0"


def test_cli_subcommand(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_build(domain, out_dir, **kwargs):
        calls.append((domain, out_dir, kwargs))
        return {"out_dir": out_dir, "files": {"train": 1, "validation": 0}}

    monkeypatch.setattr(corpus, "build_corpus", fake_build)
    parser = argparse.ArgumentParser()
    corpus.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["corpus", "music", str(tmp_path), "--minutes", "2.5", "--seed", "7"])
    args.handler(args)
    expected = {"minutes": 2.5, "seed": 7, "validation_fraction": 0.1, "max_file_seconds": None}
    assert calls == [("music", str(tmp_path), expected)]
    assert json.loads(capsys.readouterr().out)["out_dir"] == str(tmp_path)
    with pytest.raises(SystemExit):
        parser.parse_args(["corpus", "noise", str(tmp_path)])
    args = parser.parse_args(["corpus", "music", str(tmp_path), "--max-file-seconds", "inf"])
    args.handler(args)
    assert calls[-1][2]["max_file_seconds"] == math.inf


# Music-like sources: few long recordings per package, plus a rendered source whose lengths are unknown until
# rendered (like the Bach chorales). 8 kHz keeps the packages small and the test fast.
MUSIC_RATE = 8000


@pytest.fixture(scope="module")
def music_debs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("music-debs")
    suite = {f"usr/share/suite/movement{i}.wav": (60.0, MUSIC_RATE, 1) for i in range(3)}
    album = {f"usr/share/album/track{i}.ogg": (45.0, MUSIC_RATE, 2) for i in range(4)}
    return {
        "fake-suite": _make_deb(root, "fake-suite", suite, {}, compression="gzip"),
        "fake-album": _make_deb(root, "fake-album", album, {}, compression="gzip"),
    }


class RenderedSource:
    """Stands in for ChoraleSource: many 12-s pieces whose length is only known once rendered."""

    name = "fake-rendered"

    def __init__(self, pieces: int = 40):
        self.pieces, self.rendered = pieces, 0

    def collect(self, cache_dir: Path) -> corpus._Collected:
        items = [
            corpus._Item(f"rendered/piece{i}", PurePosixPath(f"piece{i}.wav"), None, self._loader(i))
            for i in range(self.pieces)
        ]
        return corpus._Collected(items, math.inf, "CC0-1.0", "CC0-1.0\n")

    def _loader(self, index: int):
        def load() -> np.ndarray:
            self.rendered += 1
            return _tone(12.0, corpus.SAMPLE_RATE, frequency=300.0 + 10 * index)

        return load


def _build_music(out: Path, debs: dict[str, Path], **kwargs) -> dict:
    fetch = Fetcher(debs)
    sources = [DebianSource("fake-suite", fetch=fetch), DebianSource("fake-album", fetch=fetch), RenderedSource()]
    return build_corpus("music", out, minutes=3, progress=False, sources=sources, **kwargs)


def _splits_by_origin(rows: list[dict]) -> dict[str, list[str]]:
    by_origin: dict[str, list[str]] = {}
    for row in rows:
        by_origin.setdefault(row["origin"], []).append(row["split"])
    return by_origin


def test_music_excerpts_give_validation_several_files_from_several_sources(tmp_path, music_debs):
    # 3 minutes from recordings of 45-60 s: uncapped, about eight files and validation held one or two of them.
    # Capped at 5 s, each recording gives one excerpt from its middle: the suite and the album can give 15 s and
    # 20 s, the rendered source fills the rest, and validation (10% of the seconds) gets one file per source.
    summary = _build_music(tmp_path, music_debs, max_file_seconds=5)
    rows = load_manifest(tmp_path)
    assert summary["max_file_seconds"] == 5.0
    assert all(row["duration"] <= 5.0 + 0.01 for row in rows)
    assert summary["sources"]["fake-suite"] == {"files": 3, "seconds": 15.0}
    assert summary["sources"]["fake-album"] == {"files": 4, "seconds": 20.0}
    assert sum(summary["seconds"].values()) == pytest.approx(180.0, abs=0.5)
    validation = [row for row in rows if row["split"] == "validation"]
    assert len(validation) >= 3 and {row["source"] for row in validation} == {
        "fake-suite",
        "fake-album",
        "fake-rendered",
    }
    assert summary["seconds"]["validation"] == pytest.approx(18.0, abs=3.0)
    # One excerpt per recording, so no recording can be in both splits.
    assert all(len(splits) == 1 for splits in _splits_by_origin(rows).values())
    # The excerpt is the middle of the recording: a 60-s tone cut to 5 s keeps its full level.
    suite_row = next(row for row in rows if row["source"] == "fake-suite")
    assert suite_row["path"].endswith(".middle5.00s.wav")
    audio, rate = sf.read(tmp_path / suite_row["path"])
    assert rate == corpus.SAMPLE_RATE and len(audio) == 5 * corpus.SAMPLE_RATE and np.abs(audio).max() > 0.25
    metadata = json.loads((tmp_path / "corpus.json").read_text())
    assert metadata["max_file_seconds"] == 5.0 and metadata["domain"] == "music" and metadata["seed"] == 0


def test_music_caps_at_30_seconds_by_default_and_the_cap_is_part_of_the_corpus(tmp_path, music_debs):
    summary = _build_music(tmp_path, music_debs)
    assert summary["max_file_seconds"] == corpus.MAX_FILE_SECONDS["music"] == 30.0
    assert max(row["duration"] for row in load_manifest(tmp_path)) == pytest.approx(30.0, abs=0.01)
    # Same arguments: nothing is rewritten and nothing is rendered again.
    mtimes = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    assert _build_music(tmp_path, music_debs) == summary
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == mtimes
    # Another cap is another corpus: new excerpts, the old ones removed, the cap recorded.
    smaller = _build_music(tmp_path, music_debs, max_file_seconds=5)
    rows = load_manifest(tmp_path)
    assert smaller["max_file_seconds"] == 5.0 and max(row["duration"] for row in rows) <= 5.0 + 0.01
    assert {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "audio").rglob("*.wav")} == {
        row["path"] for row in rows
    }
    assert json.loads((tmp_path / "corpus.json").read_text())["max_file_seconds"] == 5.0
    # No cap: whole recordings as before, recorded as null.
    uncapped = _build_music(tmp_path, music_debs, max_file_seconds=math.inf)
    assert uncapped["max_file_seconds"] is None
    assert json.loads((tmp_path / "corpus.json").read_text())["max_file_seconds"] is None
    assert max(row["duration"] for row in load_manifest(tmp_path)) == pytest.approx(60.0, abs=0.01)


def test_speech_is_not_capped_by_default_and_bad_caps_are_refused(tmp_path, debs):
    summary = _build(tmp_path, Fetcher(debs))
    assert summary["max_file_seconds"] is None
    long_row = next(row for row in load_manifest(tmp_path) if row["origin"].endswith("long.wav"))
    assert long_row["duration"] == pytest.approx(12.0, abs=0.01)
    for bad in (0, -1, 0.1, math.nan):
        with pytest.raises(ValueError, match="max_file_seconds"):
            _build(tmp_path / "bad", Fetcher(debs), max_file_seconds=bad)
