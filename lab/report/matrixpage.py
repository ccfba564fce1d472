"""A matrix run (lab.cli.matrix) rendered into one self-contained matrix.html: per-kernel
totals, then a test x kernel table whose cells link to each kernel's own report."""

from __future__ import annotations

from pathlib import Path

from lab.cli.matrix import KernelRun, Matrix
from lab.report.html import (
    NONE_SHOWN,
    OUTCOME_COLOURS,
    REPORT_NAME,
    badge,
    class_label,
    esc,
    html_page,
    relative_link,
)


def _kernel_head(kernel: KernelRun, out_dir: Path) -> str:
    releases = ", ".join(kernel.releases()) or NONE_SHOWN
    status = "" if kernel.ran else (f'<div class="bad" title="{esc(kernel.status)}">'
                                    f'{esc(kernel.status.split(":")[0])}</div>')
    page = kernel.page()
    link = (f'<div><a href="{esc(relative_link(page, out_dir))}">{esc(page.name)}</a></div>'
            if page is not None else "")
    return (f'<th class="kernel"><code>{esc(kernel.spec)}</code>'
            f'<div class="meta">{esc(releases)}</div>{status}{link}</th>')


def _matrix_cell(kernel: KernelRun, key: str, out_dir: Path) -> str:
    """A test's class on a kernel, coloured, linking to that kernel's report showing the
    tests of that class."""
    test = kernel.tests.get(key)
    cls = kernel.cell(key)
    shown = esc(class_label(cls))
    page = kernel.page()
    if test is not None and page is not None:
        view = f"#class={cls}" if page.name == REPORT_NAME and cls == test.outcome_class else ""
        shown = f'<a href="{esc(relative_link(page, out_dir) + view)}">{shown}</a>'
    title = f' title="{test.duration:.2f} s"' if test is not None else ""
    return (f'<td class="cell" data-class="{esc(cls)}"{title} '
            f'style="background:{OUTCOME_COLOURS.get(cls, "#f9f2f4")}">{shown}</td>')


def _kernel_totals(matrix: Matrix) -> str:
    rows = []
    for k in matrix.kernels:
        counts = matrix.counts(k)
        tally = " ".join(f'<span class="tally">{badge(c)}{counts[c]}</span>'
                         for c in matrix.classes() if counts[c])
        verdict = '<span class="good">ok</span>' if matrix.kernel_ok(k) \
            else '<span class="bad">failing</span>'
        rows.append(f'<tr class="kernel-total"><td><code>{esc(k.spec)}</code></td>'
                    f"<td>{esc(', '.join(k.releases()) or NONE_SHOWN)}</td><td>{verdict}</td>"
                    f"<td>{'-' if k.exit_code is None else k.exit_code}</td>"
                    f"<td>{k.seconds:.1f}</td><td>{tally}</td><td>{esc(k.status)}</td></tr>")
    return ("<table><tr><th>kernel</th><th>release</th><th>verdict</th><th>pytest exit</th>"
            f"<th>seconds</th><th>tests per class</th><th>status</th></tr>{''.join(rows)}"
            "</table>")


def render_matrix(matrix: Matrix, out_dir: Path) -> str:
    """The matrix page: per-kernel totals, then test x kernel; links relative to `out_dir`."""
    rows = matrix.rows()
    failing = sum(not matrix.kernel_ok(k) for k in matrix.kernels)
    verdict = (f'<span class="bad">{failing} of {len(matrix.kernels)} kernels failing</span>'
               if not matrix.ok else '<span class="good">every test passed or was skipped on '
               "every kernel</span>")
    interrupted = '<p class="bad">Interrupted: not every kernel ran.</p>' \
        if matrix.interrupted else ""
    heads = "".join(_kernel_head(k, out_dir) for k in matrix.kernels)
    body = "".join(f"<tr><td><code>{esc(shown)}</code></td>"
                   + "".join(_matrix_cell(k, key, out_dir) for k in matrix.kernels) + "</tr>"
                   for key, shown in rows)
    table = (f'<table id="matrix" class="sortable"><thead><tr><th>test</th>{heads}</tr></thead>'
             f"<tbody>{body}</tbody></table>") if rows \
        else '<p class="bad">No kernel recorded any test.</p>'
    topology = f" · topology {esc(matrix.topology)}" if matrix.topology else ""
    return html_page("hplab matrix", [
        f"<h1>hplab matrix</h1><p>{len(rows)} tests on {len(matrix.kernels)} kernels"
        f"{topology}: {verdict}</p>", interrupted,
        '<section id="kernels"><h2>Kernels</h2>', _kernel_totals(matrix), "</section>",
        '<section id="tests"><h2>Tests</h2>', table, "</section>"])


def write_matrix(matrix: Matrix, target: Path) -> Path:
    target.write_text(render_matrix(matrix, target.parent))
    return target
