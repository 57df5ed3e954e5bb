"""`dvc plots show` writes a page whose every plot renders with no network.

A tiny DVC repository gets this repository's dvc.yaml, params.yaml, .dvc/config (which names the page
template plots_template/offline.html) and plot data in the layout the stages write. `dvc plots show`
makes the page; headless Chromium opens it with every host name unresolvable and a dead proxy, and the
test checks that each vega plot drew its marks as SVG. The same check fails on DVC's own page (vega from
a CDN), so it really tells a drawn plot from a blank one.

External references are looked for in the page's HTML (src/href/data attributes of its elements and
url() in its styles), not in the text of its scripts: there, URLs are strings, not loads (the specs'
"$schema" names the vega-lite version; vega-embed fetches a spec only when given a URL instead of an
object, and DVC passes objects). Whatever a script might still fetch would fail with the network
blocked, and the plot that needed it would not draw.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from helpers import sh
from mstagger.evaluation.plots import write_evaluation_plots
from mstagger.evaluation.scores import per_tag_scores

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH (``/usr/bin/chromium`` on Debian), or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class ExternalRefs(HTMLParser):
    """Collects the URLs that elements of a page would load from another host."""

    LOADING = ("src", "href", "data", "srcset", "poster", "action")
    REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
    URL_IN_CSS = re.compile(r"url\(\s*['\"]?\s*(https?:)?//|@import", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in self.LOADING and self.REMOTE.match(value or ""):
                self.found.append(f"<{tag} {name}={value}>")
            if name == "style" and self.URL_IN_CSS.search(value or ""):
                self.found.append(f"<{tag} style={value}>")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and self.URL_IN_CSS.search(data):
            self.found.append(f"<style>{data.strip()[:80]}")


def external_refs(html: str) -> list[str]:
    parser = ExternalRefs()
    parser.feed(html)
    return parser.found


def write_plot_data(repo: Path) -> None:
    """What train (dvclive TSVs) and evaluate (CSV and PNG) write under metrics/train and plots."""
    curves = repo / "metrics" / "train" / "plots" / "metrics"
    for name, values in {
        "train/loss": [0.7, 0.4, 0.3],
        "val/loss": [0.8, 0.6, 0.55],
        "val/roc_auc": [0.6, 0.7, 0.75],
        "val/pr_auc": [0.3, 0.4, 0.45],
        "lr": [1e-3, 1e-3, 1e-4],
    }.items():
        path = curves / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        metric = name.rsplit("/", 1)[-1]
        path.write_text(f"step\t{metric}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
    rng = np.random.default_rng(0)
    tags = ["guitar", "piano", "drums", "slow"]
    y = (rng.random((60, len(tags))) < 0.4).astype(np.uint8)
    score = y * 0.4 + rng.random(y.shape)
    table = per_tag_scores(y, score, tags)
    table["baseline_roc_auc"] = per_tag_scores(y, y * 0.1 + rng.random(y.shape), tags)["roc_auc"]
    write_evaluation_plots(y, score, table, repo / "plots", 3, train_log_dir=repo / "metrics" / "train")


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("plots")
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["dvc", "init", "-q"], repo)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    shutil.copytree(ROOT / "plots_template", repo / "plots_template", ignore=shutil.ignore_patterns("*.pyc"))
    write_plot_data(repo)
    return repo


def show(repo: Path, out: str, *template: str) -> tuple[str, list[str]]:
    """Run `dvc plots show` into ``out``: the page's HTML and the ids of its vega plots."""
    sh(["dvc", "plots", "show", "-o", out, *template], repo)
    html = (repo / out / "index.html").read_text(encoding="utf-8")
    return html, re.findall(r"vegaEmbed\('#([^']+)'", html)


def render(browser: str, page: Path, profile: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts, with no network to reach."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves ...
            "--proxy-server=http://127.0.0.1:9",  # ... and nothing listens on the discard port
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(browser: str, page: Path, out: Path, profile: Path, size: str = "1400,3400") -> None:
    """A PNG of the page as headless Chromium draws it (no network), to look at."""
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=10000",
         f"--window-size={size}", f"--screenshot={out}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]


def drawn(dom: str, plot_ids: list[str]) -> dict[str, bool]:
    """For each vega plot, whether its element holds an SVG with data marks (lines, bars or points)."""
    starts = {pid: dom.find(f'id="{pid}"') for pid in plot_ids}
    bounds = [*sorted(p for p in starts.values() if p >= 0), len(dom)]
    out = {}
    for pid, start in starts.items():
        if start < 0:
            out[pid] = False
            continue
        part = dom[start : bounds[bounds.index(start) + 1]]
        marks = re.search(r'class="mark-(line|rect|symbol|area)[^"]*".*?<path[^>]* d="M', part, re.DOTALL)
        out[pid] = "<svg" in part and marks is not None
    return out


@pytest.mark.slow
def test_every_plot_renders_offline(plots_repo, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    html, plot_ids = show(plots_repo, "offline")
    assert len(plot_ids) == 5  # the five vega plots of dvc.yaml (the PNGs are images)
    assert external_refs(html) == []
    assert "{scripts}" not in html and "cdn.jsdelivr" not in html
    dom = render(browser, plots_repo / "offline" / "index.html", tmp_path / "profile")
    assert drawn(dom, plot_ids) == dict.fromkeys(plot_ids, True)
    assert external_refs(dom) == []  # nor did the scripts add an element that loads from elsewhere
    pngs = re.findall(r'<img src="(static/[^"]+\.png)">', dom)  # the four PNGs, in files beside the page
    assert len(pngs) == 4 and all((plots_repo / "offline" / png).is_file() for png in pngs)
    # MSTAGGER_PLOTS_SCREENSHOT=page.png pytest -m slow tests/test_plots_offline.py: a picture to look at
    if os.environ.get("MSTAGGER_PLOTS_SCREENSHOT"):
        out = Path(os.environ["MSTAGGER_PLOTS_SCREENSHOT"]).resolve()
        screenshot(browser, plots_repo / "offline" / "index.html", out, tmp_path / "profile")


@pytest.mark.slow
def test_the_plots_read_at_a_glance(plots_repo, tmp_path):
    """Titled axes with units, epochs 1..N, a legend naming each curve, the baseline beside each tag."""
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    show(plots_repo, "glance")
    dom = render(browser, plots_repo / "glance" / "index.html", tmp_path / "profile")
    texts = re.findall(r"<text[^>]*>([^<]+)</text>", dom)
    for title in [
        "Epoch",
        "Loss (binary cross-entropy, nats per tag and clip)",
        "Macro AUC on the validation split (0 to 1)",
        "Test ROC-AUC (0.5 = chance, 1 = perfect)",
        "Recall (share of positives asserted)",
    ]:
        assert title in texts, title
    assert not {"y", "step", "dvc_inferred_y_value"} & set(texts)
    for legend in ["training", "validation", "ROC-AUC", "PR-AUC", "network", "baseline"]:
        assert legend in texts, legend
    assert not any("::" in t or ".tsv" in t or ".csv" in t for t in texts)  # no file names as labels
    loss = (plots_repo / "plots" / "loss.csv").read_text().splitlines()
    assert loss[0] == "epoch,curve,loss" and loss[1].startswith("1,training,")  # as the log counts
    assert {"guitar", "piano", "drums", "slow"} <= set(texts)  # every tag labelled


@pytest.mark.slow
def test_dvc_default_page_draws_nothing_offline(plots_repo, tmp_path):
    # The control: DVC's own page, which loads vega from a CDN, fails both checks.
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    from dvc_render.html import PAGE_HTML

    (plots_repo / "cdn.html").write_text(PAGE_HTML, encoding="utf-8")
    html, plot_ids = show(plots_repo, "cdn", "--html-template", "cdn.html")
    assert len(plot_ids) == 5
    assert any("cdn.jsdelivr.net" in ref for ref in external_refs(html))
    dom = render(browser, plots_repo / "cdn" / "index.html", tmp_path / "profile")
    assert not any(drawn(dom, plot_ids).values())


def test_template_holds_the_pinned_libraries_unchanged():
    page = (ROOT / "plots_template" / "offline.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page
    scripts = re.findall(r"<!-- (.+?) sha256:([0-9a-f]{64}) -->\n<script>\n(.*?)\n</script>", page, re.DOTALL)
    assert [s[0].split()[0] for s in scripts] == ["vega", "vega-lite", "vega-embed"]
    for banner, digest, text in scripts:
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == digest, banner
    assert external_refs(page) == []
    assert (ROOT / ".dvc" / "config").read_text().count("html_template = ../plots_template/offline.html") == 1
    licences = sorted(p.name for p in (ROOT / "plots_template").glob("LICENSE*"))
    assert licences == ["LICENSE-vega", "LICENSE-vega-embed", "LICENSE-vega-lite"]
