"""The demo's outputs: a terminal table, PNG plots and a markdown report."""
from __future__ import annotations

from pathlib import Path

COLUMNS = [("version", "version", "{}"), ("algorithm", "algorithm", "{}"), ("win vs v0", "win_rate_vs_v0", "{:.0%}"),
           ("hidden score", "hidden_score", "{:+.3f}"), ("words", "mean_words", "{:.1f}"),
           ("KL to v0", "kl_to_v0", "{:.3f}"), ("RM acc", "rm_accuracy", "{:.0%}"),
           ("feedback used", "feedback_used", "{}"), ("gate", "gate", "{}")]


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def rich_table(rows: list[dict]):
    from rich.table import Table
    t = Table(title="Versions on held-out prompts, scored by the users' hidden preference")
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


def plots(rows: list[dict], steps: list[dict], out: Path) -> list[Path]:
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


def write_markdown(rows: list[dict], rounds: list[dict], settings_line: str, images: list[Path],
                   out: Path) -> Path:
    lines = ["# Live RLHF demo report", "", settings_line, "",
             "## Versions (held-out prompts, hidden preference)", "", markdown_table(rows), ""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    lines += ["", "## Rounds", "", "| round | interactions | feedback events | errors | served before | pipeline | served after |",
              "|---|---|---|---|---|---|---|"]
    for r in rounds:
        pipe = r.get("pipeline") or {}
        lines.append(f"| {r['round']} | {r['interactions']} | {r['feedback_events']} | {r['errors']} | "
                     f"{r['served_before']} | {pipe.get('state', '-')} {pipe.get('version', '')} "
                     f"{(pipe.get('error') or '')[:80]} | {r['served_after']} |")
    lines += ["", "## Example answers (held-out)", ""]
    for r in rows:
        for ex in r.get("examples", [])[:2]:
            lines.append(f"- **{r['version']}** — _{ex['prompt']}_ → {ex['answer'][:200]!r}")
    p = out / "report.md"
    p.write_text("\n".join(lines) + "\n")
    return p
