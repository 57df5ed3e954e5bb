"""Run a stage and stop it dead at a chosen moment, for test_faults.py to kill it there.

    python tests/fault_probe.py prepare-between-writes FLAG
    python tests/fault_probe.py train-mid-bundle-save FLAG

The stage runs as ``python -m mstagger.<stage>`` would, with one function wrapped: when the moment
comes, the probe creates the file FLAG and sleeps, so the test can SIGKILL a process that is exactly
there. Nothing else changes what the stage does.
"""

import sys
import time
from pathlib import Path


def pause_here(flag: Path) -> None:
    flag.write_text("paused\n")
    time.sleep(600)


def prepare_between_writes(flag: Path) -> None:
    from mstagger import prepare

    write_json, calls = prepare.write_json, []

    def write_json_then_pause(path, data):
        write_json(path, data)
        calls.append(path)
        if len(calls) == 1:  # tags.json written; stats.json not yet
            pause_here(flag)

    prepare.write_json = write_json_then_pause
    prepare.main()


def train_mid_bundle_save(flag: Path) -> None:
    import torch

    from mstagger import train
    from mstagger.inference import bundle

    real_save = torch.save

    def half_a_bundle(obj, path, *args, **kwargs):
        if ".model.pt." not in str(path):  # checkpoints are written as usual
            return real_save(obj, path, *args, **kwargs)
        real_save(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # the write is half done
        pause_here(flag)

    bundle.torch.save = half_a_bundle
    train.main()


if __name__ == "__main__":
    mode, flag = sys.argv[1], Path(sys.argv[2])
    {"prepare-between-writes": prepare_between_writes, "train-mid-bundle-save": train_mid_bundle_save}[mode](
        flag
    )
