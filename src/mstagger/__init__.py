"""mstagger: a reproducible multi-scale CNN music auto-tagger (Dabral et al. 2018) as a DVC pipeline.

The Python API (:mod:`mstagger.api`), loaded on first use so that ``import mstagger`` stays light:
``mstagger.load_model(path)`` returns a :class:`~mstagger.api.Model` whose ``tag(...)`` tags files,
lists of files or arrays of samples.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["AudioError", "Model", "load_model"]

if TYPE_CHECKING:
    from mstagger.api import Model, load_model
    from mstagger.data.audio import AudioError


def __getattr__(name: str) -> object:
    if name in ("Model", "load_model"):
        from mstagger import api

        return getattr(api, name)
    if name == "AudioError":
        from mstagger.data.audio import AudioError

        return AudioError
    raise AttributeError(f"module 'mstagger' has no attribute {name!r}")
