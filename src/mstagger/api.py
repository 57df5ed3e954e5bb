"""The Python API: load a trained model and tag files, folders' worth of files, or arrays of samples.

    import mstagger

    model = mstagger.load_model()                 # the project's paths.model, or a bundle's path
    model.tag("song.mp3")                         # {"guitar": 0.91, "rock": 0.87, ...} in model.tags order
    model.tag(["a.mp3", "b.flac"])                # one mapping per file, decoded in parallel
    model.tag(samples, sample_rate=44100)         # a NumPy array: (n,) mono or (n, channels)
    model.decide(model.tag("song.mp3"))           # the tags the model asserts, most probable first

The same code as ``mstagger predict``: windows of the training clip length, resampled, log-mel and
rounded to float16 inside, so a file and its samples give the same numbers as the command.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from mstagger.core.errors import UserError
from mstagger.core.runtime import resolve_device
from mstagger.data.audio import AudioError, mono, resampled
from mstagger.inference.bundle import Bundle, load_bundle
from mstagger.inference.tagging import (
    DEMO_WARNING,
    MIN_SECONDS,
    Tagged,
    default_batch_size,
    default_workers,
    keep_heap_for_cpu,
    main_script_hidden,
    tag_files,
    tag_messages,
)
from mstagger.inference.windows import block_messages
from mstagger.params import project_model

Audio = str | Path | np.ndarray


class Model:
    """A trained tagger (see :func:`load_model`)."""

    def __init__(self, bundle: Bundle, path: Path) -> None:
        self.bundle = bundle
        self.path = path
        keep_heap_for_cpu(bundle)

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, {len(self.tags)} tags, on {self.bundle.device})"

    @property
    def tags(self) -> list[str]:
        """The tag names, in the order of the network's outputs and of every mapping :meth:`tag` returns."""
        return list(self.bundle.tags)

    @property
    def thresholds(self) -> dict[str, float] | None:
        """Each tag's decision threshold (chosen on the validation split); None when the bundle has none."""
        if self.bundle.thresholds is None:
            return None
        return dict(zip(self.tags, map(float, self.bundle.thresholds), strict=True))

    def tag(
        self,
        x: Audio | Sequence[str | Path],
        sample_rate: int | None = None,
        *,
        workers: int | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float] | list[dict[str, float]]:
        """Tag probabilities of a file, of each file of a list, or of an array of samples.

        Args:
            x: an audio file (any format soundfile reads: MP3, WAV, FLAC, OGG, ...), a list of files, or
                a NumPy array of samples, (n,) mono or (n, channels), at ``sample_rate``.
            sample_rate: the array's rate in Hz (required for an array, refused for files).
            workers: decoding processes for a list (default: as ``mstagger predict``; 0: in this
                process). Safe from a script without a ``__main__`` guard and from a notebook.
            batch_size: windows per forward pass (default: as ``mstagger predict``).

        Returns:
            For one file or array, a mapping tag -> probability in :attr:`tags` order (the mean over
            the audio's windows of the training clip length); for a list, one mapping per file.

        Raises:
            AudioError: a file or array that cannot be tagged (missing, undecodable, shorter than a
                second, silent, non-finite), naming it.
        """
        if isinstance(x, np.ndarray):
            if sample_rate is None:
                raise UserError("tag(array): give the array's sample_rate in Hz")
            return self._mapping(self._tag_array(x, int(sample_rate), batch_size), "the array")
        if sample_rate is not None:
            raise UserError("tag(): sample_rate is for arrays; a file's rate is read from the file")
        if isinstance(x, str | Path):
            return self._mapping(self._tag_files([x], 0 if workers is None else workers, batch_size)[0], x)
        paths = list(x)
        workers = default_workers(self.bundle.device) if workers is None else workers
        results = self._tag_files(paths, min(workers, len(paths)), batch_size)
        return [self._mapping(r, p) for r, p in zip(results, paths, strict=True)]

    def decide(
        self, probs: Mapping[str, float] | Sequence[Mapping[str, float]]
    ) -> list[str] | list[list[str]]:
        """The tags the model asserts (probability at least the tag's threshold), most probable first.

        Each tag is decided on its own, so contradictory tags (``vocal`` and ``no vocal``) can both be
        asserted, and an item can get none.

        Args:
            probs: what :meth:`tag` returned: one mapping, or a list of them.
        """
        if isinstance(probs, Mapping):
            return self.bundle.asserted(np.array([probs[t] for t in self.bundle.tags], np.float32))
        return [self.decide(p) for p in probs]

    def _tag_files(self, paths: list[str | Path], workers: int, batch_size: int | None) -> list[Tagged]:
        results: list[Tagged | None] = [None] * len(paths)
        stream = tag_files(self.bundle, paths, workers=workers, batch_size=batch_size)
        with main_script_hidden(), closing(stream):  # an error or Ctrl-C ends the workers now
            for result in stream:
                results[result.index] = result
        return results

    def _tag_array(self, x: np.ndarray, sample_rate: int, batch_size: int | None) -> Tagged:
        if x.ndim not in (1, 2) or x.size == 0:
            raise UserError(f"tag(array): expected (n,) or (n, channels) samples, got shape {x.shape}")
        samples = x.astype(np.float32) if x.ndim == 1 else mono(np.asarray(x, np.float32))
        blocks = resampled([samples], sample_rate, self.bundle.spectrogram.sample_rate)
        messages = block_messages(0, blocks, self.bundle.spectrogram, MIN_SECONDS)
        batch = batch_size or default_batch_size(self.bundle.device)
        return next(tag_messages(self.bundle, messages, batch))

    def _mapping(self, result: Tagged, what: object) -> dict[str, float]:
        if result.error is not None:
            raise AudioError(f"{what}: cannot tag: {result.error}")
        return dict(zip(self.bundle.tags, map(float, result.probs), strict=True))


def load_model(path: str | Path | None = None, device: str = "auto") -> Model:
    """Load a trained model bundle for tagging.

    Args:
        path: the bundle (``models/model.pt`` after ``dvc repro``); default: ``paths.model`` of the
            ``params.yaml`` in the current folder or its nearest parent.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Warns:
        UserWarning: the model was trained on the synthetic demo dataset.
    """
    if path is None:  # the project's model, as predict and info find it (from any of its folders)
        path = project_model("pass the bundle's path, e.g. mstagger.load_model('models/model.pt')")
    path = Path(path)
    bundle = load_bundle(path, device=resolve_device(device, source="device"))
    if bundle.is_demo:
        warnings.warn(DEMO_WARNING.format(model=path).removeprefix("warning: "), UserWarning, stacklevel=2)
    return Model(bundle, path)
