"""The synthetic demo dataset: MTAT's formats, folder layout, labels, broken files, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import signal

from mstagger.data.labels import merge_synonyms
from mstagger.data.mtat import ANNOTATIONS_FILE, AUDIO_FOLDERS, CLIP_INFO_COLUMNS, CLIP_INFO_FILE
from mstagger.demo import (
    SPELLINGS,
    Catalogue,
    generate_demo,
    plan_catalogue,
    synthesise_song,
)
from mstagger.params import DemoParams, load_params

MTAT = Path(__file__).resolve().parents[2] / "shared" / "mtat"
SYNONYMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml").tags.synonyms
TINY = DemoParams(n_artists=2, albums_per_artist=1, songs_per_album=1, clips_per_song=2, broken_clips=2)
SEED = 1337
PATH_RE = re.compile(r"^[0-9a-f]/[a-z0-9_]+-[a-z0-9_]+-\d\d-[a-z0-9_]+-(\d+)-(\d+)\.mp3$")
QUOTED_LINE = re.compile(r'^"[^"\t]*"(\t"[^"\t]*")*\r\n$')


def _mtat_file(name: str) -> Path:
    path = MTAT / name
    if not path.is_file():
        pytest.skip(f"real MTAT metadata not available at {path}")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny dataset, generated over a stale earlier copy (which must disappear)."""
    out = tmp_path_factory.mktemp("demo") / "raw"
    (out / "0").mkdir(parents=True)
    (out / "0" / "stale.mp3").write_bytes(b"old")
    (out / ANNOTATIONS_FILE).write_text("old")
    summary = generate_demo(out, TINY, SEED)
    return out, summary


def _merged_counts(catalogue: Catalogue) -> dict[str, int]:
    """Clips per tag after the pipeline's synonym merge, most frequent first; tags on no clip left out."""
    flags = pd.DataFrame({t: [int(t in c.tags) for c in catalogue.clips] for t in catalogue.tag_names})
    counts = merge_synonyms(flags, SYNONYMS).sum()
    return dict(sorted(((t, int(n)) for t, n in counts.items() if n), key=lambda kv: (-kv[1], kv[0])))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the plan (no audio): folders, labels, names ------------------------------------------------------


def test_default_plan_uses_every_folder_and_gives_validation_24_clips() -> None:
    catalogue = plan_catalogue(DemoParams(), SEED)
    folder_of_album: dict[tuple[str, str], set[str]] = {}
    for song in catalogue.songs:
        folder_of_album.setdefault((song.artist, song.album), set()).add(song.folder)
    assert len(folder_of_album) == 32
    assert all(len(folders) == 1 for folders in folder_of_album.values())
    albums = [f for (f,) in folder_of_album.values()]
    assert set(albums) == set(AUDIO_FOLDERS)
    # Six albums (24 clips) in the validation folder, taken from training; the test folders keep two each.
    assert albums.count("c") == 6 and [albums.count(f) for f in "def"] == [2, 2, 2]
    assert sum(clip.mp3_path.startswith("c/") for clip in catalogue.clips) == 24
    for clip in catalogue.clips:  # every clip sits in its song's (album's) folder
        assert clip.mp3_path.split("/")[0] == catalogue.songs[clip.song].folder


def test_every_artist_and_variant_keeps_an_album_in_the_training_folders() -> None:
    for seed in range(20):
        catalogue = plan_catalogue(DemoParams(), seed)
        trained = {(s.artist, s.recipe.variant) for s in catalogue.songs if s.folder < "c"}
        assert trained == {(s.artist, s.recipe.variant) for s in catalogue.songs}


def test_fewer_albums_use_as_many_folders_and_the_folder_is_seeded() -> None:
    params = DemoParams(n_artists=3, albums_per_artist=2, songs_per_album=1, clips_per_song=1)
    folders = [s.folder for s in plan_catalogue(params, SEED).songs]
    assert len(set(folders)) == 6
    assert any(folders != [s.folder for s in plan_catalogue(params, seed).songs] for seed in range(5))


def test_default_plan_has_enough_merged_tags_for_top_50() -> None:
    catalogue = plan_catalogue(DemoParams(), SEED)
    counts = list(_merged_counts(catalogue).values())
    assert len(counts) >= 56
    assert counts[49] >= 6, "the 50th most frequent merged tag must sit on at least 6 clips"
    for seed in range(5):  # other seeds too: still a valid top 50
        counts = list(_merged_counts(plan_catalogue(DemoParams(), seed)).values())
        assert len(counts) >= 56 and counts[49] >= 5


def test_synonyms_are_used_inconsistently_so_merging_matters() -> None:
    catalogue = plan_catalogue(DemoParams(), SEED)
    raw = set(catalogue.tag_names)
    merging = [g[0] for g in SYNONYMS if len(raw & set(g)) >= 2]
    assert len(merging) >= 15, merging
    # merging really ORs clips: a merged count exceeds the count of its most used spelling
    raw_counts = {t: sum(t in c.tags for c in catalogue.clips) for t in raw}
    merged = _merged_counts(catalogue)
    assert any(merged[g[0]] > max(raw_counts.get(t, 0) for t in g) for g in SYNONYMS if g[0] in merged)


def test_every_synonym_name_is_an_annotation_column() -> None:
    """prepare merges params.yaml's synonym groups and needs each name as a column, used or not."""
    names = {name for group in SYNONYMS for name in group}
    for params in (TINY, DemoParams()):
        for seed in range(3):
            assert names <= set(plan_catalogue(params, seed).tag_names)


def test_labels_are_sparse_like_crowd_annotations() -> None:
    catalogue = plan_catalogue(DemoParams(), SEED)
    clips = catalogue.clips
    assert 1 <= sum(not c.tags for c in clips) <= 0.1 * len(clips)
    negatives = {"no vocals", "no beat", "no piano", "no guitar", "no violin", "not classical", "not rock"}
    negatives |= {"no vocal", "no voice", "instrumental", "no drums"}
    assert len(negatives & set(catalogue.tag_names)) >= 4
    # true concepts are sometimes left out: clips of one song do not all carry the same tags
    by_song: dict[int, set[tuple[str, ...]]] = {}
    for c in clips:
        by_song.setdefault(c.song, set()).add(c.tags)
    assert sum(len(v) > 1 for v in by_song.values()) >= len(by_song) // 2


def test_every_tag_name_exists_in_real_mtat() -> None:
    header = _mtat_file(ANNOTATIONS_FILE).open(encoding="utf-8").readline()
    real = {f.strip('"\r\n') for f in header.split("\t")}
    used: set[str] = {name for options in SPELLINGS.values() for name, _ in options}
    for seed in range(10):
        used |= set(plan_catalogue(DemoParams(), seed).tag_names)
    assert used - real == set()


def test_demo_segments_are_mtat_segments() -> None:
    info = pd.read_csv(_mtat_file(CLIP_INFO_FILE), sep="\t", dtype=str).dropna(subset=["mp3_path"]).head(2000)
    demo = plan_catalogue(DemoParams(), SEED)
    real_segments = set(zip(info.segmentStart.astype(int), info.segmentEnd.astype(int), strict=True))
    assert {(c.start, c.end) for c in demo.rows} <= real_segments


def test_plan_is_deterministic_and_depends_on_seed() -> None:
    assert plan_catalogue(TINY, 3) == plan_catalogue(TINY, 3)
    assert plan_catalogue(DemoParams(), 3) != plan_catalogue(DemoParams(), 4)


# --- the generated files ----------------------------------------------------------------------------


def test_generation_replaces_stale_contents_and_summarises(tiny: tuple[Path, dict]) -> None:
    out, summary = tiny
    assert not (out / "0" / "stale.mp3").exists()
    assert summary["clips"] == 4 and summary["songs"] == 2 and summary["albums"] == 2
    assert summary["artists"] == 2 and summary["broken_files"] == 2
    ann = pd.read_csv(out / ANNOTATIONS_FILE, sep="\t")
    assert summary["raw_tags"] == ann.shape[1] - 2
    assert summary["clip_info_rows"] == len(pd.read_csv(out / CLIP_INFO_FILE, sep="\t"))


def test_csvs_are_written_like_mtat(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    for name in (ANNOTATIONS_FILE, CLIP_INFO_FILE):
        raw = (out / name).read_bytes()
        assert raw.startswith(b'"clip_id"\t')
        lines = raw.decode("utf-8").splitlines(keepends=True)
        assert all(QUOTED_LINE.match(line) for line in lines), name
    ann = pd.read_csv(out / ANNOTATIONS_FILE, sep="\t")
    info = pd.read_csv(out / CLIP_INFO_FILE, sep="\t")
    assert list(ann.columns[[0, -1]]) == ["clip_id", "mp3_path"]
    assert set(np.unique(ann.iloc[:, 1:-1].to_numpy())) <= {0, 1}
    assert tuple(info.columns) == CLIP_INFO_COLUMNS
    assert ann.clip_id.dtype.kind == "i" and ann.clip_id.is_monotonic_increasing
    assert info.clip_id.is_unique and info.clip_id.is_monotonic_increasing
    # every annotated clip is in clip_info with the same path; clip_info also lists segments without audio
    merged = ann[["clip_id", "mp3_path"]].merge(info, on="clip_id", suffixes=("", "_info"))
    assert len(merged) == len(ann) and (merged.mp3_path == merged.mp3_path_info).all()
    silent = info[info.mp3_path.isna()]
    assert len(silent) >= 1 and not set(silent.clip_id) & set(ann.clip_id)
    for row in merged.itertuples():
        match = PATH_RE.match(row.mp3_path)
        assert match, row.mp3_path
        assert (int(match[1]), int(match[2])) == (row.segmentStart, row.segmentEnd)
        assert (out / row.mp3_path).is_file()


def test_csv_header_bytes_match_real_mtat(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    for name in (ANNOTATIONS_FILE, CLIP_INFO_FILE):
        with _mtat_file(name).open("rb") as f:
            real = f.readline()
        demo = (out / name).read_bytes().split(b"\n", 1)[0] + b"\n"
        assert demo[:10] == real[:10] == b'"clip_id"\t'
        assert demo.endswith(b'"\r\n') and real.endswith(b'"\r\n')
    real_columns = pd.read_csv(_mtat_file(CLIP_INFO_FILE), sep="\t", nrows=1).columns
    assert tuple(real_columns) == CLIP_INFO_COLUMNS


def test_audio_decodes_to_full_clips_and_broken_files_are_broken(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    ann = pd.read_csv(out / ANNOTATIONS_FILE, sep="\t")
    sizes = {p: (out / p).stat().st_size for p in ann.mp3_path}
    empty = [p for p, n in sizes.items() if n == 0]
    assert len(empty) == 1
    durations = {}
    for path in ann.mp3_path:
        if path in empty:
            continue
        info = sf.info(out / path)
        assert info.samplerate == TINY.sample_rate and info.channels == 1
        x, _ = sf.read(out / path)
        durations[path] = len(x) / TINY.sample_rate
    short = [p for p, d in durations.items() if d < 29.2]
    assert len(short) == 1 and 0.5 < durations[short[0]] < 3.0 and sizes[short[0]] < 16_000
    assert all(d >= 29.2 for p, d in durations.items() if p not in short)


def test_same_seed_gives_identical_bytes_and_another_seed_other_audio(
    tiny: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tiny
    again = generate_demo(tmp_path / "again", TINY, SEED)
    assert again["clips"] == 4
    first, second = _files(out), _files(tmp_path / "again")
    assert first == second
    generate_demo(tmp_path / "other", TINY, SEED + 1)
    other = _files(tmp_path / "other")
    audio = [v for k, v in first.items() if k.endswith(".mp3") and len(v) > 20_000]
    assert audio and not set(audio) & set(other.values())


def test_audio_carries_loudness_tags() -> None:
    catalogue = plan_catalogue(DemoParams(), SEED)

    def songs_tagged(tag: str) -> list[int]:
        return sorted({c.song for c in catalogue.clips if tag in c.tags})[:2]

    def rms_db(song: int) -> float:
        x = synthesise_song(catalogue.songs[song], 16000, SEED)[: 30 * 16000]
        return 20 * np.log10(np.sqrt(np.mean(x**2)))

    loud = [rms_db(s) for s in songs_tagged("loud")]
    quiet = [rms_db(s) for s in songs_tagged("quiet")]
    assert len(loud) == len(quiet) == 2
    assert max(quiet) < min(loud) - 10


def test_drums_carry_broadband_hits() -> None:
    """Hi-hats and snares put energy above 5 kHz; ambient pads and choirs without percussion do not."""
    catalogue = plan_catalogue(DemoParams(), SEED)
    highpass = signal.butter(4, 5000, "high", fs=16000, output="sos")

    def high_share_db(song_index: int) -> float:
        x = synthesise_song(catalogue.songs[song_index], 16000, SEED)[: 20 * 16000]
        return float(10 * np.log10(np.mean(signal.sosfilt(highpass, x) ** 2) / np.mean(x**2)))

    drums = [s.index for s in catalogue.songs if any(p.role == "drums" for p in s.recipe.parts)][:2]
    calm = [
        s.index
        for s in catalogue.songs
        if s.recipe.style in ("ambient", "choral")
        and not any(p.role in ("drums", "tabla") for p in s.recipe.parts)
    ][:2]
    assert len(drums) == len(calm) == 2
    assert min(high_share_db(s) for s in drums) > max(high_share_db(s) for s in calm) + 6
