"""Writers: the Markdown report, the LaTeX tables and one CSV per table, all atomic."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from opplan.fileio import atomic_write_text
from opplan.report.tables import Table

LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "→": r"$\rightarrow$", "…": r"\ldots{}",
    "×": r"$\times$", "−": r"$-$", "–": "--", "Δ": r"$\Delta$", "²": r"$^2$", "≈": r"$\approx$", "*": r"$^*$",
}


def _cells(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the display frame; a named index becomes the first column."""
    frame = table.display
    if frame.index.name:
        frame = frame.reset_index()
    header = [str(c) for c in frame.columns]
    rows = [["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]
    return header, rows


def md_escape(text: str) -> str:
    """A lone ``*`` (as in ``t*``) escaped so it starts no emphasis; ``**bold**`` is kept."""
    return re.sub(r"(?<!\*)\*(?!\*)", r"\\*", text)


def markdown_table(table: Table) -> str:
    """A GitHub pipe table with its title above and note below."""
    header, rows = _cells(table)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(md_escape(c).replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {md_escape(table.title)}", "", line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [line(r) for r in rows] or [line(["(empty)"] + [""] * (len(header) - 1))]
    if table.note:
        lines += ["", f"*{md_escape(table.note)}*"]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters; Markdown ``**bold**`` becomes ``\\textbf``."""
    parts = ["".join(LATEX_CHARS.get(ch, ch) for ch in part) for part in text.split("**")]
    return "".join(f"\\textbf{{{p}}}" if i % 2 else p for i, p in enumerate(parts))


def latex_table(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    header, rows = _cells(table)
    spec = "l" * len(header)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           f"\\caption{{{latex_escape(table.title)}. {latex_escape(table.note)}}}",
           f"\\label{{tab:opplan-{table.key}}}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_tables(tables: Sequence[Table], out_dir: Path) -> list[Path]:
    """``<key>.csv`` per table (raw values) and ``tables.tex`` with every table."""
    written = []
    for table in tables:
        buffer = io.StringIO()
        table.data.to_csv(buffer, index=False)
        path = out_dir / f"{table.key}.csv"
        atomic_write_text(path, buffer.getvalue())
        written.append(path)
    tex = out_dir / "tables.tex"
    header = "% opplan report tables, generated from the MLflow store; needs \\usepackage{booktabs}\n\n"
    atomic_write_text(tex, header + "\n".join(latex_table(t) for t in tables))
    return [*written, tex]


def write_markdown(path: Path, *, title: str, source: str, summary: str, tables: Sequence[Table],
                   figures: Sequence[tuple[str, Path]], notes: Sequence[str]) -> Path:
    """``report.md``: summary, tables, figures (linked relative to the report), what is missing."""
    parts = [f"# {title}", "", source, "", "## Summary", "", summary, ""]
    parts += ["## Tables", ""] + [markdown_table(t) for t in tables]
    if figures:
        parts += ["## Figures", ""]
        for caption, figure in figures:
            link = figure.relative_to(path.parent).as_posix()
            parts += [f"**{md_escape(caption)}**", "", f"![{md_escape(caption)}]({link})", ""]
    if notes:
        parts += ["## Not (yet) in the store", ""] + [f"- {n}" for n in notes] + [""]
    atomic_write_text(path, "\n".join(parts))
    return path
