"""Search SEVLM's loss hyperparameters: Ray Tune, Optuna TPE and successive halving (or ASHA),
every trial in MLflow.

With no arguments: the embedded sample (written on first use into a cache folder), the tiny
preset and a sweep sized to finish in 8 to 21 minutes on two CPU cores. On a cluster:

    ray job submit --working-dir . -- python tune/search.py --data /shared/artemis \\
        --preset paper --storage /shared/ray --output /shared/runs \\
        --tracking-uri http://HEAD:5000

See the README ("The search") for every option.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sevlm.artemis import DataSource
from sevlm.cli import add_data_args, source_from_args, user_errors
from sevlm.config import load_configs, load_search_config
from sevlm.text import UtterancePrep
from sevlm.tracking import (
    DEFAULT_EXPERIMENT,
    check_reachable,
    find_run,
    redact,
    resolve_tracking_uri,
)
from sevlm.weights import check_pretrained
from sevlm_train.driver import Scaling, ensure_ray
from sevlm_train.search import run_search, trial_concurrency
from sevlm_train.sweep_record import format_summary
from sevlm_train.sweep_spec import load_spec, make_spec, resume_tracking_uri, sweep_exists

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tune/search.py",
        description="Search the contrastive temperature and the loss weights with Ray Tune, "
        "Optuna and successive halving. Each trial is a Ray Train run and a nested MLflow run; "
        "the best model is registered with the alias champion. Without data options: the "
        "embedded sample.",
    )
    add_data_args(parser, seed_help="seed of the data split and of Optuna's sampler (default 0)")
    parser.add_argument("--preset", default="tiny", help="model/train/search preset (tiny)")
    parser.add_argument("--config", type=Path, help="YAML with model:, train:, search: sections")
    g = parser.add_argument_group("search")
    g.add_argument("--num-samples", type=int, help="trials (default: the preset's search)")
    g.add_argument(
        "--metric",
        help="metric to optimise (default: the search section's, else train.select_metric)",
    )
    g.add_argument(
        "--mode", choices=("max", "min"), help="max or min (default: the metric's own direction)"
    )
    g.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    g.add_argument("--name", help="sweep name (default sweep-DATE-TIME-XXXX; --resume: the newest)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    g = parser.add_argument_group("resources")
    g.add_argument(
        "--num-workers", type=int, help="Ray Train workers per trial (default: 1 per GPU)"
    )
    g.add_argument("--gpus-per-worker", type=float, default=1.0, help="GPUs per worker (1)")
    g.add_argument("--max-failures", type=int, default=2, help="worker restarts per trial (2)")
    g = parser.add_argument_group("where things go")
    g.add_argument("--storage", help="Ray storage: a path, NFS or s3:// (default OUTPUT/ray)")
    g.add_argument("--output", type=Path, default=Path("runs"), help="models (default runs/)")
    g.add_argument("--tracking-uri", help="MLflow (default MLFLOW_TRACKING_URI or ./mlflow.db)")
    g.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (sevlm)")
    g.add_argument("--register-as", default="sevlm", help="registered model name (sevlm)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.resume and (ignored := ignored_on_resume(parser, args)):
        say(f"warning: --resume continues the sweep with its saved settings: ignoring "
            f"{', '.join(ignored)}")  # fmt: skip
    # `ray job stop` and schedulers send SIGTERM: let Tune stop as on Ctrl-C, saving its state
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        scaling = check_args(args)
        storage = args.storage or str(args.output / "ray")
        storage = storage if "://" in storage else str(Path(storage).absolute())
        if args.resume:
            spec = load_spec(storage, args.name)
            spec.tracking_uri = resume_tracking_uri(spec.tracking_uri, args.tracking_uri)
        else:
            spec = new_spec(args, scaling, storage, say)
        check_reachable(spec.tracking_uri)
        outcome = run_search(spec, resume=args.resume, printer=say)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(outcome, spec))
    if not outcome.complete:
        return 130
    return 0 if outcome.champion is not None else 1


RESUME_USES = {"help", "resume", "name", "storage", "output"}
"""What --resume reads from the command line: which sweep, and where it is stored (and a
--tracking-uri with credentials: they are not saved)."""


def ignored_on_resume(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The options given that a resumed sweep does not use (it has its saved settings)."""
    uri = args.tracking_uri
    uses = RESUME_USES | ({"tracking_uri"} if uri and redact(uri) != uri else set())
    return [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings
        and action.dest not in uses
        and getattr(args, action.dest) != action.default
    ]


def check_args(args: argparse.Namespace) -> Scaling:
    """Numbers and names that would otherwise fail deep inside Ray or MLflow; the trials'
    scaling, which checks its own fields."""
    checks = [
        (args.num_samples is None or args.num_samples >= 1, "--num-samples must be >= 1"),
        (args.max_concurrent is None or args.max_concurrent >= 1, "--max-concurrent must be >= 1"),
        (args.name is None or NAME.fullmatch(args.name), "--name: letters, digits, . _ - only"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return Scaling(
        num_workers=args.num_workers,
        gpus_per_worker=args.gpus_per_worker,
        max_failures=args.max_failures,
    )


def new_spec(args: argparse.Namespace, scaling: Scaling, storage: str, say):
    """A new sweep from the command line; the data default is the embedded sample."""
    source: DataSource = source_from_args(args, sample_default=True)
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(tracking_uri)
    if sweep_exists(storage, name) or find_run(tracking_uri, args.experiment, name) is not None:
        raise ValueError(f"a sweep named {name!r} is in {storage} or in MLflow: add --resume "
                         "to continue it, or choose another --name")  # fmt: skip
    model, train = load_configs(args.preset, args.config, {})
    check_pretrained(model)  # before Ray and the data check, not in every trial
    search = load_search_config(args.preset, args.config)
    overrides = {"num_samples": args.num_samples, "metric": args.metric, "mode": args.mode}
    given = {k: v for k, v in overrides.items() if v is not None}
    if args.metric and not args.mode:
        given["mode"] = None  # the metric's own direction, not the config's for its metric
    search = type(search)(**{**search.to_dict(), **given})
    ensure_ray(say)
    import ray

    scaling.concurrent_runs = trial_concurrency(
        ray.cluster_resources(), scaling, args.max_concurrent or search.max_concurrent, say
    )
    return make_spec(
        name,
        source,
        model,
        train,
        search,
        scaling,
        storage=storage,
        output=args.output,
        tracking_uri=tracking_uri,
        experiment=args.experiment,
        register_as=args.register_as,
        seed=args.seed or 0,
        prep=UtterancePrep(enabled=not args.no_text_prep),
    )


if __name__ == "__main__":
    sys.exit(main())
