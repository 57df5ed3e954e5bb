"""mstagger: a reproducible multi-scale CNN music auto-tagger (Dabral et al. 2018) as a DVC pipeline."""

__version__ = "0.1.0"
