"""`sevlm train` end to end: the tiny preset on the embedded sample learns emotions."""

from __future__ import annotations

from collections import Counter

import torch
from conftest import TrainedOnSample

from sevlm.artemis import DataSource, load_artemis
from sevlm.examples import ExampleConfig
from sevlm.generate import Decoder
from sevlm.metrics import dominant_emotion
from sevlm.training import evaluate_shard, reduce_eval
from sevlm.weights import load_pretrained

CHANCE = 1 / 9


def test_sevlm_train_on_the_sample_learns_emotions(
    sample, trained_on_sample: TrainedOnSample
) -> None:
    run = trained_on_sample
    assert f"model: {run.model}" in run.stdout and "MLflow run:" in run.stdout
    (picked,) = [line for line in run.stderr.splitlines() if line.startswith("best checkpoint")]

    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    test = data.split("test")
    loaded = load_pretrained(run.model)
    example = ExampleConfig(image_size=64, lexicon=str(sample.lexicon))
    decoder = Decoder(loaded.model, loaded.tokenizer, loaded.lexicon)
    part = evaluate_shard(loaded.model, test, example, decoder, torch.device("cpu"))
    accuracy = reduce_eval([part], test)["val/emotion_accuracy"]
    majority = Counter(dominant_emotion([a.emotion for a in p.annotations]) for p in test)
    baseline = majority.most_common(1)[0][1] / len(test)  # always the most common emotion
    print(f"test-split emotion accuracy {accuracy:.3f} (chance {CHANCE:.3f}, majority "
          f"{baseline:.3f}) after {run.minutes:.1f} min; {picked}")  # fmt: skip
    # Seen: 0.65 vs 0.30 in 4.3 min (step 400 picked; 0.75 in 7.5 min before the LM head
    # change of 2026-12-05 moved the losses' last bits). While the tiny preset still picked by
    # validation BLEU-4, one CI run exported an earlier checkpoint and got 0.45.
    assert accuracy >= 0.5 and accuracy >= baseline + 0.2
