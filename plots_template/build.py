"""Write ``offline.html``: DVC's plots page template with vega, vega-lite and vega-embed inlined.

DVC's own page loads the three libraries from a CDN, so without network access (a cluster node, a
train) its interactive plots stay blank. ``.dvc/config`` points ``plots.html_template`` at the page
this script writes: the minified builds of the pinned npm packages, each inside its own ``<script>``
element with its version and SHA-256 in a comment above it, and no ``{scripts}`` placeholder, so DVC
adds no CDN ``<script>`` of its own. The last script makes every plot render as SVG and drops vega-embed's
"Open in Vega Editor" action, which needs the network.

To refresh: change the versions below, run ``python plots_template/build.py`` (needs ``npm``: it runs
``npm pack``, which checks each tarball against the registry's integrity hash), check the licence files
beside this script still match the packages', and commit ``offline.html``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "offline.html"
# (npm package, version, file inside the package). vega-lite 5 matches the "$schema" of DVC's specs.
LIBRARIES = (
    ("vega", "5.33.1", "build/vega.min.js"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js"),
)

DEFAULTS = """\
// Every plot on the page calls vegaEmbed(element, spec): render it as SVG (sharp at any zoom, saved as a
// vector image) and leave out the "Open in Vega Editor" action, which needs the network.
(function () {
  var embed = window.vegaEmbed;
  var offline = { renderer: "svg", actions: { export: true, source: true, compiled: true, editor: false } };
  window.vegaEmbed = Object.assign(function (element, spec, options) {
    return embed(element, spec, Object.assign({}, offline, options || {}));
  }, embed);
})();
"""

PAGE = """\
<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots (offline)</title>
<!--
  Written by plots_template/build.py; do not edit by hand. vega, vega-lite and vega-embed are inlined
  from their npm packages (BSD-3-Clause; licences in plots_template/), so the plots render offline.
-->
<style>
  table { border-spacing: 15px; }
</style>
{libraries}
</head>
<body>
{plot_divs}
</body>
</html>
"""


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
    # Inside <script>, "</script" would end the element and "<!--" changes how HTML parses it.
    for bad in ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in text:
            sys.exit(f"{package}@{version} {member} contains {bad!r}; it cannot be inlined as it is")
    return text


def script(text: str, banner: str) -> str:
    """One ``<script>`` element holding ``text``, with ``banner`` and the text's SHA-256 above it."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"<!-- {banner} sha256:{digest} -->\n<script>\n{text}\n</script>"


def main() -> None:
    """Fetch the pinned libraries and write ``offline.html``."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = [
            script(fetch(package, version, member, Path(tmp)), f"{package} {version} {member}")
            for package, version, member in LIBRARIES
        ]
    parts.append(script(DEFAULTS, "offline defaults"))
    page = PAGE.replace("{libraries}", "\n".join(parts))  # not str.format: the scripts hold braces
    OUT.write_text(page, encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
