"""The ``sevlm`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sevlm.artemis import DataSource, load_artemis
from sevlm.lexicon import read_lexicon
from sevlm.text import UtterancePrep


def add_data_args(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The data options every data-taking command accepts; ``seed_help`` says what the
    command's ``--seed`` seeds (the split everywhere, training in some)."""
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
    g.add_argument("--seed", type=int, help=seed_help)
    g.add_argument(
        "--no-text-prep",
        action="store_true",
        help="keep utterances as written (no ArtEmis lowercasing, contraction and length rules)",
    )


def source_from_args(args: argparse.Namespace, sample_default: bool = False) -> DataSource:
    """The data the options name; with ``sample_default`` and none named, the embedded sample."""
    if sample_default and not any((args.data, args.csv, args.images, args.contrastive)):
        from sevlm.sample import cached_sample

        args.data = str(cached_sample())
        _progress(f"no data given: the embedded sample ({args.data})")
    return DataSource.resolve(
        data=args.data,
        csv=args.csv,
        images=args.images,
        lexicon=args.lexicon,
        contrastive=args.contrastive,
        variant=args.variant,
    )


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input or an unusable setup: printed as ``error: ...`` (exit 2),
    never as a traceback. (Imported here: the weights module imports torch.)"""
    from sevlm.tokenizer import TokenizerError
    from sevlm.tracking import TrackingError
    from sevlm.weights import WeightsError

    return (ValueError, TrackingError, WeightsError, TokenizerError)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_data_sample(args: argparse.Namespace) -> int:
    from sevlm.sample import NotASampleError, write_sample

    started = time.perf_counter()
    try:
        s = write_sample(args.out, paintings=args.paintings, seed=args.seed, force=args.force)
    except NotASampleError as e:
        raise ValueError(f"--out {e}; add --force to overwrite them") from e
    except OSError as e:  # a file where a folder goes, no permission, a full disk
        raise ValueError(f"--out {args.out}: cannot write the sample ({e})") from e
    print(
        f"wrote {s.rows} annotations of {s.paintings} paintings to {s.out} "
        f"in {time.perf_counter() - started:.1f} s\n"
        f"  csv:     {s.csv}\n  images:  {s.images}\n  lexicon: {s.lexicon} "
        "(illustrative values for the sample, not NRC-VAD)"
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    source = source_from_args(args)
    if args.report is not None:
        _check_writable(args.report, "--report")
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
        try:
            args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise ValueError(f"--report {args.report}: {e}") from e
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
        source_from_args(args, sample_default=True),
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


def _load_data(args: argparse.Namespace, source: DataSource, prep: UtterancePrep | None = None):
    return load_artemis(
        source, seed=args.seed or 0,
        prep=prep or UtterancePrep(enabled=not args.no_text_prep), progress=_progress,
    )  # fmt: skip


def _data_of_model(args: argparse.Namespace, trained_on: dict) -> UtterancePrep | None:
    """Default the data options to what the model was trained on (its config.json says):
    the same split seed and text preparation, and, when none is named, the same data."""
    if args.seed is None and "seed" in trained_on:
        args.seed = trained_on["seed"]
    named = any((args.data, args.csv, args.images, args.contrastive))
    if not named and _still_there(trained_on):
        args.csv = _path_or_none(trained_on.get("csv"))
        args.images = _path_or_none(trained_on.get("images"))
        args.lexicon = args.lexicon or _path_or_none(trained_on.get("lexicon"))
        args.contrastive = _path_or_none(trained_on.get("contrastive"))
        args.variant = trained_on.get("variant", "v1")
        if trained_on.get("hf"):
            args.data = f"hf:{trained_on['hf']}"
        _progress(f"no data given: the model's training data ({args.csv or args.data})")
    if args.no_text_prep or "text_prep" not in trained_on:
        return None
    try:
        return UtterancePrep(**trained_on["text_prep"])
    except TypeError as e:  # fields of another version, or damage
        raise ValueError(f"the model's config.json: data.text_prep: {e}") from e


def _still_there(trained_on: dict) -> bool:
    """Whether the data a model's config.json names can still be read: its local files exist
    (a dataset on the hub counts as there; loading it says if it is not)."""
    hf = trained_on.get("hf")
    if not (hf or trained_on.get("images")):
        return False
    local = [trained_on.get(k) for k in ("csv", "images")]
    if hf and Path(hf).is_absolute():  # a dataset saved to disk
        local.append(hf)
    return all(not p or Path(p).exists() for p in local)


def _path_or_none(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _load_model(ref: str, tracking_uri: str | None):
    import torch

    from sevlm.model_source import resolve_model
    from sevlm.weights import load_pretrained

    found = resolve_model(ref, tracking_uri)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return found, load_pretrained(found.path, device=device)


def _check_decoding(args: argparse.Namespace) -> None:
    if args.beams < 1:
        raise ValueError(f"--beams must be >= 1, got {args.beams}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")


def _check_out(out: Path) -> None:
    """Fail before hours of generation, not after: the report must be writable."""
    if out.suffix != ".json":
        raise ValueError(f"--out {out}: the report is a .json file (the summary and plots "
                         "are written beside it)")  # fmt: skip
    _check_writable(out, "--out")


def _check_writable(path: Path, flag: str) -> None:
    """A file the long work will write at its end: fail now if it cannot be."""
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot create its folder ({e})") from e
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"{flag} {path}: its folder is not writable")


def cmd_train_text_classifier(args: argparse.Namespace) -> int:
    from sevlm.evaluate import classifier_home, fit_classifier

    source = source_from_args(args, sample_default=True)
    data = _load_data(args, source)
    out = args.out or classifier_home(source)
    _, info = fit_classifier(data, source, args.seed or 0, out, _progress)
    if info["path"] is None:
        return 1
    print(f"text classifier: {info['path']}")
    print(f"held-out accuracy: {info['heldout_accuracy']} ({info['heldout_texts']} explanations)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sevlm.evaluate import evaluate, load_or_fit_classifier, log_evaluation, write_report
    from sevlm.lexicon import VADLexicon
    from sevlm.model_source import MLFLOW_SCHEMES
    from sevlm.tracking import redact, redact_in, resolve_tracking_uri

    _check_decoding(args)
    _check_out(args.out)
    found, loaded = _load_model(args.model, args.tracking_uri)
    prep = _data_of_model(args, loaded.info.get("data") or {})
    source = source_from_args(args, sample_default=True)
    data = _load_data(args, source, prep)
    classifier, classifier_info = load_or_fit_classifier(
        data, source, args.seed or 0, args.classifier, _progress
    )
    lexicon = read_lexicon(source.lexicon) if source.lexicon else VADLexicon({})
    report = evaluate(
        loaded, data, args.split, classifier, lexicon=lexicon,
        batch_size=args.batch_size, beams=args.beams, progress=_progress,
    )  # fmt: skip
    report = {"model": args.model, "model_path": str(found.path), **report,
              "data": {**source.describe(), "seed": args.seed or 0},
              "classifier": classifier_info}  # fmt: skip
    files = write_report(report, args.out)
    for key in ("emotion_accuracy", "bleu4", "meteor", "rouge_l", "cider", "emo_alignment"):
        value, floor = report[key], report["baseline"][key]
        shown = "n/a" if value is None else f"{value:.4f}"
        print(f"{key:>16}: {shown}  (baseline {'n/a' if floor is None else f'{floor:.4f}'})")
    print(f"report: {files[0]}\nsummary: {files[1]}")
    tracked = found.ref.startswith(MLFLOW_SCHEMES)
    if not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracked):
        return 0
    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        run_id = log_evaluation(report, files, uri, found.run_id)
    except Exception as e:  # the report is written: say what failed, keep it
        print(
            f"error: could not log to MLflow at {redact(uri)}: {redact_in(str(e), uri)}",
            file=sys.stderr,
        )
        return 1
    print(f"logged to MLflow run {run_id} ({redact(uri)})")
    return 0


def _image_files(paths: list[Path]) -> list[Path]:
    from sevlm.images import IMAGE_SUFFIXES

    found = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        entries = sorted(path.iterdir())
        images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not entries:
            _progress(f"{path}: an empty folder")
        elif len(images) < len(entries):
            _progress(f"{path}: {len(entries) - len(images)} of its {len(entries)} entries "
                      f"skipped: not files named {'/'.join(sorted(IMAGE_SUFFIXES))} "
                      "(subfolders are not searched)")  # fmt: skip
        found += images
    return found


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from sevlm.examples import ExampleConfig
    from sevlm.generate import Decoder

    _check_decoding(args)
    _, loaded = _load_model(args.model, args.tracking_uri)
    transform = ExampleConfig.for_model(loaded.model.config).transform
    decoder = Decoder(loaded.model, loaded.tokenizer, loaded.lexicon)
    device = next(loaded.model.parameters()).device
    files, explained = _image_files(args.images), 0
    if not files:
        print("error: no image files given", file=sys.stderr)
        return 1
    for start in range(0, len(files), args.batch_size):
        readable, pixels = [], []
        for path in files[start : start + args.batch_size]:
            try:
                pixels.append(torch.as_tensor(transform.load(path)))
                readable.append(path)
            except Exception as e:  # one bad file never stops the rest
                print(f"error: {path}: cannot read the image ({_reason(e)})", file=sys.stderr)
        if not readable:
            continue
        said = decoder.explain(torch.stack(pixels).to(device), beams=args.beams)
        for path, one in zip(readable, said, strict=True):
            explained += 1
            if args.json:
                record = {"image": str(path), "emotion": one.emotion,
                          "explanation": one.explanation,
                          "vad": None if one.vad is None else list(one.vad)}  # fmt: skip
                print(json.dumps(record, ensure_ascii=False))
            else:
                print(f"{path}: {one.emotion}, because {one.explanation}")
    return 0 if explained else 1


def _reason(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevlm",
        description="Train, evaluate and explain with a small emotional VLM on ArtEmis (the "
        "hyperparameter search is `python tune/search.py`).",
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
    sample.add_argument(
        "--force",
        action="store_true",
        help="write even over files that are not of an earlier sample (a real dataset's)",
    )
    sample.set_defaults(func=cmd_data_sample)

    check = data_commands.add_parser(
        "check", help="read every row, decode every image, count what is skipped and why"
    )
    add_data_args(check, "seed of the split and of the combined variant's v1.0 sample (default 0)")
    check.add_argument("--report", type=Path, help="write the JSON report here")
    check.set_defaults(func=cmd_data_check)

    train = commands.add_parser(
        "train",
        help="train one model with Ray Train, tracked in MLflow",
        description="Train one model (without data options: on the embedded sample). Settings "
        "come from --preset, then --config, then KEY=VALUE overrides (model.FIELD, train.FIELD "
        "or a bare field name).",
    )
    add_data_args(train, "seed of the split (default 0) and of training (default: the config's "
                  "train.seed)")  # fmt: skip
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
    train.add_argument("--max-failures", type=int, default=2, help="worker restarts allowed (2)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(func=cmd_train)

    classifier = commands.add_parser(
        "train-text-classifier",
        help="train the text-to-emotion classifier behind emotional alignment",
        description="Train the classifier that reads explanations and names their emotion, on "
        "the training split's explanations; report its accuracy on the validation split's. "
        "Without data options: the embedded sample.",
    )
    add_data_args(classifier, "seed of the split, of the combined variant's v1.0 sample and of "
                  "the classifier's training (default 0)")  # fmt: skip
    classifier.add_argument(
        "--out",
        type=Path,
        help="folder to save it in (default: emotion-classifier/ beside the "
        "annotations, where `sevlm evaluate` looks)",
    )
    classifier.set_defaults(func=cmd_train_text_classifier)

    evaluate = commands.add_parser(
        "evaluate",
        help="the paper's metrics on a split, with plots and a baseline",
        description="Explain every image of a split once, then score: emotion accuracy, "
        "BLEU-1..4, METEOR, ROUGE-L, CIDEr, emotional alignment, VAD distance, unique ratio. "
        "Writes a JSON report, a Markdown summary and plots; logs them to MLflow when a "
        "tracking URI is set or the model came from MLflow. Without data options: the data "
        "the model was trained on (its config.json says), else the embedded sample; --seed "
        "defaults to the model's split seed.",
    )
    add_model_args(evaluate)
    add_data_args(evaluate, "seed of the split (default: the model's split seed, else 0)")
    evaluate.add_argument(
        "--split", choices=("val", "test"), default="test", help="which split (default test)"
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation/report.json"),
        help="the JSON report; the summary and plots go beside it (default evaluation/report.json)",
    )
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    evaluate.add_argument(
        "--classifier",
        type=Path,
        help="the text classifier's folder "
        "(default: the one beside the data, trained there if missing)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    explain = commands.add_parser(
        "explain",
        help="the emotion and explanation for images",
        description="Print the emotion each image evokes and why. Unreadable files are "
        "reported and skipped; the exit code is non-zero only if nothing was explained.",
    )
    add_model_args(explain)
    explain.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE_OR_DIR",
        help="image files, or folders of them",
    )
    explain.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: image, emotion, explanation, vad",
    )
    explain.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    explain.set_defaults(func=cmd_explain)
    return parser


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Which model, and how to decode."""
    parser.add_argument(
        "--model",
        required=True,
        help="a model directory, an MLflow model URI "
        "(runs:/ID/model, models:/sevlm@champion) or a registered model name",
    )
    parser.add_argument("--beams", type=int, default=1, help="beam width (default 1: greedy)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or ./mlflow.db)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print, escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except BrokenPipeError:  # `sevlm explain ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
