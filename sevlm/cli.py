"""The ``sevlm`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sevlm.artemis import DataError, DataSource, load_artemis
from sevlm.lexicon import LexiconError, read_lexicon
from sevlm.text import UtterancePrep


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data options every data-taking command accepts."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        help="a folder in the ArtEmis layout (artemis_dataset_release_v0.csv, wikiart/, "
        "NRC-VAD-Lexicon.txt), a folder saved by `datasets`, or hf:ORG/NAME",
    )
    g.add_argument("--csv", type=Path, help="the v1.0 annotations CSV")
    g.add_argument(
        "--images", type=Path, help="the WikiArt root: <images>/<art_style>/<painting>.jpg"
    )
    g.add_argument("--lexicon", type=Path, help="an NRC-VAD lexicon file (optional)")
    g.add_argument("--contrastive", type=Path, help="the v2.0 Contrastive.csv")
    g.add_argument(
        "--variant",
        choices=("v1", "contrastive", "combined"),
        default="v1",
        help="v1.0 rows, v2.0 contrastive rows, or combined: v2.0 + an equal seeded v1.0 sample",
    )
    g.add_argument(
        "--seed",
        type=int,
        help="seed of the split, sampling and training (default 0; train: the config's)",
    )
    g.add_argument(
        "--no-text-prep",
        action="store_true",
        help="keep utterances as written (no ArtEmis lowercasing, contraction and length rules)",
    )


def source_from_args(args: argparse.Namespace) -> DataSource:
    return DataSource.resolve(
        data=args.data,
        csv=args.csv,
        images=args.images,
        lexicon=args.lexicon,
        contrastive=args.contrastive,
        variant=args.variant,
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_data_sample(args: argparse.Namespace) -> int:
    from sevlm.sample import write_sample

    started = time.perf_counter()
    s = write_sample(args.out, paintings=args.paintings, seed=args.seed)
    print(
        f"wrote {s.rows} annotations of {s.paintings} paintings to {s.out} "
        f"in {time.perf_counter() - started:.1f} s\n"
        f"  csv:     {s.csv}\n  images:  {s.images}\n  lexicon: {s.lexicon} "
        "(illustrative values for the sample, not NRC-VAD)"
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    source = source_from_args(args)
    lexicon = read_lexicon(source.lexicon) if source.lexicon is not None else None
    started = time.perf_counter()
    data = load_artemis(
        source,
        seed=args.seed or 0,
        decode_images=True,
        prep=UtterancePrep(enabled=not args.no_text_prep),
        progress=_progress,
    )
    report = data.report
    if lexicon is not None:
        texts = (a.text or a.utterance for p in data.paintings for a in p.annotations)
        report.lexicon = {**lexicon.describe(), "coverage": lexicon.coverage(texts)}
    print(report.summary())
    print(f"checked in {time.perf_counter() - started:.1f} s")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"report: {args.report}")
    if report.rows_kept == 0:
        print("error: no usable rows", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sevlm.config import load_configs, parse_overrides
    from sevlm.tracking import DEFAULT_EXPERIMENT
    from sevlm_train.driver import Scaling, run_training

    overrides = parse_overrides(args.overrides)
    if args.max_steps is not None:
        overrides["train.max_steps"] = args.max_steps
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    model_cfg, train_cfg = load_configs(args.preset, args.config, overrides)
    outcome = run_training(
        source_from_args(args),
        model_cfg,
        train_cfg,
        output=args.output,
        name=args.name,
        scaling=Scaling(num_workers=args.num_workers, max_failures=args.max_failures),
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment or DEFAULT_EXPERIMENT,
        data_seed=args.seed or 0,
        prep=UtterancePrep(enabled=not args.no_text_prep),
        printer=_progress,
    )
    print(f"model: {outcome.model_dir}")
    print(f"MLflow run: {outcome.run_id} (model {outcome.model_uri})")
    for key in ("val/emotion_accuracy", "val/bleu4"):
        if key in outcome.metrics:
            print(f"{key}: {outcome.metrics[key]:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevlm", description="Train, search and evaluate a small emotional VLM on ArtEmis."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="data tools: make the sample, check a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    sample = data_commands.add_parser(
        "sample", help="write the embedded sample: a generated dataset in ArtEmis's layout"
    )
    sample.add_argument("--out", type=Path, required=True, help="folder to write into")
    sample.add_argument("--paintings", type=int, default=240, help="paintings (default 240)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.set_defaults(func=cmd_data_sample)

    check = data_commands.add_parser(
        "check", help="read every row, decode every image, count what is skipped and why"
    )
    add_data_args(check)
    check.add_argument("--report", type=Path, help="write the JSON report here")
    check.set_defaults(func=cmd_data_check)

    train = commands.add_parser(
        "train",
        help="train one model with Ray Train, tracked in MLflow",
        description="Train one model. Settings come from --preset, then --config, then "
        "KEY=VALUE overrides (model.FIELD, train.FIELD or a bare field name).",
    )
    add_data_args(train)
    train.add_argument("--preset", default="tiny", help="model and training preset (default tiny)")
    train.add_argument("--config", type=Path, help="YAML with model: and train: sections")
    train.add_argument(
        "--num-workers", type=int, help="Ray Train workers (default: one per GPU, 1 without GPUs)"
    )
    train.add_argument("--max-steps", type=int, help="optimizer steps (overrides the config)")
    train.add_argument("--output", type=Path, default=Path("runs"), help="output folder (runs/)")
    train.add_argument("--name", help="run name (default: a hash of configs and data; the same "
                       "name resumes the run)")  # fmt: skip
    train.add_argument("--storage", help="Ray storage for checkpoints (default OUTPUT/ray)")
    train.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI "
                       "or ./mlflow.db)")  # fmt: skip
    train.add_argument("--experiment", help="MLflow experiment (default sevlm)")
    train.add_argument("--max-failures", type=int, default=2, help="worker restarts allowed")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (DataError, LexiconError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
