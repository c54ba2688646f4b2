"""Rendering: a table as a ``Block`` of rows and cells, and its Markdown, LaTeX (booktabs) and HTML
writers, with the inline marks of the prose around it (**bold**, *italic*, `code`)."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

from .results import DASH, is_nan


def fmt(v, sd=None, n=None, want=None, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    s = f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None and not is_nan(sd) else "")
    return s + (f" (n={int(n)})" if n is not None and want is not None and 0 < n < want else "")


def table_name(table: str) -> str:
    return f"Table {table[5:]}" if table.startswith("table") and table[5:].isdigit() else table


# --------------------------------------------------------------------------- rendering


@dataclass
class Block:
    """One tabular: a label column, then per group (NFE) the ``sub`` columns, then ``tail``.
    Rows are (style, label, cells); style: ours | paper | reported | matched | section | note
    (section and note rows span the table and have no cells). A cell "**x**" is bold."""

    groups: list
    sub: list
    tail: list
    rows: list

    @property
    def width(self) -> int:
        return 1 + len(self.groups) * len(self.sub) + len(self.tail)


# Markdown, LaTeX and HTML writers of a Block and of inline-marked text.


def md_block(b: Block) -> str:
    head = ["Method"] + [f"{grp.replace(' = ', ' ')} {s}" for grp in b.groups for s in b.sub] + b.tail
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for style, label, cells in b.rows:
        if style in ("section", "note"):
            cells, label = [""] * (b.width - 1), (f"*{label}*" if style == "section" else f"↳ *{label}*")
        elif style == "paper":
            label = "↳ *paper*"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in [label, *cells]) + " |")
    return "\n".join(lines)


TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "±": r"$\pm$",
    "—": "--",
    "–": "--",
    "|": r"$|$",
    "<": r"$<$",
    ">": r"$>$",
    "*": r"$^*$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "↳": "",
    "†": r"\dag{}",
    "×": r"$\times$",
    "’": "'",
    "φ": r"$\phi$",
    "₂": r"$_2$",
}


def _tex(s) -> str:
    """Plain text to LaTeX (every special character escaped; the characters we write mapped)."""
    return "".join(TEX.get(ch, ch) for ch in str(s))


def _split_marks(s: str):
    """(mark, text) pieces of inline-marked text: mark is "**", "*", "`" or ""."""
    for m in re.finditer(r"\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|`(.+?)`|([^*`]+|[*`])", s):
        if m.group(1) is not None:
            yield "**", m.group(1)
        elif m.group(2) is not None:
            yield "*", m.group(2)
        elif m.group(3) is not None:
            yield "`", m.group(3)
        else:
            yield "", m.group(4)


def tex_inline(s: str) -> str:
    wrap = {"**": r"\textbf{%s}", "*": r"\textit{%s}", "`": r"\texttt{%s}", "": "%s"}
    return "".join(wrap[m] % _tex(x) for m, x in _split_marks(s))


def html_inline(s: str) -> str:
    wrap = {"**": "<strong>%s</strong>", "*": "<em>%s</em>", "`": "<code>%s</code>", "": "%s"}
    return "".join(wrap[m] % html.escape(x) for m, x in _split_marks(s))


def _bold(cell: str) -> tuple[bool, str]:
    return (True, cell[2:-2]) if len(cell) > 4 and cell.startswith("**") and cell.endswith("**") else (False, cell)


def tex_block(b: Block) -> str:
    k = len(b.sub)
    top = [""] + [rf"\multicolumn{{{k}}}{{c}}{{{_tex(grp)}}}" for grp in b.groups] + [""] * len(b.tail)
    rules = "".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(b.groups)))
    head = ["Method"] + [_tex(s) for _ in b.groups for s in b.sub] + [_tex(s) for s in b.tail]
    lines = [
        r"\begin{tabular}{l" + "r" * (b.width - 1) + "}",
        r"\toprule",
        " & ".join(top) + r" \\",
        rules,
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for style, label, cells in b.rows:
        if style == "section":
            lines.append(rf"\multicolumn{{{b.width}}}{{l}}{{\textit{{{_tex(label)}}}}} \\")
        elif style == "note":
            lines.append(
                rf"\multicolumn{{{b.width}}}{{p{{0.95\linewidth}}}}{{\footnotesize\textit{{{_tex(label)}}}}} \\"
            )
        else:
            first = r"\quad\textit{paper}" if style == "paper" else _tex(label)
            out = [rf"\textbf{{{_tex(c)}}}" if bold else _tex(c) for bold, c in map(_bold, cells)]
            lines.append(" & ".join([first, *out]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def html_block(b: Block) -> str:
    k = len(b.sub)
    top = (
        ["<th></th>"] + [f'<th colspan="{k}">{html.escape(grp)}</th>' for grp in b.groups] + ["<th></th>"] * len(b.tail)
    )
    head = (
        ["<th>Method</th>"]
        + [f"<th>{html.escape(s)}</th>" for _ in b.groups for s in b.sub]
        + [f"<th>{html.escape(s)}</th>" for s in b.tail]
    )
    lines = [
        "<table>",
        "<thead>",
        "<tr>" + "".join(top) + "</tr>",
        "<tr>" + "".join(head) + "</tr>",
        "</thead>",
        "<tbody>",
    ]
    for style, label, cells in b.rows:
        if style in ("section", "note"):
            lines.append(f'<tr class="{style}"><td colspan="{b.width}">{html.escape(label)}</td></tr>')
            continue
        tds = "".join(
            f"<td><strong>{html.escape(c)}</strong></td>" if bold else f"<td>{html.escape(c)}</td>"
            for bold, c in map(_bold, cells)
        )
        first = "↳ paper" if style == "paper" else label
        lines.append(f'<tr class="{style}"><th scope="row">{html.escape(first)}</th>{tds}</tr>')
    return "\n".join(lines + ["</tbody>", "</table>"])


CSS = """
.td-report{font-family:system-ui,sans-serif;font-size:13px;line-height:1.35;color:#111;background:#fff;
  padding:8px 12px;margin:0 0 16px;max-width:none;border-radius:4px}
.td-report table{border-collapse:collapse;margin:6px 0 10px;width:auto}
.td-report th,.td-report td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap;
  color:#111;font-size:13px}
.td-report thead th{text-align:center;border-bottom:1px solid #888}
.td-report th[scope=row],.td-report thead tr:last-child th:first-child{text-align:left;font-weight:normal}
.td-report tr.paper th,.td-report tr.paper td{color:#555;font-style:italic}
.td-report tr.reported th,.td-report tr.reported td,.td-report tr.section td{background:#eee}
.td-report tr.note td{white-space:normal;text-align:left;font-size:12px;color:#8a4b00}
.td-report p{margin:4px 0;max-width:75em}
.td-report p.gate.fail{background:#b00020;color:#fff;padding:6px 8px;font-weight:bold}
.td-report img{max-width:100%;height:auto}
.prose:has(.td-report){max-width:none}
"""


def html_page(ident: str, title: str, body: str) -> str:
    """A standalone page (the report's view) that also reads well inlined into the report's front page."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{CSS}</style></head>\n<body>\n<div class="td-report" id="{ident}">\n{body}\n</div>\n'
        "</body></html>\n"
    )
