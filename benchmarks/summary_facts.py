"""How many ground-truth facts the extractive summaries keep at each budget, on synthetic
TCGA-style reports; the table in docs/summaries.md comes from this script.

    python benchmarks/summary_facts.py [--reports 500] [--seed 0] [--budgets 20 35 50 154]

Prints a markdown table: per budget, mean / min / max CLIP tokens, mean ground-truth facts stated
(of 13), the share of cases stating each fact, and how many summaries state a finding opposite to
the truth (must be 0). Also the reports' length distribution in words.
"""

from __future__ import annotations

import argparse
import statistics
import time

from histoldm.summaries.extractive import summarize
from histoldm.summaries.scoring import GROUND_TRUTH_FACTS, facts_stated, stated_opposite
from histoldm.summaries.synthetic import make_synthetic_cases
from histoldm.text.tokenizer import count_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[20, 35, 50, 154])
    args = parser.parse_args()
    started = time.perf_counter()
    cases = make_synthetic_cases(args.reports, args.seed)
    words = sorted(len(c.text.split()) for c in cases)
    quantiles = statistics.quantiles(words, n=10)
    print(
        f"reports: {len(cases)} (seed {args.seed}); words min {words[0]}, p10 {quantiles[0]:.0f}, "
        f"median {statistics.median(words):.0f}, p90 {quantiles[-1]:.0f}, max {words[-1]}\n"
    )
    short = {"histologic_type": "type", "in_situ": "DCIS", "pleomorphism": "pleo", "receptors": "ER/PR/HER2"}
    header = ["budget", "tokens mean (min-max)", f"facts kept (of {len(GROUND_TRUTH_FACTS)})", "opposite"]
    header += [short.get(f, f) for f in GROUND_TRUTH_FACTS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for budget in args.budgets:
        tokens, kept, opposite = [], [], 0
        per_fact = dict.fromkeys(GROUND_TRUTH_FACTS, 0)
        for case in cases:
            text = summarize(case.text, budget).text
            tokens.append(count_tokens(text))
            stated = facts_stated(case, text)
            kept.append(sum(stated.values()))
            for name, ok in stated.items():
                per_fact[name] += ok
            opposite += bool(stated_opposite(case, text))
        row = [
            str(budget),
            f"{statistics.mean(tokens):.1f} ({min(tokens)}-{max(tokens)})",
            f"{statistics.mean(kept):.2f}",
            str(opposite),
        ] + [f"{100 * per_fact[f] / len(cases):.0f}%" for f in GROUND_TRUTH_FACTS]
        print("| " + " | ".join(row) + " |")
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
