"""Writing the demo dataset: MP3 clips cut from each song, and MTAT's two CSVs beside them."""

from __future__ import annotations

import io
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mstagger.core.outputs import atomic_path, write_text
from mstagger.data.mtat import (
    ANNOTATIONS_FILE,
    AUDIO_FOLDERS,
    CLIP_INFO_COLUMNS,
    CLIP_INFO_FILE,
    CSV_FILES,
    format_line,
    slugify,
)
from mstagger.demo.arrangement import synthesise_song
from mstagger.demo.catalogue import CLIP_SECONDS, Catalogue, Song, plan_catalogue
from mstagger.demo.instruments import note_template
from mstagger.params import DemoParams

URL_HOST = "http://demo.mstagger.invalid"  # a reserved, never-resolving host: the demo links nowhere
TRUNCATED_SECONDS = 1.5  # audio left in the truncated broken clip


def annotations_text(catalogue: Catalogue) -> str:
    """``annotations_final.csv``: clip_id, one 0/1 column per tag, mp3_path; clips with audio only."""
    lines = [format_line(("clip_id", *catalogue.tag_names, "mp3_path"))]
    for clip in catalogue.clips:
        on = set(clip.tags)
        flags = ["1" if t in on else "0" for t in catalogue.tag_names]
        lines.append(format_line((str(clip.clip_id), *flags, clip.mp3_path)))
    return "".join(lines)


def clip_info_text(catalogue: Catalogue) -> str:
    """``clip_info_final.csv``: one row per segment, with empty URL and path where there is no audio.

    The columns and their order are :data:`mstagger.data.mtat.CLIP_INFO_COLUMNS`; a column the demo
    does not fill is a ``KeyError`` here rather than a shifted file.
    """
    lines = [format_line(CLIP_INFO_COLUMNS)]
    for clip in catalogue.rows:
        song = catalogue.songs[clip.song]
        album_url = f"{URL_HOST}/artists/albums/{slugify(song.artist)}-{slugify(song.album)}/"
        audio_url = f"{URL_HOST}/all/{song.track:02d}--{song.title.replace(' ', '%20')}.mp3"
        row = {
            "clip_id": str(clip.clip_id),
            "track_number": f"{song.track:02d}",
            "title": song.title,
            "artist": song.artist,
            "album": song.album,
            "url": album_url,
            "segmentStart": str(clip.start),
            "segmentEnd": str(clip.end),
            "original_url": audio_url if clip.mp3_path else "",
            "mp3_path": clip.mp3_path,
        }
        lines.append(format_line(row[column] for column in CLIP_INFO_COLUMNS))
    return "".join(lines)


def _encode_mp3(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="MP3", subtype="MPEG_LAYER_III")
    return buf.getvalue()


def _write_song(out_dir: Path, catalogue: Catalogue, song: Song, sr: int, seed: int) -> float:
    """Synthesise one song, cut it into its clips and write their MP3s; returns seconds written."""
    audio = synthesise_song(song, sr, seed)
    clip_len = round(CLIP_SECONDS * sr)
    written = 0.0
    for clip in catalogue.rows:
        if clip.song != song.index or not clip.mp3_path:
            continue
        a = int(clip.start * sr)
        data = b"" if clip.broken == "empty" else _encode_mp3(audio[a : a + clip_len], sr)
        if clip.broken == "truncated":
            data = data[: max(1024, int(len(data) * TRUNCATED_SECONDS / CLIP_SECONDS))]
        with atomic_path(out_dir / clip.mp3_path) as tmp:
            tmp.write_bytes(data)
        written += CLIP_SECONDS if not clip.broken else 0.0
    return written


def generate_demo(out_dir: Path, params: DemoParams, seed: int, workers: int | None = None) -> dict:
    """Write the synthetic demo dataset into ``out_dir`` in MTAT's formats.

    Writes ``0``..``f``/``*.mp3`` (the folders the albums fall in), ``annotations_final.csv`` and
    ``clip_info_final.csv``; earlier copies of these are removed first. The CSVs are written last,
    atomically, so they exist only beside complete audio.

    Args:
        out_dir: the dataset folder (created if missing).
        params: the ``demo`` section of params.yaml.
        seed: the random seed; the same seed and params give byte-identical files.
        workers: songs synthesised at once (threads; default: up to 4, one per CPU core).

    Returns:
        A summary: counts of ``clips`` (with audio), ``songs``, ``albums``, ``artists``,
        ``raw_tags`` (annotation columns), ``broken_files``, ``untagged_clips``, ``clip_info_rows``,
        ``folders``, ``audio_seconds`` and ``seconds`` (time taken).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in AUDIO_FOLDERS:
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
    for name in CSV_FILES:
        (out_dir / name).unlink(missing_ok=True)
    catalogue = plan_catalogue(params, seed)
    for folder in sorted({s.folder for s in catalogue.songs}):
        (out_dir / folder).mkdir()
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    audio_seconds = 0.0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(catalogue.songs), desc="demo songs", unit="song", disable=None) as bar,
    ):
        jobs = [
            pool.submit(_write_song, out_dir, catalogue, song, params.sample_rate, seed)
            for song in catalogue.songs
        ]
        for job in as_completed(jobs):
            audio_seconds += job.result()
            bar.update()
    note_template.cache_clear()  # the note templates are only worth keeping within one run
    write_text(out_dir / CLIP_INFO_FILE, clip_info_text(catalogue))
    write_text(out_dir / ANNOTATIONS_FILE, annotations_text(catalogue))
    clips = catalogue.clips
    return {
        "clips": len(clips),
        "songs": len(catalogue.songs),
        "albums": len(catalogue.albums),
        "artists": len(catalogue.artists),
        "raw_tags": len(catalogue.tag_names),
        "broken_files": sum(1 for c in clips if c.broken),
        "untagged_clips": sum(1 for c in clips if not c.tags),
        "clip_info_rows": len(catalogue.rows),
        "folders": len({s.folder for s in catalogue.songs}),
        "audio_seconds": round(audio_seconds, 1),
        "seconds": round(time.perf_counter() - start, 2),
    }
