"""``sevlm evaluate``: explain every image of a split once, score it the paper's way, report.

The figures (see :mod:`sevlm.metrics`): emotion accuracy against the dominant emotion,
BLEU-1..4 / METEOR / ROUGE-L / CIDEr against all of an image's references, emotional
alignment (our text classifier reads the generated explanation), VAD distance and the share
of distinct explanations. The same figures are computed for a trivial baseline, the most
common training emotion with its most common explanation, so a model's numbers have a floor.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sevlm.artemis import Annotation, ArtemisData, DataSource, Painting
from sevlm.atomic import write_text_atomic
from sevlm.emotion_classifier import (
    CLASSIFIER_DIR,
    ClassifierError,
    EmotionClassifier,
    train_classifier,
)
from sevlm.examples import ExampleConfig, decode_batch
from sevlm.generate import MAX_NEW_TOKENS, Decoder
from sevlm.lexicon import VADLexicon
from sevlm.metrics import (
    CAPTION_METRICS,
    UNKNOWN,
    caption_scores,
    dominant_emotion,
    emotion_accuracy,
    unique_ratio,
    vad_distance,
)
from sevlm.text import tokenize_utterance
from sevlm.weights import LoadedModel

Printer = Callable[[str], None]
REPORT_FIGURES = ("emotion_accuracy", *CAPTION_METRICS, "emo_alignment", "vad_distance",
                  "unique_ratio")  # fmt: skip
PLOTS = ("confusion", "per_emotion", "valence_arousal")
"""The report's plots, written beside it as ``<report stem>.<plot>.png``."""


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass
class Generated:
    """What the model said about one image of the split."""

    painting: Painting
    emotion: str
    explanation: str


def generate_split(
    loaded: LoadedModel,
    paintings: list[Painting],
    *,
    batch_size: int = 32,
    beams: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: Printer = _quiet,
) -> tuple[list[Generated], dict[str, int]]:
    """Explain each painting once; images that cannot be read are skipped and counted."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    example = ExampleConfig.for_model(loaded.model.config)
    decoder = Decoder(loaded.model, loaded.tokenizer, loaded.lexicon)
    device = next(loaded.model.parameters()).device
    out: list[Generated] = []
    skipped = {"missing_image": 0, "unreadable_image": 0}
    started = time.perf_counter()
    for start in range(0, len(paintings), batch_size):
        chunk = paintings[start : start + batch_size]
        batch = {"key": list(range(len(chunk))), "image": [str(p.image) for p in chunk]}
        decoded, dropped = decode_batch(batch, example)  # unreadable images: counted, not fatal
        for reason, keys in dropped.items():
            skipped[reason] += len(keys)
        if decoded["key"]:
            pixels = torch.as_tensor(decoded["pixel_values"]).to(device)
            said = decoder.explain(pixels, max_new_tokens, beams=beams)
            kept = [chunk[i] for i in decoded["key"]]
            out += [Generated(p, s.emotion, s.explanation) for p, s in zip(kept, said, strict=True)]
        done = min(start + batch_size, len(paintings))
        rate = done / max(time.perf_counter() - started, 1e-9)
        progress(f"explained {done}/{len(paintings)} images ({rate:.1f} images/s)")
    return out, skipped


def references(painting: Painting) -> list[str]:
    """All of an image's explanations, prepared as for training: every annotation counts."""
    return [_prepared(a) for a in painting.annotations]


def _prepared(annotation: Annotation) -> str:
    """The text prepared for training, else (the preparation dropped it as too short or too
    long) the utterance's ArtEmis tokens."""
    return annotation.text or " ".join(tokenize_utterance(annotation.utterance))


def baseline(train: list[Painting]) -> tuple[str, str]:
    """The most common emotion of the training annotations and its most common explanation."""
    emotions = Counter(a.emotion for p in train for a in p.annotations)
    if not emotions:
        raise ValueError("the training split is empty: no baseline")
    emotion = emotions.most_common(1)[0][0]
    texts = Counter(_prepared(a) for p in train for a in p.annotations if a.emotion == emotion)
    return emotion, texts.most_common(1)[0][0]


# ---------------------------------------------------------------------------------------------
# Scoring


def score(
    said: dict[str, tuple[str, str]],
    paintings: dict[str, Painting],
    lexicon: VADLexicon,
    classifier: EmotionClassifier,
    java: bool | None = None,
) -> dict:
    """Every figure of the report for ``said`` (image key -> (emotion, explanation))."""
    if not said:
        raise ValueError("no image was explained: nothing to score")
    annotations = {k: [a.emotion for a in paintings[k].annotations] for k in said}
    refs = {k: references(paintings[k]) for k in said}
    explanations = {k: e for k, (_, e) in said.items()}
    accuracy = emotion_accuracy({k: em for k, (em, _) in said.items()}, annotations)
    keys = sorted(said)
    read = dict(zip(keys, classifier.predict([explanations[k] for k in keys]), strict=True))
    read |= {k: UNKNOWN for k in keys if not explanations[k].strip()}  # says nothing: no emotion
    alignment = emotion_accuracy(read, annotations)
    for emotion, row in accuracy["per_emotion"].items():
        row["alignment"] = alignment["per_emotion"][emotion]["accuracy"]
    return {
        "n_images": len(said),
        **accuracy,
        **caption_scores(explanations, refs, java),
        "emo_alignment": alignment["emotion_accuracy"],
        **vad_distance(explanations, refs, lexicon),
        "unique_ratio": unique_ratio(list(explanations.values())),
    }


# ---------------------------------------------------------------------------------------------
# The text classifier behind emotional alignment


def classifier_texts(paintings: list[Painting]) -> list[tuple[str, str]]:
    return [
        (t, a.emotion) for p in paintings for a, t in zip(p.annotations, references(p), strict=True)
    ]


def data_identity(source: DataSource, seed: int, prep: dict) -> dict:
    """What a classifier was trained on: it is reused only for the same data, split and text
    preparation."""

    def file(path: Path | None) -> list | None:
        return [path.name, path.stat().st_size] if path and path.is_file() else None

    return {"csv": file(source.csv), "contrastive": file(source.contrastive), "hf": source.hf,
            "variant": source.variant, "split_seed": seed, "text_prep": prep}  # fmt: skip


def classifier_home(source: DataSource) -> Path:
    """Where a dataset's classifier is kept by default: beside its annotations (for a dataset
    on the Hugging Face hub, in sevlm's cache folder)."""
    if source.csv is not None:
        return source.csv.parent / CLASSIFIER_DIR
    if source.hf and Path(source.hf).is_dir():
        return Path(source.hf) / CLASSIFIER_DIR
    from sevlm.sample import cache_root

    return cache_root() / "classifiers" / str(source.hf).replace("/", "--") / CLASSIFIER_DIR


def fit_classifier(
    data: ArtemisData, source: DataSource, seed: int, out: Path | None, progress: Printer = _quiet
) -> tuple[EmotionClassifier, dict]:
    """Train on the training split's explanations, check on the validation split's, save."""
    started = time.perf_counter()
    train = classifier_texts(data.split("train"))
    classifier, fit = train_classifier(
        train,
        classifier_texts(data.split("val")),
        seed=seed,
        batch_size=min(256, max(16, len(train) // 16)),  # small data still gets enough steps
        meta={"data": data_identity(source, seed, data.report.text)},
        progress=progress,
    )
    classifier.meta["fit"] = dataclasses.asdict(fit)
    info = {**classifier.meta["fit"], "path": None}
    if out is not None:
        try:
            info["path"] = str(classifier.save(out))
        except (OSError, ClassifierError) as e:  # it still serves this evaluation
            progress(f"warning: could not save the text classifier to {out}: {e}")
    progress(
        f"text classifier: held-out accuracy {_fmt(fit.heldout_accuracy)} on "
        f"{fit.heldout_texts} validation explanations ({time.perf_counter() - started:.1f} s)"
    )
    return classifier, info


def load_or_fit_classifier(
    data: ArtemisData,
    source: DataSource,
    seed: int,
    path: Path | None = None,
    progress: Printer = _quiet,
) -> tuple[EmotionClassifier, dict]:
    """The classifier at ``path`` (given: must load), else the one kept beside the data when
    it was trained on the same data and split, else a new one trained and kept there."""
    if path is not None:
        classifier = EmotionClassifier.load(path)
        return classifier, {**classifier.meta.get("fit", {}), "path": str(path)}
    home = classifier_home(source)
    try:
        classifier = EmotionClassifier.load(home)
        if classifier.meta.get("data") == data_identity(source, seed, data.report.text):
            return classifier, {**classifier.meta.get("fit", {}), "path": str(home)}
        progress(f"{home} was trained on other data or another split: training a new one")
    except ClassifierError:
        progress(f"no text classifier at {home}: training one (sevlm train-text-classifier)")
    return fit_classifier(data, source, seed, home, progress)


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate(
    loaded: LoadedModel,
    data: ArtemisData,
    split: str,
    classifier: EmotionClassifier,
    *,
    lexicon: VADLexicon | None = None,
    batch_size: int = 32,
    beams: int = 1,
    java: bool | None = None,
    progress: Printer = _quiet,
) -> dict:
    """The report of a model on a split, with the baseline's figures beside it."""
    paintings = data.split(split)
    if not paintings:
        raise ValueError(f"the {split} split has no images")
    lexicon = lexicon if lexicon is not None and len(lexicon) else loaded.lexicon
    emotion, explanation = baseline(data.split("train"))
    started = time.perf_counter()
    generated, skipped = generate_split(
        loaded, paintings, batch_size=batch_size, beams=beams, progress=progress
    )
    seconds_generate = time.perf_counter() - started
    by_key = {p.key: p for p in paintings}
    said = {g.painting.key: (g.emotion, g.explanation) for g in generated}
    progress(f"scoring {len(said)} explanations")
    report = score(said, by_key, lexicon, classifier, java)
    floor = score({k: (emotion, explanation) for k in said}, by_key, lexicon, classifier, java)
    report.update(
        {
            "split": split,
            "beams": beams,
            "images_in_split": len(paintings),
            "images_skipped": skipped,
            "lexicon": lexicon.describe(),
            "baseline": {"emotion": emotion, "explanation": explanation,
                         **{k: floor[k] for k in (*REPORT_FIGURES, "per_emotion")}},
            "seconds": {"generate": seconds_generate,
                        "total": time.perf_counter() - started},
            "generations": [_generation(g, lexicon) for g in generated],
        }
    )  # fmt: skip
    return report


def _generation(g: Generated, lexicon: VADLexicon) -> dict:
    p = g.painting
    vad = lexicon.text_vad(g.explanation)
    refs = lexicon.text_vad(" ".join(references(p)))
    return {
        "art_style": p.art_style,
        "painting": p.painting,
        "emotion": g.emotion,
        "explanation": g.explanation,
        "dominant": dominant_emotion([a.emotion for a in p.annotations]),
        "vad": None if vad is None else [round(float(x), 4) for x in vad],
        "reference_vad": None if refs is None else [round(float(x), 4) for x in refs],
    }


# ---------------------------------------------------------------------------------------------
# Writing it down


def plot_files(out: Path) -> dict[str, Path]:
    return {name: out.with_name(f"{out.stem}.{name}.png") for name in PLOTS}


def write_report(report: dict, out: Path) -> list[Path]:
    """The JSON report at ``out``; beside it the Markdown summary and the plots. The
    valence-arousal plot shows the images with a dominant emotion (its colour)."""
    from sevlm.plots import confusion_matrix_png, per_emotion_png, valence_arousal_png

    out.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_files(out)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    dominated = [g for g in report["generations"] if g["dominant"]]
    files = [
        confusion_matrix_png(
            report["confusion"], plots["confusion"], predicted_labels=report["confusion_columns"]
        ),
        per_emotion_png(report["per_emotion"], plots["per_emotion"]),
        valence_arousal_png(
            [_va(g["vad"]) for g in dominated],
            [_va(g["reference_vad"]) for g in dominated],
            [g["dominant"] for g in dominated],
            plots["valence_arousal"],
        ),
    ]
    summary = out.with_suffix(".md")
    write_text_atomic(summary, markdown(report, out))
    return [out, summary, *files]


def _va(vad: list[float] | None) -> tuple[float, float] | None:
    return None if vad is None else (vad[0], vad[1])


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(report: dict, out: Path) -> str:
    """A human summary: the figures beside the baseline's, per emotion, a few examples."""
    base = report["baseline"]
    lines = [
        f"# Evaluation: {report.get('model', 'model')} on the {report['split']} split",
        "",
        f"{report['n_images']} images explained ({report['images_scored']} with a dominant "
        f"emotion, {report['images_excluded']} without, left out of the emotion figures); "
        f"skipped: {', '.join(f'{k} {v}' for k, v in report['images_skipped'].items())}. "
        f"Beams: {report['beams']}. Tokenizer: {report['tokenizer']}.",
        "",
        "| figure | model | baseline |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(report[k])} | {_fmt(base[k])} |" for k in REPORT_FIGURES]
    if report.get("meteor_unavailable"):
        lines += ["", f"METEOR: not computed ({report['meteor_unavailable']})."]
    lines += [
        "",
        f'Baseline: always `{base["emotion"]}` because "{base["explanation"]}". '
        f"Emotional alignment by a text classifier with held-out accuracy "
        f"{_fmt(report.get('classifier', {}).get('heldout_accuracy'))}.",
        "",
        "## Per dominant emotion",
        "",
        "| emotion | images | accuracy | alignment |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {e} | {r['images']} | {_fmt(r['accuracy'])} | {_fmt(r['alignment'])} |"
        for e, r in report["per_emotion"].items()
    ]
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({path.name})" for name, path in plot_files(out).items()]
    lines += ["", "## Examples", "", "| painting | dominant | said |", "| --- | --- | --- |"]
    lines += [
        f"| {g['art_style']}/{g['painting']} | {g['dominant'] or '-'} | "
        f"{g['emotion']} because {g['explanation']} |"
        for g in report["generations"][:10]
    ]
    return "\n".join(lines) + "\n"


def log_evaluation(report: dict, files: list[Path], uri: str, run_id: str | None) -> str:
    """Log the figures and files to ``run_id`` (the model's run), or to a new evaluation run;
    returns the run's id. Metrics are ``eval_<split>/<figure>`` (``.../baseline_<figure>``)."""
    from sevlm.tracking import DEFAULT_EXPERIMENT, client_for

    client = client_for(uri)
    if run_id is not None and not _run_exists(client, run_id):
        run_id = None  # logged in another tracking store: record this one here
    created = run_id is None
    if created:
        found = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
        experiment = found.experiment_id if found else client.create_experiment(DEFAULT_EXPERIMENT)
        run = client.create_run(experiment, run_name=f"evaluate {report.get('model', '')}"[:250],
                                tags={"sevlm.model": str(report.get("model"))})  # fmt: skip
        run_id = run.info.run_id
    prefix = f"eval_{report['split']}"
    metrics = {f"{prefix}/{k}": report[k] for k in REPORT_FIGURES}
    metrics |= {f"{prefix}/baseline_{k}": report["baseline"][k] for k in REPORT_FIGURES}
    metrics |= {f"{prefix}/accuracy_{e.replace(' ', '_')}": r["accuracy"]
                for e, r in report["per_emotion"].items()}  # fmt: skip
    metrics[f"{prefix}/n_images"] = report["n_images"]
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run_id, key, float(value))
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=f"evaluation/{report['split']}")
    if created:
        client.set_terminated(run_id)
    return run_id


def _run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # MlflowException: no such run in this store
        return False
    return True
