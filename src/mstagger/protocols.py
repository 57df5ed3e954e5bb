"""The published MagnaTagATune protocols by name (``params.yaml`` ``protocol``), read from ``protocols.json``.

A protocol fixes what a score is measured on: the tag list (explicitly, in the published order, or the
rule that makes it), the split and the drop rules. ``protocols.json`` beside this module holds them as
data with their sources; this module only reads it. ``custom`` is not in the file: it means the
``tags.*`` and ``split.*`` sections of ``params.yaml``.

This module reads no other part of the package, so that :mod:`mstagger.params` can check a
``protocol`` against it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOLS_FILE = Path(__file__).with_name("protocols.json")
CUSTOM = "custom"


@dataclass(frozen=True)
class Protocol:
    """One named protocol of ``protocols.json``.

    Attributes:
        name: ``paper``, ``pons``, ``won`` or ``lee``.
        summary: one line: what it is.
        users: who measured their published scores on it.
        source: where its tag list and split come from.
        method: the split rule: ``random`` (shuffled with ``seed``) or ``folder`` (0-b / c / d-f).
        train, valid: clip counts of a random split on MTAT (test: the rest); None for a folder split.
        seed: a random split's shuffle seed, fixed so that ``seed`` varies the training, not the split.
        synonyms: synonym groups merged before ranking (empty: none).
        top_n: tags kept.
        tags: the tag list in its published order, or None where the rule (top ``top_n`` by count after
            merging) makes it.
        tags_source: where ``tags`` comes from ("" when None).
        drop_untagged: drop every clip with none of the kept tags.
        drop_clips: further clips dropped, clip id -> ``mp3_path`` (a clip is dropped only where both match,
            so the list never touches another dataset).
        mtat_sizes: train / valid / test on the real MTAT metadata.
    """

    name: str
    summary: str
    users: str
    source: str
    method: str
    train: int | None
    valid: int | None
    seed: int | None
    synonyms: tuple[tuple[str, ...], ...]
    top_n: int
    tags: tuple[str, ...] | None
    tags_source: str
    drop_untagged: bool
    drop_clips: dict[str, str]
    mtat_sizes: dict[str, int]

    @property
    def mtat_clips(self) -> int:
        """Clips of MTAT this protocol splits (after its drops)."""
        return sum(self.mtat_sizes.values())


@functools.cache
def _document() -> dict[str, Any]:
    return json.loads(PROTOCOLS_FILE.read_text(encoding="utf-8"))


def paper_synonyms() -> list[list[str]]:
    """The paper's 29 synonym groups (merged name = the group's first name), a fresh copy."""
    return [list(group) for group in _document()["synonym_groups"]["paper"]["groups"]]


@functools.cache
def protocols() -> dict[str, Protocol]:
    """Every named protocol of ``protocols.json``, in file order."""
    doc = _document()
    out = {}
    for name, spec in doc["protocols"].items():
        tag_list = doc["tag_lists"][spec["tags"]] if spec["tags"] else None
        groups = doc["synonym_groups"][spec["synonyms"]]["groups"] if spec["synonyms"] else []
        clips = doc["clip_lists"][spec["drop_clips"]]["clips"] if spec["drop_clips"] else {}
        split = spec["split"]
        out[name] = Protocol(
            name=name,
            summary=spec["summary"],
            users=spec["users"],
            source=spec["source"],
            method=split["method"],
            train=split.get("train"),
            valid=split.get("valid"),
            seed=split.get("seed"),
            synonyms=tuple(tuple(g) for g in groups),
            top_n=int(spec["top_n"]),
            tags=tuple(tag_list["tags"]) if tag_list else None,
            tags_source=tag_list["source"] if tag_list else "",
            drop_untagged=bool(spec["drop_untagged"]),
            drop_clips=dict(clips),
            mtat_sizes={k: int(v) for k, v in spec["mtat_sizes"].items()},
        )
    return out


def protocol_names() -> tuple[str, ...]:
    """The values ``params.yaml`` ``protocol`` accepts: the named protocols, then ``custom``."""
    return (*protocols(), CUSTOM)


def fixed_values(protocol: Protocol) -> dict[str, Any]:
    """The ``tags.*`` and ``split.*`` values a protocol fixes, as they would read in ``params.yaml`` for MTAT.

    A folder split ignores the sizes, so it fixes none (None).
    """
    random = protocol.method == "random"
    return {
        "tags.top_n": protocol.top_n,
        "tags.synonyms": [list(g) for g in protocol.synonyms],
        "split.method": protocol.method,
        "split.valid_size": float(protocol.valid) if random else None,
        "split.test_size": float(protocol.mtat_sizes["test"]) if random else None,
    }
