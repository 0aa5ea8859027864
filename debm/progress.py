"""Progress display for the command line: a tqdm bar on a terminal, plain lines (or
nothing) otherwise.  Shared by the local commands (sample, eval-*) and `debm remote`."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

MODES = ("auto", "bar", "plain", "none")


def resolve(mode: str = "auto") -> str:
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "none"
    return mode


class StepProgress:
    """Step counts with a stage name and a few numbers, e.g. Langevin steps or training
    iterations: ``update(step, total, stage=..., **postfix)``, then ``close()``."""

    def __init__(self, mode: str = "auto", *, unit: str = "step", label: str = ""):
        self.mode, self.unit, self.label = resolve(mode), unit, label
        self.bar = None
        self._last_plain = -1.0
        self._started = time.monotonic()

    def update(self, step: int, total: int | None, *, stage: str | None = None,
               **postfix: Any) -> None:
        if self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=self.unit, desc=self.label or None,
                                dynamic_ncols=True, file=sys.stderr)
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = step
            shown = {k: (f"{v:.3g}" if isinstance(v, float) else v)
                     for k, v in postfix.items() if v is not None}
            if stage:
                self.bar.set_description(f"{self.label} {stage}".strip(), refresh=False)
            self.bar.set_postfix(shown, refresh=False)
            self.bar.refresh()
        elif self.mode == "plain":
            fraction = step / total if total else 0.0
            # one line per 10% (and the last step)
            if fraction - self._last_plain >= 0.1 or (total and step >= total):
                self._last_plain = fraction
                extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in postfix.items() if v is not None)
                print(f"{self.label + ' ' if self.label else ''}{stage or ''} "
                      f"{step}/{total or '?'} {extra}".strip(), file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.mode == "bar" and self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif self.mode != "none":
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def sampling_callback(progress: StepProgress) -> Callable[[str, int, int], None]:
    """model.samplers' ``on_progress(stage, step, total)`` feeding a StepProgress."""
    return lambda stage, step, total: progress.update(step, total, stage=stage)


class PhaseProgress:
    """Coarse phases of an evaluation ("scoring with model", "row annealed", ...): a bar that
    advances one phase per message on a terminal, ``fallback(message)`` lines otherwise."""

    def __init__(self, total: int | None, fallback: Callable[[str], None],
                 mode: str = "auto", label: str = "eval"):
        self.mode, self.fallback, self.bar = resolve(mode), fallback, None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="phase", desc=label, dynamic_ncols=True,
                            file=sys.stderr)
        self._phases = 0

    def __call__(self, message: str) -> None:
        if self.bar is None:
            self.fallback(message)
            return
        if self._phases:
            self.bar.update(1)
        self._phases += 1
        self.bar.set_description(message)

    def close(self) -> None:
        if self.bar is not None:
            if self._phases:
                self.bar.update(1)
            self.bar.close()
