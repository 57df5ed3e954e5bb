"""The prepare stage end to end on a tiny fake project."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import make_fake_project, make_params, repo_params_dict
from mstagger import prepare as prep
from mstagger.core.errors import UserError
from mstagger.core.outputs import MARKER

# ------------------------------------------------------------------------------------ end to end


def run_prepare(proj: dict, **overrides):
    tags = {"synonyms": [["guitar", "guitars"]], "top_n": 3}
    split = {"method": "random", "valid_size": 3, "test_size": 4}
    params = make_params(tags=tags, split=split, seed=0, protocol="custom", **overrides)
    return prep.prepare(
        proj["raw"],
        proj["features"],
        params.tags,
        params.split,
        params.seed,
        protocol=params.protocol,
        progress=False,
        chunk_clips=4,
    )


@pytest.mark.parametrize("shuffle_index", [False, True])
def test_prepare_end_to_end_aligns_rows_and_drops_skipped(tmp_path, shuffle_index):
    proj = make_fake_project(tmp_path, shuffle_index=shuffle_index)
    result = run_prepare(proj)
    index, cat, values, tags = proj["index"], proj["cat"], proj["values"], proj["tags"]
    assert result.labels.dtype == np.uint8
    assert result.labels.shape == (18, 3)
    assert result.split["clip_id"].tolist() == index["clip_id"].tolist()
    # expected merged labels of the kept clips, counted after dropping the skipped and missing clips
    truth = pd.DataFrame(values, columns=tags, index=cat["clip_id"]).loc[index["clip_id"]]
    truth["guitar"] = truth["guitar"] | truth["guitars"]
    truth = truth.drop(columns="guitars")
    expected_top = sorted(((t, int(truth[t].sum())) for t in truth.columns), key=lambda x: (-x[1], x[0]))[:3]
    assert result.tags == expected_top
    assert np.array_equal(result.labels, truth[[t for t, _ in expected_top]].to_numpy())
    s = result.summary
    assert (s["clips_read"], s["skipped_dropped"], s["not_extracted_dropped"], s["clips_kept"]) == (
        20,
        1,
        1,
        18,
    )
    assert (s["tags_read"], s["synonym_groups_merged"], s["tags_after_merge"], s["tags_kept"]) == (5, 1, 4, 3)
    assert s["split_sizes"] == {"train": 11, "valid": 3, "test": 4}
    # statistics over the training rows only
    mel = np.load(proj["features"] / "mel.npy").astype(np.float64)
    train_rows = index["row"][(result.split["split"] == "train").to_numpy()].to_numpy()
    np.testing.assert_allclose(result.mean, mel[train_rows].mean(axis=(0, 2)), atol=1e-12)
    np.testing.assert_allclose(result.std, mel[train_rows].std(axis=(0, 2)), rtol=1e-10)

    prep.write_outputs(result, tmp_path / "prepared")
    labels = np.load(tmp_path / "prepared" / "labels.npy")
    assert np.array_equal(labels, result.labels)
    tags_json = json.loads((tmp_path / "prepared" / "tags.json").read_text())
    assert tags_json == {"tags": [{"name": n, "count": c} for n, c in expected_top]}
    split_csv = pd.read_csv(tmp_path / "prepared" / "split.csv", dtype=str)
    assert list(split_csv.columns) == ["clip_id", "split"]
    assert split_csv["clip_id"].tolist() == index["clip_id"].tolist()
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["n_clips"] == 11 and len(stats["mean"]) == len(stats["std"]) == 4
    assert result.summary["clips_kept"] == 18
    assert not list((tmp_path / "prepared").glob(".*.tmp"))


def test_prepare_rejects_inconsistent_features(tmp_path):
    proj = make_fake_project(tmp_path)
    np.save(proj["features"] / "mel.npy", np.zeros((5, 4, 6), dtype=np.float16))
    with pytest.raises(UserError, match=r"shape \(5, 4, 6\).*lists 18 clips.*extract"):
        run_prepare(proj)
    (proj["features"] / "index.csv").unlink()
    with pytest.raises(UserError, match=r"index\.csv.*run the extract stage"):
        run_prepare(proj)


def test_prepare_rejects_index_clip_missing_from_annotations(tmp_path):
    proj = make_fake_project(tmp_path)
    index = proj["index"].copy()
    index.loc[0, "clip_id"] = "999"
    index.to_csv(proj["features"] / "index.csv", index=False)
    with pytest.raises(UserError, match="clip 999 is not in"):
        run_prepare(proj)


def test_main_writes_outputs_and_reports_bad_params(tmp_path, monkeypatch, capsys):
    proj = make_fake_project(tmp_path)
    mel = np.load(proj["features"] / "mel.npy")
    mel[:, 1, :] = -46.0  # a mel bin with no energy anywhere
    np.save(proj["features"] / "mel.npy", mel)
    params = {
        **repo_params_dict(),
        "protocol": "custom",
        "seed": 3,
        "tags": {"top_n": 2, "synonyms": [["guitar", "guitars"]]},
        "split": {"method": "song", "valid_size": 2, "test_size": 4},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    prep.main()
    err = capsys.readouterr().err
    # the logger names the stage
    assert "prepare: protocol custom: 20 clips read, 1 skipped by extract dropped" in err
    assert "leakage" in err
    assert "mel bin(s) [1] are constant" in err
    # the counts, sizes, leakage and seconds live in the metrics DVC tracks, not beside the data
    summary = json.loads((tmp_path / "metrics" / "prepare.json").read_text())
    assert summary["stats_over"]["constant_bins"] == [1]
    assert summary["leakage"]["test_song_in_train"] == 0.0 and summary["seconds"] >= 0
    assert summary["clips_kept"] == 18 and summary["split_method"] == "song"
    assert summary["protocol"] == "custom" and summary["protocol_mtat_sizes"] is None
    assert np.load(tmp_path / "data" / "prepared" / "labels.npy").shape == (18, 2)
    assert sorted(p.name for p in (tmp_path / "data" / "prepared").iterdir()) == sorted(
        [MARKER, "labels.npy", "tags.json", "split.csv", "stats.json"]
    )

    params["tags"]["top_n"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        prep.main()
    assert exc.value.code == 2
    assert "error: params: tags.top_n: 10 tags requested but only 4" in capsys.readouterr().err
