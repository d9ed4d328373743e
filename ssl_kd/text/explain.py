"""Explanations of a text run: the most helpful and most harmful training sentences, as a CSV of
every ranked sentence and a Markdown table of the top ones (what an image grid is for images)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ssl_kd.data.types import SSLData
from ssl_kd.influence.explain import CSV_COLUMNS, ranked_rows, title_of

COLUMNS = [*CSV_COLUMNS, "sentence"]


def _rows(data: SSLData, ranking: Any) -> list[list[str]]:
    """One row per ranked example, most helpful (most negative influence) first."""
    assert data.train_text is not None
    return [[*map(str, row), data.train_text[row[1]].strip()] for row in ranked_rows(data, ranking)]


def _markdown(rows: list[list[str]], title: str) -> str:
    cells = lambda row: "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"  # noqa: E731
    return "\n".join([f"### {title}", "", cells(COLUMNS), cells(["---"] * len(COLUMNS)), *map(cells, rows), ""])


def write_sentence_report(data: SSLData, ranking: Any, out: Path, tag: str, top: int) -> dict[str, Path]:
    """`influence_<tag>_sentences.csv` (every ranked sentence) and `influence_<tag>.md` (top per side)."""
    rows = _rows(data, ranking)
    paths = {"sentences": out / f"influence_{tag}_sentences.csv", "table": out / f"influence_{tag}.md"}
    with open(paths["sentences"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    k = min(top, len(rows))
    header = (f"# {title_of(ranking)} ({data.name})\n\n"
              f"Ranked by {ranking.ordered_by}: `class_z` is the influence `score` z-scored among the sentences of the "
              "same target class, `score` the raw influence (I < 0 helps). To look for mislabelled sentences, sort by "
              "`loss` too: the model's loss finds flipped labels better than influence does (BENCHMARKS.md, issue 26).\n\n")
    paths["table"].write_text(header + _markdown(rows[:k], f"{k} most helpful training sentences") + "\n"
                              + _markdown(rows[::-1][:k], f"{k} most harmful training sentences"))
    return paths
