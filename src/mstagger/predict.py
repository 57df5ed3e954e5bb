"""Tag your own audio with a trained bundle: ``mstagger predict song.mp3 [more files]``.

A file of any length is cut into consecutive windows of the clip length the network was trained on
(29.1 s for MTAT); each window is tagged and the probabilities are averaged over windows. A file
shorter than one window is zero-padded, as a short clip is in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mstagger.audio import AudioError, load_clip, log_mel
from mstagger.bundle import Bundle, load_bundle, resolve_device
from mstagger.params import ParamsError, load_params
from mstagger.util import UserError

MIN_SECONDS = 1.0  # shorter files are refused: mostly padding, the tags would mean little


def windows(y: np.ndarray, window: int) -> list[np.ndarray]:
    """Cut ``y`` into consecutive windows of ``window`` samples.

    A remainder shorter than half a window is dropped when at least one full window exists (it would be
    mostly padding); a signal shorter than one window gives one (short) window.
    """
    starts = list(range(0, max(len(y) - window, 0) + 1, window))
    tail = len(y) - (starts[-1] + window)
    if tail >= window // 2:
        starts.append(starts[-1] + window)
    return [y[s : s + window] for s in starts]


def predict_file(bundle: Bundle, path: str | Path, batch_size: int = 16) -> tuple[np.ndarray, int]:
    """Tag probabilities of one audio file, averaged over its windows.

    Args:
        bundle: a loaded model bundle.
        path: any format soundfile decodes (MP3, WAV, FLAC, OGG, ...).
        batch_size: windows per forward pass.

    Returns:
        (probabilities (n_tags,) in ``bundle.tags`` order, number of windows).

    Raises:
        AudioError: the file is missing, cannot be decoded, is silent or shorter than a second.
    """
    spec = bundle.spectrogram
    y = load_clip(Path(path), spec.sample_rate, min_seconds=MIN_SECONDS)
    window = (spec.n_frames - 1) * spec.hop_length
    mels = np.stack([log_mel(w, spec) for w in windows(y, window)])  # (W, M, T)
    return bundle.predict(mels, batch_size=batch_size).mean(axis=0), len(mels)


def main(argv: list[str] | None = None) -> int:
    """``mstagger predict``: print the top tags of each file (or JSON with every tag)."""
    parser = argparse.ArgumentParser(prog="mstagger predict", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="audio files (mp3, wav, flac, ogg)")
    parser.add_argument(
        "--model", type=Path, help="model bundle (default: paths.model of ./params.yaml, the trained model)"
    )
    parser.add_argument("--top", type=int, default=10, help="tags to print per file (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: every tag's probability")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    try:
        model = args.model if args.model is not None else Path(load_params().paths.model)
        bundle = load_bundle(model, device=resolve_device(args.device, source="--device"))
    except (UserError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results, failed = {}, 0
    for path in args.files:
        try:
            probs, n_windows = predict_file(bundle, path)
        except AudioError as err:
            print(f"error: {path}: cannot tag: {err}", file=sys.stderr)
            failed += 1
            continue
        results[str(path)] = {
            "windows": n_windows,
            "tags": dict(zip(bundle.tags, map(float, probs), strict=True)),
        }
        if not args.json:
            order = np.argsort(-probs, kind="stable")[: args.top]
            print(f"{path}  ({n_windows} window{'s' if n_windows > 1 else ''})")
            for j in order:
                print(f"  {probs[j]:.3f}  {bundle.tags[j]}")
    if args.json:
        print(json.dumps({"model": str(model), "git_rev": bundle.git_rev, "files": results}, indent=2))
    return 1 if failed else 0
