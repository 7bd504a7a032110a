"""Benchmark: the sample sweep with early stopping vs the same trials run to the end.

Issue 7, ``sweep``: the sample sweep's total trial-steps and wall time with its scheduler
(successive halving, or Ray's ASHA) against the same trials run to the end, both in one
invocation.

    python bench/sweep.py [--scheduler halving|asha] [--num-samples 6] [--max-steps 120]
                          [--val-every 40] [--seed 0] [--seeds 3] [--num-cpus N]
                          [--max-concurrent N] [--keep]

Defaults are the tiny preset's sweep (``python tune/search.py`` with no arguments) on the
embedded sample. The script runs :func:`sevlm_train.search.run_search` twice, each time with
a fresh Ray storage, model folder and MLflow store in a temporary folder:

1. **halving** (or **ASHA**): the sweep as configured (Optuna TPE proposes, the scheduler
   stops weak trials early).
2. **to the end**: the same sweep code with the same data, configs and resources, except that
   its searcher replays exactly the hyperparameters that (1) tried (Tune's
   ``BasicVariantGenerator`` with ``points_to_evaluate``) and its scheduler is FIFO, so no
   trial is stopped early. ``run_search`` takes no searcher or scheduler, so the script swaps
   the functions that ``sevlm_train.search`` builds them (and the halving trials' rung gate)
   with for the duration of this run; it then checks that every trial of (2) ran the configs
   of (1) and reached its last step, so a swap of the searcher or scheduler that did not take
   effect is caught rather than reported. (A gate left on would only show in the log: each
   trial would wait 60 s at each rung and warn that it was not paused or stopped.)

A trial's steps are its last reported ``step`` (a stopped trial's is the validation where
it was stopped). Wall time is ``run_search``'s own (the data check, Tune, MLflow,
registering the champion); trial time is the sum of the trials' MLflow run durations.
Each sweep's best trial is chosen as the sweep does (best validation score among the trials
that ran to their end). *Noise* is measured, not assumed: every trial that ran to its end in
both sweeps ran the same config with the same seeds twice, and the largest difference between
its two scores is the run-to-run noise. A different pick counts as "within the run-to-run
noise" when its score in the run-to-the-end sweep is at most that far from that sweep's best;
the distance is also printed against the spread of scores over trials.

3. **seeds** (``--seeds N``, 3; 1 skips it): the *noise across seeds*, which decides whether a
   different pick matters. The sweep's pick and the run-to-the-end sweep's best are run to the end
   again with training seeds ``seed+1 .. seed+N-1`` (weights, data order, dropout; the data
   split stays), replayed and FIFO as in (2); their seed-``seed`` scores are those of (2).
   Each config gets the mean and standard deviation of its N scores. A different pick is
   *within the noise across seeds* when the two configs' means are at most one pooled
   standard deviation apart (a sweep runs each config once, and one run's score moves by
   more than that between seeds, so one run per config cannot tell them apart), or when the
   pick's mean is the better one.

The script exits non-zero, printing no verdict, when the runs disagree with what they should
be (a failed trial, a trial without steps, a config that was not replayed, a trial of (2)
short of its last step).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import math
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from machine import print_header


class BenchError(RuntimeError):
    """The run is broken: its figures must not be reported."""


@dataclasses.dataclass
class Trial:
    """One trial of one sweep, as the benchmark needs it."""

    params: dict
    state: str
    steps: int
    best: float | None
    seconds: float | None


@dataclasses.dataclass
class Sweep:
    label: str
    trials: list[Trial]
    wall_s: float
    champion: Trial | None

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.trials)

    @property
    def trial_s(self) -> float | None:
        times = [t.seconds for t in self.trials]
        return None if None in times else sum(times)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def by_key(self, params: dict) -> Trial:
        return next(t for t in self.trials if key(t.params) == key(params))


def key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- the two sweeps ----


def make_spec(args, arm: str, folder: Path, source, model, train, search, scaling):
    """A fresh sweep in ``folder``: its own Ray storage, model folder and MLflow store (whose
    experiment keeps its artifacts in ``folder`` too, not in ``./mlruns``)."""
    from sevlm.text import UtterancePrep
    from sevlm.tracking import DEFAULT_EXPERIMENT, client_for
    from sevlm_train.sweep_spec import make_spec as new_spec

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client_for(uri).create_experiment(
        DEFAULT_EXPERIMENT, artifact_location=(folder / "mlartifacts").as_uri()
    )
    return new_spec(
        f"bench-{arm}",
        source,
        model,
        train,
        search,
        scaling,
        storage=str(folder / "ray"),
        output=folder / "runs",
        tracking_uri=uri,
        experiment=DEFAULT_EXPERIMENT,
        register_as="sevlm",
        seed=args.seed,
        prep=UtterancePrep(),
    )


@contextlib.contextmanager
def replaying(search_module, configs: list[dict], concurrency: int) -> Iterator[None]:
    """``run_search`` as it is, but its searcher replays ``configs`` in order, ``concurrency``
    at a time (as Tune's ``max_concurrent_trials`` would: it ignores that setting for this
    searcher), and its scheduler (FIFO) lets every trial run to its end. The sweep's
    ``num_samples`` must be ``len(configs)``: the searcher samples the space for any more."""
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    names = ("PruningOptunaSearch", "_scheduler", "_rung_gate")
    saved = {name: getattr(search_module, name) for name in names}  # AttributeError: renamed
    search_module.PruningOptunaSearch = lambda **_: BasicVariantGenerator(
        points_to_evaluate=[dict(c) for c in configs], max_concurrent=concurrency
    )
    search_module._scheduler = lambda spec, search, searcher, concurrency: (
        FIFOScheduler(),
        searcher,
    )
    search_module._rung_gate = lambda spec: None  # no rungs to wait at
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(search_module, name, value)


def run_sweep(label: str, spec) -> Sweep:
    from sevlm.tracking import client_for
    from sevlm_train.search import run_search

    say(f"---- sweep {label}: {spec.name} in {spec.storage} ----")
    started = time.perf_counter()
    outcome = run_search(spec, printer=say)
    wall = time.perf_counter() - started
    if not outcome.complete:
        raise KeyboardInterrupt
    client = client_for(spec.tracking_uri)
    trials = []
    for row in outcome.rows:
        seconds = None
        if row.run_id:
            info = client.get_run(row.run_id).info
            if info.start_time and info.end_time:
                seconds = (info.end_time - info.start_time) / 1000
        trials.append(Trial(row.params, row.state, row.steps, row.best, seconds))
    sweep = Sweep(label, trials, outcome.elapsed_s, None)
    if outcome.champion is not None:
        sweep.champion = sweep.by_key(outcome.champion.params)
    say(f"sweep {label}: {len(trials)} trials, {sweep.steps} trial-steps, "
        f"{outcome.elapsed_s:.1f} s in run_search ({wall:.1f} s with the summary)")  # fmt: skip
    return sweep


def check_sweep(sweep: Sweep, num_samples: int, max_steps: int) -> None:
    """What a sweep must satisfy for its figures to mean anything."""
    if any(t.state == "unfinished" for t in sweep.trials):  # Tune returns on Ctrl-C
        raise KeyboardInterrupt
    problems = []
    if len(sweep.trials) != num_samples:
        problems.append(f"{len(sweep.trials)} trials, not {num_samples}")
    for t in sweep.trials:
        if t.state not in ("finished", "pruned"):
            problems.append(f"a trial {t.state} ({t.params})")
        if t.steps <= 0:
            problems.append(f"a trial with no steps ({t.params})")
        if t.best is None:
            problems.append(f"a trial with no score ({t.params})")
        if t.state == "finished" and t.steps != max_steps:
            problems.append(f"a finished trial stopped at step {t.steps} ({t.params})")
        if t.state == "pruned" and t.steps >= max_steps:
            problems.append(f"a pruned trial reached step {t.steps} ({t.params})")
    if len(Counter(key(t.params) for t in sweep.trials)) != len(sweep.trials):
        problems.append("two trials with the same config")
    if sweep.champion is None:
        problems.append("no champion")
    if problems:
        raise BenchError(f"{sweep.label}: " + "; ".join(problems))


def seed_points(early: Sweep, full: Sweep, base: int, seeds: int) -> list[dict]:
    """The early-stopping sweep's pick and the run-to-the-end best (once if they are the same
    config), each with training seeds ``base+1 .. base+seeds-1``."""
    configs = {key(t.params): t.params for t in (early.champion, full.champion)}
    return [{**c, "seed": base + s} for c in configs.values() for s in range(1, seeds)]


def seed_scores(full: Sweep, seeded: Sweep, base: int) -> dict[tuple, dict[int, float]]:
    """Config -> {training seed: best score}, seed ``base`` from the run-to-the-end sweep."""
    scores: dict[tuple, dict[int, float]] = {}
    for t in seeded.trials:
        params = {k: v for k, v in t.params.items() if k != "seed"}
        scores.setdefault(key(params), {base: full.by_key(params).best})[t.params["seed"]] = t.best
    return scores


def check_replay(early: Sweep, full: Sweep) -> None:
    """The run-to-the-end sweep ran exactly the first sweep's configs, and all to the end."""
    problems = []
    if Counter(key(t.params) for t in early.trials) != Counter(key(t.params) for t in full.trials):
        problems.append("the run-to-the-end sweep did not replay the first sweep's configs")
    if full.count("finished") != len(full.trials):
        problems.append("the run-to-the-end sweep stopped trials early")
    if problems:
        raise BenchError("; ".join(problems))


# ---- the report ----


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def bold_if(text: str, trial: Trial, champion: Trial | None) -> str:
    return f"**{text}**" if champion is not None and trial is champion else text


def report(
    early: Sweep,
    full: Sweep,
    seeded: dict[tuple, dict[int, float]] | None,
    metric: str,
    mode: str,
    machine: str,
) -> str:
    """The figures, as markdown tables and lines."""
    lines: list[str] = []
    emit = lines.append
    names = list(early.trials[0].params)
    number = {key(t.params): i for i, t in enumerate(early.trials, 1)}  # in the order run

    emit(machine)
    emit(f"command: {command()}")
    emit("")
    arm = early.label
    emit(f"| # | {' | '.join(names)} | {arm}: state | {arm}: steps | {arm}: best {metric} "
         f"| to the end: steps | to the end: best {metric} |")  # fmt: skip
    emit("|---:|" + "---:|" * len(names) + "---|---:|---:|---:|---:|")
    for t in early.trials:
        f = full.by_key(t.params)
        emit(f"| {number[key(t.params)]} | {' | '.join(fmt(t.params[n]) for n in names)} "
             f"| {t.state} | {t.steps} | {bold_if(fmt(t.best), t, early.champion)} "
             f"| {f.steps} | {bold_if(fmt(f.best), f, full.champion)} |")  # fmt: skip
    emit(f"\nBold: each sweep's best trial (best {metric} among the trials that ran to the end; "
         f"{mode}).\n")  # fmt: skip

    emit("| sweep | trials | ran to the end | stopped early | trial-steps | trial min "
         "| sweep wall s | best trial | its best score |")  # fmt: skip
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in (early, full):
        c = s.champion
        trial_min = None if s.trial_s is None else s.trial_s / 60
        emit(f"| {s.label} | {len(s.trials)} | {s.count('finished')} | {s.count('pruned')} "
             f"| {s.steps} | {fmt(trial_min, 3)} | {s.wall_s:.1f} | #{number[key(c.params)]} "
             f"| {fmt(c.best)} |")  # fmt: skip

    saved = 1 - early.steps / full.steps
    emit(f"\n{arm} saved {saved:.1%} of trial-steps ({early.steps} vs {full.steps}; "
         f"target >= 40%): {'met' if saved >= 0.4 else 'NOT met'}")  # fmt: skip
    emit(f"wall time (run_search): {arm} {early.wall_s:.1f} s vs to the end {full.wall_s:.1f} s, "
         f"{less(early.wall_s, full.wall_s)}")  # fmt: skip
    if early.trial_s is not None and full.trial_s is not None:
        emit(f"trial time (sum of the trials' runs): {arm} {early.trial_s:.1f} s vs to the end "
             f"{full.trial_s:.1f} s, {less(early.trial_s, full.trial_s)}")  # fmt: skip

    pick, best = full.by_key(early.champion.params), full.champion
    repeats = [
        abs(t.best - full.by_key(t.params).best) for t in early.trials if t.state == "finished"
    ]
    noise = max(repeats)
    scores = [t.best for t in full.trials]
    spread = max(scores) - min(scores)
    regret = abs(pick.best - best.best)
    emit(f"run-to-run noise: the trials that ran to the end in both sweeps ({len(repeats)}, "
         f"same config and seeds) differ by at most {noise:.4g} in {metric} "
         f"(mean {sum(repeats) / len(repeats):.4g})")  # fmt: skip
    emit(f"spread over trials (to the end): {spread:.4g} ({fmt(min(scores))} to "
         f"{fmt(max(scores))})")  # fmt: skip
    same = key(pick.params) == key(best.params)
    if same:
        verdict = "the same trial"
    else:
        within = "within" if regret <= noise else "beyond"
        verdict = f"a different trial, {within} the run-to-run noise"
    share = f", {regret / spread:.1%} of the spread over trials" if spread > 0 else ""
    emit(f"best trial: {arm} picked #{number[key(pick.params)]}, running every trial to the "
         f"end picks #{number[key(best.params)]}: {verdict} ({arm}'s pick scores "
         f"{fmt(pick.best)} run to the end, the best {fmt(best.best)}: {regret:.4g} apart"
         f"{share}; run-to-run noise {noise:.4g})")  # fmt: skip
    if seeded is None:
        emit("noise across seeds: not measured (--seeds 1)")
        kept = same or regret <= noise
    else:
        within = seed_verdict(lines, seeded, pick, best, number, metric, mode)
        kept = same or within
    met = saved >= 0.4 and kept
    emit(f"\ntarget ({arm} saves >= 40% of trial-steps, with the same best trial or one "
         f"within noise): {'met' if met else 'NOT met'}")  # fmt: skip
    return "\n".join(lines)


def seed_verdict(
    lines: list[str],
    seeded: dict[tuple, dict[int, float]],
    pick: Trial,
    best: Trial,
    number: dict[tuple, int],
    metric: str,
    mode: str,
) -> bool:
    """The seeds table, appended to ``lines``; whether the sweep's pick is within the noise across
    seeds of the best (means at most one pooled standard deviation apart)."""
    lines.append(f"\n| # | seeds | {metric} per seed | mean | std |")
    lines.append("|---:|---:|---|---:|---:|")
    stats = {}
    for config, by_seed in seeded.items():
        values = [by_seed[s] for s in sorted(by_seed)]
        stats[config] = statistics.mean(values), statistics.stdev(values)
        per_seed = ", ".join(f"{fmt(v)} ({s})" for s, v in sorted(by_seed.items()))
        lines.append(f"| {number[config]} | {len(values)} | {per_seed} "
                     f"| {stats[config][0]:.4g} | {stats[config][1]:.4g} |")  # fmt: skip
    (mean_p, std_p), (mean_b, std_b) = stats[key(pick.params)], stats[key(best.params)]
    if key(pick.params) == key(best.params):
        runs = len(seeded[key(best.params)])
        lines.append(f"noise across seeds: #{number[key(best.params)]}'s {metric} has a "
                     f"standard deviation of {std_b:.4g} over {runs} seeds")  # fmt: skip
        return True
    pooled = math.sqrt((std_p**2 + std_b**2) / 2)
    gap = abs(mean_p - mean_b)
    better_pick = mean_p < mean_b if mode == "min" else mean_p > mean_b
    if better_pick:
        verdict = "better on average than the best to the end"
    else:
        verdict = f"{'within' if gap <= pooled else 'beyond'} the noise across seeds"
    lines.append(f"noise across seeds: the sweep's pick #{number[key(pick.params)]} {mean_p:.4g} "
                 f"± {std_p:.4g}, the best to the end #{number[key(best.params)]} {mean_b:.4g} "
                 f"± {std_b:.4g} (mean ± std over seeds): the means are {gap:.4g} apart, the "
                 f"pooled std is {pooled:.4g}; the sweep's pick is {verdict}")  # fmt: skip
    return better_pick or gap <= pooled


def less(ours: float, theirs: float) -> str:
    """``ours`` against ``theirs`` in words: "12.3% less" or "4.5% more"."""
    change = 1 - ours / theirs
    return f"{abs(change):.1%} {'less' if change >= 0 else 'more'}"


def command() -> str:
    env = " ".join(
        f"{k}={shlex.quote(os.environ[k])}"
        for k in ("OMP_NUM_THREADS", "RAY_ADDRESS", "SEVLM_CACHE")
        if k in os.environ
    )
    line = shlex.join(["python", *sys.argv])
    return f"{env} {line}" if env else line


def describe_run(args, scaling, search, train) -> str:
    import ray

    from sevlm_train.driver import scaling_config

    resources = ray.cluster_resources()
    config, threads = scaling_config(scaling, resources)
    return (
        f"ray: {ray.__version__}; cluster {int(resources.get('CPU', 0))} CPUs, "
        f"{int(resources.get('GPU', 0))} GPUs; {scaling.concurrent_runs} trials at once, "
        f"each {config.num_workers} worker(s) "
        f"with {threads} torch thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})"
        f"\nsweep: {args.preset} preset on the embedded sample, {search.num_samples} trials, "
        f"{train.max_steps} steps, validation every {train.val_every}, {search.scheduler} grace "
        f"{search.grace_period} validation(s), reduction {search.reduction_factor:g}, seed "
        f"{args.seed}; {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )


# ---- main ----


def start_ray(num_cpus: int | None) -> None:
    """A new local Ray cluster, with its dashboard on a port chosen here.

    When a trial is stopped early, Ray Train's ``PlacementGroupCleaner`` frees the trial's worker
    group through the state API (the dashboard). It finds the dashboard by itself only when
    this is the one Ray cluster on the machine; otherwise it fails ("Found multiple active
    Ray instances"), every stopped trial keeps its worker's CPU share, and on a 2-CPU machine
    a later trial waits forever for the whole CPU that its Ray Data set-up needs. Telling the
    cluster's processes where their dashboard is (they inherit this environment) avoids it.
    """
    import ray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model/train/search preset (tiny)")
    parser.add_argument("--num-samples", type=int, help="trials (default: the preset's, 6)")
    parser.add_argument("--max-steps", type=int, help="steps per trial (default: 120)")
    parser.add_argument("--val-every", type=int, help="steps between validations (40)")
    parser.add_argument("--seed", type=int, default=0, help="data split and Optuna seed (0)")
    parser.add_argument(
        "--scheduler", choices=("halving", "asha"), help="early stopping (default: the preset's)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds per config for the noise across seeds (3; 1: not measured)",
    )
    parser.add_argument(
        "--num-cpus", type=int, help="CPUs of the local Ray cluster, >= 2 (default: all)"
    )
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = (args.num_samples, args.max_steps, args.val_every, args.seeds)
    if any(v is not None and v < 1 for v in counts):
        print("error: --num-samples, --max-steps, --val-every and --seeds must be >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.num_cpus is not None and args.num_cpus < 2:
        # a trial holds 0.05 CPU and its Ray Data set-up starts a 1-CPU task: on a 1-CPU
        # cluster that task never runs
        print("error: --num-cpus must be >= 2 (a sweep hangs on a 1-CPU Ray cluster)",
              file=sys.stderr)  # fmt: skip
        return 2
    print_header("sevlm sweep benchmark: early stopping vs every trial run to the end")
    folder = Path(tempfile.mkdtemp(prefix="sevlm-bench-sweep-"))
    started_ray = False
    try:
        import ray

        import sevlm_train.search as search_module
        from sevlm.artemis import DataSource
        from sevlm.config import load_configs, load_search_config
        from sevlm.sample import cached_sample
        from sevlm_train.driver import Scaling

        data = cached_sample()
        say(f"data: the embedded sample ({data}); work folder {folder}")
        source = DataSource.resolve(data=str(data))
        model, train = load_configs(args.preset, None, {})
        search = load_search_config(args.preset)
        trial = dict(search.trial)
        trial.update(
            {k: v for k, v in (("max_steps", args.max_steps), ("val_every", args.val_every))
             if v is not None}
        )  # fmt: skip
        changes = {"trial": trial}
        if args.num_samples is not None:
            changes["num_samples"] = args.num_samples
        if args.scheduler is not None:
            changes["scheduler"] = args.scheduler
        search = dataclasses.replace(search, **changes)
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:  # our own cluster, never one someone else started on this machine
            start_ray(args.num_cpus)
            started_ray = True
        ray.data.DataContext.get_current().enable_progress_bars = False
        scaling = Scaling()
        scaling.concurrent_runs = search_module.trial_concurrency(
            ray.cluster_resources(), scaling, args.max_concurrent or search.max_concurrent, say
        )
        spec = make_spec(args, "early", folder / "early", source, model, train, search, scaling)
        trial_train = spec.configs[1]  # the preset's, with the sweep's trial settings
        machine = describe_run(args, scaling, search, trial_train)
        say(machine)

        early = run_sweep("halving" if search.scheduler == "halving" else "ASHA", spec)
        check_sweep(early, search.num_samples, trial_train.max_steps)
        spec = make_spec(args, "full", folder / "full", source, model, train, search, scaling)
        with replaying(search_module, [t.params for t in early.trials], scaling.concurrent_runs):
            full = run_sweep("to the end", spec)
        check_sweep(full, search.num_samples, trial_train.max_steps)
        check_replay(early, full)
        seeded = None
        if args.seeds > 1:
            points = seed_points(early, full, trial_train.seed, args.seeds)
            space = {**search.space, "seed": {"choice": sorted({p["seed"] for p in points})}}
            search = dataclasses.replace(search, space=space, num_samples=len(points))
            spec = make_spec(args, "seeds", folder / "seeds", source, model, train, search, scaling)
            with replaying(search_module, points, scaling.concurrent_runs):
                seeds = run_sweep("seeds", spec)
            check_sweep(seeds, len(points), trial_train.max_steps)
            if seeds.count("finished") != len(points):
                raise BenchError("seeds: a trial stopped early")
            seeded = seed_scores(full, seeds, trial_train.seed)
        text = report(early, full, seeded, spec.metric, spec.mode, machine)
    except BenchError as e:
        print(f"error: the runs are inconsistent, no figures reported: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(text)  # last, after Ray's own output has stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
