"""Runs of one env and seed set side by side: the best policy known on the real among them
(`reference_run`), each run's normalized real score and gap closure against it (`compare`),
and the table `experiments.train` prints (`format_table`).

Split from `experiments.train`, which runs the comparisons (`run.compare`) and writes what
`compare` fills in to each run's `summary.json`.
"""

from __future__ import annotations

import math

from scoring import difference_std, gap_stands_out, share_std
from sim2real.evaluation import gap_closure, normalized_score

REFERENCES = ("oracle", "energy_lqr")
"""The runs that can be a real system's ceiling: the oracle (PODS trained on the real's
twin) and the classical controller."""


def reference_run(summaries: list[dict]) -> dict | None:
    """The best policy known on the real among the runs of `REFERENCES`: the one that solves
    the most held-out starts there, the higher real return breaking a tie; None if none ran."""

    def rank(s: dict) -> tuple[float, float]:
        solved = s["eval/solved_real"]
        return (-1.0 if solved is None or solved != solved else solved, s["eval/return_real"])

    candidates = [
        s for s in summaries if s["algo"] in REFERENCES and s["eval/return_real"] is not None
    ]
    return max(candidates, key=rank) if candidates else None


def compare(summaries: list[dict]) -> list[dict]:
    """Fills in, for runs on the same env and seed, the normalized real score and the gap
    closure relative to PODS in sim, on solved shares and on returns, against the best policy
    known on the real (`reference_run`).

    A gap closure divides by the reference's lead over PODS in sim. It is filled in only
    where that lead is larger than twice its standard deviation over the held-out starts
    (the standard error of a share, or of a mean return); elsewhere it is None and the table
    prints "no gap": a ratio of noise says nothing."""
    reference = reference_run(summaries)
    if reference is None:
        return summaries
    pods = next((s for s in summaries if s["algo"] == "pods"), None)
    n = reference["eval/trajectories"]
    for s in summaries:
        if s["eval/return_real"] is None:
            continue
        s["eval/reference"] = reference["algo"]
        s["eval/score_solved_real"] = normalized_score(
            s["eval/solved_real"], s["eval/solved_random_real"], reference["eval/solved_real"]
        )
        s["eval/score_real"] = normalized_score(
            s["eval/return_real"], s["eval/return_random_real"], reference["eval/return_real"]
        )
        if pods is None:
            continue
        for figure, std in (
            ("solved_real", lambda r: share_std(r["eval/solved_real"], n)),
            ("return_real", lambda r: r["eval/return_real_std"] / math.sqrt(n)),
        ):
            gap = reference[f"eval/{figure}"] - pods[f"eval/{figure}"]
            spread = difference_std(std(reference), std(pods))
            suffix = "_solved" if figure == "solved_real" else ""
            s[f"eval/gap{suffix}"] = gap
            s[f"eval/gap{suffix}_std"] = spread
            s[f"eval/gap_closure{suffix}"] = (
                gap_closure(
                    s[f"eval/{figure}"], pods[f"eval/{figure}"], reference[f"eval/{figure}"]
                )
                if gap_stands_out(gap, spread)
                else None
            )
    return summaries


def format_table(summaries: list[dict]) -> str:
    """Every run's solved shares and mean returns in real and sim (and random commands'),
    with the score and the gap closure on solved shares where a reference ran."""
    first = summaries[0]
    scored_on = f"{first.get('sim/system') or first['env']} (sim)"
    if first.get("real/system"):
        scored_on = f"{first['real/system']} (real) and {scored_on}"
    lines = [
        f"\n{first['env']}, seed {first['seed']}: solved share and mean return over "
        f"{first['eval/trajectories']} held-out initial states of {scored_on}",
        f"{'policy':>10} {'solved real':>12} {'solved sim':>11} {'real':>9} {'sim':>9} "
        f"{'score':>7} {'gap':>7} {'real data':>10}  trained on",
    ]

    def number(value, width: int, digits: int) -> str:
        missing = value is None or value != value
        return f"{'-':>{width}}" if missing else f"{value:{width}.{digits}f}"

    def share(value, width: int) -> str:
        missing = value is None or value != value
        return f"{'-':>{width}}" if missing else f"{value:{width}.0%}"

    def gap(s: dict) -> str:
        if "eval/gap_solved" not in s:
            return f"{'-':>7}"
        closure = s["eval/gap_closure_solved"]
        return f"{'no gap':>7}" if closure is None else number(closure, 7, 2)

    for s in summaries:
        lines.append(
            f"{s['algo']:>10} {share(s['eval/solved_real'], 12)} {share(s['eval/solved_sim'], 11)} "
            f"{number(s['eval/return_real'], 9, 2)} {s['eval/return_sim']:9.2f} "
            f"{number(s['eval/score_solved_real'], 7, 2)} {gap(s)} {s['real/transitions']:10d}"
            f"  {s.get('train/env') or '-'}"
        )
    lines.append(
        f"{'random':>10} {share(first['eval/solved_random_real'], 12)} {'':>11} "
        f"{number(first['eval/return_random_real'], 9, 2)} {first['eval/return_random_sim']:9.2f} "
        f"{'':>7} {'':>7} {'':>10}"
    )
    reference = first.get("eval/reference")
    if reference is not None:
        lines.append(
            f"reference: {reference}, the best policy known on the real. On solved shares S, "
            "score: (S - S_random) / (S_ref - S_random); gap: (S - S_pods) / (S_ref - S_pods), "
            "'no gap' where S_ref - S_pods is within twice its standard error"
        )
    return "\n".join(lines)


__all__ = ["REFERENCES", "compare", "format_table", "reference_run"]
