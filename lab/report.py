"""A run directory rendered into one self-contained report.html with inline SVG plots."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.memory import MemorySnapshot, parse_buddyinfo

REPORT_NAME = "report.html"
PHASE_COLOURS = {"kernel": "#8c564b", "image": "#9467bd", "accel-probe": "#7f7f7f",
                 "create": "#1f77b4", "boot": "#2ca02c", "ssh": "#17becf"}
FAIL_COLOUR = "#d62728"
OTHER_COLOUR = "#bcbd22"
OUTCOME_COLOURS = {"passed": "#dff0d8", "test-failure": "#f2dede", "kernel-crash": "#f2b8b8",
                   "hang": "#fcd9a8", "precondition-unreachable": "#eeeeee",
                   "infrastructure": "#d9e4f2", "infrastructure-ssh": "#d9e4f2",
                   "infrastructure-boot": "#d9e4f2", "configuration": "#e8e0f0"}
UNCLASSIFIED = "(not classified)"


class ReportError(LabError):
    """A run directory that cannot be rendered; names the file."""


def _load_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from exc


def phase_bars(events: list[dict[str, Any]]) -> list[tuple[str, str, float, float, bool]]:
    """(subject, phase, start, seconds, failed) of every phase that ended or failed."""
    bars = []
    for event in events:
        if event.get("state") in ("end", "fail") and event.get("elapsed") is not None:
            elapsed = float(event["elapsed"])
            bars.append((str(event["subject"]), str(event["phase"]),
                         float(event["at"]) - elapsed, elapsed, event["state"] == "fail"))
    return bars


def timeline_svg(events: list[dict[str, Any]]) -> str:
    bars = phase_bars(events)
    if not bars:
        return "<p>No phase timings recorded.</p>"
    subjects = list(dict.fromkeys(b[0] for b in bars))
    end = max(start + length for _, _, start, length, _ in bars) or 1.0
    left, width, row = 120, 760, 28
    scale = width / end
    height = row * len(subjects) + 40
    parts = [f'<svg class="plot timeline" xmlns="http://www.w3.org/2000/svg" '
             f'width="{left + width + 20}" height="{height}">']
    for i, subject in enumerate(subjects):
        y = 10 + i * row
        parts.append(f'<text x="4" y="{y + 16}" font-size="12">{html.escape(subject)}</text>')
    for subject, phase, start, length, failed in bars:
        y = 10 + subjects.index(subject) * row
        colour = FAIL_COLOUR if failed else PHASE_COLOURS.get(phase, OTHER_COLOUR)
        parts.append(
            f'<rect class="phase" x="{left + start * scale:.1f}" y="{y}" '
            f'width="{max(length * scale, 1.0):.1f}" height="{row - 8}" fill="{colour}">'
            f'<title>{html.escape(phase)} {html.escape(subject)}: {length:.2f}s'
            f'{" FAILED" if failed else ""}</title></rect>')
    axis_y = height - 22
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" '
                 f'stroke="black"/>')
    for k in range(6):
        x = left + width * k / 5
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="11" '
                     f'text-anchor="middle">{end * k / 5:.1f}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def timings_table(events: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{html.escape(p)}</td><td>{length:.2f}</td>"
        f"<td>{'failed' if failed else 'ok'}</td></tr>"
        for s, p, _, length, failed in phase_bars(events))
    return ("<table><tr><th>node</th><th>phase</th><th>seconds</th><th>state</th></tr>"
            f"{rows}</table>")


def _property_value(value: object) -> str:
    """A property as HTML: artifact paths become links."""
    text = html.escape(str(value))
    return f'<a href="{text}">{text}</a>' if str(value).startswith("artifacts/") else text


def results_table(results: list[dict[str, Any]]) -> str:
    if not results:
        return "<p>No test results recorded.</p>"
    rows = []
    for result in results:
        props = dict(result.get("properties") or {})
        # the class JUnit carries: the test's "outcome" property, never pytest's outcome
        outcome_class = str(props.pop("outcome", UNCLASSIFIED))
        colour = OUTCOME_COLOURS.get(outcome_class, "#f9f2f4")
        shown = ", ".join(f"{html.escape(str(k))}={_property_value(v)}"
                          for k, v in props.items())
        if result.get("reason"):
            shown = f"{html.escape(str(result['reason']))}<br/>{shown}"
        rows.append(f'<tr style="background:{colour}"><td>{html.escape(result["nodeid"])}</td>'
                    f'<td>{html.escape(str(result.get("outcome", "")))}</td>'
                    f'<td class="class">{html.escape(outcome_class)}</td>'
                    f'<td>{float(result.get("duration", 0.0)):.2f}</td><td>{shown}</td></tr>')
    return ("<table><tr><th>test</th><th>outcome</th><th>class</th><th>seconds</th>"
            f"<th>properties</th></tr>{''.join(rows)}</table>")


def _zone_free(snapshot: Any) -> dict[str, list[int]]:
    """Free blocks per order per zone from a FragmentRun snapshot or summary buddyinfo."""
    if isinstance(snapshot, dict) and "files" in snapshot:
        parsed = MemorySnapshot.from_json(json.dumps(snapshot))
        return {z.zone: list(z.free) for z in parsed.buddyinfo}
    if isinstance(snapshot, str):
        return {z.zone: list(z.free) for z in parse_buddyinfo(snapshot)}
    if isinstance(snapshot, list):
        return {str(z["zone"]): [int(n) for n in z["free"]] for z in snapshot}
    return {}


def _migratetype_free(snapshot: Any) -> dict[str, list[int]]:
    """Free blocks per order per 'zone migratetype' (pagetypeinfo), when the snapshot has it."""
    if not (isinstance(snapshot, dict) and "files" in snapshot):
        return {}
    parsed = MemorySnapshot.from_json(json.dumps(snapshot))
    if parsed.pagetypeinfo is None:
        return {}
    return {f"{f.zone} {f.migratetype}": list(f.free) for f in parsed.pagetypeinfo.free
            if any(f.free)}


def buddy_svg(title: str, before: dict[str, list[int]], after: dict[str, list[int]],
              what: str = "zone") -> str:
    """Grouped bars per order (log scale), before and after, one panel per zone (or other
    key named by `what`)."""
    panels = []
    for zone in dict.fromkeys([*before, *after]):
        b, a = before.get(zone, []), after.get(zone, [])
        orders = max(len(b), len(a))
        top = max([*b, *a, 1])
        log_top = math.log10(top + 1)
        width, height, left = 44 * orders + 60, 180, 50
        kind = "buddy" if what == "zone" else what
        parts = [f'<svg class="plot {kind}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
                 f'height="{height + 40}"><text x="{left}" y="14" font-size="12">'
                 f'{html.escape(title)} {what} {html.escape(zone)} (log scale)</text>']
        for order in range(orders):
            for k, (values, colour) in enumerate(((b, "#1f77b4"), (a, "#ff7f0e"))):
                value = values[order] if order < len(values) else 0
                h = (math.log10(value + 1) / log_top) * (height - 30) if log_top else 0
                x = left + order * 44 + k * 18
                parts.append(f'<rect x="{x}" y="{height - h:.1f}" width="16" height="{h:.1f}" '
                             f'fill="{colour}"><title>order {order} '
                             f'{"before" if k == 0 else "after"}: {value}</title></rect>')
            parts.append(f'<text x="{left + order * 44 + 17}" y="{height + 14}" font-size="11" '
                         f'text-anchor="middle">{order}</text>')
        parts.append(f'<text x="{left}" y="{height + 32}" font-size="11">order; blue before, '
                     f'orange after</text></svg>')
        panels.append("".join(parts))
    return "".join(panels)


def probes_table(probes: list[dict[str, Any]]) -> str:
    if not probes:
        return "<p>No allocation probes.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(str(p.get('gfp')))}</td><td>{p.get('order')}</td>"
        f"<td>{p.get('succeeded')}/{p.get('count')}</td></tr>" for p in probes)
    return ("<table class='probes'><tr><th>gfp</th><th>order</th><th>succeeded</th></tr>"
            f"{rows}</table>")


def fragment_section(path: Path) -> str:
    data = _load_json(path, {})
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    before = _zone_free(data.get("before", data.get("buddyinfo_before")))
    after = _zone_free(data.get("after", data.get("buddyinfo_after")))
    head = (f"<h3>{html.escape(path.name)}</h3><p>profile {html.escape(str(data.get('profile')))}"
            f", seed {data.get('seed')}, reached {data.get('reached')}"
            f"{', ' + html.escape(str(data['reason'])) if data.get('reason') else ''}, "
            f"{data.get('elapsed_s')} s, free order-10 blocks {data.get('free_blocks_before')}"
            f" -> {data.get('free_blocks_after')}</p>")
    by_type = buddy_svg(path.stem, _migratetype_free(data.get("before")),
                        _migratetype_free(data.get("after")), what="migratetype")
    return (head + buddy_svg(path.stem, before, after) + by_type
            + probes_table(data.get("probes") or []))


def render(run_dir: Path) -> str:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a run directory")
    events = _load_json(run_dir / "events.json", [])
    results = _load_json(run_dir / "results.json", [])
    state = _load_json(run_dir / "state.json", {})
    fragments = sorted((run_dir / "artifacts").glob("fragment-*.json"))
    artifacts = sorted(p.name for p in (run_dir / "artifacts").glob("*")) \
        if (run_dir / "artifacts").is_dir() else []
    run_id = state.get("run_id", run_dir.name) if isinstance(state, dict) else run_dir.name
    body = [f"<h1>hplab run {html.escape(str(run_id))}</h1>",
            "<h2>Boot and phase timings</h2>", timeline_svg(events), timings_table(events),
            "<h2>Tests</h2>", results_table(results)]
    if fragments:
        body.append("<h2>Fragmentation</h2>")
        body.extend(fragment_section(p) for p in fragments)
    if artifacts:
        body.append("<h2>Artifacts</h2><ul>" + "".join(
            f'<li><a href="artifacts/{html.escape(n)}">{html.escape(n)}</a></li>'
            for n in artifacts) + "</ul>")
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}svg{display:block}"
             "svg.buddy,svg.migratetype{display:inline-block;margin-right:1em}")
    title = html.escape(str(run_id))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'/><title>hplab {title}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run_dir: Path) -> Path:
    target = run_dir / REPORT_NAME
    target.write_text(render(run_dir))
    return target
