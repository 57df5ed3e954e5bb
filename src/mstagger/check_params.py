"""Stage ``check_params``: validate ``params.yaml`` and the output paths before any other stage runs.

``dvc repro`` runs a stage only when something it depends on changed, so a key that no stage reads (a
typo such as ``learning_rate`` for ``lr``) would pass unnoticed. This stage depends on the whole file,
so any edit runs it: an unknown key, a wrong type or an impossible value stops the pipeline with one
line naming the key.

DVC deletes a stage's outputs just before it runs the stage. The download stage depends on this
stage's stamp, so this check runs first: when a ``paths.*`` folder holds files the pipeline did not
write (no marker, not recorded in ``dvc.lock``), or ``paths.model`` is a file that is no model bundle,
the pipeline stops before DVC deletes anything.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from mstagger.core.errors import UserError
from mstagger.core.log import log, stage_main
from mstagger.core.outputs import check_replaceable, is_locked_output, stage_metrics, write_json
from mstagger.params import WHOLE_FOLDERS, Params, load_params

# The stamp's content never changes, so the download stage, which depends on it, never reruns for it.
STAMP = {"params": "params.yaml", "checked": ["keys", "types", "values", "output paths"]}


def check_outputs(params: Params) -> None:
    """Every output folder is absent, empty or the pipeline's, and ``paths.model`` is a bundle or absent.

    Raises:
        UserError: naming the ``paths.*`` key, the path and what to do.
    """
    for key, stage in WHOLE_FOLDERS.items():
        check_replaceable(getattr(params.paths, key), stage, f"paths.{key}")
    model = Path(params.paths.model)
    # torch.save writes a zip archive; anything else there is a file of the user's
    is_bundle = model.is_file() and zipfile.is_zipfile(model)
    if (model.exists() or model.is_symlink()) and not is_bundle and not is_locked_output(model, "train"):
        raise UserError(
            f"paths.model: {model} exists and is no model bundle; the train stage would replace it. "
            "Move it away or point paths.model elsewhere"
        )


@stage_main
def main() -> None:
    """Load and validate ``params.yaml``, check the output paths, write the stamp."""
    params = load_params()
    check_outputs(params)
    stamp = stage_metrics(params.paths.metrics, "params")
    write_json(stamp, STAMP)
    log.info("params.yaml is valid and every output path is the pipeline's to write")


if __name__ == "__main__":
    main()
