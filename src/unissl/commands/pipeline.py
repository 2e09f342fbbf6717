"""`unissl pipeline`: run the whole chain described by a YAML file (see :mod:`unissl.pipeline`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unissl.config import arg, save_run_config
from unissl.errors import UnisslError


@dataclass
class Config:
    """Run a pipeline of unissl stages, skipping finished ones and resuming an interrupted one."""

    out: str = arg("runs/pipeline", output="dir", help="run directory of the pipeline (stages write below it)")
    seed: int = arg(0, help="substituted for {seed} in stage configs")
    seeds: list[int] = arg([], help="a multi-seed study: per-seed stages run once per seed into <out>/seed<s>, "
                                    "stages marked `shared: true` once into <out>; ends with <out>/study.md")
    stages: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "stage list (YAML only)"})
    only: list[str] = arg([], help="run only these stages (names); others must be done already")
    force: list[str] = arg([], help="re-run these stages even if they are done")
    dry_run: bool = arg(False, help="print what would run and stop")
    report: bool = arg(True, help="write the HTML/Markdown report at the end")
    jobs: int = arg(1, help="run up to this many independent stages at once, each in its own process with one "
                            "intra-op thread (stage output in <scope>/stages/<name>.log); a study "
                            "finishes one encoder's row on every seed before starting the next")

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("no stages: pass --config <pipeline.yaml> (e.g. configs/digits-quick.yaml)")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")


def run(cfg: Config) -> None:
    from unissl.pipeline import parse_stages, run_parallel, run_pipeline

    stages = parse_stages(cfg.stages)
    out = Path(cfg.out)
    if not cfg.dry_run:  # a dry run writes nothing
        save_run_config(out, cfg)
    t0 = time.perf_counter()
    if cfg.jobs > 1 and not cfg.dry_run:
        print(f"[pipeline] up to {cfg.jobs} stages at once, one thread each")
        run_parallel(stages, out, seed=cfg.seed, jobs=cfg.jobs, only=cfg.only or None, force=cfg.force or None,
                     seeds=cfg.seeds or None)
    else:
        run_pipeline(stages, out, seed=cfg.seed, only=cfg.only or None, force=cfg.force or None,
                     dry_run=cfg.dry_run, seeds=cfg.seeds or None)
    if cfg.dry_run:
        return
    print(f"[pipeline] all stages finished in {time.perf_counter() - t0:.1f} s")
    if cfg.seeds:
        from unissl.study import summarize

        summarize(out)
        print(f"[pipeline] across-seed summary: {out / 'study.md'}")
    if cfg.report:
        from unissl.report import write_report

        try:
            html, md = write_report(out)
        except UnisslError as e:
            raise UnisslError(f"stages finished but the report failed: {e}") from e
        print(f"[pipeline] report: {html}")
        print(f"[pipeline] markdown: {md}")
