"""Run the train stage under torchrun, recording a digest of the weights after every optimiser step.

Used by test_distributed.py: ``torchrun --nproc_per_node=2 tests/ddp_probe.py OUT_DIR`` in a project
folder writes ``OUT_DIR/rank<r>.txt``, one SHA-256 of all parameters per step. Nothing here changes
what training computes: the optimiser's step is wrapped to read the weights after it.
"""

import hashlib
import os
import sys
from pathlib import Path

from mstagger import train


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"rank{os.environ['RANK']}.txt"
    make_optimizer = train.make_optimizer

    def recording_optimizer(tagger, params, device):
        optimizer = make_optimizer(tagger, params, device)
        step = optimizer.step

        def step_and_record(*args, **kwargs):
            result = step(*args, **kwargs)
            digest = hashlib.sha256()
            for p in tagger.parameters():
                digest.update(p.detach().cpu().numpy().tobytes())
            with log.open("a") as f:
                f.write(digest.hexdigest() + "\n")
            return result

        optimizer.step = step_and_record
        return optimizer

    train.make_optimizer = recording_optimizer
    train.main()


if __name__ == "__main__":
    main()
