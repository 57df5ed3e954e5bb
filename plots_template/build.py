"""Refresh the libraries inlined in ``offline.html``, DVC's plots page template for use without network.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so without network access (a cluster
node, a train) its interactive plots stay blank. ``.dvc/config`` points ``plots.html_template`` at
``offline.html``, which holds the minified builds of the three npm packages, each in its own
``<script>`` element under a comment naming the package, version, file and SHA-256, and no
``{scripts}`` placeholder, so DVC adds no CDN ``<script>`` of its own. The rest of the page (layout,
the small script that makes the plots render as SVG) is written by hand in ``offline.html``; this
script only replaces the three library elements.

To refresh: change the versions below, run ``python plots_template/build.py`` (needs ``npm``: it runs
``npm pack``, which checks each tarball against the registry's integrity hash), check that the licence
files beside this script still match the packages', and commit ``offline.html``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "offline.html"
# (npm package, version, file inside the package). vega-lite 5 matches the "$schema" of DVC's specs.
LIBRARIES = (
    ("vega", "5.33.1", "build/vega.min.js"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js"),
)


def element(package: str) -> re.Pattern[str]:
    """The comment and ``<script>`` element holding ``package`` in the page."""
    comment = rf"<!-- {re.escape(package)} \S+ \S+ sha256:[0-9a-f]{{64}} -->"
    return re.compile(comment + r"\n<script>\n.*?\n</script>", re.S)


def fetch(package: str, version: str, member: str, workdir: Path) -> str:
    """The text of ``member`` in the npm package ``package@version`` (downloaded with ``npm pack``)."""
    done = subprocess.run(
        ["npm", "pack", "--silent", f"{package}@{version}"], cwd=workdir, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"npm pack {package}@{version} failed: {done.stderr.strip()}")
    tarball = workdir / done.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
        source = tar.extractfile(f"package/{member}")
        if source is None:
            sys.exit(f"{package}@{version} has no {member}")
        text = source.read().decode("utf-8")
    # Inside <script>, "</script" would end the element and "<!--" changes how HTML parses it; DVC
    # replaces its placeholders anywhere in the page.
    for bad in ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in text:
            sys.exit(f"{package}@{version} {member} contains {bad!r}; it cannot be inlined as it is")
    return text


def main() -> None:
    """Fetch the pinned libraries and put them into ``offline.html`` in place of the old ones."""
    page = PAGE.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        for package, version, member in LIBRARIES:
            text = fetch(package, version, member, Path(tmp))
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            new = f"<!-- {package} {version} {member} sha256:{digest} -->\n<script>\n{text}\n</script>"
            page, found = element(package).subn(lambda _, new=new: new, page)
            if found != 1:
                sys.exit(f"{PAGE} must hold one element for {package}, found {found}")
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE} ({PAGE.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
