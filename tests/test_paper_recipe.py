"""The documented one-line paper run applies exactly the paper's recipe (the original code's settings)."""

import itertools
import re
import shlex
from pathlib import Path

import yaml

from mstagger.data.labels import recipe
from mstagger.params import params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str, doc: str = "README.md") -> list[str]:
    """The `dvc exp run` line of the README (or another document) that contains ``marker``."""
    lines = [ln.strip() for ln in (ROOT / doc).read_text().splitlines()]
    found = [ln for ln in lines if ln.startswith("dvc exp run") and marker in ln]
    assert len(found) == 1, f"expected one README line with {marker!r}, found {found}"
    return shlex.split(found[0])


def apply_overrides(args: list[str], params: dict) -> dict:
    """Apply `-S key=value` overrides the way `dvc exp run -S` does (dotted keys, YAML values)."""
    for flag, value in itertools.pairwise(args):
        if flag != "-S":
            continue
        key, raw = value.split("=", 1)
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        assert leaf in node, f"override {key} names no existing key"
        node[leaf] = yaml.safe_load(raw)
    return params


def test_the_paper_command_gives_the_papers_recipe():
    args = readme_command("-n paper", doc="docs/protocols.md")
    p = params_from_dict(apply_overrides(args, yaml.safe_load((ROOT / "params.yaml").read_text())))
    rules = recipe(p.protocol, p.tags, p.split)
    # Data: MTAT, random clip-level split with seed 1337, valid 2000, test the rest, train 18000.
    assert p.dataset == "mtat" and p.protocol == "paper" and rules.split_seed == 1337
    split = rules.split_for(25_860)  # MTAT after the 3 empty clips
    assert (split.method, split.valid_size, split.test_size) == ("random", 2000, 5860)
    assert 25_860 - split.valid_size - split.test_size == 18_000
    # Features: librosa defaults at 11025 Hz, natural log of max(mel, 1e-20), 628 frames.
    s = p.spectrogram
    assert (s.sample_rate, s.n_fft, s.hop_length, s.n_mels, s.log_floor) == (11025, 2048, 512, 128, 1e-20)
    assert s.n_frames == 628
    # Tags: the 29 synonym groups merged (test_params checks them against the original code), top 50.
    assert len(rules.synonyms) == 29 and rules.top_n == 50 and rules.tag_list is None
    # Optimiser and schedule: Adam 1e-3, no L2, batch 32, 40 epochs, /10 after 20, 30, 35; fp32.
    assert (p.lr, p.weight_decay, p.batch_size, p.epochs) == (1e-3, 0.0, 32, 40)
    assert (p.lr_milestones, p.lr_gamma) == ([20, 30, 35], 0.1)
    assert p.precision == "fp32"
    # BatchNorm keeps the paper's running averages (momentum 0.01), no re-estimation.
    assert p.bn_recalibration_clips == 0
    # The epoch with the best validation ROC-AUC is kept.
    assert p.selection_tolerance == 0


def test_the_recommended_run_is_mtat_on_the_folder_split():
    args = readme_command("-n pons")
    p = params_from_dict(apply_overrides(args, yaml.safe_load((ROOT / "params.yaml").read_text())))
    assert (
        p.dataset == "mtat"
        and p.protocol == "pons"
        and recipe(p.protocol, p.tags, p.split).split.method == "folder"
    )


def test_every_readme_exp_run_override_names_a_real_key():
    text = (ROOT / "README.md").read_text()
    for line in re.findall(r"^dvc exp run .*$", text, flags=re.M):
        apply_overrides(shlex.split(line), yaml.safe_load((ROOT / "params.yaml").read_text()))
