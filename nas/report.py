"""A study as one self-contained HTML file: `summarize` computes the data, `figures` draws it.

The data behind every figure is plain Python (testable without a browser or plotly). Figures use
Optuna's own visualization where it has one (history, importances, parallel coordinates, slices);
learning curves, the accuracy/size Pareto fronts and the export's confusion matrix are drawn here
because Optuna has no plot that marks pruned curves or a front over user attrs.
Plotly's JavaScript is inlined once, so the file opens offline.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

from nas.files import check_file_target, check_not_input, write_file
from nas.names import counted
from nas.pareto import non_dominated
from nas.record import OBJECTIVES, TrialRecord, accuracy, trial_row
from nas.storage import storage_inputs
from nas.study import front, load_study, objectives_of, quiet_optuna, recorded_export, top_trials

N_SLICES = 4  # slice plots of the most important parameters
N_PARALLEL = 8  # parameters on the parallel-coordinates plot


@dataclass(frozen=True)
class Summary:
    """Everything the report shows, as plain data (tests read it without plotly or a browser)."""

    study: str
    counts: dict[str, int]  # trials by state
    best: dict[str, Any]  # the best trial's row
    history: list[dict[str, Any]]  # number, value and best so far of each completed trial
    curves: list[dict[str, Any]]  # per-epoch validation accuracy of every trial that trained
    importances: dict[str, float]
    size: list[dict[str, Any]]  # accuracy, parameters, FLOPs (and latency, if measured) of each completed trial
    pareto: dict[str, list[int]]  # cost ("n_params", "flops", "latency_ms") -> numbers of the trials on its 2-D front
    top: list[dict[str, Any]]
    export: dict[str, Any] | None  # what `nas best --export` recorded
    objectives: tuple[str, ...] = ("accuracy",)
    front: list[int] | None = None  # with several objectives: the numbers of the trials on their Pareto front
    not_drawn: list[tuple[str, str]] = field(default_factory=list)  # (figure, why it is not in the report)


def summarize(study: optuna.Study, top: int = 10) -> Summary:
    """Everything the report shows, as plain data."""
    trials = study.get_trials(deepcopy=False)
    done = top_trials(study, len(trials))  # completed, or while none is those stopped at the time limit; else the error
    states = [t.state.name.lower() for t in trials]
    best_so_far, history = float("-inf"), []
    for t in sorted(done, key=lambda t: t.number):
        best_so_far = max(best_so_far, accuracy(t))
        history.append({"number": t.number, "value": accuracy(t), "best": best_so_far})
    sized = [t for t in done if TrialRecord(t).n_params is not None]
    costs = ["params", "flops"] + (["latency"] if any(TrialRecord(t).has("latency_ms") for t in sized) else [])
    objectives = objectives_of(study)
    ranked, unranked = importances(study, len(done))
    export = recorded_export(study)
    return Summary(
        study=study.study_name,
        counts={s: states.count(s) for s in sorted(set(states))},
        best=trial_row(top_trials(study, 1)[0]),
        history=history,
        curves=[_curve(t) for t in trials if TrialRecord(t).curve],
        importances=ranked,
        size=[{"number": t.number, "value": accuracy(t), "arch": TrialRecord(t).arch or ""}
              | {OBJECTIVES[c]: TrialRecord(t).cost(c) for c in costs} for t in sized],
        pareto={OBJECTIVES[c]: pareto_front([t for t in sized if TrialRecord(t).cost(c) is not None], c) for c in costs},
        top=[trial_row(t) for t in top_trials(study, top)],
        export=export,
        objectives=objectives,
        front=[t.number for t in front(study)] if len(objectives) > 1 else None,
        not_drawn=[(title, unranked) for title in _RANKED if unranked] + ([] if export else [(
            _EXPORTED, "no model of this study is exported yet; `nas best --export DIR` exports one and records it")]),
    )


_RANKED = ("Parameter importances", "Parallel coordinates", "Slices of the most important parameters")  # need importances
_EXPORTED = "Test confusion matrix and accuracy per class"


def importances(study: optuna.Study, n_done: int) -> tuple[dict[str, float], str | None]:
    """Parameter importances by PED-ANOVA (Optuna's, and it needs no scikit-learn) of a study with `n_done`
    completed trials; when there are none, why not (the report says it under "Not drawn")."""
    if n_done < 2:
        return {}, f"only {counted(n_done, 'completed trial')}; ranking the parameters needs at least 2"
    try:
        target = _importance_target(study).get("target")
        ranked = _quiet(get_param_importances, study, evaluator=PedAnovaImportanceEvaluator(), target=target)
    except (ValueError, RuntimeError) as e:  # too few or too uniform trials to say anything
        return {}, f"Optuna's PED-ANOVA could not rank the parameters ({e})"
    return ranked, None if ranked else "the completed trials share one set of parameters (nothing was searched)"


def _curve(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's learning curve: its validation accuracy per epoch, its state and why it stopped."""
    r = TrialRecord(t)
    return {"number": t.number, "state": t.state.name.lower(), "reason": r.reason,
            "epochs": [e["epoch"] for e in r.curve], "val_acc": [e["val_acc"] for e in r.curve]}


def pareto_front(trials: list[optuna.trial.FrozenTrial], cost: str) -> list[int]:
    """Numbers of the trials no other trial beats on both accuracy (higher) and the objective `cost` (lower,
    e.g. "params"), cheapest first: `pareto.non_dominated` over the two. Of equal points one is drawn."""
    ranked = sorted(trials, key=lambda t: (TrialRecord(t).cost(cost), -accuracy(t)))
    points = [(accuracy(t), TrialRecord(t).cost(cost)) for t in ranked]
    kept = [i for i in non_dominated(points) if not i or points[i] != points[i - 1]]
    return [ranked[i].number for i in kept]


def _importance_target(study: optuna.Study) -> dict[str, Any]:
    """What importances read of a study of several objectives: the error (PED-ANOVA minimises a target)."""
    return {} if len(study.directions) == 1 else {"target": lambda t: -accuracy(t), "target_name": "validation error"}


def _quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """PED-ANOVA's notes (a target is minimised; too few trials to tell apart) are for Optuna's users, not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="optuna.importance")
        return call(*args, **kwargs)


def figures(study: optuna.Study, summary: Summary) -> list[tuple[str, str, Any]]:
    """(id, title, plotly figure) for every figure the summary supports, in report order."""
    import plotly.graph_objects as go
    from optuna import visualization as vis

    important = list(summary.importances)
    target = {} if len(summary.objectives) == 1 else {"target": accuracy, "target_name": "validation accuracy"}
    figs = [
        ("history", "Optimization history", vis.plot_optimization_history(study, **target)),
        ("curves", "Learning curves (validation accuracy per epoch; pruned trials dotted)", _curves(summary, go)),
    ]
    if important:
        evaluator = PedAnovaImportanceEvaluator()
        figs += [
            ("importances", "Parameter importances (PED-ANOVA)", _quiet(vis.plot_param_importances, study, evaluator=evaluator,
                                                                        **_importance_target(study))),
            ("parallel", "Parallel coordinates", vis.plot_parallel_coordinate(study, params=important[:N_PARALLEL], **target)),
            ("slices", "Slices of the most important parameters", vis.plot_slice(study, params=important[:N_SLICES], **target)),
        ]
    if len(summary.objectives) in (2, 3):  # Optuna draws the front of the search's own objectives
        names = [_LABELS[o] for o in summary.objectives]
        figs.append(("pareto", f"Pareto front of the search ({', '.join(names)})",
                     vis.plot_pareto_front(study, target_names=names)))
    figs += [
        ("pareto-params", "Validation accuracy vs parameters (Pareto front)", _pareto(summary, "n_params", "parameters", go)),
        ("pareto-flops", "Validation accuracy vs FLOPs (Pareto front)", _pareto(summary, "flops", "FLOPs", go)),
    ]
    if "latency_ms" in summary.pareto:
        figs.append(("pareto-latency", "Validation accuracy vs ONNX latency on this CPU (Pareto front)",
                     _pareto(summary, "latency_ms", "milliseconds per image", go)))
    if summary.export:
        figs += _export_figures(summary.export, go)
    return figs


_LABELS = {"accuracy": "validation accuracy", "params": "parameters", "flops": "FLOPs", "latency": "latency (ms)"}


def write_report(study_name: str | None, storage: str, out: Path, option: str = "--out") -> Summary:
    """Write the HTML report of a study to `out` (checked first, written atomically); returns what it shows.
    `option` names `out` in messages: a report is never written over the storage it reads."""
    check_file_target(out, "the report", need=8 << 20)
    check_not_input(out, option, storage_inputs(storage))
    quiet_optuna()
    study = load_study(study_name, storage)
    summary = summarize(study)
    sections = []
    for i, (fig_id, title, fig) in enumerate(figures(study, summary)):
        fig.update_layout(title=None, margin={"t": 30})
        div = fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{fig_id}", config={"responsive": True})
        sections.append(f'<section class="figure" id="{fig_id}"><h2>{html.escape(title)}</h2>{div}</section>')
    page = _PAGE.format(
        title=html.escape(f"nas report: {summary.study}"),
        header=_header(summary, storage),
        top=_top_table(summary.top),
        figures="\n".join(sections),
        not_drawn=_not_drawn(summary.not_drawn),
    )
    write_file(out, page)
    return summary


# ---------------------------------------------------------------------------------------------


def _curves(summary: Summary, go: Any) -> Any:
    fig = go.Figure()
    shown = set()
    for c in summary.curves:
        pruned = c["state"] != "complete"
        group = c["state"]
        fig.add_trace(go.Scatter(
            x=c["epochs"], y=c["val_acc"], mode="lines+markers", name=group, legendgroup=group,
            showlegend=group not in shown, opacity=0.5 if pruned else 0.9,
            line={"dash": "dot" if pruned else "solid", "color": "#999" if pruned else None, "width": 1 if pruned else 2},
            marker={"size": 4, "symbol": "x" if pruned else "circle"},
            hovertext=f"trial {c['number']} ({c['state']}{': ' + c['reason'] if c['reason'] else ''})", hoverinfo="text+y",
        ))
        shown.add(group)
    fig.update_layout(xaxis_title="epoch", yaxis_title="validation accuracy")
    return fig


def _pareto(summary: Summary, cost: str, label: str, go: Any) -> Any:
    points = summary.size
    on_front = set(summary.pareto[cost])
    front = sorted((p for p in points if p["number"] in on_front), key=lambda p: p[cost])
    fig = go.Figure([
        go.Scatter(x=[p[cost] for p in points], y=[p["value"] for p in points], mode="markers", name="trials",
                   text=[f"#{p['number']} {p['arch']}" for p in points], marker={"color": "#8aa", "size": 7}),
        go.Scatter(x=[p[cost] for p in front], y=[p["value"] for p in front], mode="lines+markers", name="Pareto front",
                   line={"shape": "hv", "color": "#d62728"}, text=[f"#{p['number']} {p['arch']}" for p in front],
                   marker={"size": 10}),
    ])
    fig.update_layout(xaxis_title=label, xaxis_type="log", yaxis_title="validation accuracy")
    return fig


def _export_figures(export: dict[str, Any], go: Any) -> list[tuple[str, str, Any]]:
    classes, confusion = export["classes"], export["confusion"]
    matrix = go.Figure(go.Heatmap(z=confusion, x=classes, y=classes, colorscale="Blues", text=confusion,
                                  texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    matrix.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", height=550)
    per_class = export["per_class_accuracy"]
    bars = go.Figure(go.Bar(x=list(per_class), y=list(per_class.values()), text=[f"{v:.3f}" for v in per_class.values()]))
    bars.update_layout(yaxis_title="test accuracy", yaxis_range=[0, 1])
    where = f"trial #{export['trial']}, exported to {export.get('path', '?')}, test accuracy {export['test_accuracy']:.4f}"
    return [("confusion", f"Test confusion matrix ({where})", matrix), ("per-class", "Test accuracy per class", bars)]


def _header(summary: Summary, storage: str) -> str:
    best = summary.best
    counts = ", ".join(f"{n} {state}" for state, n in summary.counts.items())
    return (f"<h1>Study {html.escape(summary.study)}</h1><p>{html.escape(storage)} · "
            f"{counted(sum(summary.counts.values()), 'trial')} ({html.escape(counts)}) · best validation accuracy <b>{best['val_accuracy']:.4f}</b> "
            f"(trial #{best['number']}: {html.escape(best['arch'] or '')})"
            + (f" · a Pareto front of {counted(len(summary.front), 'net')} for {html.escape(', '.join(summary.objectives))}"
               if summary.front is not None else "") + "</p>")


def _not_drawn(missing: list[tuple[str, str]]) -> str:
    items = "".join(f"<li>{html.escape(title)} — {html.escape(why)}</li>" for title, why in missing)
    return f'<section id="not-drawn"><h2>Not drawn</h2><ul>{items}</ul></section>' if missing else ""


def _top_table(rows: list[dict[str, Any]]) -> str:
    head = "<tr><th>#</th><th>val acc</th><th>params</th><th>MFLOPs</th><th>epochs</th><th>seconds</th><th>architecture</th></tr>"
    body = "".join(
        f"<tr><td>{r['number']}</td><td>{r['val_accuracy']:.4f}</td><td>{r['n_params']:,}</td>"
        f"<td>{r['flops'] / 1e6:.2f}</td><td>{r['epochs_run']}</td><td>{r['seconds'] or 0:.1f}</td>"
        f"<td class=arch>{html.escape(r['arch'] or '')}</td></tr>"
        for r in rows
    )
    return f'<section id="top"><h2>Top {counted(len(rows), "trial")}</h2><table>{head}{body}</table></section>'


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }} td, th {{ padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }}
td.arch {{ text-align: left; font-family: monospace; }}
section {{ margin-top: 2em; }}
</style></head>
<body>
{header}
{top}
{figures}
{not_drawn}
</body></html>
"""
