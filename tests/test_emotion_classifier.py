"""The text-to-emotion classifier: it learns, saves and loads safely, and is deterministic."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sevlm.artemis import DataSource, load_artemis
from sevlm.emotion_classifier import (
    CLASSIFIER_DIR,
    INFO_FILE,
    WEIGHTS_FILE,
    ClassifierError,
    ClassifierFit,
    EmotionClassifier,
    train_classifier,
)
from sevlm.emotions import EMOTIONS
from sevlm.sample import SampleSummary

CUES = {
    "amusement": ("clown", "joke", "laugh", "silly", "giggle"),
    "awe": ("cathedral", "majestic", "vast", "sublime", "towering"),
    "contentment": ("garden", "calm", "peaceful", "cozy", "gentle"),
    "excitement": ("fireworks", "race", "thrilling", "party", "energetic"),
    "anger": ("injustice", "furious", "cruel", "rage", "outraged"),
    "disgust": ("rotting", "vomit", "filthy", "slime", "gross"),
    "fear": ("storm", "monster", "afraid", "terrifying", "scream"),
    "sadness": ("funeral", "tears", "lonely", "grief", "mourning"),
    "something else": ("geometry", "puzzling", "lines", "abstract", "confusing"),
}
FILLERS = (
    "the", "a", "this", "painting", "picture", "makes", "me", "feel", "because", "of",
    "colors", "in", "it", "looks", "like", "woman", "man", "sky", "with", "and", "there",
    "is", "are", "people", "very", "so", "how", "artist", "shows", "background",
)  # fmt: skip
EPOCHS = 5
BATCH = 16  # a few hundred texts: small batches give Adam enough steps


def corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences of fillers with one or two words cueing their emotion."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        emotion = rng.choice(EMOTIONS)
        words = rng.choices(FILLERS, k=rng.randint(5, 10))
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(CUES[emotion]))
        pairs.append((" ".join(words), emotion))
    return pairs


TRAIN, HELDOUT = corpus(600, seed=1), corpus(200, seed=2)
NEW = {
    "The storm makes me afraid!": "fear",
    "the clown makes me laugh": "amusement",
    "A funeral, and so many tears.": "sadness",
    "what a peaceful garden": "contentment",
    "such filthy slime": "disgust",
    "a majestic cathedral": "awe",
}


def weights(classifier: EmotionClassifier) -> dict[str, torch.Tensor]:
    return classifier.net.state_dict()


@pytest.fixture(scope="module")
def trained() -> tuple[EmotionClassifier, ClassifierFit, list[str]]:
    lines: list[str] = []
    classifier, fit = train_classifier(
        TRAIN,
        HELDOUT,
        epochs=EPOCHS,
        batch_size=BATCH,
        meta={"data": "hand-made"},
        progress=lines.append,
    )
    return classifier, fit, lines


def test_learns_words_that_cue_emotions(trained) -> None:
    classifier, fit, lines = trained
    assert (fit.train_texts, fit.heldout_texts, fit.epochs) == (len(TRAIN), len(HELDOUT), EPOCHS)
    assert fit.heldout_accuracy is not None and fit.heldout_accuracy > 0.9
    assert classifier.predict(list(NEW)) == list(NEW.values())
    texts, emotions = zip(*HELDOUT, strict=True)
    predicted = classifier.predict(texts)
    right = sum(p == e for p, e in zip(predicted, emotions, strict=True))
    assert classifier.accuracy(texts, emotions) == pytest.approx(right / len(HELDOUT))
    assert classifier.accuracy(texts, emotions) == pytest.approx(fit.heldout_accuracy)
    assert len(lines) == EPOCHS
    assert all("loss" in line and "held-out accuracy" in line for line in lines)
    assert lines[-1].startswith(f"epoch {EPOCHS}/{EPOCHS}")
    assert classifier.meta["data"] == "hand-made"
    assert classifier.meta["fit"]["heldout_accuracy"] == fit.heldout_accuracy
    assert classifier.meta["settings"]["batch_size"] == BATCH


def test_vocabulary_is_frequent_unigrams_and_bigrams() -> None:
    train = [("red sky red sky blue", "awe"), ("red sky at night", "fear")]
    classifier, fit = train_classifier(train, epochs=1)
    assert set(classifier.vocab) == {"red", "sky", "red sky"}
    assert fit.heldout_accuracy is None
    assert classifier.meta["settings"]["vocab_size"] == 3


def test_texts_without_known_ngrams_get_the_bias_emotion(trained) -> None:
    classifier, _, _ = trained
    by_bias = EMOTIONS[int(classifier.net.output.bias.argmax())]
    assert classifier.predict(["", "   ", "?!", "zyzzyva quokka"]) == [by_bias] * 4
    assert classifier.predict([]) == []
    mixed = classifier.predict(["", "the storm makes me afraid", ""])
    assert mixed == [by_bias, "fear", by_bias]  # empty bags next to full ones keep their place


def test_empty_vocabulary_still_predicts() -> None:
    classifier, _ = train_classifier([("one lonely sentence", "sadness")], epochs=2)
    assert classifier.vocab == []
    assert classifier.predict(["one lonely sentence", ""]) == ["sadness", "sadness"]


def test_labels_are_checked() -> None:
    with pytest.raises(ClassifierError, match="'joy'"):
        train_classifier([("a happy day", "joy")])
    with pytest.raises(ClassifierError, match="'bliss'"):
        train_classifier(TRAIN[:10], [("a happy day", "bliss")])
    with pytest.raises(ClassifierError, match="no training texts"):
        train_classifier([])
    with pytest.raises(ClassifierError, match="epochs"):
        train_classifier(TRAIN[:10], epochs=0)
    classifier, _ = train_classifier([("the storm", " FEAR "), ("the storm", "Fear")], epochs=1)
    assert classifier.predict(["the storm"]) == ["fear"]  # labels match as everywhere else


def test_accuracy_checks_its_arguments(trained) -> None:
    classifier, _, _ = trained
    with pytest.raises(ClassifierError, match="2 texts but 1"):
        classifier.accuracy(["a", "b"], ["fear"])
    with pytest.raises(ClassifierError, match="no texts"):
        classifier.accuracy([], [])
    with pytest.raises(ClassifierError, match="'joy'"):
        classifier.accuracy(["a"], ["joy"])


def test_same_seed_same_weights() -> None:
    first, fit = train_classifier(TRAIN, HELDOUT, seed=3, epochs=2)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    again, fit_again = train_classifier(TRAIN, HELDOUT, seed=3, epochs=2)
    assert torch.equal(state, torch.get_rng_state())  # global settings are left alone
    assert torch.get_num_threads() == threads
    other, _ = train_classifier(TRAIN, HELDOUT, seed=4, epochs=2)
    assert first.vocab == again.vocab == other.vocab
    for name, tensor in weights(first).items():
        assert torch.equal(tensor, weights(again)[name]), name
    assert not torch.equal(weights(first)["embedding.weight"], weights(other)["embedding.weight"])
    texts = [text for text, _ in HELDOUT]
    assert first.predict(texts) == again.predict(texts)
    assert fit.heldout_accuracy == fit_again.heldout_accuracy


def test_save_and_load_round_trip(trained, tmp_path: Path) -> None:
    classifier, fit, _ = trained
    folder = classifier.save(tmp_path / CLASSIFIER_DIR)
    assert folder == tmp_path / CLASSIFIER_DIR
    assert sorted(p.name for p in folder.iterdir()) == sorted([INFO_FILE, WEIGHTS_FILE])
    assert [p.name for p in tmp_path.iterdir()] == [CLASSIFIER_DIR]  # no staging left over
    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    assert info["meta"]["data"] == "hand-made"
    assert info["meta"]["fit"]["heldout_accuracy"] == fit.heldout_accuracy
    assert info["vocab"] == classifier.vocab and info["dim"] == 64
    with safe_open(folder / WEIGHTS_FILE, framework="pt") as f:  # a safetensors file, no pickle
        assert set(f.keys()) == {"embedding.weight", "output.weight", "output.bias"}
    loaded = EmotionClassifier.load(folder)
    assert loaded.meta == classifier.meta
    for name, tensor in weights(classifier).items():
        assert torch.equal(tensor, weights(loaded)[name]), name
    texts = [text for text, _ in HELDOUT] + list(NEW) + ["", "unheard of words"]
    assert loaded.predict(texts) == classifier.predict(texts)


def test_saving_over_a_classifier_replaces_it(tmp_path: Path) -> None:
    folder = tmp_path / "clf"
    first, _ = train_classifier(TRAIN, epochs=1, meta={"run": 1})
    first.save(folder)
    (folder / "stale.txt").write_text("from the first save")
    second, _ = train_classifier(TRAIN[:50], epochs=1, meta={"run": 2})
    second.save(folder)
    loaded = EmotionClassifier.load(folder)
    assert loaded.meta["run"] == 2 and loaded.vocab == second.vocab != first.vocab
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clf"]


def test_a_failed_save_leaves_the_old_classifier(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classifier, _, _ = trained
    folder = classifier.save(tmp_path / "clf")
    other, _ = train_classifier(TRAIN[:50], epochs=1, meta={"run": "other"})

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sevlm.emotion_classifier.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        other.save(folder)
    monkeypatch.undo()
    other.meta["unwritable"] = object()
    with pytest.raises(TypeError):
        other.save(folder)
    assert EmotionClassifier.load(folder).vocab == classifier.vocab
    assert [p.name for p in tmp_path.iterdir()] == ["clf"]  # no staging left over


def test_save_refuses_a_folder_that_is_not_a_classifier(trained, tmp_path: Path) -> None:
    classifier, _, _ = trained
    (tmp_path / "data.csv").write_text("precious")
    with pytest.raises(ClassifierError, match="not a saved emotion classifier"):
        classifier.save(tmp_path)
    assert (tmp_path / "data.csv").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert EmotionClassifier.load(classifier.save(tmp_path / "empty")).vocab == classifier.vocab


def _truncate_weights(folder: Path) -> None:
    path = folder / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])


def _pickle_weights(folder: Path) -> None:
    torch.save({"embedding.weight": torch.zeros(1)}, folder / WEIGHTS_FILE)


def _edit_info(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        (folder / INFO_FILE).write_text(json.dumps({**info, **changes}), encoding="utf-8")

    return edit


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: (f / INFO_FILE).unlink(), id="no-json"),
        pytest.param(lambda f: (f / WEIGHTS_FILE).unlink(), id="no-weights"),
        pytest.param(_truncate_weights, id="truncated-weights"),
        pytest.param(_pickle_weights, id="pickled-weights"),
        pytest.param(lambda f: (f / INFO_FILE).write_text("{not json"), id="bad-json"),
        pytest.param(_edit_info(format="something/2"), id="wrong-format"),
        pytest.param(_edit_info(vocab=["only", "three", "grams"]), id="vocab-mismatch"),
        pytest.param(_edit_info(vocab=["a", "a"]), id="repeated-ngram"),
        pytest.param(_edit_info(emotions=sorted(EMOTIONS)), id="other-emotion-order"),
        pytest.param(_edit_info(dim=32), id="wrong-dim"),
    ],
)
def test_damaged_classifier_is_a_clear_error(trained, tmp_path: Path, damage) -> None:
    classifier, _, _ = trained
    folder = classifier.save(tmp_path / "clf")
    damage(folder)
    with pytest.raises(ClassifierError, match=str(folder)):
        EmotionClassifier.load(folder)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match=str(tmp_path / "nowhere")):
        EmotionClassifier.load(tmp_path / "nowhere")


def test_learns_the_sample(sample: SampleSummary) -> None:
    data = load_artemis(DataSource.resolve(data=str(sample.out)))

    def pairs(split: str) -> list[tuple[str, str]]:
        return [(a.text, a.emotion) for p in data.split(split) for a in p.annotations if a.text]

    train, val = pairs("train"), pairs("val")
    assert len(train) > 500 and len(val) > 20
    _, fit = train_classifier(train, val)
    assert fit.heldout_accuracy is not None and fit.heldout_accuracy > 0.5  # chance: 1/9
