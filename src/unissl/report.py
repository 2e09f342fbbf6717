"""One self-contained report of a run directory: HTML (images inlined) and Markdown.

The report discovers what is there rather than assuming a pipeline: stage records
(``stages/*.json``), evaluation results (``**/results/*.json``), other metric files (``**/*eval*.json``),
training logs (``**/log.jsonl``, plotted with matplotlib), PNG grids (the newest of each series), the
resolved config and the machine it ran on.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
from pathlib import Path
from typing import Any

import yaml

from unissl.engine.logger import read_log
from unissl.errors import UnisslError
from unissl.findings import (
    INVOCATION_FILE,
    WALL_GOAL,
    check_goals,
    derive_findings,
    judge_goals,
    metric_meaning,
)
from unissl.utils.format import format_number, markdown_table
from unissl.utils.io import atomic_file

_STEP = re.compile(r"^(?P<series>.*?)[_-]?step[_-]?(?P<step>\d+)$")
_CURVE_KEYS = ("loss", "acc", "psnr", "usage", "lr", "knn")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


_FLAT_RECORDS = ("metrics.json", "tokenizer_eval.json")  # records of runs older than results/ everywhere


def collect_metrics(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(relative path, flattened scalars) of every evaluation record below ``run_dir``.

    Records have fixed names, nothing is guessed from other file names: ``results/<name>.json`` (what
    :func:`unissl.eval.results.record_result` writes; every command that measures something records there)
    and, in a directory without ``results/``, the flat ``metrics.json`` / ``tokenizer_eval.json`` that older
    runs of ``unissl reconstruct`` / ``unissl tokenizer train`` wrote instead.
    """
    paths = list(run_dir.rglob("results/*.json"))
    paths += [p for name in _FLAT_RECORDS for p in run_dir.rglob(name)
              if p.parent.name != "results" and not any((p.parent / "results").glob("*.json"))]
    metrics: list[tuple[str, dict[str, Any]]] = []
    for p in sorted(paths):
        rel = p.relative_to(run_dir)
        if rel.parts[0] in ("report", "stages"):
            continue
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            scalars = {k: v for k, v in _flatten(data).items() if isinstance(v, (int, float, str, bool))}
            if scalars:
                metrics.append((str(rel), scalars))
    return metrics


def result_origins(found: list[tuple[str, dict[str, Any]]]) -> list[str | None]:
    """Per entry of :func:`collect_metrics`: the directory it was recorded in when another file records the
    same ``name`` (the run directory above ``results/``), else None (a unique name, or no name)."""
    names = [str(scalars["name"]) for _, scalars in found if "name" in scalars]
    origins: list[str | None] = []
    for rel, scalars in found:
        parent = Path(rel).parent
        shared = "name" in scalars and names.count(str(scalars["name"])) > 1
        origins.append(str(parent.parent if parent.name == "results" else parent) if shared else None)
    return origins


def collect(run_dir: Path) -> dict[str, Any]:
    """Gather everything the report shows from ``run_dir``."""
    info: dict[str, Any] = {"run_dir": str(run_dir)}
    stages = []
    # a multi-seed pipeline keeps its per-seed stages in seed<N>/stages
    for p in sorted(run_dir.glob("stages/*.json")) + sorted(run_dir.glob("seed*/stages/*.json")):
        try:
            record = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if p.parent.parent != run_dir:
            record["name"] = f"{p.parent.parent.name}/{record.get('name', p.stem)}"
        stages.append(record)
    stages.sort(key=lambda r: r.get("started_at", 0))
    info["stages"] = stages
    info["metrics"] = collect_metrics(run_dir)
    info["logs"] = [(str(p.relative_to(run_dir)), read_log(p)) for p in sorted(run_dir.rglob("log.jsonl"))]
    newest: dict[str, tuple[int, Path]] = {}
    for p in sorted(run_dir.rglob("*.png")):
        if p.parent.name == "report":
            continue
        m = _STEP.match(p.stem)
        series = str(p.parent.relative_to(run_dir) / (m.group("series") if m else p.stem))
        step = int(m.group("step")) if m else -1
        if series not in newest or step >= newest[series][0]:
            newest[series] = (step, p)
    info["images"] = [(s, p) for s, (_, p) in sorted(newest.items())]
    cfg = run_dir / "config.yaml"
    info["config"] = cfg.read_text() if cfg.is_file() else ""
    ri = run_dir / "run_info.json"
    info["run_info"] = json.loads(ri.read_text()) if ri.is_file() else {}
    import os

    import torch
    info["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    return info


def _plot_logs(logs: list[tuple[str, list[dict[str, Any]]]], out_dir: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    for rel, rows in logs:
        rows = [r for r in rows if "step" in r]
        if len(rows) < 2:
            continue
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"
                       and any(c in k for c in _CURVE_KEYS)})
        if not keys:
            continue
        keys = keys[:4]  # at most four panels, so that each stays legible at the page's width
        fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5)
            higher, _ = metric_meaning(k)
            hint = "" if higher is None or k == "lr" else (" (higher is better)" if higher else " (lower is better)")
            ax.set_title(k + hint, fontsize=11)
            ax.set_xlabel("step", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
        fig.suptitle(str(Path(rel).parent), fontsize=11)
        fig.tight_layout()
        name = re.sub(r"[^A-Za-z0-9]+", "_", str(Path(rel).parent)).strip("_") or "run"
        path = out_dir / f"curves_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        plots.append((rel, path))
    return plots


_CHECKPOINT_SPEC = re.compile(r"^[A-Za-z0-9_-]+:(?P<run>.+)/checkpoints/step_(?P<step>\d+)/?$")


def probe_curve_points(found: list[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[float, float]]]:
    """Linear-probe top-1 per training epoch: {run directory: [(epoch, top1), ...]} from the results whose
    extractor is a checkpoint (``name:RUN/checkpoints/step_N``); the epoch comes from the run's log."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for _, scalars in found:
        spec, top1 = scalars.get("extra.extractor"), scalars.get("metrics.top1")
        m = _CHECKPOINT_SPEC.match(spec) if isinstance(spec, str) else None
        if m is None or not isinstance(top1, (int, float)) or "probe" not in str(scalars.get("name", "")):
            continue
        run, step = m.group("run"), int(m.group("step"))
        rows = read_log(Path(run) / "log.jsonl")
        per_step = [r["epoch"] / r["step"] for r in rows if r.get("step") and isinstance(r.get("epoch"), (int, float))]
        epoch = step * per_step[-1] if per_step else float(step)
        curves.setdefault(run, []).append((round(epoch, 3), float(top1)))
    return {run: sorted(pts) for run, pts in curves.items()}


def _plot_probe_curves(curves: dict[str, list[tuple[float, float]]], baseline: float | None,
                       out_dir: Path) -> Path | None:
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for run, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1.4, label=Path(run).name)
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", lw=1, label=f"pixels ({baseline:.1f})")
    ax.set_xlabel("epoch", fontsize=9)
    ax.set_ylabel("linear probe top-1 (%)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "probe_vs_epoch.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# Sample grids larger than this are inlined as their top-left corner (a 1000-sample grid would add ~1 MB
# to the page each); the figure caption links the full file.
MAX_INLINE_PX = 1200


def _b64_image(path: Path) -> tuple[str, bool]:
    """A PNG as a data URI, cropped to ``MAX_INLINE_PX`` on each side; returns (uri, whether cropped)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.width <= MAX_INLINE_PX and im.height <= MAX_INLINE_PX:
            return _b64(path), False
        corner = im.crop((0, 0, min(im.width, MAX_INLINE_PX), min(im.height, MAX_INLINE_PX)))
    buf = io.BytesIO()
    corner.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), True


def _cell(m: dict[str, Any], key: str | None, pct: bool = False) -> str:
    """``m[key]`` formatted (as a percentage of a 0..1 share with ``pct``), '-' when absent."""
    if key is None or key not in m:
        return "-"
    return f"{100 * m[key]:.1f}%" if pct else format_number(m[key], 4)


def ceiling_rows(found: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    """One row per generation result that records ceilings (see :mod:`unissl.eval.ceilings`): the samples'
    FD and class share next to those of real images through the same tokenizer and the judge's accuracy."""
    rows = []
    for origin, (rel, scalars) in zip(result_origins(found), found):
        m = {k.split(".", 1)[1]: v for k, v in scalars.items() if k.startswith("metrics.")}
        if not any(k.startswith("ceiling_") or k == "judge_accuracy" for k in m):
            continue
        fd = next((k for k in m if k.startswith(("FD_", "FID")) and not k.startswith("ceiling_")), None)
        label = str(scalars.get("name", rel)) + (f" ({origin})" if origin is not None else "")

        rows.append([label, f"{fd}={_cell(m, fd)}" if fd else "-", _cell(m, f"ceiling_{fd}" if fd else None),
                     _cell(m, "class_consistency", True), _cell(m, "ceiling_class_consistency", True),
                     _cell(m, "judge_accuracy", True)])
    return rows


_STYLE = ("<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
          "color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
          "padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%;"
          "image-rendering:pixelated;border:1px solid #ddd}figure{display:inline-block;margin:.5em;"
          "vertical-align:top}figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:1em;"
          "overflow:auto;font-size:12px}table.goals td:nth-child(n+2){white-space:nowrap}</style>")


class _Doc:
    """The report being written, as HTML and Markdown side by side (one table helper for both)."""

    def __init__(self, title: str) -> None:
        self.h: list[str] = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
                             _STYLE + "</head><body>", f"<h1>{html.escape(title)}</h1>"]
        self.md: list[str] = [f"# {title}", ""]

    def section(self, title: str) -> None:
        self.h.append(f"<h2>{html.escape(title)}</h2>")
        self.md.append(f"## {title}")

    def table(self, rows: list[list[str]], header: list[str], css_class: str = "",
              html_rows: list[list[str]] | None = None) -> None:
        """``rows`` in both documents; ``html_rows`` (already escaped, e.g. coloured) replace them in the HTML."""
        self.h.append(f"<table{f' class={css_class!r}' if css_class else ''}><tr>"
                      + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>")
        for r in html_rows if html_rows is not None else [[html.escape(c) for c in r] for r in rows]:
            self.h.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
        self.h.append("</table>")
        self.md.extend(markdown_table(header, rows))
        self.md.append("")


def _findings_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    """The verdict first: one sentence per result beside its reference; also ``findings.json`` beside the report."""
    findings = derive_findings(info["metrics"], run_dir)
    info["findings"] = findings
    with atomic_file(out / "findings.json", "w") as f:
        f.write(json.dumps([x.to_dict() for x in findings], indent=1) + "\n")
    doc.section("Findings")
    if not findings:
        doc.h.append("<p>No result with a reference yet (a frozen-encoder probe beside the pixel probe, a "
                     "reconstruction or samples scored by a judge); the tables below hold what there is.</p>")
        doc.md.extend(["No result with a reference yet.", ""])
        return
    doc.h.append("<ul class='findings'>")
    for x in findings:
        ok = x.reference_value is None or ((x.value >= x.reference_value) == x.higher_is_better)
        mark = "<span style='color:#1a7f37'>&#9650;</span>" if ok else "<span style='color:#b42318'>&#9660;</span>"
        doc.h.append(f"<li>{mark} {html.escape(x.sentence)} <code>{html.escape(x.id)}</code></li>")
        doc.md.append(f"- {x.sentence} (`{x.id}`)")
    doc.h.append("</ul><p style='font-size:12px;color:#555'>&#9650; at or past its reference, &#9660; short of it. "
                 "The same findings are in <code>findings.json</code> beside this page.</p>")
    doc.md.append("")


def _goals_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    """The pipeline file's ``goals:`` (kept in the run's config.yaml), each met or not and how far; also
    ``goals.json`` beside the report. A run without goals has neither."""
    goals_json = out / "goals.json"
    try:
        saved = yaml.safe_load(info["config"]) if info["config"] else None
    except yaml.YAMLError:
        saved = None
    goals = check_goals(saved.get("goals") if isinstance(saved, dict) else None, str(run_dir / "config.yaml"))
    if not goals:
        goals_json.unlink(missing_ok=True)  # left by an earlier report of this directory
        return
    invocation = run_dir / INVOCATION_FILE
    results = judge_goals(goals, info.get("findings") or [],
                          json.loads(invocation.read_text()) if invocation.is_file() else None)
    with atomic_file(goals_json, "w") as f:
        f.write(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    doc.section("Goals")
    rows = [[r.goal, "-" if r.value is None else f"{r.value:.1f} minutes" if r.id == WALL_GOAL else f"{r.value:.2f}%",
             "not measured" if r.met is None else "met" if r.met else "not met", r.gap, r.id] for r in results]
    colours = {True: "#1a7f37", False: "#b42318", None: "#555"}
    cells = [[html.escape(c) for c in row] for row in rows]
    for r, row_cells in zip(results, cells):
        row_cells[2] = f"<b style='color:{colours[r.met]}'>{row_cells[2]}</b>"
        row_cells[4] = f"<code>{row_cells[4]}</code>"
    doc.table(rows, ["goal", "value", "verdict", "how far", "id"], css_class="goals", html_rows=cells)
    doc.h.append("<p style='font-size:12px;color:#555'>The goals of the pipeline file (<code>goals:</code>), "
                 "against the findings above; the same rows are in <code>goals.json</code> beside this page.</p>")


def _class_names(info: dict[str, Any], samples: Path, labels: list[int]) -> dict[int, str]:
    """Class index -> name for a samples file: from the generation record that scored it (its per-class keys
    come in label order), else Fashion-MNIST's names when the labels fit, else 'class k'."""
    for _, sc in info["metrics"]:
        if str(sc.get("extra.samples", "")).endswith(str(samples.name)):
            names = [k.split(".", 2)[2] for k in sc if k.startswith("extra.class_consistency_per_class.")]
            present = sorted(set(labels))
            if len(names) == len(present):
                return dict(zip(present, names))
    return {c: f"class {c}" for c in labels}


def _labelled_grid(images: Any, row_labels: list[str], path: Path, title: str, per_row: int = 8) -> Path:
    """A matplotlib figure: one row of images per label, the label written left of its row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(row_labels)
    fig, axes = plt.subplots(rows, per_row, figsize=(1.0 * per_row + 2.6, 1.0 * rows + 0.5), squeeze=False)
    for r in range(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(images[r]):
                img = images[r][c]  # (C, H, W) uint8
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=11)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _reconstruction_pairs_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    """Each ``pairs.npz`` (``unissl reconstruct``): originals in the top row, their reconstructions below."""
    import numpy as np

    files = sorted(p for p in run_dir.rglob("pairs.npz") if "report" not in p.parts)
    if not files:
        return
    doc.section("Reconstructions beside their originals")
    for p in files:
        with np.load(p) as z:
            origs, recs = z["originals"][:10], z["reconstructions"][:10]
        rel = p.parent.relative_to(run_dir)
        png = _labelled_grid([origs, recs], ["original", "reconstruction"],
                             out / f"pairs_{re.sub(r'[^A-Za-z0-9]+', '_', str(rel))}.png",
                             f"{rel}: test images (top) and their reconstructions from one token (below)", len(origs))
        doc.h.append(f"<figure><img src='{_b64(png)}'><figcaption>{html.escape(str(rel))}: each column is one test "
                     "image and its reconstruction</figcaption></figure>")
        doc.md.append(f"![{rel}]({png.name})")
    doc.md.append("")


def _labelled_samples_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    """Every samples file with labels (``unissl sample reptok``): one row per asked class or prompt."""
    import numpy as np

    files = sorted(p for p in run_dir.rglob("*.npz") if "report" not in p.parts and p.name != "pairs.npz")
    shown = False
    for p in files:
        try:
            with np.load(p) as z:
                if "images" not in z.files or "labels" not in z.files:
                    continue
                images, labels = z["images"], z["labels"]
                prompts = z["prompts"] if "prompts" in z.files else None
                index = z["prompt_index"] if "prompt_index" in z.files else None
        except (OSError, ValueError):
            continue
        if images.ndim != 4:
            continue
        if prompts is not None and index is not None:
            keys = list(dict.fromkeys(int(i) for i in index))[:12]
            rows = [images[index == k][:8] for k in keys]
            names = [f"\u201c{prompts[k]}\u201d" for k in keys]
            held = " (caption templates never seen in training)" if "heldout" in p.stem else ""
            title = f"{p.stem}: one row per prompt{held}"
        else:
            keys = list(dict.fromkeys(int(i) for i in labels))[:12]
            rows = [images[labels == k][:8] for k in keys]
            cls = _class_names(info, p, keys)
            names = [cls[k] for k in keys]
            title = f"{p.stem}: one row per asked class"
        if not shown:
            doc.section("Samples, labelled by what was asked")
            shown = True
        rel = p.relative_to(run_dir)
        png = _labelled_grid(rows, names, out / f"samples_{re.sub(r'[^A-Za-z0-9]+', '_', str(rel))}.png", title,
                             max(len(r) for r in rows))
        doc.h.append(f"<figure><img src='{_b64(png)}'><figcaption>{html.escape(str(rel))}</figcaption></figure>")
        doc.md.append(f"![{rel}]({png.name})")
    if shown:
        doc.md.append("")


def _study_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    study = run_dir / "study.json"
    if not study.is_file():
        return
    rows = json.loads(study.read_text()).get("rows", [])
    doc.section("Across seeds")  # a multi-seed pipeline: the across-seed table comes first
    doc.table([[r["source"], r["metric"], f"{format_number(r['mean'], 4)} ± {format_number(r['std'], 4)}", str(r["n"])]
               for r in rows],
              ["source", "metric", "mean ± std", "seeds"])


def _stages_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    if not info["stages"]:
        return
    doc.section("Stages")
    total = sum(float(s.get("seconds", 0) or 0) for s in info["stages"])
    doc.table([[s.get("name", "?"), s.get("command", "?"), s.get("status", "?"),
                format_number(s.get("seconds", ""), 4),
                str(s.get("output", ""))] for s in info["stages"]] + [["total", "", "", format_number(total, 4), ""]],
              ["stage", "command", "status", "seconds", "output"])


def _metrics_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    """One summary row per result file (its headline numbers), the ceilings, then every field folded."""
    if not info["metrics"]:
        return
    doc.section("Metrics")
    rows = []
    for origin, (rel, scalars) in zip(result_origins(info["metrics"]), info["metrics"]):
        head = {k.split(".", 1)[1]: v for k, v in scalars.items() if k.startswith("metrics.")}
        if not head:
            head = {k: v for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        label = str(scalars.get("name", rel))
        if origin is not None:  # the same result name from two runs: say which directory it is from
            label = f"{label} ({origin})"
        for k, v in head.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            higher, meaning = metric_meaning(k)
            direction = "-" if higher is None else ("higher is better" if higher else "lower is better")
            rows.append([label, k, format_number(v, 4), direction, meaning])
            label = ""  # the result's name once, on its first metric
    doc.table(rows, ["result", "metric", "value", "direction", "meaning"])
    ceilings = ceiling_rows(info["metrics"])
    if ceilings:
        doc.section("Generation against its ceilings")
        doc.table(ceilings, ["result", "FD (lower is better)", "FD of real images through the tokenizer (ceiling)",
                             "class share (higher is better)", "class share of real images through the tokenizer "
                             "(ceiling)", "judge on real images"])
    doc.h.append("<details><summary>all fields of every result file</summary>")
    for rel, scalars in info["metrics"]:
        doc.h.append(f"<h3>{html.escape(rel)}</h3>")
        doc.h.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td>"
                                         f"<td>{html.escape(format_number(v, 4))}</td></tr>"
                                         for k, v in scalars.items()) + "</table>")
    doc.h.append("</details>")


def _probe_curve_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    curves = probe_curve_points(info["metrics"])
    if not curves:
        return
    pixel = [sc.get("metrics.top1") for _, sc in info["metrics"]
             if str(sc.get("extra.extractor", "")).startswith("pixels") and "probe" in str(sc.get("name", ""))]
    png = _plot_probe_curves(curves, float(pixel[0]) if pixel else None, out)
    doc.section("Linear probe vs epoch")
    doc.table([[Path(run).name, ", ".join(f"{e:g}: {t:.2f}" for e, t in pts)] for run, pts in curves.items()],
              ["run", "epoch: top-1 (%)"])
    if png is not None:
        doc.h.append(f"<figure><img src='{_b64(png)}'><figcaption>linear probe vs epoch</figcaption></figure>")
        doc.md.append(f"![probe vs epoch]({png.name})")
        doc.md.append("")


def _training_curves_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    plots = _plot_logs(info["logs"], out)
    if not plots:
        return
    doc.section("Training curves")
    for rel, p in plots:
        doc.h.append(f"<figure><img src='{_b64(p)}'><figcaption>{html.escape(rel)}</figcaption></figure>")
        doc.md.append(f"![{rel}]({p.name})")
    doc.md.append("")


def _images_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    if not info["images"]:
        return
    doc.section("Other images (the last step of each series)")
    for series, p in info["images"]:
        if p.with_suffix(".npz").is_file() or (p.parent / "pairs.npz").is_file():
            continue  # shown above, labelled
        uri, cropped = _b64_image(p)
        link = Path("..") / p.relative_to(run_dir)
        note = f" (top-left corner; <a href='{html.escape(str(link))}'>full grid</a>)" if cropped else ""
        m = _STEP.match(p.stem)
        when = f", step {int(m.group('step'))}" if m else ""
        doc.h.append(f"<figure><img src='{uri}' style='min-width:220px'><figcaption>{html.escape(series)}{when}{note}"
                     "</figcaption></figure>")
        doc.md.append(f"![{series}]({link})")
    doc.md.append("")


def _machine_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    doc.section("Machine and revision")
    mach = dict(info["machine"])
    for k in ("git_revision", "unissl_version", "python"):
        if k in info["run_info"]:
            mach[k] = info["run_info"][k]
    doc.table([[k, str(v)] for k, v in mach.items()], ["", ""])


def _config_section(doc: _Doc, run_dir: Path, info: dict[str, Any], out: Path) -> None:
    if info["config"]:
        doc.h.append("<h2>Resolved config</h2><pre>" + html.escape(info["config"]) + "</pre>")
        doc.md.extend(["## Resolved config", "```yaml", info["config"].rstrip(), "```", ""])


_SECTIONS = (_findings_section, _goals_section, _study_section, _metrics_section, _reconstruction_pairs_section,
             _labelled_samples_section, _probe_curve_section, _training_curves_section, _images_section,
             _stages_section, _machine_section, _config_section)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<run_dir>/report/report.html`` and ``report.md`` (one function per section); returns their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UnisslError(f"run directory {run_dir} not found")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    info = collect(run_dir)
    doc = _Doc(f"unissl report: {run_dir.name}")
    for section in _SECTIONS:
        section(doc, run_dir, info, out)
    doc.h.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    with atomic_file(html_path, "w") as f:
        f.write("\n".join(doc.h))
    with atomic_file(md_path, "w") as f:
        f.write("\n".join(doc.md) + "\n")
    return html_path, md_path


__all__ = ["collect", "write_report"]
