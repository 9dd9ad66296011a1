"""--report_to: a stage's numbers in TensorBoard or Weights & Biases, the same way for every stage: train.py logs
every train_log.jsonl field per step (train/...), evaluate.py its per-benchmark metrics (eval/<benchmark>/...),
rak.py every table cell (rak/<run>/<benchmark>/...). The files on disk stay the record; a tracker is a view.

Stdlib imports only at the top: the backends load when a run asks for them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from common import DataError

BACKENDS = ("none", "tensorboard", "wandb")
HELP = ("also log the numbers to tensorboard (event files in OUT/tensorboard[/RUN_NAME]: `tensorboard --logdir "
        "OUT`) or wandb (WANDB_PROJECT, default qfft-upft; WANDB_MODE=offline works)")
RUN_NAME_HELP = "the tracker's name for this run (W&B run name; TensorBoard subfolder); default: the output folder's"


class Tracker:
    """One stage's tracker run, in the output folder `out` ("none": every call does nothing)."""

    def __init__(self, kind: str, out: Path, config: dict, resume: bool = False, name: Optional[str] = None):
        # kind "none" leaves run at None: log() and close() then do nothing, and no stage needs an `if` around its calls
        self.kind, self.run = kind, None
        out = Path(out)
        if kind == "tensorboard":
            # imported only when asked for: it loads torch, which rak.py otherwise never imports
            from torch.utils.tensorboard import SummaryWriter
            # one subfolder per run name, so that several runs written under one OUT show as separate curves
            self.run = SummaryWriter(log_dir=str(out / "tensorboard" / (name or "")))
            # TensorBoard has no config panel: the arguments go in once as a code block (the Text tab)
            self.run.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")
        elif kind == "wandb":
            import wandb

            from sources import stable_id  # one W&B run per output folder: a resumed run continues it
            # config through JSON because W&B takes plain values only (paths and the like become strings)
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "qfft-upft"), name=name or out.name,
                                  dir=str(out), config=json.loads(json.dumps(config, default=str)),
                                  id=stable_id(str(out.resolve())), resume="allow" if resume else None)

    @staticmethod
    def check(kind: str) -> None:
        """Fail before the work starts when the backend is missing."""
        mod = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
        if mod:
            try:
                # the import alone: it is what fails on a machine without the package, and it must fail now, not after
                # hours of training at the first log call
                __import__(mod)
            except ImportError:
                raise DataError(f"--report_to {kind}: the package is not installed (pip install {mod})") from None

    def log(self, rec: dict, prefix: str = "train", step: Optional[int] = None) -> None:
        """Every number in rec (nested dicts as a/b/c) as PREFIX/key at `step` (default: rec['step'])."""
        # train.py's records carry their optimizer step; evaluate.py and rak.py pass step=0 (one point per run)
        step = int(rec.get("step", 0)) if step is None else step
        # train.py's held-out loss (eval_loss) goes beside the training curves as eval/loss, not train/eval_loss
        scalars = {(f"eval/{k[5:]}" if prefix == "train" and k.startswith("eval_") else f"{prefix}/{k}"): v
                   for k, v in flatten(rec).items() if k != "step"}
        if self.kind == "tensorboard":
            for k, v in scalars.items():
                self.run.add_scalar(k, v, step)
        elif self.kind == "wandb":
            self.run.log(scalars, step=step)

    def close(self) -> None:
        if self.run is not None:
            # close flushes TensorBoard's event file; finish ends the W&B run (uploads it, or leaves it for `wandb sync`
            # offline)
            (self.run.close if self.kind == "tensorboard" else self.run.finish)()
            self.run = None


def flatten(rec: dict, prefix: str = "") -> dict:
    """{'gsm8k': {'acc': 50.0, 'by_level': {...}}} -> {'gsm8k/acc': 50.0, 'gsm8k/by_level/1/acc': ...}: numbers
    only (None, true/false, text and lists are left out)."""
    out = {}
    for k, v in rec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        # bool is an int in Python: true/false fields are flags, not curves
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def report(kind: str, out: Path, prefix: str, metrics: dict, config: dict, name: Optional[str] = None) -> None:
    """evaluate.py / rak.py: the finished metrics, once, at step 0 (one tracker run per output folder)."""
    if kind == "none":
        return
    # resume=True: a re-run (--grade_only, rak.py with other tables) logs into the same tracker run as the first
    tracker = Tracker(kind, out, config, resume=True, name=name)
    tracker.log(metrics, prefix=prefix, step=0)
    tracker.close()
    print(f"--report_to {kind}: {len(flatten(metrics))} numbers logged under {prefix}/")
