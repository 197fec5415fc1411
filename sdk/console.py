"""What the terminal shows and hears during a fit: the figures on one line and as a table,
the progress bar, and Ctrl-C / SIGTERM turned into a clean stop between steps."""

from __future__ import annotations

import signal
from contextlib import contextmanager

from engrain.errors import EngrainError


class FitInterrupted(EngrainError):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    def __init__(self, run_id: str, step: int, command: str = "cl fit --resume"):
        super().__init__(f"run {run_id} interrupted at step {step}; resume with: {command} {run_id}")
        self.run_id, self.step = run_id, step


@contextmanager
def checkpointed(checkpoint, db, run_id: str, steps_done, command: str = "cl fit --resume"):
    """Around a training loop: Ctrl-C (or SIGTERM, via StopOnSignal) checkpoints, marks the
    run interrupted and raises FitInterrupted; a crash checkpoints, marks it failed and
    re-raises. Nothing done before the current step is lost. ``steps_done()``: the count so far."""
    try:
        yield
    except KeyboardInterrupt:
        checkpoint()
        db.finish_run(run_id, "interrupted")
        raise FitInterrupted(run_id, steps_done(), command) from None
    except Exception:
        checkpoint()
        db.finish_run(run_id, "failed")
        raise


def one_line(rows: list[dict]) -> str:
    """The temperature-1 figures, as ``suite/metric value`` pairs."""
    return "  ".join(f"{r['suite']}/{r['metric']} {r['value']:.3f}" for r in rows if r["decoding"] == "sample")


def figures_table(base: list[dict], adapter: list[dict], temperature: float = 1.0) -> str:
    """Base -> adapter for every figure: the gate's (sampled at ``temperature``; 0 is
    greedy) and, where they were computed, the greedy ones beside them."""
    by = {(r["suite"], r["metric"], r["decoding"], side): r["value"]
          for side, rows in (("base", base), ("adapter", adapter)) for r in rows}
    keys = list(dict.fromkeys((r["suite"], r["metric"]) for r in base + adapter))
    cell = lambda k, d: " -> ".join(f"{by[(*k, d, side)]:.3f}" if (*k, d, side) in by else "  -  "  # noqa: E731
                                    for side in ("base", "adapter"))
    beside = any(r["decoding"] == "greedy" for r in base + adapter)
    gate = "greedy" if temperature == 0 else f"T={temperature:g}"
    lines = [f"{'figure':<30} {gate + ': base -> adapter':>22}" + (f"   {'greedy: base -> adapter':>24}" if beside else "")]
    lines += [f"{k[0] + '/' + k[1]:<30} {cell(k, 'sample'):>22}" + (f"   {cell(k, 'greedy'):>24}" if beside else "")
              for k in keys]
    return "\n".join(lines)


class StopOnSignal:
    """Ctrl-C or SIGTERM ask the loop to stop after the current step, so a checkpoint is
    never cut mid-write (DuckDB turns an interrupt inside a write into its own error).
    A second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.requested, self.old = False, {}
        try:
            for sig in self.SIGNALS:
                self.old[sig] = signal.signal(sig, self._handle)
        except ValueError:      # not the main thread (e.g. an embedding app): leave them
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


class Progress:
    """A rich progress bar: step, loss, anchor KL, drift, trained positions, running
    behavior rate of the rollouts, seconds per stage of the step (mean of the last 10), and
    the last val figures with the seconds their evals took. ``totals`` adds every stage's
    seconds over the run (``summary()``: where the time went)."""

    def __init__(self, enabled: bool, total: int, start: int, name: str):
        self.enabled, self.total, self.start, self.name = enabled, total, start, name
        self.rates: list[float] = []
        self.stages: list[dict] = []
        self.totals: dict[str, float] = {}
        self.val_info = ""

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.p.__enter__()
            self.task = self.p.add_task(self.name, total=self.total, completed=self.start, info="")
        return self

    def update(self, out) -> None:     # a StepResult
        self.rates = (self.rates + [out.behavior_rate])[-10:]
        stages = out.stage_seconds or {}
        self.stages = (self.stages + [stages])[-10:]
        for name, sec in stages.items():
            self.totals[name] = self.totals.get(name, 0.0) + sec
        if self.enabled:
            anchor = "" if out.anchor_kl is None else f"anchor {out.anchor_kl:.4f}  "
            info = (f"loss {out.loss:.4f}  {anchor}drift {out.drift:.3f}  "
                    f"trained {out.n_selected}/{out.n_candidates}  "
                    f"rate {sum(self.rates) / len(self.rates):.2f}  {out.seconds:.1f}s/step{self._stage_info()}"
                    f"{self.val_info}")
            self.p.update(self.task, advance=1, info=info)

    def _stage_info(self) -> str:
        names = dict.fromkeys(n for s in self.stages for n in s)
        if not names:
            return ""
        mean = {n: sum(s.get(n, 0.0) for s in self.stages) / len(self.stages) for n in names}
        return " (" + " ".join(f"{n} {v:.2f}" for n, v in mean.items()) + ")"

    def val(self, cand, selection, seconds: float | None = None) -> None:
        mark = "" if cand.qualifies else " (regressed)"
        took = ""
        if seconds is not None:
            self.totals["evals"] = self.totals.get("evals", 0.0) + seconds
            took = f" ({seconds:.0f}s)"
        self.val_info = f"  val {cand.score:.2f}{mark}{took} best@{selection.best.step}"

    def summary(self) -> str:
        """Seconds per stage over the run: 'rollout 31s, score 22s, ..., evals 40s'."""
        return ", ".join(f"{n} {v:.0f}s" for n, v in self.totals.items())

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)
        return False
