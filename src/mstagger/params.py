"""Typed, validated pipeline parameters, loaded from ``params.yaml``.

Every section of ``params.yaml`` is read into a frozen dataclass. An unknown key, a value of the
wrong type or an impossible value raises :class:`ParamsError` naming the key, before any stage
does work.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")
DATASETS = ("demo", "mtat")
SPLIT_METHODS = ("folder", "random", "song", "artist")
PRECISIONS = ("bf16", "fp32")
# The paths.* folders the stages replace whole, and the stage that writes each.
WHOLE_FOLDERS = {
    "raw": "download",
    "features": "extract",
    "prepared": "prepare",
    "train_log": "train",
    "plots": "evaluate",
}
# torch.compile modes; reduce-overhead adds CUDA graphs. "none" trains eagerly.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class ParamsError(ValueError):
    """A parameter is unknown, of the wrong type or out of range; the message names the key."""


def _fail(key: str, message: str) -> typing.NoReturn:
    raise ParamsError(f"params: {key}: {message}")


@dataclass(frozen=True)
class PathsParams:
    """Where each stage reads and writes. No defaults: ``params.yaml`` is the one place paths are set."""

    raw: str
    features: str
    prepared: str
    model: str
    checkpoint: str
    train_log: str
    metrics: str
    plots: str

    def _check(self, key: str) -> None:
        # Stages replace what these name; a path outside the repository could name a user's folder
        # (and DVC refuses outputs outside the repository anyway, but only after the stage ran).
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            parts = PurePosixPath(value.replace("\\", "/")).parts
            if not value or PurePosixPath(value).is_absolute() or ".." in parts or ":" in value:
                _fail(
                    f"{key}.{name}",
                    f"must be a relative path inside the repository without '..', got {value!r}",
                )
            if parts in ((".",), ()):
                _fail(f"{key}.{name}", f"must name a file or folder below the repository root, got {value!r}")
        # A folder a stage replaces whole must not hold any other output: the stage would delete it.
        norm = {f.name: PurePosixPath(os.path.normpath(getattr(self, f.name))) for f in fields(self)}
        for whole in WHOLE_FOLDERS:
            for other, path in norm.items():
                if other != whole and (path == norm[whole] or norm[whole] in path.parents):
                    _fail(
                        f"{key}.{other}",
                        f"{path} lies in paths.{whole} ({norm[whole]}), which the {WHOLE_FOLDERS[whole]} "
                        "stage replaces whole; choose a path outside it",
                    )


@dataclass(frozen=True)
class DemoParams:
    n_artists: int = 8
    albums_per_artist: int = 4
    songs_per_album: int = 2
    clips_per_song: int = 2
    sample_rate: int = 16000
    broken_clips: int = 2

    def _check(self, key: str) -> None:
        for name in ("n_artists", "albums_per_artist", "songs_per_album", "clips_per_song"):
            if getattr(self, name) < 1:
                _fail(f"{key}.{name}", f"must be at least 1, got {getattr(self, name)}")
        if self.sample_rate < 8000:
            _fail(f"{key}.sample_rate", f"must be at least 8000 Hz, got {self.sample_rate}")
        if not 0 <= self.broken_clips <= 2:
            _fail(f"{key}.broken_clips", f"must be 0, 1 or 2, got {self.broken_clips}")


@dataclass(frozen=True)
class DownloadParams:
    base_url: str = "https://mirg.city.ac.uk/datasets/magnatagatune/"
    cache_dir: str = ".cache/mtat"
    local_dir: str = ""
    retries: int = 5
    timeout: float = 60.0
    sha256: dict[str, str] | None = None

    def _check(self, key: str) -> None:
        if not self.base_url.startswith(("http://", "https://", "file://")):
            _fail(f"{key}.base_url", f"must start with http://, https:// or file://, got {self.base_url!r}")
        if self.retries < 1:
            _fail(f"{key}.retries", f"must be at least 1, got {self.retries}")
        if self.timeout <= 0:
            _fail(f"{key}.timeout", f"must be positive, got {self.timeout}")
        for name, digest in (self.sha256 or {}).items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                _fail(f"{key}.sha256.{name}", f"must be 64 hex digits, got {digest!r}")


@dataclass(frozen=True)
class SpectrogramParams:
    sample_rate: int = 11025
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    clip_seconds: float = 29.1
    log_floor: float = 1.0e-20

    def _check(self, key: str) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            if getattr(self, name) < 1:
                _fail(f"{key}.{name}", f"must be at least 1, got {getattr(self, name)}")
        if self.hop_length > self.n_fft:
            _fail(f"{key}.hop_length", f"must not exceed n_fft ({self.n_fft}), got {self.hop_length}")
        if self.clip_seconds <= 0:
            _fail(f"{key}.clip_seconds", f"must be positive, got {self.clip_seconds}")
        if self.log_floor <= 0:
            _fail(f"{key}.log_floor", f"must be positive, got {self.log_floor}")

    @property
    def n_frames(self) -> int:
        """Frames of a nominal clip: enough hops to cover ``clip_seconds``, plus the centred first one."""
        return 1 + math.ceil(self.clip_seconds * self.sample_rate / self.hop_length)


@dataclass(frozen=True)
class ExtractParams:
    workers: int = 2
    min_seconds: float = 20.0

    def _check(self, key: str) -> None:
        if self.workers < 1:
            _fail(f"{key}.workers", f"must be at least 1, got {self.workers}")
        if self.min_seconds <= 0:
            _fail(f"{key}.min_seconds", f"must be positive, got {self.min_seconds}")


@dataclass(frozen=True)
class TagsParams:
    top_n: int = 50
    synonyms: list[list[str]] = field(default_factory=list)  # params.yaml holds the paper's 29 groups

    def _check(self, key: str) -> None:
        if self.top_n < 1:
            _fail(f"{key}.top_n", f"must be at least 1, got {self.top_n}")
        seen: dict[str, int] = {}
        for i, group in enumerate(self.synonyms):
            if len(group) < 2:
                _fail(f"{key}.synonyms[{i}]", f"a group needs at least two names, got {group}")
            for name in group:
                if name in seen:
                    _fail(f"{key}.synonyms[{i}]", f"{name!r} is already in group {seen[name]}")
                seen[name] = i


@dataclass(frozen=True)
class SplitParams:
    method: str = "folder"
    valid_size: float = 0.1
    test_size: float = 0.2

    def _check(self, key: str) -> None:
        if self.method not in SPLIT_METHODS:
            _fail(f"{key}.method", f"must be one of {', '.join(SPLIT_METHODS)}, got {self.method!r}")
        for name in ("valid_size", "test_size"):
            value = getattr(self, name)
            if value <= 0 or (value >= 1 and value != int(value)):
                _fail(
                    f"{key}.{name}",
                    f"must be a fraction in (0, 1) or a whole count >= 1, got {value}",
                )
        if self.valid_size < 1 and self.test_size < 1 and self.valid_size + self.test_size >= 1:
            _fail(f"{key}.test_size", "valid_size + test_size must leave clips for training")


@dataclass(frozen=True)
class EvaluateParams:
    curve_tags: int = 10
    baseline_c: float = 1.0
    bootstrap_resamples: int = 1000

    def _check(self, key: str) -> None:
        if self.curve_tags < 1:
            _fail(f"{key}.curve_tags", f"must be at least 1, got {self.curve_tags}")
        if self.baseline_c <= 0:
            _fail(f"{key}.baseline_c", f"must be positive, got {self.baseline_c}")
        # A 95% interval reads the 2.5% tails: with fewer than 100 resamples they hold 2 or fewer.
        if self.bootstrap_resamples != 0 and self.bootstrap_resamples < 100:
            _fail(
                f"{key}.bootstrap_resamples",
                f"must be 0 (no intervals) or at least 100, got {self.bootstrap_resamples}",
            )


@dataclass(frozen=True)
class Params:
    paths: PathsParams
    dataset: str = "demo"
    seed: int = 1337
    lr: float = 1.0e-3
    epochs: int = 40
    batch_size: int = 32
    lr_milestones: list[int] = field(default_factory=lambda: [20, 30, 35])
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    device: str = "auto"
    precision: str = "bf16"
    deterministic: bool = False
    cpu_threads: int = 2
    num_workers: int = 0
    bn_recalibration_clips: int = 2048
    selection_tolerance: float = 0.005
    data_on_device: bool | str = "auto"
    compile: str = "none"
    nproc_per_node: int = 1
    demo: DemoParams = DemoParams()
    download: DownloadParams = DownloadParams()
    spectrogram: SpectrogramParams = SpectrogramParams()
    extract: ExtractParams = ExtractParams()
    tags: TagsParams = TagsParams()
    split: SplitParams = SplitParams()
    evaluate: EvaluateParams = EvaluateParams()

    def _check(self, key: str) -> None:
        if self.dataset not in DATASETS:
            _fail("dataset", f"must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.seed < 0:
            _fail("seed", f"must be non-negative, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail("lr", f"must be a positive number, got {self.lr}")
        if self.epochs < 1:
            _fail("epochs", f"must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            _fail(
                "batch_size",
                f"must be at least 2 (BatchNorm needs two clips per batch), got {self.batch_size}",
            )
        milestones = self.lr_milestones
        if any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            _fail("lr_milestones", f"must be increasing positive epochs, got {milestones}")
        if not 0 < self.lr_gamma <= 1:
            _fail("lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        if self.weight_decay < 0:
            _fail("weight_decay", f"must be non-negative, got {self.weight_decay}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            _fail("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.bn_recalibration_clips < 0 or self.bn_recalibration_clips == 1:
            _fail(
                "bn_recalibration_clips", f"must be 0 (off) or at least 2, got {self.bn_recalibration_clips}"
            )
        if not 0 <= self.selection_tolerance < 1:
            _fail(
                "selection_tolerance",
                f"must be in [0, 1) (0: keep the best validation epoch), got {self.selection_tolerance}",
            )
        if self.cpu_threads < 0:
            _fail("cpu_threads", f"must be 0 (one per CPU core) or a thread count, got {self.cpu_threads}")
        if self.num_workers < 0:
            _fail("num_workers", f"must be non-negative, got {self.num_workers}")
        if self.data_on_device not in (True, False, "auto"):
            _fail("data_on_device", f"must be auto, true or false, got {self.data_on_device!r}")
        if self.compile not in COMPILE_MODES:
            _fail("compile", f"must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.nproc_per_node < 1:
            _fail("nproc_per_node", f"must be at least 1, got {self.nproc_per_node}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _looks_numeric(text: str) -> bool:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; such a value is a number the user meant."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for option in options:  # bool | str: take the value as the first type it already is
            if option in (bool, str) and type(value) is option:
                return value
        if len(options) == 1:
            return _convert(key, value, options[0])
        _fail(key, f"must be {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _build(key, value, tp)
    if origin is list:
        if not isinstance(value, list):
            _fail(key, f"must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, f"must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(f"{key}.{k}", v, val_tp) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _looks_numeric(value):
            _fail(
                key,
                f"must be a number, got the string {value!r}; write it with a dot, e.g. 1.0e-3 (YAML 1.1)",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, f"must be an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {_type_name(tp)} for {key}")


def _build(prefix: str, data: Any, cls: type) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(prefix or "params.yaml", f"must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            _fail(where, f"unknown key (known: {', '.join(sorted(names))})")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    for name in required:
        if name not in data:
            _fail(f"{prefix}.{name}" if prefix else name, "missing; params.yaml must set it")
    values = {
        name: _convert(f"{prefix}.{name}" if prefix else name, data[name], hints[name])
        for name in names
        if name in data
    }
    obj = cls(**values)
    check = getattr(obj, "_check", None)
    if check is not None:
        check(prefix)
    return obj


def params_from_dict(data: dict[str, Any]) -> Params:
    """Build validated :class:`Params` from a parsed ``params.yaml`` mapping.

    Args:
        data: the mapping, as ``yaml.safe_load`` returns it.

    Returns:
        The frozen, validated parameters; missing keys take their defaults.

    Raises:
        ParamsError: naming the first unknown, mistyped or out-of-range key.
    """
    return _build("", data, Params)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: the YAML file.

    Returns:
        The validated :class:`Params`.

    Raises:
        ParamsError: the file is missing, is not YAML, or holds a bad key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"params: {path} not found; run from the project root") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"params: {path} is not valid YAML: {err}") from None
    return params_from_dict(data or {})
