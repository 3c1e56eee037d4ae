"""Two models on the same held-out records, record by record: per task, each side's mean score, the difference,
its paired standard error, and how many records each side wins. Inputs are `qwenvl.synth.report --json` files.

    python -m qwenvl.synth.compare runs/z.json runs/o.json [--out table.md]

The score is each record's own figure (IoU for refer, F1 for detect / spot_text, 1 − NED for document, temporal
IoU for video_grounding, field share for key_values, else hit or miss). A difference smaller than about twice its
standard error is noise at this many records.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .report import TASK_ORDER


def _records(path: str) -> dict[tuple[str, str], tuple[str, float]]:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: {path}: no such file; write it with python -m qwenvl.synth.report ... --json {path}")
    try:
        recs = json.loads(p.read_text(encoding="utf-8"))["records"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"error: {path}: not a report JSON with per-record scores; rerun python -m "
                         "qwenvl.synth.report with --json (this version writes \"records\")") from None
    out = {}
    for r in recs:
        key = (Path(r["file"]).name, str(r["id"]))
        if key in out:
            raise SystemExit(f"error: {path}: record {key[1]!r} of {key[0]} appears twice; record ids must be unique")
        out[key] = (r["task"], float(r["score"]))
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean of b − a, its standard error) over paired scores; the error is 0 for fewer than 2 pairs."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    if n < 2:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return mean, math.sqrt(var / n)


def compare(path_a: str, path_b: str) -> list[str]:
    """Markdown rows comparing B against A on the records both scored."""
    a, b = _records(path_a), _records(path_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit(f"error: {path_a} and {path_b} share no records; score both on the same --heldout files")
    if len(shared) < max(len(a), len(b)):
        print(f"note: {len(shared)} records in both files ({len(a)} in A, {len(b)} in B); comparing those",
              file=sys.stderr)
    tasks = sorted({a[k][0] for k in shared}, key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else 99)
    rows = [f"A = `{path_a}`, B = `{path_b}`", "", "| task | n | A | B | B − A | paired s.e. | B wins / A wins |",
            "|---|---|---|---|---|---|---|"]
    for t in tasks:
        ks = [k for k in shared if a[k][0] == t]
        sa, sb = [a[k][1] for k in ks], [b[k][1] for k in ks]
        d, se = paired(sa, sb)
        wins, losses = sum(y > x for x, y in zip(sa, sb)), sum(y < x for x, y in zip(sa, sb))
        rows.append(f"| `{t}` | {len(ks)} | {sum(sa) / len(ks):.3f} | {sum(sb) / len(ks):.3f} | {d:+.3f} | "
                    f"{se:.3f} | {wins} / {losses} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="report JSON of the reference model (python -m qwenvl.synth.report ... --json)")
    ap.add_argument("b", help="report JSON of the model to compare, on the same held-out files")
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    text = "\n".join(compare(args.a, args.b)) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
