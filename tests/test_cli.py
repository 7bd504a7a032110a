"""The command line: sevlm data sample / data check, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_csv

from sevlm.artemis import SKIP_REASONS
from sevlm.cli import main

REPORT_KEYS = {"rows_total", "rows_kept", "paintings_kept", "skipped", "splits", "emotion_counts"}


def test_sample_then_check(tmp_path: Path, capsys) -> None:
    assert main(["data", "sample", "--out", str(tmp_path / "s"), "--paintings", "30"]) == 0
    assert "wrote" in capsys.readouterr().out
    report_path = tmp_path / "r" / "report.json"
    assert main(["data", "check", "--data", str(tmp_path / "s"), "--report", str(report_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert set(report) >= REPORT_KEYS
    assert set(report["skipped"]) == set(SKIP_REASONS)
    assert report["paintings_kept"] == 30 and sum(report["splits"].values()) == 30
    assert report["rows_kept"] == report["rows_total"] > 0
    assert f"{report['rows_total']} read" in out and "lexicon:" in out
    coverage = report["lexicon"]["coverage"]
    assert 0 < coverage["known"] < coverage["words"] and report["lexicon"]["entries"] > 100


def test_check_with_explicit_paths_and_skips(tmp_path: Path, sample, capsys) -> None:
    rows = [
        ("Baroque", "nope", "awe", "the tall dark mountain makes me feel small", 1),
        ("Baroque", "nope", "bliss", "the tall dark mountain makes me feel small", 1),
    ]
    rows += [tuple(line) for line in _sample_rows(sample)[:10]]
    csv_file = write_csv(tmp_path / "rows.csv", rows)
    report_path = tmp_path / "report.json"
    code = main(
        ["data", "check", "--csv", str(csv_file), "--images", str(sample.images),
         "--report", str(report_path)]
    )  # fmt: skip
    assert code == 0  # usable data: skipped rows do not fail the check
    report = json.loads(report_path.read_text())
    assert report["skipped"]["missing_image"] == 1 and report["skipped"]["unknown_emotion"] == 1
    assert report["rows_kept"] == 10
    assert "skipped: unknown_emotion 1, missing_image 1" in capsys.readouterr().out


def test_malformed_csv_exits_with_clear_error(tmp_path: Path, sample, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("painting,emotion\nx,awe\n")
    code = main(["data", "check", "--csv", str(bad), "--images", str(sample.images)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing required column(s) art_style, utterance" in err


def test_an_unwritable_report_is_refused_before_the_check(tmp_path: Path, sample, capsys) -> None:
    assert main(["data", "check", "--data", str(sample.out), "--report", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert f"error: --report {tmp_path}: is a folder" in out.err and "checked in" not in out.out


def test_no_usable_rows_fails(tmp_path: Path, sample) -> None:
    csv_file = write_csv(tmp_path / "rows.csv", [("Baroque", "nope", "awe", "x y z", 1)])
    assert main(["data", "check", "--csv", str(csv_file), "--images", str(sample.images)]) == 1


def test_a_wrong_images_root_is_a_clear_error(tmp_path: Path, sample, capsys) -> None:
    check = ["data", "check", "--csv", str(sample.csv), "--images"]
    assert main([*check, str(tmp_path / "nonexistent")]) == 2
    assert f"error: --images {tmp_path / 'nonexistent'}: no such folder" in capsys.readouterr().err
    assert main([*check, str(sample.csv)]) == 2
    assert f"error: --images {sample.csv}: not a folder" in capsys.readouterr().err
    assert main([*check, str(sample.out)]) == 1  # a folder, but one level above the root
    out = capsys.readouterr().out
    first = _sample_rows(sample)[0]
    expected = sample.out / first[0] / f"{first[1]}.jpg"
    assert f"no image was found under the images root {sample.out}" in out
    assert f"expected files like {expected}" in out


def test_console_script_help() -> None:
    sevlm = Path(sys.executable).parent / "sevlm"
    done = subprocess.run([sevlm, "data", "check", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for flag in ("--data", "--csv", "--images", "--lexicon", "--report"):
        assert flag in done.stdout


def test_data_check_seed_help_names_only_what_it_seeds(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the split and of the combined variant's v1.0 sample" in helped
    assert "training" not in helped  # data check trains nothing


def _sample_rows(sample) -> list[list[str]]:
    import csv

    with open(sample.csv, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def test_train_help_lists_the_contract() -> None:
    sevlm = Path(sys.executable).parent / "sevlm"
    done = subprocess.run([sevlm, "train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for flag in ("--data", "--csv", "--images", "--lexicon", "--preset", "--config",
                 "--num-workers", "--max-steps", "--output", "--seed", "KEY=VALUE"):  # fmt: skip
        assert flag in done.stdout, flag


def test_train_rejects_bad_settings_before_starting(sample, capsys) -> None:
    data = ["train", "--data", str(sample.out)]
    assert main([*data, "--max-steps", "0"]) == 2
    assert "max_steps must be >= 1" in capsys.readouterr().err
    assert main([*data, "model.vision.hidden_size=64"]) == 2
    assert "nested fields" in capsys.readouterr().err
    assert main(["train", "--num-workers", "0"]) == 2  # no data options: the sample
    err = capsys.readouterr().err
    assert "no data given: the embedded sample" in err and "--num-workers must be >= 1" in err


def test_train_stops_before_the_data_check_when_it_cannot_track_or_load_weights(
    sample, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Errors, not tracebacks, and before every image is decoded (hours on ArtEmis)."""
    data = ["train", "--data", str(sample.out), "--output", str(tmp_path / "out")]
    assert main([*data, "--tracking-uri", "http://127.0.0.1:9"]) == 2  # nothing listens
    err = capsys.readouterr().err
    assert "error: cannot reach the MLflow tracking store" in err
    assert "checking the data" not in err
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as with no hub
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main([*data, "--preset", "paper", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "error: preset 'paper': cannot load decoder weights 'distilgpt2'" in err
    assert "decoder_weights=/models/distilgpt2" in err and "checking the data" not in err


def test_train_stops_on_a_bad_lexicon_first(sample, tmp_path: Path, capsys) -> None:
    """Before the tracking store is even tried (nothing listens there), so long before Ray."""
    gone = tmp_path / "gone.txt"
    argv = ["train", "--data", str(sample.out), "--lexicon", str(gone),
            "--tracking-uri", "http://127.0.0.1:9"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: --lexicon: {gone}: cannot read lexicon" in err and "tracking" not in err


def test_evaluate_defaults_to_the_models_data_where_it_still_is(tmp_path: Path, sample) -> None:
    from sevlm.cli import _data_of_model, build_parser

    def defaulted(trained_on: dict) -> str | None:
        args = build_parser().parse_args(["evaluate", "--model", "m"])
        _data_of_model(args, trained_on)
        return args.data or (args.csv and str(args.csv))

    csv = str(sample.out / "artemis_dataset_release_v0.csv")
    assert defaulted({"csv": csv, "images": str(sample.images)}) == csv
    assert defaulted({"csv": str(tmp_path / "gone.csv"), "images": str(sample.images)}) is None
    hub = {"hf": "some-org/artemis", "csv": None, "images": None}
    assert defaulted(hub) == "hf:some-org/artemis"
    assert defaulted({"hf": str(tmp_path / "gone"), "csv": None, "images": None}) is None
    assert defaulted({}) is None


def test_data_sample_refuses_to_overwrite_a_dataset(tmp_path: Path, capsys) -> None:
    """A real ArtEmis folder has the very file names the sample writes."""
    real = tmp_path / "artemis"
    real.mkdir()
    (real / "artemis_dataset_release_v0.csv").write_text("the real annotations")
    (real / "NRC-VAD-Lexicon.txt").write_text("the real lexicon")
    assert main(["data", "sample", "--out", str(real), "--paintings", "12"]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {real}: not a sample folder" in err and "--force" in err
    assert "artemis_dataset_release_v0.csv, NRC-VAD-Lexicon.txt" in err
    assert (real / "artemis_dataset_release_v0.csv").read_text() == "the real annotations"
    assert not (real / "wikiart").exists()
    assert main(["data", "sample", "--out", str(real), "--paintings", "12", "--force"]) == 0
    assert (real / "NRC-VAD-Lexicon.txt").read_text() != "the real lexicon"
    assert main(["data", "sample", "--out", str(real), "--paintings", "12"]) == 0  # a sample now


def test_a_file_name_that_is_not_utf8_prints_escaped(tmp_path: Path, monkeypatch) -> None:
    import io

    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # as under an en_US.UTF-8 locale
    monkeypatch.setattr(sys, "stdout", strict)
    out = tmp_path / "bad\udcffname"  # the byte 0xff, as Python decodes it from the disk
    assert main(["data", "sample", "--out", str(out), "--paintings", "12"]) == 0
    strict.flush()
    assert "bad\\udcffname" in strict.buffer.getvalue().decode()


def test_a_closed_pipe_ends_quietly() -> None:
    """`sevlm explain ... | head -1`: no BrokenPipeError traceback when the reader stops
    early (a command that prints far more than a pipe holds stands in for explain)."""
    script = (
        "import sys; from sevlm import cli\n"
        "cli.cmd_data_sample = lambda args: [print('x' * 999) for _ in range(9999)] and 0\n"
        "sys.exit(cli.main(['data', 'sample', '--out', 'unused']))"
    )
    done = subprocess.run(
        f"{sys.executable} -c \"{script}\" | head -c 3",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout == "xxx" and "Traceback" not in done.stderr and "Error" not in done.stderr


def test_explain_says_what_it_skips_in_a_folder(tmp_path: Path, sample, capsys) -> None:
    from sevlm.cli import _image_files

    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    image = tmp_path / "a.JPG"
    image.write_bytes((next(sample.images.rglob("*.jpg"))).read_bytes())
    assert _image_files([tmp_path]) == [image]
    assert f"{tmp_path}: 2 of its 3 entries skipped" in capsys.readouterr().err
    assert _image_files([tmp_path / "sub"]) == []
    assert f"{tmp_path / 'sub'}: an empty folder" in capsys.readouterr().err


def test_data_sample_into_a_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    assert main(["data", "sample", "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert f"error: --out {tmp_path / 'afile' / 'sub'}: cannot write the sample" in (
        capsys.readouterr().err
    )
