"""``mstagger info [MODEL]``: what a model bundle knows about itself.

The data it was trained on (and a warning when that is the synthetic demo), the protocol its scores
are measured on (``params.yaml`` ``protocol``; a bundle from before protocols records none), the split,
the training run (epochs, the kept epoch and its validation scores, precision, git revision), its
input, and its tags with their decision thresholds. The bundle cannot know its test scores
(``evaluate`` runs after it is written); they are shown when ``dvc.lock`` records that
``metrics/test.json`` was computed from this very file (same MD5), and said to be unknown otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mstagger.commands.parser import Parser
from mstagger.core.disk import file_digest, human_size
from mstagger.core.errors import guarded
from mstagger.evaluation.scores import DEFAULT_THRESHOLD, MIN_POSITIVES
from mstagger.inference.bundle import FORMAT, Bundle, load_bundle
from mstagger.inference.library import model_id
from mstagger.params import project_model
from mstagger.protocols import CUSTOM, protocols

LOCK_FILE = "dvc.lock"


def evaluated_scores(model: str | Path, search: list[Path] | None = None) -> tuple[dict | None, str]:
    """The test scores ``evaluate`` computed from exactly this model file, if ``dvc.lock`` says so.

    Args:
        model: the bundle file.
        search: folders where to look for ``dvc.lock`` (default: the current folder, then the model's
            folder and its parents).

    Returns:
        (the content of the ``test.json`` that ``evaluate`` wrote from this file, or None; where it came
        from, or why the scores are unknown).
    """
    model = Path(model).resolve()
    folders = search if search is not None else [Path.cwd(), *model.parents]
    lock = next((f / LOCK_FILE for f in folders if (f / LOCK_FILE).is_file()), None)
    if lock is None:
        return None, "no dvc.lock found beside the model"
    try:
        stage = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}).get("evaluate", {})
    except (OSError, yaml.YAMLError) as err:
        return None, f"{lock} cannot be read ({err})"
    root = lock.parent
    md5 = file_digest(model, "md5")
    if not any((root / d["path"]).resolve() == model and d.get("md5") == md5 for d in stage.get("deps", [])):
        return None, f"{lock} records no evaluation of this file; run `dvc repro evaluate`"
    for out in stage.get("outs", []):
        path = root / out["path"]
        if path.name == "test.json" and path.is_file() and out.get("md5") == file_digest(path, "md5"):
            return json.loads(path.read_text(encoding="utf-8")), str(path.relative_to(root))
    return None, f"the test scores that {lock} records are not in the workspace; run `dvc repro evaluate`"


def _protocol(params: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """(protocol name or None when not recorded, what it is, its split method) from a bundle's params."""
    name = params.get("protocol")
    custom_split = params.get("split", {}).get("method")
    if name is None:
        return None, "not recorded (the bundle predates protocols: its tags.* and split.*)", custom_split
    if name == CUSTOM or name not in protocols():
        return name, "tags.* and split.* of its params", custom_split
    return name, protocols()[name].summary, protocols()[name].method


def describe(bundle: Bundle, path: Path) -> dict[str, Any]:
    """Everything ``info`` reports, as plain data (what ``--json`` prints)."""
    params, training = bundle.params, bundle.training
    protocol, protocol_summary, split = _protocol(params)
    test, test_source = evaluated_scores(path)
    spec = bundle.spectrogram
    # significant digits, not decimals: a threshold of 1e-17 is not 0
    thresholds = None if bundle.thresholds is None else [float(f"{t:.6g}") for t in bundle.thresholds]
    return {
        "model": str(path),
        "format": FORMAT,
        "id": model_id(path),
        "bytes": path.stat().st_size,
        "dataset": params.get("dataset"),
        "protocol": protocol,
        "protocol_summary": protocol_summary,
        "split": split,
        "seed": params.get("seed"),
        "epochs": training.get("epochs"),
        "best_epoch": training.get("best_epoch"),
        "validation": {k: training.get(f"val_{k}") for k in ("roc_auc", "pr_auc", "loss")},
        "test": test,
        "test_source": test_source,
        "precision": bundle.precision,
        "git_rev": bundle.git_rev,
        "weights_sha256": bundle.weights_sha256,
        "input": {
            "sample_rate": spec.sample_rate,
            "n_mels": spec.n_mels,
            "n_frames": spec.n_frames,
            "window_seconds": round((spec.n_frames - 1) * spec.hop_length / spec.sample_rate, 3),
        },
        "tags": list(bundle.tags),
        "thresholds": thresholds,
        "thresholds_default": training.get("thresholds_default"),
        "thresholds_fallback": training.get("thresholds_fallback"),  # tag names; None: not recorded
    }


def _score(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def format_info(info: dict[str, Any]) -> str:
    """The human-readable report of :func:`describe`'s data."""
    dataset = info["dataset"]
    if dataset == "demo":
        dataset = "demo: the synthetic demo dataset (its tags are not meaningful on real music)"
    val = info["validation"]
    lines = [
        f"{info['model']}  ({info['format']}, id {info['id']}, {human_size(info['bytes'])})",
        f"  dataset        {dataset}",
        f"  protocol       {info['protocol'] or 'custom'}: {info['protocol_summary']}",
        f"  split          {info['split']} (seed {info['seed']})",
        f"  training       {info['epochs']} epochs, kept epoch {info['best_epoch']}: validation ROC-AUC "
        f"{_score(val['roc_auc'])}, PR-AUC {_score(val['pr_auc'])}; precision {info['precision']}",
        f"  git revision   {info['git_rev']}",
        f"  weights        sha256 {info['weights_sha256']}",
    ]
    test = info["test"]
    if test is None:
        lines.append(f"  test scores    unknown: {info['test_source']}")
    else:
        decided = test.get("at_thresholds") or {}
        lines.append(
            f"  test scores    ROC-AUC {_score(test.get('roc_auc'))}, PR-AUC {_score(test.get('pr_auc'))}, "
            f"F1 micro {_score(decided.get('f1_micro'))}, macro {_score(decided.get('f1_macro'))} "
            f"({test.get('n_clips')} clips; {info['test_source']})"
        )
    spec = info["input"]
    lines.append(
        f"  input          {spec['n_mels']} mel bands x {spec['n_frames']} frames at "
        f"{spec['sample_rate']} Hz (windows of {spec['window_seconds']} s)"
    )
    if info["thresholds"] is None:
        lines.append(f"  tags ({len(info['tags'])}, no decision thresholds)")
        lines.extend(f"    {tag}" for tag in info["tags"])
        return "\n".join(lines)
    fallback = info.get("thresholds_fallback")
    default = info["thresholds_default"]
    if fallback is not None:
        note = f"; {len(fallback)} marked * fell back to {DEFAULT_THRESHOLD}"
    elif default is not None:
        note = f"; {default} without a validation positive, at {DEFAULT_THRESHOLD}"
    else:
        note = ""
    lines.append(f"  tags ({len(info['tags'])}) and thresholds (chosen on the validation split for F1{note})")
    width = max(map(len, info["tags"]))
    marked = set(fallback or ())
    lines.extend(
        f"    {tag:<{width}}  {t:<9.3g}{' *' if tag in marked else ''}".rstrip()
        for tag, t in zip(info["tags"], info["thresholds"], strict=True)
    )
    if marked:
        lines.append(
            f"  * fallback: under {MIN_POSITIVES} validation positives, or no threshold beat chance; "
            "a bigger validation split helps"
        )
    return "\n".join(lines)


@guarded
def main(argv: list[str] | None = None) -> int:
    """``mstagger info [MODEL] [--json]``: print what the bundle knows. Returns 0, or 2 on a bad model."""
    parser = Parser(prog="mstagger info", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="model bundle (default: paths.model of the params.yaml here or in a parent folder)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    path = args.model if args.model is not None else project_model("mstagger info PATH")
    info = describe(load_bundle(path), path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
