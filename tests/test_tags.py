"""`mstagger tags`: merge, rank, split and leakage from MTAT's metadata alone."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from helpers import REPO, SHARED_MTAT, make_fake_project, repo_params_dict
from mstagger.commands import tags as tags_cli

# ----------------------------------------------------------------------------------- mstagger tags


def test_tags_table_and_json(tmp_path, monkeypatch, capsys):
    proj = make_fake_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    ann = str(proj["raw"] / "annotations_final.csv")
    # no params.yaml here: the defaults (protocol pons: the published list, of which the toy file has 4)
    assert tags_cli.main(["--annotations", ann]) == 0
    out = capsys.readouterr().out
    assert out.startswith("protocol pons: 20 clips, dropped none;") and "kept 4:" in out
    assert "left out (no clip has them): classical, techno," in out
    # the project's params.yaml under custom: the paper's synonym groups name tags this toy file lacks,
    # and the error names the file the groups came from
    params_file = REPO / "params.yaml"
    assert tags_cli.main(["--annotations", ann, "--params", str(params_file), "--protocol", "custom"]) == 2
    assert f"error: {params_file}: tags.synonyms[0]: 'beat'" in capsys.readouterr().err

    params = {**repo_params_dict(), "tags": {"top_n": 3, "synonyms": [["guitar", "guitars"]]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "protocol": "custom"}))
    rc = tags_cli.main(["--annotations", ann, "--split", "folder", "--top-n", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "protocol custom: 20 clips, dropped none; 5 tags read, 4 after merging synonyms, kept 2:" in out
    assert "split folder (seed 1337): train" in out and "leakage" in out
    assert re.findall(r"^ +(\d+)  (\S+) +(\d+)$", out, flags=re.M) == [
        ("1", "guitar", "18"),
        ("2", "quiet", "9"),
    ]

    info = str(proj["raw"] / "clip_info_final.csv")
    rc = tags_cli.main(
        ["--annotations", ann, "--clip-info", info, "--json", "--split", "random", "--seed", "1"]
    )
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(report) == {"protocol", "dropped", "tags", "split_sizes", "leakage"}
    assert len(report["tags"]) == 3 and set(report["tags"][0]) == {"name", "count"}
    assert sum(report["split_sizes"].values()) == 20  # not MTAT: no known-empty clip to drop


def test_tags_cli_partial_params_file_and_its_errors(tmp_path, capsys):
    proj = make_fake_project(tmp_path)
    ann = str(proj["raw"] / "annotations_final.csv")
    partial = tmp_path / "mine.yaml"
    partial.write_text(yaml.safe_dump({"protocol": "custom", "tags": {"synonyms": [], "top_n": 2}}))
    assert tags_cli.main(["--annotations", ann, "--params", str(partial), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "custom" and [t["name"] for t in report["tags"]] == ["guitar", "guitars"]
    # a key of the partial file that the protocol fixes: one line naming the file and both keys
    partial.write_text(yaml.safe_dump({"split": {"method": "song"}}))
    assert tags_cli.main(["--annotations", ann, "--params", str(partial)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {partial}: split.method: 'song' conflicts with protocol: pons (it fixes 'folder'); "
        "set protocol: custom to use split.*, or put split.method back to its default"
    ]
    partial.write_text(yaml.safe_dump({"tags": {"top_n": 0}}))
    assert tags_cli.main(["--annotations", ann, "--params", str(partial)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {partial}: tags.top_n: must be at least 1")
    # a flag that a named protocol fixes
    with pytest.raises(SystemExit):
        tags_cli.main(["--annotations", ann, "--protocol", "won", "--split", "song"])
    assert "--split conflicts with protocol won" in capsys.readouterr().err


def test_tags_cli_split_csv_lists_the_kept_clips(tmp_path, capsys):
    proj = make_fake_project(tmp_path)
    ann = str(proj["raw"] / "annotations_final.csv")
    out = tmp_path / "split.csv"
    assert tags_cli.main(["--annotations", ann, "--protocol", "won", "--split-csv", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["clip_id", "split"]
    assert table["split"].value_counts().to_dict() == {k: v for k, v in report["split_sizes"].items() if v}
    # won drops the clips with none of its tags (here: guitars alone); the file lists only the kept ones
    values = pd.DataFrame(proj["values"], columns=proj["tags"], index=proj["cat"]["clip_id"])
    tagged = values[["guitar", "slow", "rock", "quiet"]].max(axis=1) == 1
    assert (~tagged).sum() > 0 and report["dropped"]["untagged"] == (~tagged).sum()
    assert sorted(table["clip_id"]) == sorted(tagged[tagged].index)


def test_tags_bad_file_is_one_error_line(tmp_path, capsys):
    rc = tags_cli.main(["--annotations", str(tmp_path / "nope.csv"), "--params", str(tmp_path / "none.yaml")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "none.yaml" in err[0]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(repo_params_dict()))
    rc = tags_cli.main(["--annotations", str(tmp_path / "nope.csv"), "--params", str(tmp_path / "p.yaml")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: annotations not found: {tmp_path / 'nope.csv'}"


def test_real_tags_cli_json(capsys):
    if not (SHARED_MTAT / "annotations_final.csv").is_file():
        pytest.skip(f"real MTAT metadata not found in {SHARED_MTAT}")
    rc = tags_cli.main(
        [
            "--params",
            str(REPO / "params.yaml"),
            "--annotations",
            str(SHARED_MTAT / "annotations_final.csv"),
            "--clip-info",
            str(SHARED_MTAT / "clip_info_final.csv"),
            "--protocol",
            "custom",
            "--split",
            "folder",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"protocol", "dropped", "tags", "split_sizes", "leakage"}
    assert len(report["tags"]) == 50 and report["tags"][0] == {"name": "guitar", "count": 4860}
    # the pipeline's sizes: MTAT's 3 empty clips, which extract skips, are left out here too
    assert report["dropped"] == {"known_empty": 3, "listed": 0, "untagged": 0}
    assert report["split_sizes"] == {"train": 18706, "valid": 1825, "test": 5329}
    assert set(report["leakage"]) == {"test_song_in_train", "test_album_in_train", "test_artist_in_train"}
