"""A stand-in for dvclive.Live, used by gpu_check.sh only when the real dvclive cannot be imported on
the GPU machine. It writes the same files the train stage's checkpoint snapshots (metrics.json and
plots/metrics/<name>.tsv), so resume works; it is not dvclive and says so on stderr."""

import json
import sys
from pathlib import Path

print("dvclive: STUB in use (the real dvclive was not importable)", file=sys.stderr)


class Live:
    def __init__(self, dir="dvclive", dvcyaml=None, report=None, save_dvc_exp=False, resume=False, **_):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.summary = {}
        if resume and (self.dir / "metrics.json").is_file():
            self.summary = json.loads((self.dir / "metrics.json").read_text())
        self._latest = {}

    def log_metric(self, name, value, **_):
        path = self.dir / "plots" / "metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        leaf = name.split("/")[-1]
        if not path.exists():
            path.write_text(f"step\t{leaf}\n")
        with path.open("a") as f:
            f.write(f"{self.step}\t{value}\n")
        self._latest[name] = value

    def _dump(self):
        doc = dict(self.summary)
        for name, value in self._latest.items():
            node = doc
            *parents, leaf = name.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        doc["step"] = self.step
        (self.dir / "metrics.json").write_text(json.dumps(doc, indent=4))

    def next_step(self):
        self._dump()
        self.step += 1

    def end(self):
        self._dump()
