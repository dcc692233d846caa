"""The views of a runbook run: the console table, the JSON document, JUnit XML for CI, and a
Markdown report with one timeline picture per case.

All of them read `RunbookResult` and nothing else. Times on timelines and in the JSON are
seconds since the case started (time.monotonic() values mean nothing outside the run).
"""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from nornir_k8sha.runbook.measure import acknowledged_in_fault, gaps
from nornir_k8sha.runbook.results import CaseResult, Expectation, Figures, RunbookResult, Sample

#: Failed samples kept one by one in the JSON document (the rest are counted).
JSON_MAX_FAILED_SAMPLES = 500
#: The console width the case table is made for (a wider terminal shows the same table).
TABLE_WIDTH = 80
#: The lanes of a timeline, bottom to top, and their labels.
LANES: tuple[tuple[str, str], ...] = (("write", "writes"), ("read-keepalive", "kept-alive read"),
                                      ("read-fresh", "fresh-TLS read"))
_VERDICT_STYLE = {"passed": "green", "failed": "bold red", "error": "bold red",
                  "skipped": "dim"}


# --- small formatters ----------------------------------------------------------------------------


def _s(value: float | None, none: str = "-") -> str:
    return none if value is None else f"{value:.2f} s"


def bound_text(exp: Expectation | None) -> str:
    """The expected bound in a few characters."""
    if exp is None:
        return "-"
    if exp.downtime_s is None:
        return "refuse writes" if exp.writes_must_be_refused else "no bound"
    if exp.downtime_s == 0:
        return "no failure"
    return f"<= {exp.downtime_s:.2f} s"


def measured_text(fig: Figures | None) -> str:
    return "-" if fig is None else f"{fig.downtime_s:.2f} s"


def requests_text(fig: Figures | None) -> str:
    return "-" if fig is None else f"{fig.failed}/{fig.requests}"


def writes_text(fig: Figures | None) -> str:
    return "-" if fig is None else f"{fig.writes_lost}/{fig.writes_acknowledged}"


def recovery_text(fig: Figures | None) -> str:
    if fig is None:
        return "-"
    if fig.recover_s is None:
        return "never" if fig.requests else "-"
    return f"{fig.recover_s:.2f} s"


def measured_vs_expected(case: CaseResult) -> str:
    """One line a CI log shows: what was measured next to what was expected."""
    fig, exp = case.figures, case.expectation
    parts = []
    if fig is not None:
        parts.append(f"measured downtime {fig.downtime_s:.2f} s, {fig.failed} of "
                     f"{fig.requests} requests failed, {fig.writes_lost} of "
                     f"{fig.writes_acknowledged} acknowledged writes lost, recovery "
                     f"{recovery_text(fig)} (API back {_s(fig.api_recover_s, 'never')} after "
                     "the lift)")
        if fig.takeover_s is not None:
            parts.append(f"takeover {fig.takeover_s:.2f} s")
    if exp is not None:
        parts.append(f"expected {bound_text(exp)}"
                     + (f", takeover <= {exp.takeover_s:.2f} s" if exp.takeover_s else ""))
    if case.reason:
        parts.append(case.reason)
    return "; ".join(parts) or case.verdict


# --- console ------------------------------------------------------------------------------------


def case_table(result: RunbookResult) -> Table:
    """case, expected bound, measured downtime, requests lost, writes lost, recovery, verdict.

    Readable at 80 columns: the figures keep their full width (each column is as wide as its
    widest cell), the case name takes the rest and is never broken across lines; the reasons of
    failed cases go into the caption.
    """
    table = Table(title=escape(f"{result.runbook} on {result.cluster}")
                  + (" (dry run)" if result.dry_run else ""), title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    rows = [[case.name, bound_text(case.expectation), measured_text(case.figures),
             requests_text(case.figures), writes_text(case.figures),
             recovery_text(case.figures), case.verdict] for case in result.cases]
    headers = ("case", "expected", "down", "failed", "w.lost", "recover", "verdict")
    for i, header in enumerate(headers):
        widest = max([len(header)] + [len(row[i]) for row in rows])
        if i == 0:
            table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=max(
                12, TABLE_WIDTH - sum(max([len(h)] + [len(r[j]) for r in rows]) + 2
                                      for j, h in enumerate(headers) if j)))
        else:
            table.add_column(header, justify="left" if i == 6 else "right", no_wrap=True,
                             min_width=widest)
    notes = []
    for case, row in zip(result.cases, rows, strict=True):
        style = _VERDICT_STYLE.get(case.verdict, "")
        table.add_row(*(escape(cell) for cell in row[:-1]), f"[{style}]{row[-1]}[/]")
        if case.verdict in ("failed", "error") and case.reason:
            notes.append(f"{case.name}: {case.reason}")
    if notes:
        table.caption = escape("\n".join(notes))
        table.caption_justify = "left"
    return table


# --- JSON ---------------------------------------------------------------------------------------


def _origin(case: CaseResult) -> float:
    """The time a case's timeline counts from: its start, else its first event."""
    if case.started:
        return case.started
    times = [s.start for s in case.samples] + [m.at for m in case.marks]
    return min(times, default=0.0)


def _sample_dict(s: Sample, t0: float) -> dict[str, Any]:
    return {"kind": s.kind, "start_s": round(s.start - t0, 3), "end_s": round(s.end - t0, 3),
            "ok": s.ok, "status": s.status, "error": s.error, "seq": s.seq,
            "retried": s.retried,
            "retried_at_s": None if s.retried_at is None else round(s.retried_at - t0, 3)}


def _per_second(samples: Iterable[Sample], t0: float) -> list[dict[str, int]]:
    ok: Counter[int] = Counter()
    bad: Counter[int] = Counter()
    for s in samples:
        (ok if s.ok else bad)[int(s.end - t0)] += 1
    return [{"second": sec, "ok": ok[sec], "failed": bad[sec]} for sec in sorted(ok | bad)]


def _case_dict(case: CaseResult) -> dict[str, Any]:
    t0 = _origin(case)
    failed = [s for s in case.samples if not s.ok]
    by_kind = {kind: {"requests": sum(1 for s in case.samples if s.kind == kind),
                      "failed": sum(1 for s in failed if s.kind == kind),
                      "retried": sum(1 for s in case.samples if s.kind == kind and s.retried)}
               for kind, _ in LANES}
    return {
        "name": case.name, "title": case.title, "verdict": case.verdict, "reason": case.reason,
        "duration_s": round(case.duration, 3),
        "expectation": asdict(case.expectation) if case.expectation else None,
        "figures": asdict(case.figures) if case.figures else None,
        "steady_before": [r.as_dict() for r in case.steady_before],
        "steady_after": [r.as_dict() for r in case.steady_after],
        "deviations": list(case.deviations),
        "steps": [asdict(s) for s in case.steps],
        "rollbacks": [asdict(s) for s in case.rollbacks],
        "marks": [{"at_s": round(m.at - t0, 3), "label": m.label, "kind": m.kind}
                  for m in case.marks],
        "samples": {
            "by_kind": by_kind,
            "per_second": _per_second(case.samples, t0),
            "failed": [_sample_dict(s, t0) for s in failed[:JSON_MAX_FAILED_SAMPLES]],
            "failed_left_out": max(0, len(failed) - JSON_MAX_FAILED_SAMPLES),
            # sent again on a new connection after the server closed a kept-alive one
            # before answering (docs/verify.md): what the first attempt met
            "retried": [_sample_dict(s, t0) for s in case.samples
                        if s.retried][:JSON_MAX_FAILED_SAMPLES],
            # where every write must be refused: the ones that were not, to explain them
            "acknowledged_in_fault": [_sample_dict(s, t0) for s in _refused_yet_acked(case)],
        },
    }


def _refused_yet_acked(case: CaseResult) -> list[Sample]:
    fault = next((m.at for m in case.marks if m.kind == "fault"), None)
    if fault is None or case.expectation is None or not case.expectation.writes_must_be_refused:
        return []
    lift = next((m.at for m in case.marks if m.kind == "lift"), None)
    return acknowledged_in_fault(case.samples, case.marks, fault, lift)[:JSON_MAX_FAILED_SAMPLES]


def as_json(result: RunbookResult) -> dict[str, Any]:
    """The whole run as JSON-able data; samples summarised (per kind, per second, every
    failure up to JSON_MAX_FAILED_SAMPLES), so a long run stays a small file. Whatever a
    step put in its data that JSON cannot hold (a Path, a set) becomes its text."""
    doc = {
        "runbook": result.runbook, "path": result.path, "cluster": result.cluster,
        "passed": result.passed, "dry_run": result.dry_run,
        "started": (datetime.fromtimestamp(result.started_wall, UTC).isoformat()
                    if result.started_wall else None),
        "duration_s": round(result.duration, 3),
        "counts": dict(Counter(c.verdict for c in result.cases)),
        "cases": [_case_dict(c) for c in result.cases],
    }
    return json.loads(json.dumps(doc, default=str))


# --- JUnit XML ----------------------------------------------------------------------------------


def junit_xml(result: RunbookResult) -> str:
    """One <testcase> per case; a failed case has a <failure> whose message says what was
    measured and what was expected, an errored one an <error>, a skipped one <skipped>."""
    counts = Counter(c.verdict for c in result.cases)
    suites = ET.Element("testsuites", name=result.runbook)
    suite = ET.SubElement(
        suites, "testsuite", name=result.runbook, tests=str(len(result.cases)),
        failures=str(counts["failed"]), errors=str(counts["error"]),
        skipped=str(counts["skipped"]), time=f"{result.duration:.3f}")
    if result.started_wall:
        suite.set("timestamp", datetime.fromtimestamp(result.started_wall, UTC)
                  .strftime("%Y-%m-%dT%H:%M:%S"))
    props = ET.SubElement(suite, "properties")
    for name, value in (("cluster", result.cluster), ("runbook", result.path)):
        ET.SubElement(props, "property", name=name, value=value)
    for case in result.cases:
        tc = ET.SubElement(suite, "testcase", classname=f"runbook.{result.cluster}",
                           name=case.name, time=f"{case.duration:.3f}")
        message = measured_vs_expected(case)
        if case.verdict == "failed":
            ET.SubElement(tc, "failure", message=message, type="failed").text = _details(case)
        elif case.verdict == "error":
            ET.SubElement(tc, "error", message=message, type="error").text = _details(case)
        elif case.verdict == "skipped":
            ET.SubElement(tc, "skipped", message=case.reason or "skipped")
        ET.SubElement(tc, "system-out").text = _details(case)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _details(case: CaseResult) -> str:
    lines = [case.title, measured_vs_expected(case)]
    if case.expectation is not None:
        lines.append("expected: " + case.expectation.explanation)
    for label, steps in (("step", case.steps), ("rollback", case.rollbacks)):
        lines += [f"{label} {s.name}: {'ok' if s.ok else 'FAILED'} {s.message}".rstrip()
                  for s in steps]
    lines += [f"steady state during the method: {d}" for d in case.deviations]
    lines += [f"steady state after: {r}" for r in case.steady_after if not r.ok]
    return "\n".join(lines)


# --- Markdown with timelines --------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing file keeps its mode on O_CREAT
        fh.write(data)


def timeline_name(out: Path, index: int, case: CaseResult) -> Path:
    """Where case number `index` (from 1) of a report at `out` has its picture."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in case.name)
    return out.with_name(f"{out.stem}-{index:02d}-{safe}.png")


#: Colour and line style of each kind of mark on a timeline.
MARK_STYLES = {"fault": ("tab:red", "--"), "applied": ("tab:red", ":"), "lift": ("tab:green", "--"),
               "holder": ("tab:blue", ":"), "steady": ("tab:olive", "-."),
               "deviation": ("tab:orange", ":"), "step": ("0.45", ":"), "note": ("0.45", ":")}
#: Marks listed by number beside a timeline (the rest are drawn, not listed).
MAX_LISTED_MARKS = 14
#: Characters of a mark's label beside a timeline (the Markdown lists them whole).
MARK_LABEL_CHARS = 30


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _zoom(case: CaseResult, t0: float) -> tuple[float, float] | None:
    """The part of the timeline worth a close look: the downtime (or the fault) +- 1 s."""
    worst = max(gaps(case.samples), key=lambda g: g.length, default=None)
    faults = [m.at for m in case.marks if m.kind == "fault"]
    begin = [worst.begin] if worst is not None and case.figures and case.figures.downtime_s else []
    end = [worst.end] if begin and worst is not None else []
    if not begin and not faults:
        return None
    lo = min(begin + faults) - t0 - 1.0
    hi = max(end + faults[:1]) - t0 + 1.0
    return lo, hi


def _plot_lanes(ax: Any, case: CaseResult, t0: float) -> None:
    """Requests by kind: a tick where one was answered, a cross where one failed, a thin bar
    for how long each took; the downtime shaded; numbered marks."""
    for lane, (kind, _) in enumerate(LANES):
        for ok, colour in ((True, "tab:green"), (False, "tab:red")):
            mine = [s for s in case.samples if s.kind == kind and s.ok is ok]
            if not mine:
                continue
            y = [lane + (0.12 if ok else -0.12)] * len(mine)
            ax.hlines(y, [s.start - t0 for s in mine], [s.end - t0 for s in mine],
                      colors=colour, linewidth=1, alpha=0.5)
            ax.scatter([s.end - t0 for s in mine], y, s=14 if ok else 22, c=colour,
                       marker="|" if ok else "x", linewidths=1,
                       label="answered" if ok else "failed")
    worst = max(gaps(case.samples), key=lambda g: g.length, default=None)
    if case.figures is not None and worst is not None and case.figures.downtime_s > 0:
        ax.axvspan(worst.begin - t0, worst.end - t0, color="tab:red", alpha=0.15,
                   label=f"downtime {case.figures.downtime_s:.2f} s")
    for number, m in enumerate(case.marks, 1):
        colour, style = MARK_STYLES.get(m.kind, MARK_STYLES["note"])
        ax.axvline(m.at - t0, color=colour, linestyle=style, linewidth=1.2)
        ax.annotate(str(number), (m.at - t0, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7, color=colour, annotation_clip=True)
    ax.set_yticks(range(len(LANES)), [label for _, label in LANES])
    ax.set_ylim(-0.5, len(LANES) - 0.5)
    ax.grid(axis="x", alpha=0.3)


def _draw(case: CaseResult) -> bytes:
    """The timeline of one case as PNG bytes: the whole case, and below it a close look at
    the outage; the marks numbered and listed on the right."""
    # lazy: matplotlib is heavy and only the Markdown report draws
    from matplotlib.figure import Figure

    t0 = _origin(case)
    zoom = _zoom(case, t0)
    fig = Figure(figsize=(10, 5.4 if zoom else 3.0), dpi=100, layout="constrained")
    axes = fig.subplots(2 if zoom else 1, 1, squeeze=False)[:, 0]
    for ax in axes:
        _plot_lanes(ax, case, t0)
    axes[0].set_title(f"{case.name}: {case.verdict}", fontsize=10, loc="left", pad=12)
    if zoom:
        axes[1].set_xlim(*zoom)
        axes[1].set_title("around the outage", fontsize=8, loc="left", pad=10)
    axes[-1].set_xlabel("seconds since the case started")
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    listed = [f"{n} {m.at - t0:6.2f} s {_short(m.label, MARK_LABEL_CHARS)}"
              for n, m in enumerate(case.marks[:MAX_LISTED_MARKS], 1)]
    if len(case.marks) > MAX_LISTED_MARKS:
        listed.append(f"... {len(case.marks) - MAX_LISTED_MARKS} more")
    axes[0].legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                   fontsize=7, frameon=False)
    if listed:
        axes[-1 if zoom else 0].text(1.01, 0.0 if zoom else -0.05, "\n".join(listed),
                                      transform=axes[-1].transAxes, fontsize=7, va="bottom",
                                      ha="left", family="monospace")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(result: RunbookResult, out: Path) -> str:
    """Write the Markdown report to `out` (0600) and one timeline PNG per case beside it;
    returns the Markdown text."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {result.runbook}", "",
             f"Cluster `{result.cluster}`, runbook `{result.path}`"
             + (f", started {datetime.fromtimestamp(result.started_wall, UTC):%Y-%m-%d %H:%M}"
                " UTC" if result.started_wall else "")
             + f", {result.duration:.0f} s: **{'passed' if result.passed else 'FAILED'}**"
             + (" (dry run)" if result.dry_run else "") + ".", "",
             "| case | expected | downtime | failed requests | writes lost | recovery | verdict |",
             "|---|---|---|---|---|---|---|"]
    for case in result.cases:
        fig = case.figures
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            case.name, bound_text(case.expectation), measured_text(fig), requests_text(fig),
            writes_text(fig), recovery_text(fig), case.verdict)) + " |")
    for index, case in enumerate(result.cases, 1):
        lines += ["", f"## {case.name}: {case.title}", "",
                  f"**{case.verdict}**" + (f": {case.reason}" if case.reason else ""), ""]
        if case.expectation is not None:
            lines += [f"Expected: {case.expectation.explanation}.", ""]
        if case.figures is not None:
            text = measured_vs_expected(case)
            lines += [text[:1].upper() + text[1:] + ".", ""]
        for label, steps in (("step", case.steps), ("rollback", case.rollbacks)):
            lines += [f"- {label} `{s.name}` on {', '.join(s.hosts) or '-'}: "
                      f"{'ok' if s.ok else '**failed**'} ({s.duration:.1f} s)"
                      + (f" {s.message}" if s.message else "") for s in steps]
        lines += [f"- steady state did not hold during the method: {d}"
                  for d in case.deviations]
        if case.samples or case.marks:
            png = timeline_name(out, index, case)
            _write_private(png, _draw(case))
            t0 = _origin(case)
            lines += ["", f"![timeline of {case.name}]({png.name})", ""]
            lines += [f"{n}. {m.at - t0:.2f} s: {m.label} ({m.kind})"
                      for n, m in enumerate(case.marks, 1)]
    text = "\n".join(lines) + "\n"
    _write_private(out, text.encode())
    return text
