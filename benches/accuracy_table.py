#!/usr/bin/env python3
"""Turns the run reports of `sparsecube finetune --compare` (OUT/report.json, or the per-method
OUT/report-METHOD.json files) into the markdown table of docs/accuracy.md: held-out accuracy and
macro-F1 with each method's gap to dense (in points), trainable parameters (and their share),
peak RSS, median step time, wall time, the peak learning rate, and the run's warnings.

    python3 benches/accuracy_table.py OUT/report.json > table.md
"""

import json
import sys


def main():
    reports = []
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            reports.extend(json.load(f))
    if not reports:
        sys.exit("usage: accuracy_table.py REPORT.json [...]")
    dense = next((r for r in reports if r["method"] == "dense"), None)
    base = dense["epochs"][-1] if dense and dense["epochs"] else None
    print("| method | held-out accuracy | Δ dense (pts) | macro-F1 | Δ dense (pts) | trainable params | (% of model) "
          "| peak RSS MiB | step ms | wall s | peak lr |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        last = r["epochs"][-1] if r["epochs"] else None
        if last is None:
            continue
        gap = lambda k: f"{100 * (last[k] - base[k]):+.1f}" if base else "—"
        rss = r.get("peak_rss_bytes")
        lr = r.get("lr") or {}
        flag = " ⚠" if r.get("warnings") else ""
        rss = f"{rss / 2**20:.0f}" if rss else "—"
        share = 100 * r["trainable_params"] / max(r["total_params"], 1)
        print(f"| {r['method']}{flag} | {last['accuracy']:.3f} | {gap('accuracy')} | {last['macro_f1']:.3f} "
              f"| {gap('macro_f1')} | {r['trainable_params']:,} | {share:.2f} | {rss} | {r['step_ms']:.0f} "
              f"| {r['wall_s']:.0f} | {lr.get('lr', float('nan')):.0e} |")
    first = reports[0]
    init = first.get("initial")
    print()
    print(f"Chance {first['chance']:.3f}, majority class {first.get('majority', 0):.3f}"
          + (f"; before training (fresh head): accuracy {init['accuracy']:.3f}, held-out loss {init['loss']:.3f}" if init else "")
          + f". Device: {first['device']}. Data: {first.get('data', '?')}.")
    for r in reports:
        for w in r.get("warnings", []):
            print(f"- ⚠ {r['method']}: {w}")


if __name__ == "__main__":
    main()
