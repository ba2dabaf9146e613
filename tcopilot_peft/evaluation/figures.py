"""Drawing the explanations `explain.py` computes: the paper's Figure 4 (one row of panels per chosen step) and
Figure 3 (the rectification summary). matplotlib is imported only here, and only when a figure is drawn."""

from __future__ import annotations

from collections.abc import Sequence

from .explain import Explanation, RectificationReport, StepTrace


PANEL_WIDTH_INCHES = 15.0
ROW_HEIGHT_INCHES = 3.8
SUMMARY_SIZE_INCHES = (16.0, 4.5)
DPI = 100


def _bar_colours(step: StepTrace) -> list[str]:
    """Red for the token that follows along the traced answer (the paper's "ground truth token"), grey otherwise."""
    return ["tab:red" if c.token_id == step.target_id else "0.7" for c in step.candidates]


def _value_label(value: float, signed: bool) -> str:
    """One decimal, as in the paper's figure, or two below 1 so small scores do not all read "0.1"."""
    digits = 1 if abs(value) >= 1 else 2
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _bars(axis, step: StepTrace, values: list[float], signed: bool, title: str, ylabel: str):
    """Candidate bars with their values written on them, as in the paper's Figure 4."""
    bars = axis.bar(range(len(values)), values, color=_bar_colours(step))
    for bar, value in zip(bars, values):
        axis.annotate(
            _value_label(value, signed),
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom" if value >= 0 else "top",
            fontsize=8,
            fontweight="bold" if signed else "normal",
        )
    axis.axhline(0, color="black", linewidth=0.5)
    axis.set_xticks(range(len(values)), [f'"{c.token}"' for c in step.candidates], fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(ylabel, fontsize=9)
    return bars


def _score_panel(axis, step: StepTrace, fused: bool, title: str, ylabel: str) -> None:
    """A Pilot or fused panel: scores as bars with the chosen token outlined, probabilities as a dashed line."""
    values = [c.fused_score if fused else c.pilot_score for c in step.candidates]
    chosen = step.fused_choice_id if fused else step.pilot_choice_id
    bars = _bars(axis, step, values, signed=False, title=title, ylabel=ylabel)
    for bar, candidate in zip(bars, step.candidates):
        if candidate.token_id == chosen:
            bar.set_edgecolor("black")
            bar.set_linewidth(2.0)
    twin = axis.twinx()
    probabilities = [c.fused_probability if fused else c.pilot_probability for c in step.candidates]
    twin.plot(range(len(values)), probabilities, "--o", color="purple", markersize=3)
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("probability", color="purple", fontsize=9)


def draw_explanation(explanation: Explanation, steps: Sequence[int], path: str) -> tuple[int, int]:
    """Draw `steps` of an explanation as rows of three panels: Pilot, Copilot correction, Pilot + Copilot.

    Returns:
        The PNG's `(width, height)` in pixels: 1500 wide, 380 high per row.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    label = "logit" if explanation.fusion_mode == "logit" else "log-probability"
    size = (PANEL_WIDTH_INCHES, ROW_HEIGHT_INCHES * len(steps))
    figure, axes = plt.subplots(len(steps), 3, figsize=size, dpi=DPI, squeeze=False)
    for (pilot_axis, copilot_axis, fused_axis), index in zip(axes, steps):
        step = explanation.steps[index]
        _score_panel(pilot_axis, step, fused=False, title="Pilot", ylabel=label)
        corrections = [c.correction for c in step.candidates]
        title = f"Copilot correction (λ = {explanation.fusion_lambda:g})"
        _bars(copilot_axis, step, corrections, signed=True, title=title, ylabel=f"Δ {label}")
        _score_panel(fused_axis, step, fused=True, title="Pilot + Copilot", ylabel=label)
        verdict = f"changed {step.pilot_choice!r} → {step.fused_choice!r}" if step.changed else "unchanged"
        pilot_axis.annotate(
            f"step {index}, next token {step.target!r}: {verdict}; "
            f"correction {100 * step.relative_magnitude:.0f}% of the Pilot's logit range",
            (0, 1.18),
            xycoords="axes fraction",
            fontsize=10,
            color="tab:red" if step.changed else "black",
        )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return round(size[0] * DPI), round(size[1] * DPI)


def draw_summary(report: RectificationReport, path: str) -> tuple[int, int]:
    """Three panels: the distribution of relative correction sizes, their mean per benchmark, and the flip outcomes
    per benchmark (as a share of tokens).

    Returns:
        The PNG's `(width, height)` in pixels: 1600 × 450.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.tallies)
    stats = [report.tallies[name].summary() for name in names]
    figure, (spread, means, flips) = plt.subplots(1, 3, figsize=SUMMARY_SIZE_INCHES, dpi=DPI)
    for name in names:
        values = [100 * v for v in report.tallies[name].relative_magnitudes]
        spread.hist(values, bins=30, histtype="step", density=True, label=name)  # benchmarks differ in length
    spread.set_xlabel("correction size, % of the Pilot's logit range")
    spread.set_ylabel("density over tokens")
    spread.set_title("Size of the Copilot's corrections")
    if len(names) <= 8:
        spread.legend(fontsize=7)
    positions = range(len(names))
    means.bar(positions, [100 * s["relative_magnitude"]["mean"] for s in stats], color="tab:blue", label="mean")
    means.scatter(positions, [100 * s["relative_magnitude"]["p90"] for s in stats], color="black", label="p90", s=12)
    means.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    means.set_ylabel("% of the Pilot's logit range")
    means.set_title("Mean correction size")
    means.legend(fontsize=7)
    bottom = [0.0] * len(names)
    for key, colour in (("flips_helped", "tab:green"), ("flips_hurt", "tab:red"), ("flips_neutral", "0.6")):
        heights = [100 * s[key] / s["tokens"] for s in stats]
        flips.bar(positions, heights, bottom=bottom, color=colour, label=key.removeprefix("flips_"))
        bottom = [b + h for b, h in zip(bottom, heights)]
    flips.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    flips.set_ylabel("% of tokens")
    flips.set_title("Argmax flips against the reference")
    flips.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return round(SUMMARY_SIZE_INCHES[0] * DPI), round(SUMMARY_SIZE_INCHES[1] * DPI)
