"""The search's pieces that need no running sweep: config, space, concurrency, spec, the
Optuna bookkeeping and plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from sevlm.artemis import DataSource
from sevlm.config import DEFAULT_SPACE, SearchConfig, load_configs, load_search_config
from sevlm.sample import cached_sample
from sevlm.text import UtterancePrep

pytest.importorskip("ray")
from ray.tune.schedulers import ASHAScheduler

from sevlm_train.driver import ERROR_TAG, Scaling, mark_failed
from sevlm_train.search import FinishingASHA, PruningOptunaSearch, _new_tuner, trial_concurrency
from sevlm_train.sweep_record import TrialRecorder, TrialRow, optuna_plots
from sevlm_train.sweep_spec import (
    load_spec,
    make_spec,
    resume_tracking_uri,
    save_spec,
    tune_space,
)


def test_default_space_is_the_papers_three_knobs():
    search = SearchConfig()
    assert set(search.space) == {"temperature", "w_cl", "w_vad"}
    assert search.space["temperature"] == {"loguniform": [0.01, 1.0]}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"temperature": {"loguniform": [0.0, 1.0]}}, "low > 0"),
        ({"w_cl": {"uniform": [2.0, 1.0]}}, "low < high"),
        ({"w_cl": {"normal": [0, 1]}}, "unknown distribution"),
        ({"w_cl": {"uniform": [0, 1], "loguniform": [1, 2]}}, "one distribution"),
        ({"no_such_field": {"uniform": [0, 1]}}, "no such field of model or train"),
        ({"model.t": {"uniform": [0, 1]}}, "'model.t': no such field of model; one of"),
        ({"model.w_c": {"uniform": [0, 1]}}, "no such field of model; did you mean w_cl"),
        ({"lr": {"loguniform": ["a", "b"]}}, "must be numbers"),
        ({"vision.hidden_size": {"choice": [1]}}, "model or train field"),
        ({}, "space is empty"),
    ],
)
def test_bad_search_spaces_are_clear_errors(space, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(space=space)


def test_tpe_starts_learning_within_a_small_sweep():
    # Optuna's default of 10 random start-up trials would make a 6-trial sweep pure random
    assert SearchConfig(num_samples=6).tpe_startup_trials == 3
    assert SearchConfig(num_samples=100).tpe_startup_trials == 10
    assert SearchConfig(num_samples=100, startup_trials=4).tpe_startup_trials == 4


def test_yaml_bounds_written_like_1e_5_are_numbers():
    # YAML 1.1 reads 1e-5 as text; the space takes it as the number it means
    search = SearchConfig(space={"train.lr": {"loguniform": ["1e-5", "1e-3"]}})
    assert search.space["train.lr"] == {"loguniform": [1e-5, 1e-3]}


def test_config_file_replaces_the_space_and_keeps_other_search_settings(tmp_path):
    preset = load_search_config("tiny")
    assert preset.space == DEFAULT_SPACE and preset.trial["max_steps"] == 120
    file = tmp_path / "search.yaml"
    file.write_text("search:\n  num_samples: 3\n  space:\n    lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    search = load_search_config("tiny", file)
    assert search.space == {"lr": {"loguniform": [1e-4, 1e-2]}}  # replaced whole
    assert search.num_samples == 3 and search.trial == preset.trial
    load_configs("tiny", file)  # a search section does not trouble the model/train loader


def test_tune_space_samples_inside_the_bounds():
    space = tune_space(
        SearchConfig(
            space={
                "temperature": {"loguniform": [0.01, 1.0]},
                "w_cl": {"uniform": [0.0, 2.0]},
                "n_layer": {"randint": [1, 4]},
                "train.batch_size": {"choice": [8, 16]},
            }
        )
    )
    for _ in range(50):
        assert 0.01 <= space["temperature"].sample() <= 1.0
        assert 0.0 <= space["w_cl"].sample() <= 2.0
        assert space["n_layer"].sample() in (1, 2, 3)
        assert space["train.batch_size"].sample() in (8, 16)


def test_concurrency_follows_the_cluster():
    said: list[str] = []
    gpu = {"CPU": 32, "GPU": 8}
    assert trial_concurrency(gpu, Scaling(num_workers=2), None, said.append) == 4
    assert (
        trial_concurrency(gpu, Scaling(num_workers=1, gpus_per_worker=0.5), None, said.append) == 16
    )
    assert trial_concurrency(gpu, Scaling(), None, said.append) == 1  # a worker per GPU each
    assert trial_concurrency(gpu, Scaling(num_workers=2), 3, said.append) == 3
    assert not said
    # asking for more than fits would leave trials waiting for GPUs that never free up
    assert trial_concurrency(gpu, Scaling(num_workers=4), 5, said.append) == 2
    assert "more than the cluster holds" in said[0]
    # GPU trials take a whole CPU per worker: 8 GPUs but 4 CPUs hold 3 one-worker trials
    fits = trial_concurrency({"CPU": 4, "GPU": 8}, Scaling(num_workers=1), None, said.append)
    assert fits == 3
    assert trial_concurrency({"CPU": 2}, Scaling(), None, said.append) == 2
    assert trial_concurrency({"CPU": 2}, Scaling(num_workers=2), None, said.append) == 1


def spec_for(tmp_path: Path, name: str = "s1", **search):
    model, train = load_configs("tiny", None, {})
    return make_spec(
        name,
        DataSource.resolve(data=str(tmp_path)),
        model,
        train,
        SearchConfig(trial={"max_steps": 90, "val_every": 20}, **search),
        Scaling(concurrent_runs=2),
        storage=str(tmp_path / "storage"),
        output=tmp_path / "out",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        experiment="e",
        register_as="sevlm",
        seed=3,
        prep=UtterancePrep(),
    )


def test_spec_applies_trial_settings_and_the_metric(tmp_path, sample):
    spec = spec_for(Path(sample.out), metric="val/emotion_accuracy", mode="max")
    assert spec.train["max_steps"] == 90 and spec.train["val_every"] == 20
    # trials keep the checkpoint that is best by the metric the search optimises
    assert spec.train["select_metric"] == "val/emotion_accuracy"
    assert spec.metric == "val/emotion_accuracy" and spec.mode == "max"


def test_the_search_mode_follows_its_metric(tmp_path, sample):
    """The tiny preset selects by val/lm_loss (min); optimising BLEU-4 must maximise it."""
    spec = spec_for(Path(sample.out), metric="val/bleu4")
    assert spec.mode == "max" and spec.train["select_mode"] == "max"
    with pytest.raises(ValueError, match="lower val/lm_loss is better, so its mode is min"):
        SearchConfig(metric="val/lm_loss", mode="max")
    with pytest.raises(ValueError, match="search: a lower val/lm_loss is better"):
        spec_for(Path(sample.out), mode="max")  # the mode alone, for the train config's metric


def test_spec_round_trips_and_resume_finds_the_newest(tmp_path, sample):
    import os
    import time

    first = spec_for(Path(sample.out), name="first")
    first.storage = str(tmp_path / "storage")
    save_spec(first)
    second = spec_for(Path(sample.out), name="second")
    second.storage = first.storage
    save_spec(second)
    later = time.time() + 5  # "first" is the newest: found by time, not by name or order
    os.utime(Path(first.storage) / "first", (later, later))
    assert load_spec(first.storage, None).name == "first"
    loaded = load_spec(first.storage, "first")
    assert loaded.configs == first.configs and loaded.search_config == first.search_config
    assert (loaded.name, loaded.source, loaded.seed) == ("first", first.source, 3)
    with pytest.raises(ValueError, match="no sweep named 'third'"):
        load_spec(first.storage, "third")
    with pytest.raises(ValueError, match="no sweep to resume"):
        load_spec(str(tmp_path / "empty"), None)


def test_a_failed_runs_error_tag_hides_the_password(monkeypatch):
    """A trial's error (MLflow's quote the URI) becomes its run's tag, for all to read."""

    tags: dict[str, str] = {}

    class Client:
        def get_run(self, run_id):
            return type("Run", (), {"info": type("Info", (), {"status": "RUNNING"})})

        def set_tag(self, run_id, key, value):
            tags[key] = value

        def set_terminated(self, run_id, status):
            pass

    monkeypatch.setattr("sevlm_train.driver.client_for", lambda uri: Client())
    uri = "https://user:secret@mlflow.example"
    mark_failed(uri, "r", RuntimeError(f"API request to {uri}/api/2.0/x failed"))
    assert tags[ERROR_TAG] == (
        "RuntimeError: API request to https://***@mlflow.example/api/2.0/x failed"
    )


def test_asha_stopped_trials_are_pruned_for_optuna():
    search = PruningOptunaSearch(
        space=tune_space(SearchConfig()), metric="val/bleu4", mode="max", seed=0
    )
    for trial in ("a", "b", "c"):
        assert set(search.suggest(trial)) == {"temperature", "w_cl", "w_vad"}
    for it in (1, 2):
        search.on_trial_result(
            "a", {"val/bleu4": 0.1 * it, "step": 40 * it, "training_iteration": it}
        )
    search.on_trial_result("b", {"val/bleu4": 0.05, "step": 40, "training_iteration": 1})
    search.on_trial_complete(
        "a", {"val/bleu4": 0.2, "step": 80, "training_iteration": 2, "final": 1.0}
    )
    search.on_trial_complete(
        "b", {"val/bleu4": 0.05, "step": 40, "training_iteration": 1, "final": 0.0}
    )
    search.on_trial_complete("c", None, error=True)
    states = {t.number: t.state.name for t in search._ot_study.trials}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "FAIL"}
    assert search._ot_study.trials[0].value == pytest.approx(0.2)
    assert search._ot_study.trials[1].intermediate_values == {40: 0.05}


def test_optuna_files_scores_under_the_training_step_across_a_restart(tmp_path):
    """A trial paused at a rung restarts its function, and Tune counts its reports from 1
    again: each score still lands at its own step, without Optuna's duplicate-step warning,
    also after the searcher is saved and restored (a sweep resumed after its driver died)."""
    search = PruningOptunaSearch(
        space=tune_space(SearchConfig()), metric="val/lm_loss", mode="min", seed=0
    )
    search.suggest("a")
    results = [(40, 1, 3.0), (80, 1, 2.5)]  # paused at the rung after step 40, restarted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, it, loss in results:
            search.on_trial_result(
                "a", {"val/lm_loss": loss, "step": step, "training_iteration": it}
            )
        search.save(str(tmp_path / "searcher.pkl"))
        restored = PruningOptunaSearch(
            space=tune_space(SearchConfig()), metric="val/lm_loss", mode="min", seed=0
        )
        restored.restore(str(tmp_path / "searcher.pkl"))
        for step, it, loss in [(80, 2, 2.5), (120, 1, 2.0)]:  # the last report again, then on
            restored.on_trial_result(
                "a", {"val/lm_loss": loss, "step": step, "training_iteration": it}
            )
    trial = restored._ot_study.trials[0]
    assert trial.intermediate_values == {40: 3.0, 80: 2.5, 120: 2.0}


def row(trial_id, state, final, **params):
    return TrialRow(trial_id, params, state, 80, final, final, None, None)


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_asha_prunes_at_its_rungs_but_never_at_a_trials_last_report():
    asha = FinishingASHA(
        time_attr="step", metric="val/lm_loss", mode="min", max_t=120, grace_period=40,
        reduction_factor=3, stop_last_trials=False,
    )  # fmt: skip
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    report = lambda trial, step, loss, final=0.0: asha.on_trial_result(  # noqa: E731
        None, trial, {"step": step, "val/lm_loss": loss, "final": final}
    )
    assert report(trials[0], 40, 2.0) == asha.CONTINUE
    assert report(trials[1], 40, 3.0) == asha.STOP  # worse at the first rung: pruned
    assert report(trials[0], 120, 1.0, final=1.0) == asha.CONTINUE
    # a rung sits at 120 = max_t: plain ASHA would stop this worse trial at its last report,
    # killing it before it exports its model; here it may finish
    assert report(trials[2], 40, 1.5) == asha.CONTINUE
    assert report(trials[2], 120, 1.8, final=1.0) == asha.CONTINUE
    plain = ASHAScheduler(
        time_attr="step", metric="val/lm_loss", mode="min", max_t=120, grace_period=40,
        reduction_factor=3, stop_last_trials=False,
    )  # fmt: skip
    for trial in trials[:3]:
        plain.on_trial_add(None, trial)
    for trial, step, loss in ((trials[0], 40, 2.0), (trials[0], 120, 1.0), (trials[2], 40, 1.5)):
        plain.on_trial_result(None, trial, {"step": step, "val/lm_loss": loss})
    assert plain.on_trial_result(None, trials[2], {"step": 120, "val/lm_loss": 1.8}) == plain.STOP


def test_optuna_plots_are_drawn_from_the_trials(tmp_path):
    rows = [
        row("t0", "finished", 0.3, temperature=0.1, w_cl=1.0, w_vad=0.5),
        row("t1", "finished", 0.1, temperature=0.5, w_cl=0.2, w_vad=1.5),
        row("t2", "finished", 0.2, temperature=0.02, w_cl=1.7, w_vad=0.1),
        row("t3", "pruned", 0.05, temperature=0.9, w_cl=0.1, w_vad=1.9),
        row("t4", "failed", None),  # failed before Tune recorded its config
    ]
    assert optuna_plots(rows, SearchConfig(), "max", tmp_path) == []
    drawn = sorted(p.name for p in tmp_path.iterdir())
    assert drawn == ["optimization_history.png", "parallel_coordinate.png", "param_importances.png"]
    assert all((tmp_path / name).stat().st_size > 5000 for name in drawn)


def test_a_plot_that_cannot_be_drawn_is_reported_not_raised(tmp_path):
    rows = [row("t0", "finished", 0.3, temperature=0.1, w_cl=1.0, w_vad=0.5)]
    problems = optuna_plots(rows, SearchConfig(), "max", tmp_path)
    assert problems == ["Optuna plot param_importances needs 2 finished trials"]
    assert (tmp_path / "optimization_history.png").exists()
    assert not (tmp_path / "param_importances.png").exists()


def test_the_sample_is_written_once_into_the_cache(tmp_path):
    first = cached_sample(tmp_path)
    assert (first / "artemis_dataset_release_v0.csv").is_file()
    stamp = (first / "artemis_dataset_release_v0.csv").stat().st_mtime_ns
    assert cached_sample(tmp_path) == first
    assert (first / "artemis_dataset_release_v0.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging left behind


def search_cli():
    """tune/search.py is a script, not a package module: load it by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tune" / "search.py"
    spec = importlib.util.spec_from_file_location("tune_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_cli_refuses_to_reuse_a_sweep_name_without_resume(tmp_path, sample, capsys):
    spec = spec_for(Path(sample.out), name="taken")
    spec.storage = str(tmp_path / "storage")
    save_spec(spec)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["--data", str(sample.out), "--storage", spec.storage, "--tracking-uri", uri]
    assert search_cli().main([*argv, "--name", "taken"]) == 2
    assert "a sweep named 'taken' is in" in capsys.readouterr().err
    for bad, message in (
        (["--name", "a'b"], "--name: letters"),
        (["--gpus-per-worker", "0"], "--gpus-per-worker must be > 0"),
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--max-concurrent", "-1"], "--max-concurrent must be >= 1"),
        (["--num-workers", "0"], "--num-workers must be >= 1"),
        (["--max-failures", "-1"], "--max-failures must be >= 0"),
    ):
        assert search_cli().main([*argv, *bad]) == 2
        assert message in capsys.readouterr().err


def test_search_cli_takes_the_sample_only_when_no_data_is_named(
    tmp_path, sample, capsys, monkeypatch
):
    """Contrastive rows and images with no CSV are data: not the sample (nor its lexicon)."""
    spec = spec_for(Path(sample.out), name="taken")
    spec.storage = str(tmp_path / "storage")
    save_spec(spec)
    argv = ["--storage", spec.storage, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    contrastive = ["--variant", "contrastive", "--contrastive", str(tmp_path / "Contrastive.csv"),
                   "--images", str(sample.images)]  # fmt: skip
    assert search_cli().main([*argv, *contrastive, "--name", "taken"]) == 2
    assert "embedded sample" not in capsys.readouterr().err
    assert search_cli().main([*argv, "--name", "taken"]) == 2
    assert "no data given: the embedded sample" in capsys.readouterr().err
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as with no hub
    assert search_cli().main([*argv, "--preset", "paper", "--name", "fresh"]) == 2
    err = capsys.readouterr().err
    assert "error: preset 'paper': cannot load decoder weights" in err  # before Ray starts
    assert "Ray" not in err


def test_search_cli_resume_without_a_sweep_is_a_clear_error(tmp_path, capsys):
    assert search_cli().main(["--resume", "--storage", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no sweep to resume" in err and "ignoring" not in err
    none = str(tmp_path / "none")
    argv = ["--resume", "--storage", none, "--num-samples", "9", "--preset", "paper"]
    assert search_cli().main(argv) == 2
    assert "with its saved settings: ignoring --preset, --num-samples" in capsys.readouterr().err


SECRET_URI = "http://user:secret@127.0.0.1:9/"  # nothing listens on the discard port


def saved_with_a_password(tmp_path, sample) -> str:
    """A sweep "locked" saved with a tracking URI that holds a password; its storage."""
    spec = spec_for(Path(sample.out), name="locked")
    spec.storage, spec.tracking_uri = str(tmp_path / "storage"), SECRET_URI
    save_spec(spec)
    return spec.storage


def test_a_saved_sweep_holds_no_password(tmp_path, sample):
    storage = saved_with_a_password(tmp_path, sample)
    assert "secret" not in (Path(storage) / "locked" / "sevlm_sweep.json").read_text()
    assert load_spec(storage, "locked").tracking_uri == "http://***@127.0.0.1:9/"


def test_resume_needs_the_password_again(tmp_path, sample, capsys, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    argv = ["--resume", "--storage", saved_with_a_password(tmp_path, sample)]
    assert search_cli().main(argv) == 2
    err = capsys.readouterr().err
    assert "needs credentials, which are not saved" in err and "MLFLOW_TRACKING_PASSWORD" in err
    assert search_cli().main([*argv, "--tracking-uri", "http://user:secret@10.0.0.1:9/"]) == 2
    assert "the sweep's tracking store is http://***@127.0.0.1:9/" in capsys.readouterr().err
    # the right one is taken (not ignored): the sweep goes on, to its store that is not there
    assert search_cli().main([*argv, "--tracking-uri", SECRET_URI]) == 2
    err = capsys.readouterr().err
    assert "ignoring" not in err and "secret" not in err
    assert "cannot reach the MLflow tracking store at http://***@127.0.0.1:9/" in err


def test_a_database_stores_password_comes_only_from_the_command_line(monkeypatch):
    """MLflow reads its credential variables for its HTTP server, not for a database URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    saved = "postgresql://***@db:5432/mlflow"
    with pytest.raises(ValueError, match=r"pass --tracking-uri with them again$"):
        resume_tracking_uri(saved, None)
    given = "postgresql://user:secret@db:5432/mlflow"
    assert resume_tracking_uri(saved, given) == given
    assert resume_tracking_uri("https://***@host/", None) == "https://host/"


def test_resume_takes_the_password_from_mlflows_variables(tmp_path, sample, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    argv = ["--resume", "--storage", saved_with_a_password(tmp_path, sample)]
    assert search_cli().main(argv) == 2
    assert (
        "cannot reach the MLflow tracking store at http://127.0.0.1:9/" in capsys.readouterr().err
    )


def test_the_sweeps_tuner_state_holds_no_password(tmp_path, sample, monkeypatch):
    """Tune pickles the sweep's recorder into its storage (tuner.pkl); --resume unpickles it,
    and it takes the password from the resumed sweep's spec."""
    import ray.cloudpickle

    def trainable(config):
        pass

    monkeypatch.setattr(TrialRecorder, "uris", {}, raising=False)
    storage = saved_with_a_password(tmp_path, sample)
    spec = load_spec(storage, "locked")
    spec.tracking_uri = SECRET_URI
    _new_tuner(spec, spec.search_config, trainable, 1)
    saved = (Path(storage) / "locked" / "tuner.pkl").read_bytes()
    assert b"secret" not in saved
    monkeypatch.setattr(TrialRecorder, "uris", {})  # a new driver, resuming
    recorder = lambda: ray.cloudpickle.loads(saved)["_run_config"].callbacks[0]  # noqa: E731
    assert recorder().spec.tracking_uri == "http://***@127.0.0.1:9/"
    TrialRecorder.remember(spec)
    assert recorder().spec.tracking_uri == SECRET_URI
