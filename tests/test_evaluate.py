"""`sevlm evaluate`, `sevlm explain` and `sevlm train-text-classifier` on a model trained on
the sample: the figures beat the trivial baseline, every file is written, MLflow gets it all."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TrainedOnSample
from test_metrics import toolkit_scores
from test_plots import diagonal, per_emotion

from sevlm.artemis import DataSource, load_artemis
from sevlm.cli import main
from sevlm.emotion_classifier import EmotionClassifier
from sevlm.evaluate import REPORT_FIGURES, log_evaluation, references, write_report
from sevlm.tracking import client_for, find_or_create_run, log_model

FIGURES = ("emotion_accuracy", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l",
           "cider", "emo_alignment", "vad_distance", "unique_ratio")  # fmt: skip


@pytest.fixture(scope="module")
def trained(trained_on_sample: TrainedOnSample) -> Path:
    """The tiny preset's model from ``sevlm train`` on the sample (read-only: copy to change)."""
    return trained_on_sample.model


@pytest.fixture(scope="module")
def classifier(sample, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classifier") / "emotion-classifier"
    assert main(["train-text-classifier", "--data", str(sample.out), "--out", str(out)]) == 0
    return out


@pytest.fixture
def champion(trained: Path, tmp_path: Path) -> str:
    """The trained model logged to a run and registered as ``sevlm@champion``; the URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = find_or_create_run(uri, "sevlm", "trained", {"preset": "tiny"})
    model_uri = log_model(uri, run_id, trained)
    client = client_for(uri)
    client.create_registered_model("sevlm")
    version = client.create_model_version("sevlm", model_uri, run_id=run_id)
    client.set_registered_model_alias("sevlm", "champion", version.version)
    return uri


def test_text_classifier_reports_held_out_accuracy(classifier: Path, capsys) -> None:
    loaded = EmotionClassifier.load(classifier)
    fit = loaded.meta["fit"]
    assert fit["heldout_texts"] > 20 and fit["heldout_accuracy"] > 0.5  # chance: 1/9
    assert loaded.predict(["the dark shapes fill me with fear"]) == ["fear"]


def test_evaluate_beats_the_baseline_and_writes_everything(
    trained: Path, classifier: Path, sample, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "eval" / "report.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["evaluate", "--model", str(trained), "--data", str(sample.out),
                 "--split", "test", "--beams", "3", "--classifier", str(classifier),
                 "--out", str(out), "--tracking-uri", uri])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    test = load_artemis(DataSource.resolve(data=str(sample.out))).split("test")
    assert report["n_images"] == len(test) == len(report["generations"])
    assert {(g["art_style"], g["painting"]) for g in report["generations"]} == {
        (p.art_style, p.painting) for p in test
    }  # each image of the split, once
    assert set(report) >= set(FIGURES) and report["meteor"] is not None
    assert all(set(g) >= {"art_style", "painting", "emotion", "explanation"}
               for g in report["generations"])  # fmt: skip
    assert sum(r["images"] for r in report["per_emotion"].values()) == report["images_scored"]
    base = report["baseline"]
    print({k: (round(report[k], 3), round(base[k], 3)) for k in FIGURES})
    assert report["emotion_accuracy"] >= base["emotion_accuracy"] + 0.3
    # Half-learnt explanations often leave out the emotion's word, so a short training's
    # alignment sits below its accuracy: 0.30 against 0.70 with training that is reproducible
    # (rows in record order, 2026-12-04); 0.30 to 0.65 before, when the batches depended on
    # which Ray Data task finished first. The baseline scores 0.05.
    assert report["emo_alignment"] >= base["emo_alignment"] + 0.2
    assert report["cider"] >= 2 * base["cider"]
    assert report["vad_distance"] <= 0.6 * base["vad_distance"]
    assert report["unique_ratio"] >= base["unique_ratio"] + 0.3
    # The sample's explanations are templated, so the baseline's one sentence is a strong
    # n-gram floor and whether a short training clears it depends on the libraries: the same
    # code and seed gave BLEU-4 0.217 and 0.142 (baseline 0.177) in two environments. CIDEr, which
    # discounts n-grams common to every image, is the caption check above; here the model
    # must write in the references' words and order (an untrained one scores about 0).
    for key in ("bleu4", "meteor", "rouge_l"):
        assert report[key] > 0.5 * base[key], key
    for name in ("report.md", "report.confusion.png", "report.per_emotion.png",
                 "report.valence_arousal.png"):  # fmt: skip
        assert (out.parent / name).stat().st_size > 0, name
    assert "| emotion_accuracy |" in (out.parent / "report.md").read_text()
    # The report's caption scores are the toolkit's own on the report's generations.
    by_key = {(p.art_style, p.painting): p for p in test}
    said = {f"{g['art_style']}/{g['painting']}": g["explanation"] for g in report["generations"]}
    refs = {f"{g['art_style']}/{g['painting']}": references(by_key[g["art_style"], g["painting"]])
            for g in report["generations"]}  # fmt: skip
    direct = toolkit_scores(said, refs)
    for key, value in direct.items():
        assert report[key] == pytest.approx(float(value), abs=1e-12), key
    # No run logged the model: a new evaluation run gets the figures and the files.
    client = client_for(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sevlm").experiment_id])
    assert run.data.metrics["eval_test/cider"] == pytest.approx(report["cider"])
    assert run.data.metrics["eval_test/baseline_cider"] == pytest.approx(base["cider"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/test")}
    assert {"evaluation/test/report.confusion.png", "evaluation/test/report.json"} <= logged
    # A run id from another store (a downloaded MLmodel's): a new evaluation run here instead.
    other = log_evaluation(report, [], uri, "0" * 32)
    assert other != run.info.run_id and client.get_run(other).data.metrics["eval_test/cider"]


def test_evaluate_counts_unreadable_images_and_trains_its_classifier(
    trained: Path, sample, tmp_path: Path, capsys
) -> None:
    data_dir = Path(shutil.copytree(sample.out, tmp_path / "data"))
    capsys.readouterr()
    val = load_artemis(DataSource.resolve(data=str(data_dir))).split("val")
    val[0].image.write_bytes(b"not an image")
    # A model that says what it was trained on is evaluated on that data by default.
    model = Path(shutil.copytree(trained, tmp_path / "model"))
    info = json.loads((model / "config.json").read_text())
    info["data"] = {**DataSource.resolve(data=str(data_dir)).describe(), "seed": 0}
    (model / "config.json").write_text(json.dumps(info))
    out = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(model), "--split", "val", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"the model's training data ({data_dir}" in err and "no text classifier" in err
    report = json.loads(out.read_text())
    assert report["images_skipped"] == {"missing_image": 0, "unreadable_image": 1}
    assert report["n_images"] == len(val) - 1 == report["images_in_split"] - 1
    kept = EmotionClassifier.load(data_dir / "emotion-classifier")  # beside the data
    assert kept.meta["data"]["split_seed"] == 0
    main(["evaluate", "--model", str(trained), "--data", str(data_dir), "--split", "val",
          "--out", str(out)])  # fmt: skip
    assert "no text classifier" not in capsys.readouterr().err  # reused, not retrained


def test_explain_a_model_directory(trained: Path, sample, tmp_path: Path, capsys) -> None:
    images = sorted(sample.images.rglob("*.jpg"))[:3]
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(images[0], folder / "a.jpg")
    (folder / "notes.txt").write_text("not picked up: not an image suffix")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00" * 10)
    code = main(["explain", "--model", str(trained), str(images[1]), str(folder), str(broken),
                 str(tmp_path / "missing.png")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[1]}: ")
    assert ", because " in lines[0] and lines[1].startswith(str(folder / "a.jpg"))
    assert f"error: {broken}: cannot read the image" in captured.err
    assert "missing.png: cannot read the image (no such file)" in captured.err
    assert main(["explain", "--model", str(trained), str(broken)]) == 1  # nothing explained


def test_explain_and_evaluate_the_registered_champion(
    champion: str, trained: Path, classifier: Path, sample, tmp_path: Path, capsys
) -> None:
    image = sorted(sample.images.rglob("*.jpg"))[0]
    code = main(["explain", "--model", "models:/sevlm@champion", "--tracking-uri", champion,
                 "--json", "--beams", "2", str(image)])  # fmt: skip
    assert code == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert set(record) == {"image", "emotion", "explanation", "vad"}
    assert record["image"] == str(image) and record["explanation"]
    # the same model from its directory says the same
    assert main(["explain", "--model", str(trained), "--json", "--beams", "2", str(image)]) == 0
    assert json.loads(capsys.readouterr().out) == record
    # a registered name alone means its champion; the evaluation goes to the model's run
    out = tmp_path / "report.json"
    code = main(["evaluate", "--model", "sevlm", "--tracking-uri", champion, "--data",
                 str(sample.out), "--split", "val", "--classifier", str(classifier),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    client = client_for(champion)
    (run,) = client.search_runs([client.get_experiment_by_name("sevlm").experiment_id])
    assert run.info.run_name == "trained"
    report = json.loads(out.read_text())
    assert run.data.metrics["eval_val/emotion_accuracy"] == pytest.approx(
        report["emotion_accuracy"]
    )


def test_report_files_have_a_plain_files_mode(tmp_path: Path) -> None:
    figures = dict.fromkeys(REPORT_FIGURES, 0.5)
    report = {
        **figures, "split": "test", "n_images": 1, "images_scored": 1, "images_excluded": 0,
        "images_skipped": {}, "beams": 1, "tokenizer": "t", "per_emotion": per_emotion(True),
        "baseline": {"emotion": "awe", "explanation": "it is", **figures},
        "confusion": diagonal(), "confusion_columns": None,
        "generations": [{"art_style": "s", "painting": "p", "emotion": "awe",
                         "explanation": "it is", "dominant": "awe", "vad": [0.5, 0.5, 0.5],
                         "reference_vad": [0.4, 0.5, 0.5]}],
    }  # fmt: skip
    umask = os.umask(0o022)  # mkstemp's 0o600 differs from what open() then gives
    try:
        files = write_report(report, tmp_path / "report.json")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(umask)
    mode = (tmp_path / "plain").stat().st_mode
    assert {f.name: f.stat().st_mode for f in files} == {f.name: mode for f in files}


def test_unknown_model_is_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["explain", "--model", "nobody", "--tracking-uri", uri, "x.jpg"]) == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # a typo does not leave an empty store
    client_for(uri).search_experiments()  # now the store exists, without the model
    assert main(["explain", "--model", "nobody", "--tracking-uri", uri, "x.jpg"]) == 2
    assert "nobody: not a folder, and no registered model" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)  # a bare name: a folder here without a model, or a registered name
    assert main(["explain", "--model", "empty", "--tracking-uri", uri, "x.jpg"]) == 2
    said = capsys.readouterr().err
    assert "empty: a folder without a model (no config.json or MLmodel), and no registered" in said
    assert main(["explain", "--model", str(tmp_path), "x.jpg"]) == 2
    assert "neither a sevlm model directory" in capsys.readouterr().err
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n"
                                      "      model: {path: ../elsewhere}\n")  # fmt: skip
    assert main(["explain", "--model", str(tmp_path), "x.jpg"]) == 2
    assert "its model artifact '../elsewhere' is outside" in capsys.readouterr().err
    (tmp_path / "MLmodel").write_text("flavors: [1, 2]\n")
    assert main(["explain", "--model", str(tmp_path), "x.jpg"]) == 2
    assert "neither a sevlm model directory" in capsys.readouterr().err
    (tmp_path / "MLmodel").unlink()
    assert main(["explain", "--model", str(tmp_path), "--beams", "0", "x.jpg"]) == 2
    assert "--beams must be >= 1" in capsys.readouterr().err
    assert main(["explain", "--model", str(tmp_path), "--batch-size", "0", "x.jpg"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    for out in ("report.md", "folder"):
        (tmp_path / "folder").mkdir(exist_ok=True)
        code = main(["evaluate", "--model", str(tmp_path), "--out", str(tmp_path / out)])
        assert code == 2 and f"--out {tmp_path / out}" in capsys.readouterr().err


def test_logging_a_model_draws_no_download_bars(trained: Path, tmp_path: Path, monkeypatch, capfd):
    """log_model downloads the model back to check its input example; MLflow drew a bar for
    each of its files, once per trial in a sweep's log."""
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = find_or_create_run(uri, "sevlm", "trained", {"preset": "tiny"})
    log_model(uri, run_id, trained)
    assert "Downloading artifacts" not in capfd.readouterr().err
