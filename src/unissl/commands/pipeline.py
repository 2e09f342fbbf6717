"""`unissl pipeline`: run the whole chain described by a YAML file (see :mod:`unissl.pipeline`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unissl.config import arg, save_run_config
from unissl.errors import UnisslError
from unissl.findings import check_goals
from unissl.pipeline import parse_stages, record_invocation, resolve_pipeline, run_pipeline
from unissl.report import write_report
from unissl.study import summarize


@dataclass
class Config:
    """Run a pipeline of unissl stages, skipping finished ones and resuming an interrupted one."""

    out: str | None = arg(None, output="dir", help="run directory of the pipeline (stages write below it; "
                                                     "default: the file's `out`, else runs/pipeline)")
    seed: int | None = arg(None, help="substituted for {seed} in stage configs (default: the file's, else 0)")
    seeds: list[int] = arg([], help="a multi-seed study: per-seed stages run once per seed into <out>/seed<s>, "
                                    "stages marked `shared: true` once into <out>; ends with <out>/study.md")
    stages: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "stage list (YAML only)"})
    extends: str | None = arg(None, help="a pipeline file this one derives from (YAML; see unissl.pipeline)")
    vars: dict[str, Any] = field(default_factory=dict, metadata={"help": "values for {name} in stages (YAML only)"})
    goals: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "findings id -> one of {at_least: x}, {at_most: x}, {above_reference: true}, and wall_minutes: "
                "{at_most: x}; the report says whether each is met and how far off (YAML only)"})
    only: list[str] = arg([], help="run only these stages (names); others must be done already")
    force: list[str] = arg([], help="re-run these stages even if they are done")
    dry_run: bool = arg(False, help="print what would run and stop")
    report: bool = arg(True, help="write the HTML/Markdown report at the end")
    jobs: int = arg(1, help="run up to this many independent stages at once, each in its own process with one "
                            "intra-op thread; 1 runs them one after another in this process (stage output "
                            "in <scope>/stages/<name>.log either way); a training stage with `nproc: N` runs N "
                            "torchrun processes and holds N of these slots; a study finishes one encoder's row "
                            "on every seed before starting the next")

    def __post_init__(self) -> None:
        if self.extends or self.vars or any(isinstance(s, dict) and "grid" in s for s in self.stages):
            # a derived pipeline: resolved here, so the run directory's config.yaml is the plain stage list
            spec: dict[str, Any] = {"extends": self.extends, "vars": self.vars, "stages": self.stages}
            spec.update({k: v for k, v in (("out", self.out), ("seed", self.seed)) if v is not None})
            spec.update({"seeds": self.seeds} if self.seeds else {})
            spec.update({"goals": self.goals} if self.goals else {})
            plain = resolve_pipeline(spec)
            self.stages, self.extends, self.vars = plain["stages"], None, {}
            self.goals = plain.get("goals") or {}
            self.out, self.seed, self.seeds = plain.get("out"), plain.get("seed"), list(plain.get("seeds") or [])
        self.out = "runs/pipeline" if self.out is None else self.out
        self.seed = 0 if self.seed is None else self.seed
        if not self.stages:
            raise ValueError("no stages: pass --config <pipeline.yaml> (e.g. configs/digits-quick.yaml)")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        check_goals(self.goals)  # a bad goal is refused before any stage runs


def run(cfg: Config) -> None:
    stages = parse_stages(cfg.stages)
    assert cfg.out is not None and cfg.seed is not None  # set by __post_init__
    out = Path(cfg.out)
    if not cfg.dry_run:  # a dry run writes nothing
        save_run_config(out, cfg)
    t0, since = time.perf_counter(), time.time()
    if cfg.jobs > 1 and not cfg.dry_run:
        print(f"[pipeline] up to {cfg.jobs} stages at once, one thread each")
    records = run_pipeline(stages, out, seed=cfg.seed, only=cfg.only or None, force=cfg.force or None, dry_run=cfg.dry_run,
                 seeds=cfg.seeds or None, jobs=cfg.jobs)
    if cfg.dry_run:
        return
    seconds = time.perf_counter() - t0
    print(f"[pipeline] all stages finished in {seconds:.1f} s")
    record_invocation(out, records, since, seconds)  # the report's wall_minutes goal
    if cfg.seeds:
        summarize(out)
        print(f"[pipeline] across-seed summary: {out / 'study.md'}")
    if cfg.report:
        try:
            html, md = write_report(out)
        except UnisslError as e:
            raise UnisslError(f"stages finished but the report failed: {e}") from e
        print(f"[pipeline] report: {html}")
        print(f"[pipeline] markdown: {md}")
