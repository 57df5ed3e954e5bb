"""Typed, validated pipeline parameters, loaded from ``params.yaml``.

Every section of ``params.yaml`` is read into a frozen dataclass. An unknown key, a value of the
wrong type or an impossible value raises :class:`ParamsError` naming the key, before any stage
does work.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from mstagger.core.errors import UserError
from mstagger.protocols import CUSTOM, fixed_values, paper_synonyms, protocol_names, protocols

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
# The files the stages write into paths.metrics (dvc.yaml declares the same names): <stage>.json, and
# evaluate's scores.
METRICS_FILES = (
    *(f"{stage}.json" for stage in ("params", "download", "extract", "prepare", "train", "evaluate")),
    "test.json",
    "test_per_tag.csv",
)
# The pipeline's own files: no output may be, or lie in, one of them.
PROJECT_FILES = (".git", ".dvc", ".dvcignore", "dvc.yaml", "dvc.lock", "params.yaml", "src")
# The rates an MP3 can have (MPEG-1, 2 and 2.5): the only ones the demo's MP3 writer (libsndfile) takes.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# Integers go into NumPy and PyTorch as int64; PyTorch's device index is an int8 (cuda:128 is cuda:-128).
INT64 = (-(2**63), 2**63 - 1)
# Processes one stage may start (decoding workers, DataLoader workers, trainers): any count a machine
# can run, and far below the thousands whose start alone would exhaust it. Counts do not change the
# results, so a cap that does not depend on the machine keeps params.yaml portable.
MAX_PROCESSES = 512
DEVICE = re.compile(r"auto|cpu|cuda|cuda:(0|[1-9][0-9]{0,2})")
MAX_CUDA_INDEX = 127


class ParamsError(UserError, ValueError):
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
        overlaps(self, key)


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
        if self.sample_rate not in MP3_SAMPLE_RATES:
            rates = ", ".join(map(str, MP3_SAMPLE_RATES))
            _fail(
                f"{key}.sample_rate", f"must be a rate an MP3 can have ({rates} Hz), got {self.sample_rate}"
            )
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
        # The wait before attempt n is 2**(n - 2) s: time.sleep takes at most threading.TIMEOUT_MAX.
        max_retries = 2 + int(math.log2(threading.TIMEOUT_MAX))
        if self.retries > max_retries:
            _fail(f"{key}.retries", f"must be at most {max_retries} (the wait doubles), got {self.retries}")
        if not 0 < self.timeout <= threading.TIMEOUT_MAX:  # a socket takes no longer timeout
            _fail(
                f"{key}.timeout",
                f"must be positive, at most {threading.TIMEOUT_MAX:.0f} s, got {self.timeout}",
            )
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
        if not self.clip_seconds * self.sample_rate / self.hop_length < INT64[1]:
            _fail(
                f"{key}.clip_seconds", f"gives more frames than fit a 64-bit integer, got {self.clip_seconds}"
            )
        # extract floors the float64 mel power before the log: a floor of 0 (or below) gives log(0) = -inf
        # out of silence. Any positive float64 floor is usable (its log, at least -745, fits float16).
        if not self.log_floor > 0:
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
        if not 1 <= self.workers <= MAX_PROCESSES:
            _fail(f"{key}.workers", f"must be from 1 to {MAX_PROCESSES} processes, got {self.workers}")
        if self.min_seconds <= 0:
            _fail(f"{key}.min_seconds", f"must be positive, got {self.min_seconds}")


@dataclass(frozen=True)
class TagsParams:
    top_n: int = 50
    synonyms: list[list[str]] = field(default_factory=paper_synonyms)  # the paper's 29 groups

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
    protocol: str = "pons"
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
        if self.protocol not in protocol_names():
            _fail("protocol", f"must be one of {', '.join(protocol_names())}, got {self.protocol!r}")
        self._check_protocol_keys()
        if self.seed < 0:  # at most INT64's: train seeds torch with seed + 1,000,003 x rank (< 2**64)
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
        match = DEVICE.fullmatch(self.device)
        if not match or int(match.group(1) or 0) > MAX_CUDA_INDEX:
            _fail(
                "device",
                f"must be auto, cpu, cuda or cuda:N (N from 0 to {MAX_CUDA_INDEX}), got {self.device!r}",
            )
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
        if not 0 <= self.num_workers <= MAX_PROCESSES:
            _fail("num_workers", f"must be from 0 to {MAX_PROCESSES} processes, got {self.num_workers}")
        if self.data_on_device not in (True, False, "auto"):
            _fail("data_on_device", f"must be auto, true or false, got {self.data_on_device!r}")
        if self.compile not in COMPILE_MODES:
            _fail("compile", f"must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if not 1 <= self.nproc_per_node <= MAX_PROCESSES:
            _fail("nproc_per_node", f"must be from 1 to {MAX_PROCESSES} processes, got {self.nproc_per_node}")
        overlaps(self.paths, cache_dir=self.download.cache_dir)

    def _check_protocol_keys(self) -> None:
        """Under a named protocol, ``tags.*`` and ``split.*`` keep their defaults or the protocol's values.

        ``params.yaml`` always holds those sections (``dvc exp run -S`` edits existing keys), so a key
        counts as set when its value differs from the default; a set key that differs from what the
        protocol fixes would be silently ignored, so it is an error naming both keys.
        """
        if self.protocol == CUSTOM:
            return
        fixed = fixed_values(protocols()[self.protocol])
        defaults = {"tags": TagsParams(), "split": SplitParams()}
        for key, wanted in fixed.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value in (getattr(defaults[section], name), wanted):
                continue
            shown = f"{len(value)} synonym groups" if name == "synonyms" else repr(value)
            if wanted is None:
                fixes = "its folder split uses no sizes"
            elif name == "synonyms":
                fixes = f"it merges {len(wanted)} synonym groups" if wanted else "it merges no synonyms"
            else:
                fixes = f"it fixes {wanted!r}"
            _fail(
                key,
                f"{shown} conflicts with protocol: {self.protocol} ({fixes}); set protocol: custom to "
                f"use {section}.*, or put {key} back to its default",
            )


def _norm(path: str) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(path))


def _owned(paths: PathsParams, cache_dir: str | None = None) -> dict[str, list[PurePosixPath]]:
    """What each path key claims, by key: a folder and all below it, or a file (nothing may lie below).

    A whole folder claims itself; ``model`` its file; ``checkpoint`` its file and the ``.set-aside``
    copy train keeps of one it cannot resume; ``metrics`` only the files the stages write into it
    (``train_log`` may lie in it); ``download.cache_dir`` its folder.
    """
    owned = {"metrics": [_norm(paths.metrics) / name for name in METRICS_FILES]}
    owned.update({name: [_norm(getattr(paths, name))] for name in WHOLE_FOLDERS})
    owned["model"] = [_norm(paths.model)]
    owned["checkpoint"] = [_norm(paths.checkpoint), _norm(paths.checkpoint + ".set-aside")]
    if cache_dir is not None:
        owned["download.cache_dir"] = [_norm(cache_dir)]
    return {name if "." in name else f"paths.{name}": claims for name, claims in owned.items()}


def overlaps(paths: PathsParams, key: str = "paths", cache_dir: str | None = None) -> None:
    """No two outputs name the same file or one inside the other, and none is one of the project's files.

    Raises:
        ParamsError: naming the later key of the first clash and the earlier one.
    """
    owned = _owned(paths, cache_dir)
    for name, claims in owned.items():
        for claim in claims:
            if claim.parts[0] in PROJECT_FILES:
                _fail(
                    name, f"{claim} is, or lies in, the project's own {claim.parts[0]}; choose another path"
                )
    metrics = _norm(paths.metrics)  # a folder of files of several stages: it may hold other outputs
    names = list(owned)
    for j, later in enumerate(names):
        for earlier in names[:j]:
            for a in owned[earlier] + ([metrics] if earlier == "paths.metrics" else []):
                for b in owned[later] + ([metrics] if later == "paths.metrics" else []):
                    what = earlier if a == metrics or earlier != "paths.metrics" else f"{earlier}'s {a.name}"
                    if a == b:
                        clash = f"{b} is also {what}"
                    elif a in b.parents and a != metrics:
                        clash = f"{b} lies in {what} ({a})"
                    elif b in a.parents and b != metrics:
                        clash = f"{b} holds {what} ({a})"
                    else:
                        continue
                    _fail(later, f"{clash}; every output needs a path of its own, outside the others")


def _float32(value: float) -> float:
    """``value`` rounded to float32 (inf when it overflows)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, f"must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if not math.isfinite(number):  # no stage has a use for nan or inf
            _fail(key, f"must be a finite number, got {value!r}")
        return number
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, f"must be an integer, got {value!r}")
        if not INT64[0] <= value <= INT64[1]:
            _fail(key, f"must fit in 64 bits (NumPy and PyTorch take no more), got {value}")
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


def section_from_dict(key: str, data: Any, cls: type) -> Any:
    """Build and validate one section (e.g. ``spectrogram`` into :class:`SpectrogramParams`).

    Raises:
        ParamsError: naming ``key.<field>`` of the first unknown, mistyped or out-of-range field.
    """
    return _build(key, data, cls)


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


def read_yaml(text: str, path: str | Path) -> Any:
    """Parse ``params.yaml`` exactly as DVC 3 does, so both see the same values.

    DVC reads params files with ``ruamel.yaml``'s safe loader (``dvc.utils.serialize.parse_yaml``):
    YAML 1.2, where ``010`` is ten and ``1:00`` a string (YAML 1.1 and PyYAML read 8 and 60), and a
    duplicate key is an error, not "the last one wins".

    Raises:
        ParamsError: the text is not valid YAML, or holds a key twice.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as err:
        mark = err.problem_mark
        where = f" (line {mark.line + 1})" if mark else ""
        raise ParamsError(
            f"params: {path}: {err.problem}{where}; DVC refuses such a file: keep one"
        ) from None
    except YAMLError as err:
        raise ParamsError(f"params: {path} is not valid YAML: {' '.join(str(err).split())}") from None


# A stand-in for ``paths`` when a partial file (a command that writes nothing) leaves it out.
_NO_PATHS = {f.name: f.name for f in fields(PathsParams)}


def default_params() -> Params:
    """Every key at its default (``paths`` a stand-in): for commands that read and write no pipeline path."""
    return params_from_dict({"paths": _NO_PATHS})


def load_params(path: str | Path = PARAMS_FILE, *, partial: bool = False) -> Params:
    """Read and validate ``params.yaml`` (read as DVC reads it, :func:`read_yaml`).

    Args:
        path: the YAML file.
        partial: the file may set only some keys; the others take their defaults (``paths``, which has
            none, a stand-in: for commands that read and write no pipeline path).

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
    data = read_yaml(text, path)
    if partial and isinstance(data, dict | None):
        data = {"paths": _NO_PATHS, **(data or {})}
    return params_from_dict(data or {})


def find_params_file(start: str | Path | None = None) -> Path | None:
    """The project's ``params.yaml``: in ``start`` (default: the current folder) or its nearest parent.

    Returns:
        The file, or None when neither ``start`` nor a parent holds one.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    return next((d / PARAMS_FILE for d in (here, *here.parents) if (d / PARAMS_FILE).is_file()), None)


def project_model(how_to_name: str) -> Path:
    """The trained model of the project around the current folder: ``paths.model`` of its params.yaml.

    Args:
        how_to_name: how the command names a model, for the error (``--model PATH``).

    Raises:
        ParamsError: no params.yaml here or in a parent folder (the message says how to name the
            model), or the file holds a bad key.
    """
    found = find_params_file()
    if found is None:
        raise ParamsError(
            f"no model named and no {PARAMS_FILE} in {Path.cwd()} or a parent folder to find the "
            f"project's; name it: {how_to_name} (the pipeline writes <project>/models/model.pt)"
        )
    return found.parent / load_params(found).paths.model
