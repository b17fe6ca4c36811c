"""The demo's outputs: a terminal table, PNG plots and a markdown report."""
from __future__ import annotations

from pathlib import Path


def _degenerate(row: dict) -> str:
    n = row.get("degenerate_count")
    return "-" if n is None else f"{n}/{row.get('eval_prompts', '?')}"


def _rm_accuracy(row: dict) -> str:
    """Held-out pairs' accuracy, then (what the gate's "at chance" test reads where recorded) the
    accuracy over every pair scored unseen: out-of-fold training pairs plus held-out ones, and their count."""
    held, pooled = row.get("rm_accuracy"), row.get("rm_pooled_accuracy")
    if held is None and pooled is None:
        return "-"
    out = "-" if held is None else f"{held:.0%}"
    return out if pooled is None else f"{out} / {pooled:.0%} of {row.get('rm_pooled_pairs')}"


# (title, row key, format string or a function of the whole row)
COLUMNS = [("version", "version", "{}"), ("algorithm", "algorithm", "{}"), ("win vs v0", "win_rate_vs_v0", "{:.0%}"),
           ("hidden score", "hidden_score", "{:+.3f}"), ("words", "mean_words", "{:.1f}"),
           ("degenerate", "degenerate_count", _degenerate),
           ("KL to v0", "kl_to_v0", "{:.3f}"), ("KL to anchor", "kl_to_anchor", "{:.3f}"),
           ("RM acc held-out / pooled", "rm_accuracy", _rm_accuracy), ("RM–length corr", "rm_length_correlation", "{:+.2f}"),
           ("feedback used", "feedback_used", "{}"), ("gate", "gate", "{}")]


def _cell(row: dict, key: str, fmt) -> str:
    if callable(fmt):
        return fmt(row)
    v = row.get(key)
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def rich_table(rows: list[dict], preference: str | None = None):
    from rich.table import Table
    who = f"'{preference}'" if preference else "the users'"
    t = Table(title=f"Versions on held-out prompts, scored by {who} hidden preference")
    for title, _, _ in COLUMNS:
        t.add_column(title)
    for r in rows:
        t.add_row(*[_cell(r, k, f) for _, k, f in COLUMNS])
    return t


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(t for t, _, _ in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_cell(r, k, f).replace("|", "/") for _, k, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def learning_curve_points(rows: list[dict], rounds: list[dict]) -> list[dict]:
    """Win-rate vs v0 of each version against the cumulative feedback events sent by the time
    the pipeline produced it (rounds.json: each round's feedback_events and pipeline record).
    v0 sits at 0 events; versions no round produced (published by hand) are left out.
    `served`: whether the gate let the version through (a rejected one was never served)."""
    by_version = {r["version"]: r for r in rows}
    points = []
    if rows:
        points.append({"version": rows[0]["version"], "events": 0,
                       "win_rate": rows[0].get("win_rate_vs_v0", 0.5), "served": True})
    events = 0
    for rnd in rounds:
        events += rnd.get("feedback_events") or 0
        pipe = rnd.get("pipeline") or {}
        row = by_version.get(pipe.get("version") or "")
        if row is not None and row is not rows[0]:
            points.append({"version": row["version"], "events": events, "win_rate": row["win_rate_vs_v0"],
                           "served": pipe.get("state") == "succeeded"})
    return points


def plots(rows: list[dict], steps: list[dict], out: Path, rounds: list[dict] | None = None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = [r["version"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].bar(names, [r["win_rate_vs_v0"] for r in rows], color="tab:green")
    axes[0].axhline(0.5, ls="--", c="grey")
    axes[0].set_title("win-rate vs v0 (held-out)")
    axes[0].set_ylim(0, 1)
    axes[1].plot(names, [r["hidden_score"] for r in rows], marker="o")
    axes[1].set_title("mean hidden-preference score")
    axes[2].plot(names, [r["kl_to_v0"] for r in rows], marker="o", c="tab:red")
    axes[2].set_title("KL to v0 (nats / answer)")
    fig.tight_layout()
    p = out / "versions.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    if rounds is not None:
        paths.append(learning_curve_plot(learning_curve_points(rows, rounds), out / "learning_curve.png"))

    if steps:
        keys = [k for k in ("reward_raw", "reward", "kl", "kl_coef", "loss", "reward_accuracy",
                            "reward_margin", "entropy", "response_length")
                if any(k in s for s in steps)][:4]
        fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.4), squeeze=False)
        x = list(range(1, len(steps) + 1))
        for ax, k in zip(axes[0], keys):
            ax.plot(x, [s.get(k) for s in steps], marker=".")
            ax.set_title(k)
            ax.set_xlabel("PPO step (all rounds)")
            for i in range(1, len(steps)):
                if steps[i]["version"] != steps[i - 1]["version"]:
                    ax.axvline(i + 0.5, ls=":", c="grey")
        fig.tight_layout()
        p = out / "ppo_steps.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def learning_curve_plot(points: list[dict], path: Path) -> Path:
    """Served versions joined by a line; gate-rejected ones as red crosses off the line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    served = [p for p in points if p["served"]]
    ax.plot([p["events"] for p in served], [p["win_rate"] for p in served], marker="o", c="tab:green",
            label="served")
    rejected = [p for p in points if not p["served"]]
    if rejected:
        ax.scatter([p["events"] for p in rejected], [p["win_rate"] for p in rejected], marker="x", c="tab:red",
                   label="rejected by the gate", zorder=3)
    for p in points:
        ax.annotate(p["version"], (p["events"], p["win_rate"]), textcoords="offset points", xytext=(4, 4))
    ax.axhline(0.5, ls="--", c="grey")
    ax.set_ylim(0, 1)
    ax.set_xlabel("feedback events so far (cumulative)")
    ax.set_ylabel("win-rate vs v0 (held-out)")
    ax.set_title("learning curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_markdown(rows: list[dict], rounds: list[dict], settings_line: str, images: list[Path],
                   out: Path, preference: str | None = None, preference_text: str = "") -> Path:
    title = "# Live RLHF demo report" + (f" — preference `{preference}`" if preference else "")
    lines = [title, "", settings_line, ""]
    if preference_text:
        lines += [f"Hidden preference `{preference}`: {preference_text}", ""]
    lines += ["## Versions (held-out prompts, hidden preference)", "", markdown_table(rows), ""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    lines += ["", "## Rounds", "", "| round | interactions | feedback events | errors | served before | pipeline | served after |",
              "|---|---|---|---|---|---|---|"]
    for r in rounds:
        pipe = r.get("pipeline") or {}
        lines.append(f"| {r['round']} | {r['interactions']} | {r['feedback_events']} | {r['errors']} | "
                     f"{r['served_before']} | {pipe.get('state', '-')} {pipe.get('version', '')} "
                     f"{(pipe.get('error') or '')[:80]} | {r['served_after']} |")
    lines += gate_lines(rows) + degenerate_lines(rows)
    lines += ["", "## Example answers (held-out)", ""]
    for r in rows:
        for ex in r.get("examples", [])[:2]:
            lines.append(f"- **{r['version']}** — _{ex['prompt']}_ → {ex['answer'][:200]!r}")
    p = out / "report.md"
    p.write_text("\n".join(lines) + "\n")
    return p


def gate_lines(rows: list[dict]) -> list[str]:
    gated = [r for r in rows if r.get("gate")]
    if not gated:
        return []
    out = ["", "## Gate decisions", ""]
    for r in gated:
        reasons = r.get("gate_reasons") or []
        verdict = "passed" if r["gate"] == "pass" else "refused"
        out.append(f"- **{r['version']}** {verdict}" + (": " + "; ".join(reasons) if reasons else ""))
    return out


def degenerate_lines(rows: list[dict]) -> list[str]:
    """A few degenerate held-out answers per version, with why (common/degeneracy.py)."""
    bad = [r for r in rows if r.get("degenerate_examples")]
    out = ["", "## Degenerate answers (held-out)", ""]
    if not bad:
        return out + ["None: every version's held-out answers passed the degeneracy check."]
    for r in bad:
        out.append(f"- **{r['version']}** ({_degenerate(r)}):")
        for ex in r["degenerate_examples"]:
            out.append(f"  - _{ex['prompt']}_ → {ex['answer'][:120]!r} ({'; '.join(ex['reasons'])})")
    return out
