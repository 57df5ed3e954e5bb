"""`mstagger tags`: merge, rank, split and leakage from MTAT's metadata alone."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from helpers import REPO, SHARED_MTAT, make_fake_project, repo_params_dict
from mstagger.commands import tags as tags_cli

# ----------------------------------------------------------------------------------- mstagger tags


def test_tags_table_and_json(tmp_path, monkeypatch, capsys):
    proj = make_fake_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    ann = str(proj["raw"] / "annotations_final.csv")
    # no params.yaml here: the synonym groups live there, so say where to find them
    assert tags_cli.main(["--annotations", ann]) == 2
    assert "error: params: params.yaml not found; run from the project root" in capsys.readouterr().err
    # the project's params.yaml: the paper's synonym groups name tags this toy file lacks
    assert tags_cli.main(["--annotations", ann, "--params", str(REPO / "params.yaml")]) == 2
    assert "error: params: tags.synonyms[0]: 'beat'" in capsys.readouterr().err

    params = {**repo_params_dict(), "tags": {"top_n": 3, "synonyms": [["guitar", "guitars"]]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rc = tags_cli.main(["--annotations", ann, "--split", "folder", "--top-n", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "20 clips, 5 tags read, 4 after merging synonyms, top 2:" in out
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
    assert set(report) == {"tags", "split_sizes", "leakage"}
    assert len(report["tags"]) == 3 and set(report["tags"][0]) == {"name", "count"}
    assert sum(report["split_sizes"].values()) == 20  # metadata alone: nothing is dropped


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
            "--split",
            "folder",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"tags", "split_sizes", "leakage"}
    assert len(report["tags"]) == 50 and report["tags"][0] == {"name": "guitar", "count": 4861}
    assert report["split_sizes"] == {"train": 18709, "valid": 1825, "test": 5329}  # the 3 empty clips kept
    assert set(report["leakage"]) == {"test_song_in_train", "test_album_in_train", "test_artist_in_train"}
