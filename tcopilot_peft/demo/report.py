"""The demo's report: its results as a table and as a figure (training curves, test accuracy with the paired gain)."""

from __future__ import annotations

from pathlib import Path


def format_table(results: dict) -> str:
    low, high = results["ci95_points"]
    skill = results["copilot_skill_test"]
    rows = [
        ("Pilot alone, test accuracy", f"{100 * results['pilot_accuracy']:.1f}%"),
        (f"Pilot + Copilot (λ={results['chosen_lambda']}), test accuracy", f"{100 * results['fused_accuracy']:.1f}%"),
        ("gain (paired, 95% bootstrap interval)", f"{results['gain_points']:+.1f} points [{low:+.1f}, {high:+.1f}]"),
        ("items fixed / broken by the Copilot", f"{results['fixed_by_copilot']} / {results['broken_by_copilot']}"),
        (
            "held-out cross-entropy, Pilot → fused (λ = 1, logit)",
            f"{results['copilot_ce_skill_test']['pilot_ce']:.3f} → {results['copilot_ce_skill_test']['fused_ce']:.3f}",
        ),
        *(
            [("Copilot RMSE skill vs ℓ, held-out (train)", f"{skill:+.3f} ({results['copilot_skill_train']:+.3f})")]
            if results["settings"]["copilot_loss"] != "fused_ce"  # regression skill means nothing for a log-odds f
            else []
        ),
        ("training time vs plain SFTTrainer, same Pilot steps", f"{results['training_time_ratio']:.2f}×"),
        ("generation tokens/s, fused vs Pilot", f"{results['tokens_per_second_ratio']:.2f}×"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [e["step"] for e in results["loss_curve"]]
    curves.plot(steps, [e["loss"] for e in results["loss_curve"]], label="Pilot loss (cross-entropy)")
    curves.plot(
        [e["step"] for e in results["copilot_loss_curve"]],
        [e["copilot_loss"] for e in results["copilot_loss_curve"]],
        label=f"Copilot loss ({results['settings']['copilot_loss']})",
    )
    curves.set_xlabel("training step")
    curves.set_title("Joint training")
    curves.legend()
    values = [100 * results["pilot_accuracy"], 100 * results["fused_accuracy"]]
    bars.bar(["Pilot alone", "Pilot + Copilot"], values, color=["#888888", "#1f77b4"])
    for x, value in enumerate(values):
        bars.text(x, value, f"{value:.1f}%", ha="center", va="bottom")
    bars.set_ylabel("test answer accuracy (%)")
    low, high = results["ci95_points"]
    bars.set_title(f"gain {results['gain_points']:+.1f} points [{low:+.1f}, {high:+.1f}]")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
