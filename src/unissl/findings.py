"""What a run's numbers mean: the findings of a report and the meaning of every metric.

:func:`derive_findings` reads the evaluation records that :func:`unissl.report.collect_metrics` found and
states one finding per result that has a reference: the value, the reference (the raw-pixel line for a frozen
encoder, the judge on real images for a reconstruction, real images through the same tokenizer for samples),
whether it is better or worse, and what that means. ``unissl report`` writes them first in ``report.html`` and
as ``findings.json`` beside it (a list of :class:`Finding` dicts, values in percent).

:func:`judge_goals` sets findings against the goals of a pipeline file (its top-level ``goals:``, kept in the
run directory's ``config.yaml``)::

    goals:
      sorcen_probe_vs_pixels: {above_reference: true}          # a findings id: beat its reference
      reptok_reconstruction_class_agreement: {at_least: 80}    # percent, as in findings.json
      wall_minutes: {at_most: 15}                               # the pipeline invocation's wall time

and ``unissl report`` shows them right after the findings and writes them to ``goals.json`` (a list of
:class:`GoalResult` dicts). ``wall_minutes`` is read from ``pipeline.json`` (:data:`INVOCATION_FILE`), which
``unissl pipeline`` writes when its stages finish; an invocation that reused finished stages did not time
the whole job, so that goal then reads "not measured".

:func:`metric_meaning` gives every metric name its direction (higher or lower is better) and a one-line meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unissl.errors import ConfigError

Record = tuple[str, dict[str, Any]]  # (relative path, flattened scalars) as collect_metrics returns them


@dataclass(frozen=True)
class Finding:
    """One result beside its reference, in percent where it is a share or an accuracy."""

    id: str  # stable name, e.g. "sorcen_probe_vs_pixels"
    value: float
    reference_value: float | None
    higher_is_better: bool
    sentence: str  # the value, the reference, better or worse, and what it means
    reference: str = ""  # what the reference is
    source: str = ""  # the result file the value comes from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# (prefix or exact key, higher_is_better, meaning); the first match wins, so exact keys come first.
_MEANINGS: tuple[tuple[str, bool | None, str], ...] = (
    ("top1", True, "test images labelled correctly (%)"),
    ("val_top1", True, "the probe head chosen on a held-out 10% of train: its accuracy there (%)"),
    ("images", None, "number of images measured"),
    ("num_images", None, "number of images measured"),
    ("num_samples", None, "number of samples measured"),
    ("IS", True, "Inception-style score in the judge's classes (higher: confident and varied)"),
    ("top5", True, "test images whose label is among the 5 best guesses (%)"),
    ("test_top1", True, "the judge (domain classifier) on real test images: accuracy (%)"),
    ("judge_accuracy", True, "the judge on real test images: share labelled correctly"),
    ("class_agreement", True, "reconstructions the judge puts in the class it gives the original"),
    ("ceiling_class_consistency", True, "real test images through the same tokenizer, judged as their class: "
                                        "the most a generator can reach"),
    ("class_consistency", True, "samples the judge assigns to the class (or prompt's class) they were asked for"),
    ("ceiling_FD", False, "FD of real test images through the same tokenizer: the best FD a generator can reach"),
    ("FD", False, "Fréchet distance to real test images in the judge's feature space (0: same statistics)"),
    ("FID", False, "Fréchet distance in Inception features (0: same statistics)"),
    ("rFD", False, "Fréchet distance of the reconstructions to their originals in the judge's features"),
    ("psnr", True, "reconstruction fidelity to the original pixels (dB)"),
    ("ssim", True, "structural similarity of reconstruction and original (1: identical)"),
    ("mse", False, "mean squared pixel error of the reconstructions"),
    ("usage", True, "share of the codebook used on the test images"),
    ("perplexity", True, "effective number of codes used (higher: the codes are spread more evenly)"),
    ("precision", True, "samples that fall on the real data's manifold"),
    ("recall", True, "real data covered by the samples"),
    ("shot", True, "few-shot accuracy of a linear head on k labelled images per class (%)"),
    ("loss", False, "training loss (of the named term)"),
    ("lr", None, "learning rate of the schedule"),
    ("knn", True, "k-NN accuracy of the features on held-out ids (%)"),
    ("acc", True, "accuracy (%)"),
    ("train_seconds", False, "wall seconds of training"),
    ("seconds", False, "wall seconds"),
)


def metric_meaning(key: str) -> tuple[bool | None, str]:
    """(higher_is_better or None when it has no direction, one-line meaning) of a metric name."""
    name = key.split(".")[-1].lower()
    if name.endswith("_std"):
        return None, "spread (standard deviation) of the metric before it"
    for prefix, higher, meaning in _MEANINGS:
        if name == prefix.lower():
            return higher, meaning
    for prefix, higher, meaning in _MEANINGS:
        if name.startswith(prefix.lower()) or (prefix == "shot" and prefix in name):
            return higher, meaning
    if "loss" in name:  # e.g. probe_loss, rec_loss
        return False, "a training loss"
    if "acc" in name:  # e.g. probe_acc
        return True, "an accuracy"
    return None, ""


def _pct(v: float) -> float:
    """A share in 0..1 as percent; percents stay."""
    return 100.0 * v if abs(v) <= 1.0 else v


def _kind(scalars: dict[str, Any]) -> str:
    if "extra.best_lr" in scalars and "metrics.top1" in scalars:
        return "probe"
    if "extra.k" in scalars and "metrics.top1" in scalars:
        return "knn"
    if "metrics.class_agreement" in scalars:
        return "reconstruction"
    if "metrics.class_consistency" in scalars:
        return "generation"
    if "metrics.test_top1" in scalars and str(scalars.get("name", "")).startswith("domain_classifier"):
        return "judge"
    return ""


def _is_text_samples(scalars: dict[str, Any], run_dir: Path | None) -> bool:
    """Whether a generation record scored text-prompted samples (its npz holds the prompts)."""
    path = scalars.get("extra.samples")
    if isinstance(path, str):
        p = Path(path)
        if not p.is_absolute() and run_dir is not None and not p.is_file():
            p = run_dir / p
        if p.is_file():
            import numpy as np

            with np.load(p) as z:
                return "prompts" in z.files
    return "text" in str(scalars.get("name", "")) or "prompt" in str(scalars.get("name", ""))


# Which Sorcen probe row the findings id ``sorcen_{probe,knn}_vs_pixels`` names, first found first; every other
# row keeps a finding of its own, so the released pooling is always reported beside the headline.
HEADLINE_POOLINGS = ("sorcen-grid", "sorcen-blocks", "sorcen", "sorcen-released")


def _family(scalars: dict[str, Any]) -> str:
    """The extractor family of an evaluation record (``sorcen-grid:RUN`` -> ``sorcen-grid``)."""
    return str(scalars.get("extra.extractor", "")).split(":", 1)[0]


def _compare(value: float, ref: float, higher: bool, unit: str = " points") -> tuple[str, bool]:
    diff = value - ref
    better = diff > 0 if higher else diff < 0
    if abs(diff) < 0.005:
        return "level with", True
    return f"{abs(diff):.2f}{unit} {'above' if diff > 0 else 'below'}", better


def derive_findings(found: list[Record], run_dir: Path | None = None) -> list[Finding]:
    """The findings of a run directory's evaluation records (see the module docstring)."""
    by_kind: dict[str, list[Record]] = {}
    for rel, scalars in found:
        by_kind.setdefault(_kind(scalars), []).append((rel, scalars))
    out: list[Finding] = []

    judge = next((float(sc["metrics.test_top1"]) for _, sc in by_kind.get("judge", [])), None)
    if judge is None:
        judge = next((_pct(float(sc["metrics.judge_accuracy"])) for _, sc in found if "metrics.judge_accuracy" in sc),
                     None)
    judge_text = f"; the judge itself labels {judge:.1f}% of real test images correctly" if judge is not None else ""

    for kind, what in (("probe", "linear probe"), ("knn", "k-NN")):
        rows = by_kind.get(kind, [])
        pixel = next((sc for _, sc in rows if str(sc.get("extra.extractor", "")) == "pixels"), None)
        if pixel is None:
            continue
        ref = float(pixel["metrics.top1"])
        encoders = [(rel, sc) for rel, sc in rows if str(sc.get("extra.extractor", "")) != "pixels"]
        # The headline Sorcen row: the richest pooling present (HEADLINE_POOLINGS), whatever the file order.
        ranked = [(HEADLINE_POOLINGS.index(_family(sc)), i) for i, (_, sc) in enumerate(encoders)
                  if _family(sc) in HEADLINE_POOLINGS]
        headline = min(ranked)[1] if ranked else -1
        for i, (rel, sc) in enumerate(encoders):
            value, family = float(sc["metrics.top1"]), _family(sc)
            first = i == headline
            fid = (f"sorcen_{'probe' if kind == 'probe' else 'knn'}_vs_pixels" if first
                   else f"{sc.get('name', rel)}_vs_pixels".replace("-", "_"))
            rel_text, better = _compare(value, ref, True)
            meaning = ("the frozen features separate the classes better than the raw pixels do: the encoder "
                       "learned something a linear classifier can use" if better else
                       "the frozen features do not yet separate the classes as well as the raw pixels: at this "
                       "training length the encoder has not passed the pixel line")
            pooling = {"sorcen-blocks": " (every block's mean, concatenated)", "sorcen": " (last block's mean)",
                       "sorcen-released": " (the released pooling)",
                       "sorcen-grid": " (every block's tokens pooled to a 2x2 grid, concatenated)"}.get(family, "")
            out.append(Finding(
                fid, round(value, 2), round(ref, 2), True,
                f"{family}{pooling} {what}: {value:.2f}% vs {ref:.2f}% on raw pixels, {rel_text} the pixel line "
                f"({'better' if better else 'worse'}): {meaning}.",
                reference=f"raw pixels, same {what}", source=rel))

    for rel, sc in by_kind.get("reconstruction", []):
        value = _pct(float(sc["metrics.class_agreement"]))
        rec_ref: float | None = judge
        sentence = (f"RepTok reconstructions keep their original's class {value:.1f}% of the time"
                    + (f" against {rec_ref:.1f}% for the judge on real images" if rec_ref is not None else "")
                    + (f" ({'better' if value >= rec_ref else 'worse'}): " if rec_ref is not None else ": ")
                    + ("one continuous token carries the class of most images" if value >= 80 else
                       "the single token loses the class of many images")
                    + (f"; PSNR {float(sc['metrics.psnr']):.1f} dB" if "metrics.psnr" in sc else "") + ".")
        out.append(Finding("reptok_reconstruction_class_agreement", round(value, 2),
                           None if rec_ref is None else round(rec_ref, 2), True, sentence,
                           reference="the judge's accuracy on real test images", source=rel))

    for rel, sc in by_kind.get("generation", []):
        text = _is_text_samples(sc, run_dir)
        value = _pct(float(sc["metrics.class_consistency"]))
        ceiling = sc.get("metrics.ceiling_class_consistency")
        share_ref: float | None = _pct(float(ceiling)) if isinstance(ceiling, (int, float)) else judge
        ref_name = ("real test images through the same tokenizer (the ceiling)" if isinstance(ceiling, (int, float))
                    else "the judge on real images")
        held = "heldout" in str(sc.get("extra.samples", "")) + str(sc.get("name", ""))
        what = ("Samples from caption templates never seen in training" if text and held
                else "Text-prompted samples" if text else "Class-conditional samples")
        rel_text, better = _compare(value, share_ref, True) if share_ref is not None else ("", True)
        fd = next((k for k in sc if k.startswith("metrics.FD") and "ceiling" not in k), None)
        fd_text = ""
        if fd is not None and f"metrics.ceiling_{fd.split('.', 1)[1]}" in sc:
            fd_text = (f"; {fd.split('.', 1)[1]} {float(sc[fd]):.2f} against the ceiling's "
                       f"{float(sc['metrics.ceiling_' + fd.split('.', 1)[1]]):.2f} (lower is better)")
        bound = "the tokenizer allows" if isinstance(ceiling, (int, float)) else "the judge recognises real images"
        meaning = ("the generator follows " + ("the prompt" if text else "the asked class")
                   + (f" about as well as {bound}" if better or (share_ref is not None and share_ref - value < 5)
                      else f" less often than {bound}"))
        sentence = (f"{what} are judged the asked class {value:.1f}% of the time"
                    + (f", {rel_text} {share_ref:.1f}% for {ref_name}" if share_ref is not None else "")
                    + f"{judge_text}{fd_text}: {meaning}.")
        fid = "text_prompt_class_share" if text else "class_conditional_class_share"
        if any(f.id == fid for f in out):
            fid = f"{fid}_{sc.get('name', rel)}".replace("-", "_")
        out.append(Finding(fid, round(value, 2), None if share_ref is None else round(share_ref, 2), True, sentence,
                           reference=ref_name, source=rel))
    return out


# ------------------------------------------------------------------------------------------------ goals
GOAL_KINDS = ("at_least", "at_most", "above_reference")
WALL_GOAL = "wall_minutes"  # the one goal that is not a finding: the invocation's wall time
INVOCATION_FILE = "pipeline.json"  # in the run directory: {"wall_seconds", "stages_run", "stages_reused"}

# A goal in words: what the finding measures (the comparison and the number are added to it).
_GOAL_WORDS = {
    "sorcen_probe_vs_pixels": "Sorcen's linear probe",
    "sorcen_knn_vs_pixels": "Sorcen's k-NN",
    "reptok_reconstruction_class_agreement": "RepTok reconstructions judged the right class",
    "class_conditional_class_share": "Class-conditional samples judged the asked class",
    "text_prompt_class_share": "Samples from unseen prompts judged the prompt's class",
    WALL_GOAL: "Wall time of the whole job",
}


@dataclass(frozen=True)
class GoalResult:
    """One goal of the pipeline file beside the value it is about; ``met`` is None when it was not measured."""

    id: str  # a findings id, or "wall_minutes"
    goal: str  # the goal in words, e.g. "RepTok reconstructions judged the right class >= 80%"
    value: float | None
    met: bool | None
    gap: str  # how far from the goal, e.g. "15.4 points short", or why it was not measured
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_goals(goals: Any, source: str | None = None) -> dict[str, dict[str, Any]]:
    """``goals`` validated (a mapping of id -> exactly one of ``at_least: x``, ``at_most: x``,
    ``above_reference: true``); a bad one is a :class:`ConfigError` naming its key."""
    if goals is None:
        return {}
    if not isinstance(goals, dict):
        raise ConfigError("goals", f"must be a mapping of a findings id to a goal, got {goals!r}", source)
    for gid, goal in goals.items():
        where = f"goals.{gid}"
        if not isinstance(gid, str) or not gid:
            raise ConfigError(where, "a goal is named by a findings id (a string)", source)
        if not isinstance(goal, dict) or len(goal) != 1 or next(iter(goal)) not in GOAL_KINDS:
            raise ConfigError(where, f"needs exactly one of at_least: x, at_most: x, above_reference: true; "
                                     f"got {goal!r}", source)
        kind, bound = next(iter(goal.items()))
        if kind == "above_reference":
            if bound is not True:
                raise ConfigError(where, f"above_reference takes true, got {bound!r}", source)
            if gid == WALL_GOAL:
                raise ConfigError(where, "wall time has no reference: use at_most (minutes)", source)
        elif isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError(where, f"{kind} takes a number, got {bound!r}", source)
    return goals


def _goal_words(gid: str, kind: str, bound: Any, reference: str) -> str:
    what = _GOAL_WORDS.get(gid, gid)
    if kind == "above_reference":
        return f"{what} above {reference or 'its reference'}"
    unit = " minutes" if gid == WALL_GOAL else "%"
    return f"{what} {'>=' if kind == 'at_least' else '<='} {format(bound, 'g')}{unit}"


def _wall_value(invocation: dict[str, Any] | None) -> tuple[float | None, str]:
    """(minutes, "") of a timed invocation, or (None, why it is not measured)."""
    if not invocation or "wall_seconds" not in invocation:
        return None, f"not measured: no {INVOCATION_FILE} in this run (written by `unissl pipeline`)"
    reused = int(invocation.get("stages_reused", 0) or 0)
    if reused:
        return None, (f"not measured: {reused} stage{'s were' if reused != 1 else ' was'} reused from an "
                      f"earlier run")
    return float(invocation["wall_seconds"]) / 60.0, ""


def judge_goals(goals: dict[str, dict[str, Any]], findings: list[Finding],
                invocation: dict[str, Any] | None = None) -> list[GoalResult]:
    """Each goal (:func:`check_goals`) against its finding (or, for ``wall_minutes``, the invocation record)."""
    by_id = {f.id: f for f in findings}
    out: list[GoalResult] = []
    for gid, goal in goals.items():
        kind, bound = next(iter(goal.items()))
        finding = by_id.get(gid)
        reference = ("the pixel line" if gid.endswith("_vs_pixels")
                     else finding.reference if finding is not None and finding.reference else "")
        words = _goal_words(gid, kind, bound, reference)
        value: float | None
        if gid == WALL_GOAL:
            value, why = _wall_value(invocation)
            unit, shown = " minutes", (f"{value:.1f} minutes" if value is not None else "")
        else:
            value = None if finding is None else finding.value
            why = "" if finding is not None else f"not measured: this run has no finding {gid!r}"
            unit, shown = " points", (f"{value:.2f}%" if value is not None else "")
        met: bool | None = None
        if value is None:
            gap = why
        elif kind == "above_reference":
            ref = None if finding is None else finding.reference_value
            if ref is None:
                gap = "not measured: the finding has no reference"
            else:
                met = value - ref > 0
                gap = f"{_compare(value, ref, True, unit='')[0]} {reference}"  # "0.76 above the pixel line
        else:
            diff = value - float(bound)
            met = diff >= 0 if kind == "at_least" else diff <= 0
            if abs(diff) < 0.05:
                gap = "exactly at the goal"
            elif kind == "at_least":
                gap = f"{abs(diff):.1f}{unit} {'above the goal' if met else 'short'}"
            else:
                gap = f"{abs(diff):.1f}{unit} {'under' if met else 'over'}"
        if value is not None:
            value = round(value, 2)
        verdict = "not measured" if met is None else "met" if met else "not met"
        sentence = (f"{words}: {shown}, {verdict} ({gap})." if met is not None else f"{words}: {gap}.")
        out.append(GoalResult(gid, words, value, met, gap, sentence))
    return out


__all__ = ["Finding", "GoalResult", "check_goals", "derive_findings", "judge_goals", "metric_meaning"]
