"""Tests of the evaluate stage and its figures (mstagger.evaluation.plots) on tiny synthetic data."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import merged, repo_params_dict
from mstagger import evaluate as ev
from mstagger.core.errors import UserError
from mstagger.core.outputs import MARKER
from mstagger.evaluation.plots import PLOT_FILES, plot_training, select_curve_tags

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAGS = ["loud", "bright", "absent_in_test", "everywhere_in_test", "unseen_in_train"]
N_TRAIN, N_VALID, N_TEST = 48, 8, 32


def make_data(seed: int = 0, n_mels: int = 6, n_frames: int = 12):
    """Synthetic clips whose first two bands carry the first two tags; the last band's first frame holds
    the row number, so an oracle predictor can look the labels up.

    Tags: ``absent_in_test`` has no positive test clip, ``everywhere_in_test`` no negative one,
    ``unseen_in_train`` no positive training clip.
    """
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VALID + N_TEST
    split = np.array(["train"] * N_TRAIN + ["valid"] * N_VALID + ["test"] * N_TEST)
    is_test, is_train = split == "test", split == "train"
    labels = np.zeros((n, len(TAGS)), dtype=np.uint8)
    labels[:, 0] = rng.random(n) < 0.5
    labels[:, 1] = rng.random(n) < 0.4
    labels[:, 2] = (rng.random(n) < 0.3) & ~is_test
    labels[:, 3] = is_test | (rng.random(n) < 0.5)
    labels[:, 4] = (rng.random(n) < 0.3) & ~is_train
    mel = rng.normal(-5.0, 1.0, size=(n, n_mels, n_frames))
    mel[:, 0, :] += 3.0 * labels[:, [0]]
    mel[:, 1, :] += 3.0 * labels[:, [1]]
    mel[:, -1, 0] = np.arange(n)
    return mel.astype(np.float16), labels, split


def oracle(labels: np.ndarray):
    """A predictor that reads the row number from the spectrogram and returns the true labels."""

    def predict(mels: np.ndarray) -> np.ndarray:
        assert mels.dtype == np.float32 and mels.ndim == 3
        return labels[mels[:, -1, 0].astype(int)].astype(np.float32)

    return predict


def run(tmp_path, mel, labels, split, predict, **kw):
    return ev.evaluate(mel, labels, split, TAGS, predict, tmp_path / "metrics", tmp_path / "plots", **kw)


def test_perfect_predictor_and_undefined_tags(tmp_path):
    mel, labels, split = make_data()
    result = run(tmp_path, mel, labels, split, oracle(labels), curve_tags=10, chunk=5)

    on_disk = json.loads((tmp_path / "metrics" / "test.json").read_text())
    assert on_disk == result
    assert list(result) == [
        "protocol",
        "roc_auc",
        "pr_auc",
        "n_clips",
        "n_tags_scored",
        "n_tags_excluded",
        "baseline",
    ]
    assert result["protocol"] is None  # not given: unknown
    assert set(result["baseline"]) == {"roc_auc", "pr_auc"}
    assert result["roc_auc"] == 1.0 and result["pr_auc"] == 1.0
    assert result["n_clips"] == N_TEST
    # absent_in_test (no positive) and everywhere_in_test (no negative) are excluded and counted.
    assert result["n_tags_scored"] == 3 and result["n_tags_excluded"] == 2
    # The band-energy baseline separates loud/bright well but is no oracle.
    assert 0.6 < result["baseline"]["roc_auc"] < 1.0

    table = pd.read_csv(tmp_path / "metrics" / "test_per_tag.csv")
    assert list(table.columns) == [
        "tag",
        "positives",
        "roc_auc",
        "pr_auc",
        "baseline_roc_auc",
        "baseline_pr_auc",
    ]
    assert list(table["tag"]) == TAGS
    test = split == "test"
    assert list(table["positives"]) == labels[test].sum(axis=0).tolist()
    undefined = table.set_index("tag").loc[["absent_in_test", "everywhere_in_test"]]
    assert undefined[["roc_auc", "pr_auc", "baseline_roc_auc", "baseline_pr_auc"]].isna().all().all()
    assert table.set_index("tag").loc["loud", "baseline_roc_auc"] > 0.9
    # A constant baseline score (no positive training clip) ranks nothing: AUC 0.5.
    assert table.set_index("tag").loc["unseen_in_train", "baseline_roc_auc"] == pytest.approx(0.5)


def test_random_predictor_scores_about_half(tmp_path):
    rng = np.random.default_rng(1)
    n, n_tags = 1200, 4
    split = np.array(["train"] * 200 + ["test"] * (n - 200))
    labels = (rng.random((n, n_tags)) < 0.3).astype(np.uint8)
    mel = rng.normal(size=(n, 4, 6)).astype(np.float16)
    noise = np.random.default_rng(2)
    result = ev.evaluate(
        mel,
        labels,
        split,
        [f"t{j}" for j in range(n_tags)],
        lambda m: noise.random((len(m), n_tags)),
        tmp_path / "m",
        tmp_path / "p",
    )
    assert result["roc_auc"] == pytest.approx(0.5, abs=0.04)
    assert result["pr_auc"] == pytest.approx(0.3, abs=0.04)  # average precision of noise = prevalence
    assert result["baseline"]["roc_auc"] == pytest.approx(0.5, abs=0.06)
    assert result["n_tags_excluded"] == 0


def test_plot_files(tmp_path):
    mel, labels, split = make_data()
    run(tmp_path, mel, labels, split, oracle(labels), curve_tags=2)
    plots = tmp_path / "plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted([*PLOT_FILES, MARKER])  # evaluate's own folder
    for name in PLOT_FILES:
        if name.endswith(".png"):
            assert (plots / name).read_bytes()[:8] == PNG_SIGNATURE, name

    table = pd.read_csv(tmp_path / "metrics" / "test_per_tag.csv")
    expected = select_curve_tags(table, 2)
    scorable = table.dropna(subset=["roc_auc"]).set_index("tag")["positives"]
    assert len(expected) == 2 and set(expected) <= set(scorable.index)
    assert scorable[expected].min() >= scorable.drop(expected).max()
    roc = pd.read_csv(plots / "roc.csv")
    assert list(roc.columns) == ["tag", "fpr", "tpr"]
    assert list(dict.fromkeys(roc["tag"])) == expected
    for _, part in roc.groupby("tag"):
        assert part["fpr"].is_monotonic_increasing and part["tpr"].is_monotonic_increasing
        assert part["tpr"].iloc[-1] == 1.0
    pr = pd.read_csv(plots / "pr.csv")
    assert list(pr.columns) == ["tag", "recall", "precision"]
    assert list(dict.fromkeys(pr["tag"])) == expected
    assert all(part["recall"].is_monotonic_increasing for _, part in pr.groupby("tag"))
    per_tag = pd.read_csv(plots / "per_tag_auc.csv")
    assert list(per_tag.columns) == ["tag", "roc_auc", "baseline_roc_auc"]  # the baseline beside each tag
    assert set(per_tag["tag"]) == {"loud", "bright", "unseen_in_train"}


def test_curve_data_is_thinned(tmp_path):
    rng = np.random.default_rng(4)
    n = 3000
    split = np.array(["train"] * 100 + ["test"] * (n - 100))
    labels = (rng.random((n, 1)) < 0.5).astype(np.uint8)
    mel = rng.normal(size=(n, 2, 3)).astype(np.float16)
    ev.evaluate(mel, labels, split, ["t"], lambda m: rng.random((len(m), 1)), tmp_path / "m", tmp_path / "p")
    pr = pd.read_csv(tmp_path / "p" / "pr.csv")
    assert 100 < len(pr) <= 500
    assert pr["recall"].iloc[0] == 0.0 and pr["recall"].iloc[-1] == 1.0


def write_tsv(path, name, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step\t" + name + "\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))


def test_plot_training_with_and_without_logs(tmp_path):
    log_dir = tmp_path / "train"
    out = tmp_path / "training.png"
    assert plot_training(log_dir, out) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert plot_training(None, tmp_path / "none.png") == 0
    assert (tmp_path / "none.png").read_bytes()[:8] == PNG_SIGNATURE

    metrics = log_dir / "plots" / "metrics"
    write_tsv(metrics / "train" / "loss.tsv", "loss", [0.7, 0.5, 0.4])
    write_tsv(metrics / "val" / "loss.tsv", "loss", [0.8, 0.6, 0.55])
    write_tsv(metrics / "val" / "roc_auc.tsv", "roc_auc", [0.7, 0.8, 0.85])
    write_tsv(metrics / "val" / "pr_auc.tsv", "pr_auc", [0.2, 0.3, 0.35])
    write_tsv(metrics / "lr.tsv", "lr", [1e-3, 1e-3, 1e-4])
    (metrics / "val" / "empty.tsv").write_text("step\tempty\n")  # header only: skipped
    out.unlink()
    assert plot_training(log_dir, out) == 5
    assert out.read_bytes()[:8] == PNG_SIGNATURE

    # Only some curves logged: still drawn.
    for tsv in [metrics / "train" / "loss.tsv", metrics / "lr.tsv", metrics / "val" / "pr_auc.tsv"]:
        tsv.unlink()
    assert plot_training(log_dir, out) == 2


def test_align_predict_reorders_or_refuses():
    def predict(m):
        return np.tile(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), (len(m), 1))

    mels = np.zeros((2, 3, 4), dtype=np.float32)
    assert ev.align_predict(predict, ["a", "b", "c"], ["a", "b", "c"]) is predict
    reordered = ev.align_predict(predict, ["a", "b", "c"], ["c", "a", "b"])
    np.testing.assert_array_equal(reordered(mels)[0], [3.0, 1.0, 2.0])
    with pytest.raises(UserError, match=r"other tags.*missing \['d'\].*extra \['c'\]"):
        ev.align_predict(predict, ["a", "b", "c"], ["a", "b", "d"])


def test_bad_network_output_is_a_user_error(tmp_path):
    mel, labels, split = make_data()

    def nan_predict(m):
        out = np.full((len(m), len(TAGS)), 0.5, dtype=np.float32)
        out[0, 0] = np.nan
        return out

    with pytest.raises(UserError, match="NaN or infinite"):
        run(tmp_path, mel, labels, split, nan_predict)
    with pytest.raises(UserError, match="shape"):
        run(tmp_path, mel, labels, split, lambda m: np.zeros((len(m), 2)))
    assert not (tmp_path / "metrics" / "test.json").exists()


def test_empty_test_split_and_misaligned_inputs(tmp_path):
    mel, labels, split = make_data()
    with pytest.raises(UserError, match="test split is empty"):
        run(tmp_path, mel, labels, np.where(split == "test", "valid", split), oracle(labels))
    with pytest.raises(UserError, match="inputs disagree"):
        run(tmp_path, mel, labels[:-1], split, oracle(labels))


def test_all_tags_undefined_writes_null_scores(tmp_path):
    mel, labels, split = make_data()
    only = [2, 3]  # absent_in_test, everywhere_in_test
    tags = [TAGS[j] for j in only]
    result = ev.evaluate(
        mel, labels[:, only], split, tags, lambda m: np.zeros((len(m), 2)), tmp_path / "m", tmp_path / "p"
    )
    assert result["roc_auc"] is None and result["baseline"]["pr_auc"] is None
    assert result["n_tags_scored"] == 0 and result["n_tags_excluded"] == 2
    assert json.loads((tmp_path / "m" / "test.json").read_text())["roc_auc"] is None
    assert (tmp_path / "p" / "roc.png").read_bytes()[:8] == PNG_SIGNATURE


def write_stage_inputs(root, mel, labels, split):
    features, prepared = root / "data" / "features", root / "data" / "prepared"
    features.mkdir(parents=True)
    prepared.mkdir(parents=True)
    np.save(features / "mel.npy", mel)
    clip_ids = np.arange(len(mel)) * 3 + 2
    pd.DataFrame({"row": np.arange(len(mel)), "clip_id": clip_ids, "mp3_path": "x.mp3"}).to_csv(
        features / "index.csv", index=False
    )
    np.save(prepared / "labels.npy", labels)
    tags = {"tags": [{"name": t, "count": int(c)} for t, c in zip(TAGS, labels.sum(axis=0), strict=True)]}
    (prepared / "tags.json").write_text(json.dumps(tags))
    pd.DataFrame({"clip_id": clip_ids, "split": split}).to_csv(prepared / "split.csv", index=False)
    return features, prepared


def test_load_inputs_checks_files(tmp_path):
    mel, labels, split = make_data()
    features, prepared = write_stage_inputs(tmp_path, mel, labels, split)
    inputs = ev.load_inputs(features, prepared)
    assert isinstance(inputs.mel, np.memmap) and inputs.mel.shape == mel.shape
    assert inputs.tags == TAGS and list(inputs.split) == list(split)

    np.save(prepared / "labels.npy", labels[:-1])
    with pytest.raises(UserError, match="disagree on the number of clips"):
        ev.load_inputs(features, prepared)
    np.save(prepared / "labels.npy", labels)
    pd.DataFrame({"clip_id": np.arange(len(mel)), "split": split}).to_csv(prepared / "split.csv", index=False)
    with pytest.raises(UserError, match="not aligned"):
        ev.load_inputs(features, prepared)
    (prepared / "split.csv").unlink()
    with pytest.raises(UserError, match=r"split\.csv not found; run `dvc repro prepare`"):
        ev.load_inputs(features, prepared)
    (features / "mel.npy").unlink()
    with pytest.raises(UserError, match=r"mel\.npy not found; run `dvc repro extract`"):
        ev.load_inputs(features, prepared)


class FakeBundle:
    def __init__(self, labels):
        self.tags = list(reversed(TAGS))  # another order than tags.json: evaluate must realign
        self.params = {"protocol": "won"}  # the params the model was trained with
        self._predict = oracle(labels)

    def predict(self, mels, batch_size=32):
        return self._predict(np.asarray(mels, dtype=np.float32))[:, ::-1]


def test_main_end_to_end(tmp_path, monkeypatch, capsys):
    mel, labels, split = make_data()
    write_stage_inputs(tmp_path, mel, labels, split)
    params = merged(repo_params_dict(), {"device": "cpu", "evaluate": {"curve_tags": 2}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_tsv(tmp_path / "metrics" / "train" / "plots" / "metrics" / "train" / "loss.tsv", "loss", [0.7, 0.5])
    calls = []

    def load_bundle(path, device="cpu"):
        calls.append((str(path), device))
        if not (tmp_path / path).exists():
            raise UserError(f"bundle: {path} not found; run `dvc repro train`")
        return FakeBundle(labels)

    from mstagger.core.runtime import resolve_device

    fake = types.SimpleNamespace(load_bundle=load_bundle, resolve_device=resolve_device)
    monkeypatch.setitem(sys.modules, "mstagger.inference.bundle", fake)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        ev.main()
    assert exit_info.value.code == 2
    assert "error: bundle: models/model.pt not found" in capsys.readouterr().err

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"fake")
    ev.main()
    err = capsys.readouterr().err
    assert calls[-1] == ("models/model.pt", "cpu")
    assert "network" in err and "baseline" in err and f"{N_TEST} test clips" in err
    result = json.loads((tmp_path / "metrics" / "test.json").read_text())
    assert result["roc_auc"] == 1.0 and "seconds" not in result
    assert result["protocol"] == "won"  # the bundle's, where params.yaml says pons: the model decides
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted([*PLOT_FILES, MARKER])


def test_main_with_a_real_bundle(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    from mstagger.inference.bundle import save_bundle
    from mstagger.inference.tagger import Tagger
    from mstagger.model import MultiScaleCNN
    from mstagger.params import SpectrogramParams

    mel, labels, split = make_data(n_mels=16, n_frames=64)
    write_stage_inputs(tmp_path, mel, labels, split)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**repo_params_dict(), "device": "cpu"}))
    torch.manual_seed(0)
    model = MultiScaleCNN(n_tags=len(TAGS), n_mels=16, n_frames=64, hidden=8)
    tagger = Tagger(model, np.zeros(16), np.ones(16))
    path = tmp_path / "models" / "model.pt"
    save_bundle(path, tagger, TAGS, SpectrogramParams(n_mels=16), "fp32", {}, {}, "t")
    monkeypatch.chdir(tmp_path)
    ev.main()
    result = json.loads((tmp_path / "metrics" / "test.json").read_text())
    assert result["n_clips"] == N_TEST and result["n_tags_scored"] == 3
    assert 0.0 <= result["roc_auc"] <= 1.0

    # Features of another geometry than the network was trained on: one clear line, exit status 2.
    np.save(tmp_path / "data" / "features" / "mel.npy", np.zeros((len(mel), 16, 72), dtype=np.float16))
    with pytest.raises(SystemExit) as exit_info:
        ev.main()
    assert exit_info.value.code == 2
    assert "does not fit the features" in capsys.readouterr().err


def test_the_headline_is_short_rounded_and_keeps_the_baseline_in_view():
    from mstagger.evaluate import headline

    full = {
        "roc_auc": 0.892401,
        "pr_auc": 0.716013,
        "baseline": {"roc_auc": 0.841728, "pr_auc": 0.652195, "roc_auc_ci": [0.74, 0.89]},
        "roc_auc_ci": [0.826949, 0.923601],
        "pr_auc_ci": [0.687682, None],
    }
    assert headline(full) == {
        "roc_auc": 0.8924,
        "roc_lo": 0.8269,
        "roc_hi": 0.9236,
        "pr_auc": 0.716,
        "pr_lo": 0.6877,
        "pr_hi": None,
        "baseline_roc": 0.8417,
        "baseline_pr": 0.6522,
        "roc_gain": 0.0507,
    }
    no_intervals = headline({"roc_auc": None, "pr_auc": None, "baseline": {"roc_auc": 0.8, "pr_auc": 0.5}})
    assert no_intervals["roc_lo"] is None and no_intervals["roc_gain"] is None
    assert all(len(name) <= 12 for name in no_intervals)  # dvc exp show prints one column per name
