"""A run directory rendered into one self-contained report.html, and two runs compared
into compare.html: inline SVG plots, inline CSS and a little inline script, nothing
fetched from anywhere. The page frame, style and outcome colours serve the matrix page
too (lab.report.matrixpage)."""

from __future__ import annotations

import html
import json
import math
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab.guest.memory import MemorySnapshot, parse_buddyinfo
from lab.report.compare import Comparison, PhaseTotal, RunSide, Slowdown, Transition
from lab.report.results import (
    ARTIFACT_PREFIX,
    PART,
    PART_DIR,
    PARTS_FILE,
    MergedPart,
    RunFileError,
    TestResult,
    console_tail,
    load_events,
    load_parts,
    load_results_json,
    phase_bars,
    read_json,
)

REPORT_NAME = "report.html"
COMPARE_NAME = "compare.html"
SLOWEST = 10
CONSOLE_LINES = 40
PHASE_COLOURS = {"kernel": "#8c564b", "image": "#9467bd", "accel-probe": "#7f7f7f",
                 "create": "#1f77b4", "boot": "#2ca02c", "ssh": "#17becf"}
FAIL_COLOUR = "#d62728"
OTHER_COLOUR = "#bcbd22"
OLD_COLOUR, NEW_COLOUR = "#1f77b4", "#ff7f0e"
OUTCOME_COLOURS = {"passed": "#dff0d8", "test-failure": "#f2dede", "kernel-crash": "#f2b8b8",
                   "hang": "#fcd9a8", "precondition-unreachable": "#eeeeee",
                   "infrastructure": "#d9e4f2", "infrastructure-ssh": "#d9e4f2",
                   "infrastructure-boot": "#d9e4f2", "configuration": "#e8e0f0"}
BADGE_COLOURS = {"passed": "#2e7d32", "test-failure": "#c62828", "kernel-crash": "#6a1010",
                 "hang": "#e65100", "precondition-unreachable": "#757575",
                 "infrastructure": "#1f5fa8", "infrastructure-ssh": "#1f5fa8",
                 "infrastructure-boot": "#1f5fa8", "configuration": "#6a3d9a"}
OTHER_BADGE = "#ad1457"
# The classes counted at the top of a report, in this order, even when no test has them.
COUNTED = ("passed", "test-failure", "kernel-crash", "hang", "infrastructure",
           "infrastructure-ssh", "infrastructure-boot", "configuration",
           "precondition-unreachable")
ALWAYS_COUNTED = ("passed", "test-failure", "kernel-crash", "hang", "infrastructure",
                  "precondition-unreachable")
CLASS_LABELS = {"precondition-unreachable": "skipped"}
# Failures are listed most severe first.
SEVERITY = ("kernel-crash", "hang", "test-failure", "configuration", "infrastructure-boot",
            "infrastructure-ssh", "infrastructure")
NONE_SHOWN = "(none)"
COLUMN_PROPERTIES = ("node", "kernel", PART, PART_DIR)  # shown in columns of their own
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\x1b\[[0-9;?]*[A-Za-z]")

# Kept under its old name for callers of the report.
ReportError = RunFileError

STYLE = """
body{font-family:sans-serif;margin:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;vertical-align:top}
th{background:#f4f4f4}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable th::after{content:" \\2195";color:#999}
table.sortable th[aria-sort=ascending]::after{content:" \\2191";color:#222}
table.sortable th[aria-sort=descending]::after{content:" \\2193";color:#222}
svg{display:block}svg.buddy,svg.migratetype{display:inline-block;margin-right:1em}
nav a{margin-right:1em}
ul.counts{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.5em}
li.count{padding:.4em .8em;border-radius:4px;color:#fff;font-size:15px;cursor:pointer}
li.count b{font-size:22px;margin-left:.3em}
li.count.zero{opacity:.35}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px;
 font-weight:normal;margin-right:.5em}
article.failure{border-left:6px solid #c62828;padding:.2em .8em;margin:.8em 0;background:#fcf7f7}
article.failure h3{margin:.3em 0;font-size:15px}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.5em;overflow-x:auto;font-size:12px;
 max-height:28em}
.meta{color:#555;font-size:13px;margin:.2em 0}
.bar{background:#8fb3d9;height:10px}
.filters{margin:.5em 0}.filters select{margin-right:1em}
.note{color:#555;font-style:italic}
td.nowrap{white-space:nowrap}td.props{overflow-wrap:anywhere}
.good{color:#2e7d32}.bad{color:#c62828}
td.cell{white-space:nowrap}td.cell a{color:inherit}.tally{white-space:nowrap}
"""

SCRIPT = """
(function () {
  function each(list, f) { Array.prototype.forEach.call(list, f); }
  function sortKey(row, index, numeric) {
    var cell = row.cells[index];
    var text = cell.getAttribute('data-sort') || cell.textContent;
    return numeric ? (parseFloat(text) || 0) : text.toLowerCase();
  }
  each(document.querySelectorAll('table.sortable'), function (table) {
    var body = table.tBodies[0];
    each(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener('click', function () {
        var numeric = th.getAttribute('data-type') === 'number';
        var up = th.getAttribute('aria-sort') !== 'ascending';
        each(th.parentNode.cells, function (c) { c.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = sortKey(a, index, numeric), y = sortKey(b, index, numeric);
          return (x < y ? -1 : (x > y ? 1 : 0)) * (up ? 1 : -1);
        });
        each(rows, function (row) { body.appendChild(row); });
      });
    });
  });
  var filters = document.querySelectorAll('select[data-filter]');
  function applyFilters() {
    var table = document.getElementById('all-tests');
    if (!table) { return; }
    var shown = 0, rows = table.tBodies[0].rows;
    each(rows, function (row) {
      var keep = Array.prototype.every.call(filters, function (select) {
        var wanted = select.value;
        return !wanted || row.getAttribute('data-' + select.getAttribute('data-filter')) === wanted;
      });
      row.hidden = !keep;
      if (keep) { shown += 1; }
    });
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' tests shown';
  }
  each(filters, function (select) { select.addEventListener('change', applyFilters); });
  // a console tail's last lines matter most: show them first
  each(document.querySelectorAll('details.console'), function (details) {
    var pre = details.querySelector('pre');
    pre.scrollTop = pre.scrollHeight;
    details.addEventListener('toggle', function () { pre.scrollTop = pre.scrollHeight; });
  });
  // A link can carry a view: report.html#class=kernel-crash&node=cn1&sort=-seconds
  var view = {};
  each(location.hash.replace(/^#/, '').split('&'), function (part) {
    var pair = part.split('=');
    if (pair.length === 2) { view[pair[0]] = decodeURIComponent(pair[1]); }
  });
  each(filters, function (select) {
    var wanted = view[select.getAttribute('data-filter')];
    if (wanted !== undefined) { select.value = wanted; }
  });
  if (view.sort) {
    var name = view.sort.replace(/^-/, '');
    each(document.querySelectorAll('#all-tests th'), function (th) {
      if (th.textContent === name) {
        th.click();
        if (view.sort.charAt(0) === '-') { th.click(); }
      }
    });
  }
  applyFilters();
  each(document.querySelectorAll('[data-show-class]'), function (chip) {
    chip.addEventListener('click', function () {
      var select = document.querySelector('select[data-filter="class"]');
      if (!select) { return; }
      select.value = chip.getAttribute('data-show-class');
      applyFilters();
      document.getElementById('tests').scrollIntoView();
    });
  });
})();
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def _printable(text: str) -> str:
    """`text` without terminal escapes and control characters (consoles hold both)."""
    return CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def html_page(title: str, body: Iterable[str]) -> str:
    # CDATA keeps the script well-formed XML too; browsers read the markers as comments.
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'/><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}"
            f"<script>//<![CDATA[\n{SCRIPT}\n//]]></script></body></html>\n")


def class_label(outcome_class: str) -> str:
    return CLASS_LABELS.get(outcome_class, outcome_class)


def badge(outcome_class: str) -> str:
    colour = BADGE_COLOURS.get(outcome_class, OTHER_BADGE)
    return (f'<span class="badge" style="background:{colour}">'
            f"{esc(class_label(outcome_class))}</span>")


def _severity(test: TestResult) -> int:
    cls = test.outcome_class
    return SEVERITY.index(cls) if cls in SEVERITY else len(SEVERITY)


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


def class_counts(results: list[TestResult]) -> str:
    """One coloured count per outcome class; a click shows that class in the table."""
    counts = Counter(t.outcome_class for t in results)
    shown = [*COUNTED, *sorted(set(counts) - set(COUNTED))]
    chips = []
    for cls in shown:
        if counts[cls] == 0 and cls not in ALWAYS_COUNTED:
            continue
        colour = BADGE_COLOURS.get(cls, OTHER_BADGE)
        zero = " zero" if counts[cls] == 0 else ""
        chips.append(f'<li class="count{zero}" data-class="{esc(cls)}" '
                     f'data-show-class="{esc(cls)}" style="background:{colour}" title="{esc(cls)}">'
                     f"{esc(class_label(cls))}<b>{counts[cls]}</b></li>")
    return f'<ul class="counts" id="counts">{"".join(chips)}</ul>'


def worker_prefix(run_dir: Path, test: TestResult) -> str:
    """Where a test's own files are, relative to `run_dir`: "" in a run of one process;
    under xdist the worker's run directory, which the controller's links as gw0, ..."""
    worker = test.worker
    if worker and Path(worker).name == worker and (run_dir / worker).is_dir():
        return f"{worker}/"
    return ""


def _artifact_links(test: TestResult, has_artifacts: bool, prefix: str = "") -> list[str]:
    links = [f'<a href="{esc(prefix + path)}">{esc(name.replace("_", " "))}</a>'
             for name, path in test.artifacts().items()]
    if has_artifacts:
        links.append(f'<a href="{esc(posixpath.join(prefix + test.part_dir, "artifacts/"))}">'
                     "all artifacts</a>")
    return links


def _console_tails(run_dir: Path, test: TestResult) -> list[str]:
    parts = []
    prefix = worker_prefix(run_dir, test)
    for node in test.nodes():
        if Path(node).name != node:  # a node name never leads out of the run directory
            continue
        console = posixpath.join(prefix + test.part_dir, node, "console.log")
        tail = console_tail(run_dir / console, CONSOLE_LINES)
        if tail is None:
            continue
        opened = ' open="open"' if test.outcome_class in ("kernel-crash", "hang") else ""
        parts.append(f'<details class="console"{opened}><summary>console of {esc(node)}, '
                     f"last {CONSOLE_LINES} lines at the end of the run "
                     f'(<a href="{esc(console)}">whole log</a>)</summary>'
                     f"<pre>{esc(_printable(tail))}</pre></details>")
    return parts


def _where(test: TestResult) -> str:
    parts = [f"pytest: {test.outcome}", f"{test.duration:.2f} s"]
    if test.worker:
        parts.append(f"worker {test.worker}")
    if test.node:
        parts.append(f"node {test.node}")
    if test.kernel:
        parts.append(f"kernel {test.kernel}")
    return " · ".join(esc(p) for p in parts)


def failure_article(run_dir: Path, test: TestResult, index: int) -> str:
    message = (f'<pre class="message">{esc(_printable(test.message))}</pre>' if test.message
               else '<p class="note">No failure text recorded: see the dmesg artifact and '
                    "the JUnit XML.</p>")
    prefix = worker_prefix(run_dir, test)
    links = _artifact_links(test, (run_dir / (prefix + test.part_dir) / "artifacts").is_dir(),
                            prefix)
    return (f'<article class="failure" id="failure-{index}" data-class="{esc(test.outcome_class)}"'
            f' style="border-color:{BADGE_COLOURS.get(test.outcome_class, OTHER_BADGE)}">'
            f'<h3>{badge(test.outcome_class)}<code class="nodeid">{esc(test.nodeid)}</code></h3>'
            f'<p class="meta">{_where(test)}{" · " if links else ""}{" · ".join(links)}</p>'
            f"{message}{''.join(_console_tails(run_dir, test))}</article>")


def failures_section(run_dir: Path, results: list[TestResult]) -> str:
    failures = sorted((t for t in results if t.failed), key=_severity)
    if not failures:
        return ('<section id="failures"><h2>Failures</h2><p class="good">No test failed.</p>'
                "</section>")
    return (f'<section id="failures"><h2>Failures ({len(failures)})</h2>'
            + "".join(failure_article(run_dir, t, i + 1) for i, t in enumerate(failures))
            + "</section>")


def slowest_section(results: list[TestResult], count: int = SLOWEST) -> str:
    slowest = sorted(results, key=lambda t: t.duration, reverse=True)[:count]
    if not slowest:
        return ""
    top = slowest[0].duration or 1.0
    rows = "".join(
        f'<tr class="slow"><td>{i + 1}</td><td><code>{esc(t.nodeid)}</code></td>'
        f"<td>{badge(t.outcome_class)}</td><td>{t.duration:.2f}</td>"
        f'<td style="width:240px"><div class="bar" style="width:{100 * t.duration / top:.0f}%">'
        f"</div></td></tr>" for i, t in enumerate(slowest))
    return (f'<section id="slowest"><h2>The {len(slowest)} slowest tests</h2><table>'
            "<tr><th>#</th><th>test</th><th>class</th><th>seconds</th><th></th></tr>"
            f"{rows}</table></section>")


def _property_value(test: TestResult, value: str, prefix: str = "") -> str:
    """A property as HTML: artifact paths become links (into the test's worker or part)."""
    if not value.startswith(ARTIFACT_PREFIX):
        return esc(value)
    return f'<a href="{esc(posixpath.join(prefix + test.part_dir, value))}">{esc(value)}</a>'


def _filter(name: str, values: Iterable[str]) -> str:
    options = "".join(f'<option value="{esc(v)}">{esc(class_label(v))}</option>'
                      for v in sorted(set(values)))
    return (f'<label>{name} <select data-filter="{name}"><option value="">all</option>'
            f"{options}</select></label>")


def results_table(results: list[TestResult], run_dir: Path | None = None) -> str:
    """Every test; sortable by a click on a header, filtered by class, node and kernel
    (and worker, under xdist)."""
    if not results:
        return "<p>No test results recorded.</p>"
    merged = any(test.part for test in results)  # a run hplab merge made of parts
    rows = []
    for test in results:
        shown = {k: v for k, v in test.properties.items() if k not in COLUMN_PROPERTIES}
        prefix = worker_prefix(run_dir, test) if run_dir is not None else ""
        details = ", ".join(f"{esc(k)}={_property_value(test, v, prefix)}"
                            for k, v in shown.items())
        if test.reason:
            details = f"{esc(test.reason)}<br/>{details}"
        node, kernel = test.node or NONE_SHOWN, test.kernel or NONE_SHOWN
        part = (f'<td class="part">{esc(test.part or NONE_SHOWN)}</td>' if merged else "")
        rows.append(
            f'<tr data-class="{esc(test.outcome_class)}" data-node="{esc(node)}" '
            f'data-kernel="{esc(kernel)}" data-part="{esc(test.part or NONE_SHOWN)}" '
            f'data-worker="{esc(test.worker or NONE_SHOWN)}" '
            f'style="background:{OUTCOME_COLOURS.get(test.outcome_class, "#f9f2f4")}">'
            f"<td>{esc(test.nodeid)}</td>{part}<td>{esc(test.outcome)}</td>"
            f'<td class="class">{esc(test.outcome_class)}</td><td class="nowrap">{esc(node)}</td>'
            f'<td class="nowrap">{esc(kernel)}</td>'
            f'<td data-sort="{test.duration}">{test.duration:.2f}</td>'
            f'<td class="props">{details}</td></tr>')
    filters = (_filter("class", (t.outcome_class for t in results))
               + _filter("node", (t.node or NONE_SHOWN for t in results))
               + _filter("kernel", (t.kernel or NONE_SHOWN for t in results))
               + (_filter("part", (t.part or NONE_SHOWN for t in results)) if merged else "")
               + (_filter("worker", (t.worker or NONE_SHOWN for t in results))
                  if any(t.worker for t in results) else "")
               + f'<span id="shown">{len(results)} of {len(results)} tests shown</span>')
    part_head = "<th>part</th>" if merged else ""
    return (f'<div class="filters">{filters}</div><table id="all-tests" class="sortable">'
            f"<thead><tr><th>test</th>{part_head}<th>outcome</th><th>class</th><th>node</th>"
            '<th>kernel</th><th data-type="number">seconds</th><th>properties</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


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
    data = read_json(path, {})
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



def _part_row(part: MergedPart, tests: list[TestResult], run_dir: Path) -> str:
    counts = Counter(t.outcome_class for t in tests if t.part == part.label)
    tally = " ".join(f'<span class="tally">{badge(c)}{n}</span>'
                     for c, n in sorted(counts.items(), key=lambda item: _class_rank(item[0])))
    suite = part.suite
    report = posixpath.join(part.part_dir, REPORT_NAME)
    link = (f'<a href="{esc(report)}">its report</a>'
            if part.part_dir and (run_dir / report).is_file() else esc(part.source))
    return (f'<tr class="part"><td>{esc(part.label)}</td><td>{esc(suite.host)}</td>'
            f"<td>{esc(suite.run_id or NONE_SHOWN)}</td><td>{esc(suite.shard or 'all')}</td>"
            f"<td>{esc(suite.kernel)}<div class=\"meta\">{esc(suite.kernel_release)}</div></td>"
            f"<td>{esc(suite.topology)}</td><td>{sum(counts.values())}</td><td>{tally}</td>"
            f'<td data-sort="{suite.seconds}">{suite.seconds:.1f}</td><td>{link}</td></tr>')


def parts_section(parts: list[MergedPart], results: list[TestResult], run_dir: Path) -> str:
    """The parts (shards, kernels) a merged run is made of, one row each."""
    rows = "".join(_part_row(part, results, run_dir) for part in parts)
    return ('<section id="parts"><h2>Parts</h2><table id="parts-table" class="sortable">'
            "<thead><tr><th>part</th><th>host</th><th>run id</th><th>shard</th>"
            '<th>kernel</th><th>topology</th><th data-type="number">tests</th>'
            '<th>tests per class</th><th data-type="number">wall s</th><th>from</th></tr>'
            f"</thead><tbody>{rows}</tbody></table></section>")


def _class_rank(outcome_class: str) -> int:
    return COUNTED.index(outcome_class) if outcome_class in COUNTED else len(COUNTED)


def _workers_line(run_dir: Path, results: list[TestResult]) -> str:
    """Under xdist: each worker's own run and report."""
    workers = sorted({t.worker for t in results if t.worker})
    if not workers:
        return ""
    links = [f'{esc(w)} (<a href="{esc(w)}/{REPORT_NAME}">its report</a>)'
             if (run_dir / w / REPORT_NAME).exists() else esc(w) for w in workers]
    return f'<p class="meta">run by xdist workers {", ".join(links)}</p>'


def _headline(what: str, results: list[TestResult], run_dir: Path) -> str:
    failing = sum(t.failed for t in results)
    kernels = sorted({f"{t.kernel} ({t.node})" for t in results if t.kernel})
    verdict = (f'<span class="bad">{failing} failing</span>' if failing
               else '<span class="good">nothing failing</span>')
    return (f"<h1>hplab {esc(what)}</h1><p>{len(results)} tests, {verdict}"
            f"{' · kernel ' + esc(', '.join(kernels)) if kernels else ''}</p>"
            f"{_workers_line(run_dir, results)}"
            '<nav><a href="#failures">failures</a><a href="#slowest">slowest</a>'
            '<a href="#tests">all tests</a><a href="#timings">phase timings</a>'
            '<a href="#fragmentation">fragmentation</a><a href="#artifacts">artifacts</a></nav>')


def render(run_dir: Path) -> str:
    if not run_dir.is_dir():
        raise RunFileError(f"{run_dir}: not a run directory")
    events = load_events(run_dir / "events.json")
    results = load_results_json(run_dir / "results.json")
    state = read_json(run_dir / "state.json", {})
    fragments = sorted((run_dir / "artifacts").glob("fragment-*.json"))
    artifacts = sorted(p.name for p in (run_dir / "artifacts").glob("*")) \
        if (run_dir / "artifacts").is_dir() else []
    run_id = str(state.get("run_id", run_dir.name) if isinstance(state, dict) else run_dir.name)
    parts = load_parts(run_dir / PARTS_FILE)
    what = f"run {run_id}" if not parts else f"{run_dir.name}: {len(parts)} parts merged"
    body = [_headline(what, results, run_dir), class_counts(results),
            parts_section(parts, results, run_dir) if parts else "",
            failures_section(run_dir, results), slowest_section(results),
            '<section id="tests"><h2>All tests</h2>', results_table(results, run_dir),
            "</section>",
            '<section id="timings"><h2>Boot and phase timings</h2>', timeline_svg(events),
            timings_table(events), "</section>"]
    if fragments:
        body.append('<section id="fragmentation"><h2>Fragmentation</h2>')
        body.extend(fragment_section(p) for p in fragments)
        body.append("</section>")
    if artifacts:
        body.append('<section id="artifacts"><h2>Artifacts</h2><ul>' + "".join(
            f'<li><a href="artifacts/{esc(n)}">{esc(n)}</a></li>' for n in artifacts)
            + "</ul></section>")
    return html_page(f"hplab {what}", body)


def write_report(run_dir: Path) -> Path:
    target = run_dir / REPORT_NAME
    target.write_text(render(run_dir))
    return target


def relative_link(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


def _side_line(label: str, side: RunSide, out_dir: Path) -> str:
    report = side.run_dir / REPORT_NAME if side.run_dir is not None else None
    link = (f' (<a href="{esc(relative_link(report, out_dir))}">its report</a>)'
            if report is not None and report.exists() else "")
    return f'<p class="side"><b>{label}</b> {esc(side.describe())}{link}</p>'


def _tally(label: str, count: int, colour: str, kind: str) -> str:
    zero = " zero" if count == 0 else ""
    return (f'<li class="count{zero}" data-kind="{kind}" style="background:{colour}">'
            f"<a href=\"#{kind}\" style=\"color:inherit;text-decoration:none\">{label}"
            f"<b>{count}</b></a></li>")


def _compare_counts(comparison: Comparison) -> str:
    c = comparison
    tallies = [("new failures", len(c.new_failures), "#c62828", "new-failures"),
               ("failing in another class", len(c.changed_class), "#ad1457", "changed-class"),
               ("fixed", len(c.fixed), "#2e7d32", "fixed"),
               ("slower", len(c.slower), "#e65100", "slower"),
               ("added", len(c.added), "#1f5fa8", "added"),
               ("removed", len(c.removed), "#6a3d9a", "removed"),
               ("still failing", len(c.still_failing), "#757575", "still-failing")]
    return f'<ul class="counts">{"".join(_tally(*t) for t in tallies)}</ul>'


def _excerpt(message: str, lines: int = 10) -> str:
    """What a failure says in a few lines: pytest's `E` lines when it has them."""
    text = message.splitlines()
    errors = [line for line in text if line.startswith("E ")]
    return "\n".join((errors or text)[:lines])


def _side_artifacts(test: TestResult, side: RunSide, out_dir: Path) -> str:
    if side.run_dir is None:
        return ""
    return " ".join(f'<a href="{esc(relative_link(side.run_dir / path, out_dir))}">'
                    f"{esc(name.replace('_', ' '))}</a>" for name, path in test.artifacts().items())


def _failure_text(test: TestResult, side: RunSide, out_dir: Path) -> str:
    if not test.message:
        return _side_artifacts(test, side, out_dir)
    excerpt = _excerpt(test.message)
    whole = ("" if excerpt == test.message else
             f"<details><summary>the whole text</summary><pre>{esc(_printable(test.message))}"
             "</pre></details>")
    return (f'<pre class="message">{esc(_printable(excerpt))}</pre>{whole}'
            f"{_side_artifacts(test, side, out_dir)}")


def _section(kind: str, title: str, count: int, content: str, empty: str) -> str:
    inner = content if count else f'<p class="note">{empty}</p>'
    return f'<section id="{kind}"><h2>{title} ({count})</h2>{inner}</section>'


def new_failures_table(comparison: Comparison, out_dir: Path) -> str:
    rows = "".join(
        f'<tr class="new-failure"><td>{badge(t.new.outcome_class)}</td>'
        f"<td><code>{esc(t.new.nodeid)}</code></td>"
        f"<td>{badge(t.old.outcome_class) if t.old else 'added'}</td>"
        f'<td data-sort="{t.new.duration}">{t.new.duration:.2f}</td>'
        f"<td>{_failure_text(t.new, comparison.new, out_dir)}</td></tr>"
        for t in comparison.new_failures)
    table = ('<table class="sortable"><thead><tr><th>now</th><th>test</th><th>before</th>'
             '<th data-type="number">seconds</th><th>what it says</th></tr></thead>'
             f"<tbody>{rows}</tbody></table>")
    return _section("new-failures", "New failures", len(comparison.new_failures), table,
                    "No test fails that did not fail before.")


def transitions_table(kind: str, title: str, pairs: tuple[Transition, ...], empty: str) -> str:
    rows = "".join(
        f'<tr class="{kind}"><td><code>{esc(p.new.nodeid)}</code></td>'
        f"<td>{badge(p.old.outcome_class) if p.old else 'absent'}</td>"
        f"<td>{badge(p.new.outcome_class)}</td>"
        f"<td>{p.old.duration if p.old else 0.0:.2f} -&gt; {p.new.duration:.2f}</td></tr>"
        for p in pairs)
    table = ('<table class="sortable"><thead><tr><th>test</th><th>before</th><th>now</th>'
             f"<th>seconds</th></tr></thead><tbody>{rows}</tbody></table>")
    return _section(kind, title, len(pairs), table, empty)


def _slower_row(slowdown: Slowdown, top: float) -> str:
    bars = "".join(f'<div class="bar" style="width:{100 * v / top:.0f}%;background:{colour}">'
                   "</div>" for v, colour in ((slowdown.old_seconds, OLD_COLOUR),
                                              (slowdown.new_seconds, NEW_COLOUR)))
    return (f'<tr class="slower"><td><code>{esc(slowdown.test.nodeid)}</code></td>'
            f'<td data-sort="{slowdown.old_seconds}">{slowdown.old_seconds:.2f}</td>'
            f'<td data-sort="{slowdown.new_seconds}">{slowdown.new_seconds:.2f}</td>'
            f'<td data-sort="{slowdown.threshold}">{slowdown.threshold:.2f}</td>'
            f"<td>{esc(slowdown.rule)}</td>"
            f'<td style="width:200px">{bars}</td></tr>')


def slower_table(comparison: Comparison) -> str:
    top = max((s.new_seconds for s in comparison.slower), default=1.0) or 1.0
    rows = "".join(_slower_row(slowdown, top) for slowdown in comparison.slower)
    table = ('<table class="sortable"><thead><tr><th>test</th><th data-type="number">old s</th>'
             '<th data-type="number">new s</th><th data-type="number">slower above s</th>'
             "<th>rule</th><th>blue old, orange new</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>")
    return _section("slower", "Slower", len(comparison.slower), table,
                    "No passing test became slower than the rule allows.")


def tests_list(kind: str, title: str, tests: tuple[TestResult, ...], empty: str) -> str:
    rows = "".join(f'<tr class="{kind}"><td><code>{esc(t.nodeid)}</code></td>'
                   f"<td>{badge(t.outcome_class)}</td><td>{t.duration:.2f}</td></tr>"
                   for t in tests)
    table = ('<table class="sortable"><thead><tr><th>test</th><th>class</th><th>seconds</th>'
             f"</tr></thead><tbody>{rows}</tbody></table>")
    return _section(kind, title, len(tests), table, empty)


def versions_section(comparison: Comparison) -> str:
    if not comparison.versions:
        return ('<section id="versions"><h2>Versions</h2><p class="note">No kernel or module '
                "version changed on any node.</p></section>")
    rows = "".join(f'<tr class="version"><td>{esc(v.name)}</td><td>{esc(v.node or NONE_SHOWN)}</td>'
                   f"<td>{esc(', '.join(v.old))}</td><td>{esc(', '.join(v.new))}</td></tr>"
                   for v in comparison.versions)
    return ('<section id="versions"><h2>Versions changed</h2><table><tr><th>what</th>'
            f"<th>node</th><th>old</th><th>new</th></tr>{rows}</table></section>")


def _phase_bar(y: float, total: PhaseTotal | None, which: str, colour: str,
               left: int, scale: float) -> str:
    if total is None:
        return ""
    width = max(total.seconds * scale, 1.0)
    label = f"{which}: {total.count} x, {total.seconds:.1f} s"
    return (f'<rect class="{which}" x="{left}" y="{y}" width="{width:.1f}" height="11" '
            f'fill="{colour}"><title>{esc(label)}</title></rect>'
            f'<text x="{left + width + 4:.1f}" y="{y + 10}" font-size="10">'
            f"{total.seconds:.1f} s ({total.count}x)</text>")


def phase_compare_svg(rows: list[tuple[str, PhaseTotal | None, PhaseTotal | None]]) -> str:
    """Seconds per engine phase, old (blue) above new (orange)."""
    if not rows:
        return ""
    left, width, row = 130, 560, 30
    top = max((t.seconds for _, *pair in rows for t in pair if t is not None), default=1.0)
    scale = width / (top or 1.0)
    parts = [f'<svg class="plot phases" xmlns="http://www.w3.org/2000/svg" '
             f'width="{left + width + 110}" height="{row * len(rows) + 30}">']
    for i, (phase, old, new) in enumerate(rows):
        y = 8 + i * row
        parts.append(f'<text x="4" y="{y + 16}" font-size="12">{esc(phase)}</text>')
        parts.append(_phase_bar(y, old, "old", OLD_COLOUR, left, scale))
        parts.append(_phase_bar(y + 12, new, "new", NEW_COLOUR, left, scale))
    parts.append(f'<text x="{left}" y="{row * len(rows) + 24}" font-size="11">seconds per '
                 "phase, all nodes together; blue old, orange new</text></svg>")
    return "".join(parts)


def phases_section(comparison: Comparison) -> str:
    sides = (("old", comparison.old), ("new", comparison.new))
    notes = [f'<p class="note">The {label} side, {esc(side.source)}, is {esc(side.kind)}: it '
             "records no engine phases.</p>" for label, side in sides if side.phases is None]
    rows = comparison.phase_rows()
    table = "".join(
        f"<tr><td>{esc(phase)}</td>"
        f"<td>{f'{old.seconds:.1f} ({old.count}x)' if old else '-'}</td>"
        f"<td>{f'{new.seconds:.1f} ({new.count}x)' if new else '-'}</td></tr>"
        for phase, old, new in rows)
    shown = (phase_compare_svg(rows) + "<table><tr><th>phase</th><th>old s</th><th>new s</th>"
             f"</tr>{table}</table>") if rows else '<p class="note">No phase timings.</p>'
    return f'<section id="phases"><h2>Engine phases</h2>{"".join(notes)}{shown}</section>'


def render_compare(comparison: Comparison, out_dir: Path) -> str:
    """The compare page, its links relative to `out_dir` where it is written."""
    c = comparison
    body = ["<h1>hplab: what changed</h1>", _side_line("old", c.old, out_dir),
            _side_line("new", c.new, out_dir), _compare_counts(c), versions_section(c),
            new_failures_table(c, out_dir),
            transitions_table("changed-class", "Failing in another class", c.changed_class,
                              "No test fails in another class than before."),
            transitions_table("fixed", "Fixed", c.fixed, "No failing test stopped failing."),
            slower_table(c),
            tests_list("added", "Added", c.added, "No test is new."),
            tests_list("removed", "Removed", c.removed, "No test is gone."),
            transitions_table("still-failing", "Still failing", c.still_failing,
                              "No test fails on both sides."),
            phases_section(c)]
    return html_page("hplab compare", body)


def write_compare(comparison: Comparison, target: Path) -> Path:
    target.write_text(render_compare(comparison, target.parent))
    return target
