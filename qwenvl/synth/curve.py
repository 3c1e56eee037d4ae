"""The training curve in the embedded model's report: a trainer's metrics.jsonl rows as a sparkline, a table of
loss per stretch of steps, and a PNG (log scale, runs in order)."""
from __future__ import annotations

import json
import math
from pathlib import Path

SPARKS = "▁▂▃▄▅▆▇█"


def mean(xs) -> float:
    """The mean of `xs` (0.0 when empty)."""
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def read_metrics(path: str | Path) -> list[dict]:
    """The per-step rows (with a numeric loss) of a trainer's metrics.jsonl, in file order."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and isinstance(r.get("loss"), (int, float)) and "step" in r:
            rows.append(r)
    return rows


def _nice(x: float) -> int:
    """The smallest 1/2/5 x 10^k integer >= x."""
    e = 10 ** max(0, math.floor(math.log10(max(x, 1))))
    return next(k * e for k in (1, 2, 5, 10) if k * e >= x)


def _bins(values: list[float], n: int) -> list[float]:
    if not values:
        return []
    n = max(1, min(n, len(values)))
    return [mean(values[i * len(values) // n:(i + 1) * len(values) // n]) for i in range(n)]


def sparkline(values: list[float], width: int = 60) -> str:
    """Unicode sparkline of `values` averaged into at most `width` bins (log scale when all are positive)."""
    b = _bins(values, width)
    if not b:
        return ""
    if min(b) > 0:
        b = [math.log(x) for x in b]
    lo, hi = min(b), max(b)
    return "".join(SPARKS[0 if hi == lo else round((x - lo) / (hi - lo) * (len(SPARKS) - 1))] for x in b)


def curve_section(paths: list[str]) -> list[str]:
    lines = ["## Training curve", ""]
    for i, p in enumerate(paths, 1):
        rows = read_metrics(p)
        lines += [f"### Run {i}: `{p}`", ""]
        if not rows:
            lines += ["(no loss rows)", ""]
            continue
        losses = [float(r["loss"]) for r in rows]
        secs = sum(float(r.get("seconds", 0)) for r in rows)
        samples = sum(int(r.get("samples", 0)) for r in rows)
        tokens = sum(int(r.get("tokens", 0)) for r in rows)
        lines += [f"{len(rows)} steps (step {rows[0]['step']}–{rows[-1]['step']}), {samples:,} samples, "
                  f"{tokens:,} tokens, {secs / 60:.1f} min of step time; final lr {rows[-1].get('lr', float('nan')):.3g}.",
                  "", f"loss {losses[0]:.3f} `{sparkline(losses)}` {losses[-1]:.3f} (log scale)", "",
                  "| steps | samples seen | mean loss | min loss |", "|---|---|---|---|"]
        seg, seen = _nice(len(rows) / 10), 0
        for a in range(0, len(rows), seg):
            part = rows[a:a + seg]
            seen += sum(int(r.get("samples", 0)) for r in part)
            ls = [float(r["loss"]) for r in part]
            lines.append(f"| {part[0]['step']}–{part[-1]['step']} | {seen:,} | {mean(ls):.3f} | {min(ls):.3f} |")
        lines.append("")
    return lines


def plot_curve(paths: list[str], out: Path, size=(800, 360)) -> Path | None:
    """PNG of every run's loss (log scale, runs concatenated, binned means over the raw points)."""
    from PIL import Image, ImageDraw

    runs = [[float(r["loss"]) for r in read_metrics(p)] for p in paths]
    allv = [x for r in runs for x in r if x > 0]
    if not allv:
        return None
    W, H, L, R, T, B = *size, 50, 10, 20, 30
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    lo, hi = math.log(min(allv)), math.log(max(allv))
    total = sum(len(r) for r in runs)

    def xy(i, v):
        y = 0.5 if hi == lo else (math.log(max(v, 1e-12)) - lo) / (hi - lo)
        return L + (W - L - R) * i / max(1, total - 1), H - B - (H - T - B) * y

    d.rectangle([L, T, W - R, H - B], outline="black")
    for v in (math.exp(lo), math.exp((lo + hi) / 2), math.exp(hi)):
        d.text((2, xy(0, v)[1] - 5), f"{v:.2f}", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    start = 0
    for k, r in enumerate(runs):
        c = colours[k % len(colours)]
        d.point([xy(start + i, v) for i, v in enumerate(r)], fill="#bbbbbb")
        n = max(1, min(100, len(r)))
        mids = [start + (i + 0.5) * len(r) / n for i in range(n)]
        pts = [xy(x, v) for x, v in zip(mids, _bins(r, n))]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        d.text((xy(start, allv[0])[0] + 4, H - B + 4), f"run {k + 1}", fill=c)
        start += len(r)
        if k < len(runs) - 1:
            d.line([xy(start, 1)[0], T, xy(start, 1)[0], H - B], fill="#888888")
    d.text((L, 4), "training loss per step (log scale); grey: raw, colour: binned mean", fill="black")
    d.text((W - R - 150, H - B + 4), f"{total} steps, runs in order", fill="black")
    img.save(out)
    return out
