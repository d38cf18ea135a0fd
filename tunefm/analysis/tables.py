"""Text tables of DataFrames, for the terminal (`text_table`) and for markdown.

    print(tables.text_table(frame, index=False, width=100))
"""

from __future__ import annotations

import re

import pandas as pd

WIDTH = 80
NUMBER = re.compile(r"^[-+]?\.?\d")


def markdown_table(frame: pd.DataFrame, index: bool) -> str:
    if index:
        frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def text_table(frame: pd.DataFrame, index: bool, width: int = WIDTH) -> str:
    """Fixed-width columns, two spaces apart; too wide a table continues in blocks that
    repeat its first column, so every line fits in `width`."""
    if frame.empty:
        return "(none)"
    if index:
        frame = frame.reset_index().rename(columns={"index": frame.index.name or ""})
    header = [str(c) for c in frame.columns]
    body = [[str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    # Numbers align right, words (models, classes, flags) left.
    numeric = [all(NUMBER.match(r[i]) or r[i] in ("-", "") for r in body) for i in range(len(header))]
    blocks, current, used = [], [], widths[0]
    for i in range(1, len(header)):
        if current and used + 2 + widths[i] > width:
            blocks.append(current)
            current, used = [], widths[0]
        current.append(i)
        used += 2 + widths[i]
    blocks.append(current)

    def line(cells, columns):
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cells[i].rjust(widths[i]) if numeric[i] else cells[i].ljust(widths[i])
                                   for i in columns)]).rstrip()

    text = []
    for columns in blocks:
        text += ([""] if text else []) + [line(header, columns)] + [line(r, columns) for r in body]
    return "\n".join(text)
