"""Turn pytest-benchmark JSON from bench/ into a table: shape, time, GOP/s (or GB/s), % of this CPU's measured
peak, and the ratio to the PyTorch baseline of the same shape in the same run.

    pytest bench/test_bench_gemm.py --benchmark-json=gemm.json
    python bench/report.py gemm.json [more.json ...] [--json rows.json] [--plot throughput.png]

Benches opt in by recording extra_info: op, group (the shape), impl, flops or bytes, peak_kind (a key of
bench/peaks.py, e.g. int8_dot) and baseline (the impl the ratio is taken against); peaks (measured once per
session) travel in the same record. A record's own vs_peer (the end-to-end bench's ratio to a peer run beside each of
its rounds) replaces the ratio of the two medians.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows_from(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for b in doc.get("benchmarks", []):
            info = b.get("extra_info", {})
            if "op" not in info or "group" not in info:
                continue
            median = b["stats"]["median"] / info.get("calls_per_round", 1)  # GPU benches time several launches
            row = {"op": info["op"], "shape": info["group"], "impl": info["impl"], "median_ms": median * 1e3,
                   "baseline": info.get("baseline")}
            peaks = info.get("peaks") or {}
            if "flops" in info:
                row["gops"] = info["flops"] / median / 1e9
                peak = peaks.get(f"{info.get('peak_kind')}_gops")
                row["pct_peak"] = 100 * row["gops"] / peak if peak else None
            if "bytes" in info:
                row["gbps"] = info["bytes"] / median / 1e9
            row["peaks"] = peaks
            if info.get("roofline_fraction_best_peak"):  # the end-to-end bench's conservative fraction
                row["pct_best_peak"] = 100 * info["roofline_fraction_best_peak"]
            if info.get("vs_peer"):  # the end-to-end bench's ratio to a peer run beside each round (same phase)
                row["vs_peer"] = info["vs_peer"]
            rows.append(row)
    by_key = {(r["op"], r["shape"], r["impl"]): r for r in rows}
    for r in rows:
        base = by_key.get((r["op"], r["shape"], r["baseline"]))
        r["vs_baseline"] = r.pop("vs_peer", None) or (base["median_ms"] / r["median_ms"] if base else None)
    return rows


def table(rows: list[dict]) -> str:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    lines = ["| op | shape | impl | median ms | GOP/s | GB/s | % peak | vs baseline |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {r['median_ms']:.3f} | {f(r.get('gops'), '.0f')} | "
                     f"{f(r.get('gbps'), '.1f')} | {f(r.get('pct_peak'), '.0f')} | "
                     f"{f(r['vs_baseline'], '.2f') + 'x' if r['vs_baseline'] else '-'} |")
    best = [f"{r['impl']} {r['pct_best_peak']:.0f}%" for r in rows if r.get("pct_best_peak") is not None]
    if best:
        lines.append("")
        lines.append("% of the roofline at the best GEMM peak each decode's test measured (its median time; % peak "
                     "above pairs each round with the peak measured just before it): " + ", ".join(best))
    peaks = next((r["peaks"] for r in rows if r.get("peaks")), None)
    if peaks:
        lines.append("")
        lines.append("Peaks (measured in the same run): " + ", ".join(f"{k} {v}" for k, v in peaks.items()))
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows})
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 4 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        sub = [r for r in rows if r["op"] == op]
        shapes = list(dict.fromkeys(r["shape"] for r in sub))
        for impl in dict.fromkeys(r["impl"] for r in sub):
            ys = [next((r.get("gops") or r.get("gbps") for r in sub if r["impl"] == impl and r["shape"] == s), None)
                  for s in shapes]
            ax.plot(range(len(shapes)), [y if y is not None else float("nan") for y in ys], marker="o", label=impl)
        ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("GOP/s (or GB/s)")
        ax.set_title(op)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--plot", type=Path, help="also write a PNG of throughput per shape")
    a = ap.parse_args(argv)
    for p in a.inputs:
        if not p.is_file():
            print(f"report: {p}: no such file", file=sys.stderr)
            return 2
    rows = rows_from(a.inputs)
    if not rows:
        print("report: no bench records with op/group extra_info in the input", file=sys.stderr)
        return 1
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
