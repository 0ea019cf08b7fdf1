"""Rich rendering of what the commands return: their results as lines, tables or JSON, their errors, and the
console they print on (the live progress of running jobs is `progress`). Nothing here parses or decides.

Everything a user typed (a study's name, a path, a reason quoting a file) is printed through `plain` or
`_text`, so it is shown as it is: never read as Rich markup, and its control characters made visible.
The library is imported inside the functions that need it, so `nas --help` loads neither torch nor Optuna.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nas import names

MIN_WIDTH = 80  # columns: a narrower console (COLUMNS=20, or 0) folds tables until their figures vanish


def _sane_terminal_size() -> None:
    """Fix COLUMNS and LINES where Rich and typer (usage errors, --help) read them: a value that is not an ASCII
    number (COLUMNS=² crashes Rich's int()) is dropped, a width under MIN_WIDTH (0 prints nothing) raised."""
    for name in ("COLUMNS", "LINES"):
        value = os.environ.get(name)
        if value is not None and not re.fullmatch("[0-9]+", value):
            del os.environ[name]
    if int(os.environ.get("COLUMNS", MIN_WIDTH)) < MIN_WIDTH:
        os.environ["COLUMNS"] = str(MIN_WIDTH)


def _console(stderr: bool = False) -> Console:
    """Rich's console on stdout or stderr, at least MIN_WIDTH wide whatever COLUMNS or the terminal says, and
    without emoji codes, which escape() leaves alone: a study named :x: is printed as :x:, not as ❌. In a log or
    a pipe, lines are written whole (soft wrap), not cut at its width in the middle of an architecture; tables
    keep the width."""
    found = Console(stderr=stderr, emoji=False)
    return Console(stderr=stderr, width=max(found.width, MIN_WIDTH), emoji=False, soft_wrap=not found.is_terminal)


_sane_terminal_size()
console = _console()
err_console = _console(stderr=True)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but newline and tab: ESC starts a terminal command


def _visible(text: str) -> str:
    """`text` with its control characters shown as \\xNN: a name holding ESC [31m colours nothing, moves nothing."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def plain(value: object) -> str:
    """A user's string (a name, a path, a message that quotes one) for a line of Rich markup: shown as it is."""
    return escape(_visible(str(value)))


def _text(value: object) -> Text:
    """A user's string as Rich text, for a table's cell or title, where a plain str would be read as markup."""
    return Text(_visible(str(value)))


def show_error(e: Exception) -> None:
    """Bad input (a NasError, or a path the checks could not even look at) as one clear paragraph on stderr."""
    if isinstance(e, OSError):
        err_console.print(f"[bold red]error:[/] cannot use {plain(e.filename)}: {e.strerror or e}. Check the path, or "
                          "choose another one.", highlight=False, soft_wrap=True)
    else:
        err_console.print(f"[bold red]error:[/] {plain(e)}", highlight=False, soft_wrap=True)  # "[low, high]" is no markup


def show_signal(e: Exception, export: Path | None) -> None:
    """A retrain or an export stopped by a signal: which, and that nothing was written."""
    said = f"; nothing was written to {export}" if export is not None else ""
    err_console.print(escape(f"interrupted by {e}{said}."), highlight=False, soft_wrap=True)


def show_note(note: str) -> None:
    """A note on stderr (what a command chose for the user, say)."""
    err_console.print(f"note: {plain(note)}", highlight=False, soft_wrap=True)


def show_json(value: Any) -> None:
    """`value` as indented JSON on stdout, for --json."""
    print(json.dumps(value, indent=2, default=str))


# --- nas search ------------------------------------------------------------------------------------


def show_outcome(outcome: Any, json_out: bool) -> int:
    """The end of a search: its counts and best trials; the exit status, 1 if a worker failed or nothing trained."""
    reasons = _count_reasons(outcome.rows) if outcome.nothing_trained and not outcome.gave_up else {}
    if json_out:
        print(json.dumps({"study": outcome.study, "storage": outcome.storage, "trials": sum(outcome.counts.values()),
                          "states": outcome.counts, "workers": outcome.n_workers,
                          "failed_workers": len(outcome.failed_workers), "best": outcome.best,
                          "nothing_trained": outcome.nothing_trained, "reasons": reasons, "gave_up": outcome.gave_up},
                         indent=2))
    else:
        best = f". Pareto front ({', '.join(outcome.objectives)}):" if len(outcome.objectives) > 1 else ". Best:"
        console.print(f"{_tally(outcome.tally)} in study {plain(repr(outcome.study))}"
                      + (best if outcome.best else "; none completed yet."), highlight=False, soft_wrap=True)
        if outcome.best:
            console.print(_trials_table(outcome.best))
    if outcome.failed_workers:
        err_console.print(f"{len(outcome.failed_workers)} of {names.counted(outcome.n_workers, 'worker')} stopped with an error: "
                          + plain("; ".join(outcome.failed_workers)), highlight=False, soft_wrap=True)
    if reasons:
        err_console.print((f"error: none of the {len(outcome.rows)} trials of this run trained: " if len(outcome.rows) != 1 else
                           "error: the one trial of this run did not train: ")
                          + plain("; ".join(f"{n} × {r}" for r, n in reasons.items()))
                          + ". " + plain(outcome.advice),
                          highlight=False, soft_wrap=True)
    if outcome.gave_up:
        err_console.print(f"error: stopped after {names.counted(outcome.n_trained, 'trained trial')}: "
                          f"{plain(outcome.gave_up)}", highlight=False, soft_wrap=True)
    return 1 if outcome.failed_workers or reasons or outcome.gave_up else 0


def show_interrupted(e: Any, argv: list[str], trials: int, json_out: bool, again: bool = False) -> None:
    """A search stopped by a signal: the table of the study's best as it was left, what was saved, how to resume
    (`again`: the same command, which counts what is left itself: --study-trials)."""
    from nas import search as searching

    if e.best and not json_out:
        console.print(_trials_table(e.best, title=_text(f"best of the study so far ({names.counted(len(e.best), 'trial')})")))
    left = trials - e.n_done
    said = (f"the running ones marked failed (interrupted). Resume with: "
            f"{plain(shlex.join(['nas', 'search', *argv]) if again else searching.resume_command(argv, left))}"
            if left > 0 or again else "none was left to run.")
    err_console.print(f"interrupted by {e}: {names.counted(e.n_done, 'finished trial')} of this run saved, " + said,
                      highlight=False, soft_wrap=True)


# --- nas best, nas run, nas train ------------------------------------------------------------------


def show_best(result: Any, retrain_epochs: int | None, export: Path | None, json_out: bool = False) -> None:
    """`nas best`: the best trials (or the front), the retrained ones ranked on test, and the export written."""
    if json_out:
        show_json({"study": result.study, "trials": result.rows, "retrained": result.retrained, "export": result.export})
        return
    shown = f"Pareto front ({', '.join(result.objectives)}):" if len(result.objectives) > 1 else "best"
    title = f"{shown} {len(result.rows)} of {_tally(result.tally)} in {result.study!r}"
    console.print(_trials_table(result.rows, title=_text(title)))
    for note in _within_noise(result.rows):
        console.print(note, highlight=False, soft_wrap=True)
    if result.retrained:
        table = Table("rank", "#", "val acc", "test acc", "test − val", "params", "architecture",
                      title=f"top {len(result.retrained)} retrained on train+val for {names.counted(retrain_epochs, 'epoch')}, "
                            "ranked by test accuracy")
        table.columns[-1].overflow = "fold"
        for rank, r in enumerate(result.retrained, 1):
            table.add_row(str(rank), str(r["trial"]), f"{r['val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}",
                          f"{r['gap']:+.4f}", f"{r['n_params']:,}", _text(r["arch"]))
        console.print(table)
    elif result.reproduced:
        console.print(f"trial #{result.reproduced['trial']} trained again as in the search: "
                      f"test accuracy {result.reproduced['test_accuracy']:.4f}")
    m = result.export
    if m:
        console.print(f"exported trial #{m['trial']} to {plain(export)}: test accuracy [bold]{m['test_accuracy']:.4f}[/] "
                      f"({'retrained on train+val, ' if m['retrained_on_train_and_val'] else ''}{names.counted(m['epochs'], 'epoch')}); "
                      "model.onnx and model.ts match PyTorch within "
                      f"{max(m['onnx_max_abs_diff'], m['torchscript_max_abs_diff']):.1e}", soft_wrap=True)
        if "search_latency_ms" in m:
            console.print(f"ONNX latency measured again after the export: {m['latency_ms']:.3f} ms per image "
                          f"(the search measured {m['search_latency_ms']:.3f} ms), {m['latency_ms_64']:.2f} ms per 64")
        if m.get("recorded_in_study") is False:
            err_console.print("note: the study's storage is read-only, so the export is not recorded in it "
                              "(`nas report` will not show its confusion matrix).", highlight=False)


def show_run(outcome: Any, export: Path | None, report: Path | None) -> None:
    """`nas run`: the retrained best as `nas best` shows it, then what the run did with its budget."""
    plan = outcome.plan
    wider = f" at {plan.width:g}× its width" * (plan.width != 1) + f" with {plan.augment} augmentation" * bool(plan.augment)
    epochs = outcome.best.retrained[0]["epochs"]  # fewer than planned when it was cut to keep the budget
    show_best(outcome.best, epochs, export)
    console.print(f"{names.counted(outcome.search.n_trained, 'trial')} searched; the best retrained{wider} for "
                  f"{names.counted(epochs, 'epoch')} (measured at {plan.seconds_per_epoch:.1f} s each); {_took(outcome.seconds)} in all"
                  + (f"; report: {plain(report)}" if report else ""), highlight=False, soft_wrap=True)
    if outcome.cut:
        console.print(f"note: {plain(outcome.cut)}.", highlight=False, soft_wrap=True)


def _took(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def show_run_interrupted(e: Any, storage: str, report: Path | None) -> None:
    """`nas run` stopped by a signal: what it saved and wrote, and how to finish."""
    err_console.print(escape(f"interrupted by {e}: {names.counted(e.n_done, 'finished trial')} of this run saved; "
                             + _run_left(e, storage, report)), highlight=False, soft_wrap=True)


def _run_left(e: Any, storage: str, report: Path | None) -> str:
    """What an interrupted `nas run` wrote, and how to finish."""
    from nas import autorun

    if not (isinstance(e, autorun.RunInterrupted) and e.exported):
        return "nothing exported. Run the same command again to continue the study."
    # Once the export is written only the report is left: `nas report` writes it in seconds, where the same
    # command again would search for the whole budget and then meet its own export (and need --force).
    if report is None:
        return f"the model is exported to {e.exported}."
    command = shlex.join(["nas", "report", "--study", e.study, "--storage", storage, "--out", str(report)])
    return f"the model is exported to {e.exported}; the report is not written: {command} writes it."


def show_trained(metrics: dict[str, Any], export: Path | None, json_out: bool) -> None:
    """`nas train`: the fixed net's test accuracy, size and pace, and where it was written."""
    if json_out:
        return show_json(metrics)
    console.print(f"test accuracy [bold]{metrics['test_accuracy']:.4f}[/], {metrics['n_params']:,} parameters, "
                  f"{metrics['flops'] / 1e6:.2f} MFLOPs, {metrics['seconds_per_epoch']:.2f} s/epoch"
                  + (f"; written to {plain(export)}" if export else ""), soft_wrap=True)


# --- nas predict, validate, report, dashboard, spaces, studies ---------------------------------------


def show_predictions(rows: list[dict[str, Any]], json_out: bool) -> None:
    """`nas predict`: each file's top classes, the first in bold."""
    if json_out:
        return show_json(rows)
    for r in rows:
        console.print(f"{plain(r['file'])}: " + ", ".join(
            f"[bold]{plain(c['class'])}[/] {c['probability']:.3f}" if j == 0 else f"{plain(c['class'])} {c['probability']:.3f}"
            for j, c in enumerate(r["top"])), highlight=False, soft_wrap=True)


def show_preview(preview: Any, source: str) -> None:
    """`nas validate`: a space's dimensions, its size and a few sampled nets with their shapes."""
    table = Table("parameter", "values", title=_text(f"space {preview.name!r} ({source})"))
    for name, values in preview.dimensions:
        table.add_row(_text(name), _text(values))
    console.print(table if preview.dimensions else _text(f"{source}: a fixed architecture (constants only)."))
    size = names.counted(preview.n_discrete, "discrete combination") + (
        f" × {names.counted(preview.n_continuous, 'continuous dimension')}" if preview.n_continuous else "")
    console.print(f"size: {size}; {names.counted(preview.n_baselines, 'baseline')}; input {preview.input_shape}, "
                  f"{names.counted(preview.n_classes, 'class', 'classes')}; {names.counted(preview.epochs, 'epoch')} per trial")
    costs = preview.objectives[1:]
    console.print("objectives: accuracy (maximised)" + (f", {', '.join(costs)} (minimised)" if costs else ""),
                  highlight=False)
    for i, net in enumerate(preview.samples, 1):
        console.print(f"\n[bold]sample {i}[/]: {plain(net.arch)}", highlight=False)
        if net.n_params is None:
            console.print(f"  {plain(net.problem)}: would be rejected before training (another net is drawn)", highlight=False)
            continue
        shapes = " → ".join("×".join(map(str, s)) for s in (preview.input_shape, *net.stages))
        console.print(f"  {shapes}; {net.n_params:,} parameters, {net.flops / 1e6:.2f} MFLOPs"
                      + (f" ({plain(net.problem)}: rejected before training, another net is drawn)" if net.problem else ""),
                      highlight=False)


def show_space_written(path: Path) -> None:
    """`nas validate --write`: where the built-in space went, and how to search it."""
    console.print(f"wrote {plain(path)}: pass it to `nas search --space {plain(shlex.quote(str(path)))}`",
                  highlight=False, soft_wrap=True)


def show_report(out: Path, summary: Any, json_out: bool) -> None:
    """`nas report`: the file written, its size, and what the study holds."""
    if json_out:
        return show_json({"report": str(out), "summary": dataclasses.asdict(summary)})
    console.print(f"wrote {plain(out)} ({out.stat().st_size / 1e6:.1f} MB) for study {plain(repr(summary.study))}: "
                  f"{names.counted(sum(summary.counts.values()), 'trial')}, best {summary.best['val_accuracy']:.4f}"
                  + ("" if summary.export else "; no export yet (`nas best --export DIR` adds the confusion matrix)"),
                  soft_wrap=True)


def show_dashboard(storage: str, url: str | None) -> None:
    """`nas dashboard`: where it serves (`url`), or that it stopped (None)."""
    if url is None:
        console.print("dashboard stopped")
    else:
        console.print(f"optuna-dashboard for {plain(storage)} at {plain(url)}  (Ctrl-C stops it)", highlight=False,
                      soft_wrap=True)


def show_spaces(rows: list[dict[str, Any]], json_out: bool) -> None:
    """`nas spaces`: the bundled spaces, and the folder holding their files."""
    if json_out:
        return show_json(rows)
    table = Table("name", "searched", "baselines", "what it is", title="bundled spaces (nas search --space NAME)")
    for r in rows:
        table.add_row(r["name"], names.counted(r["searched"], "dimension") if r["searched"] else "fixed net",
                      str(r["baselines"]), _text(r["summary"]))
    console.print(table)
    console.print(f"files in {plain(Path(rows[0]['file']).parent)}: copy one to edit it", highlight=False)


def show_studies(rows: list[dict[str, Any]], storage: str, json_out: bool) -> None:
    """`nas studies`: the studies of a storage, their trials and best accuracy."""
    if json_out:
        return show_json(rows)
    fronts = any(r["front"] is not None for r in rows)  # a study of several objectives has a front, not one best
    table = Table("study", "trials", "best val acc", *(["front"] if fronts else []), "started", title=_text(storage))
    for r in rows:
        front = [str(r["front"]) if r["front"] is not None else "-"] if fronts else []
        table.add_row(_text(r["name"]), str(r["trials"]), f"{r['best']:.4f}" if r["best"] is not None else "-",
                      *front, _text(r["started"] or "-"))
    console.print(table if rows else _text(f"no studies in {storage} yet: run `nas search`."), soft_wrap=True)


# --- shared by several ----------------------------------------------------------------------------


def _tally(tally: dict[str, int]) -> str:
    """The trials of a study counted as a user reads them: `7 trained trials (2 pruned, 1 failed; 3 nets rejected
    before training)`; rejected nets used up trial numbers but never trained."""
    ended = [f"{tally[k]} {word}" for k, word in (("pruned", "pruned"), ("failed", "failed"), ("running", "running"))
             if tally.get(k)]
    rejected = [f"{names.counted(tally['rejected'], 'net')} rejected before training"] if tally.get("rejected") else []
    said = "; ".join(p for p in (", ".join(ended), *rejected) if p)
    return names.counted(tally.get("trained", 0), "trained trial") + (f" ({said})" if said else "")


def _count_reasons(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many trials ended for each kind of reason (the words before its first colon), keyed by the first
    reason of that kind as an example."""
    examples: dict[str, str] = {}
    counts: dict[str, int] = {}
    for r in rows:
        reason = r["reason"] or r["state"]
        kind = reason.split(":")[0]
        examples.setdefault(kind, reason)
        counts[examples[kind]] = counts.get(examples[kind], 0) + 1
    return counts


def _within_noise(rows: list[dict[str, Any]]) -> list[str]:
    """A note for each two trials, next in latency, whose latencies differ by less than the noise measured
    on either: on this machine they are equally fast, whatever their order in the table."""
    timed = sorted((r for r in rows if r.get("latency_spread_ms") is not None), key=lambda r: r["latency_ms"])
    notes = []
    for a, b in zip(timed, timed[1:]):
        noise = max(a["latency_spread_ms"], b["latency_spread_ms"])
        if b["latency_ms"] - a["latency_ms"] < noise:
            notes.append(f"#{a['number']} and #{b['number']} differ in latency by {b['latency_ms'] - a['latency_ms']:.3f} ms, "
                         f"less than the measured noise ({noise:.3f} ms): take them as equally fast.")
    return notes


def _trials_table(rows: list[dict[str, Any]], title: Text | None = None) -> Table:
    timed = any(r.get("latency_ms") is not None for r in rows)  # measured when an objective or constraint asked
    table = Table("#", "val acc", "params", "MFLOPs", *(["latency ms"] if timed else []), "epochs", "seconds",
                  "architecture", title=title)
    table.columns[-1].overflow = "fold"
    for r in rows:
        latency = [f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else "-"] if timed else []
        table.add_row(str(r["number"]), f"{r['val_accuracy']:.4f}", f"{r['n_params']:,}", f"{r['flops'] / 1e6:.2f}",
                      *latency, str(r["epochs_run"]), f"{r['seconds']:.1f}", _text(r["arch"]))
    return table
