"""The Ray-free training core: config, optimizer groups, schedule, step, sharded evaluation."""

from __future__ import annotations

import pytest
import torch

from sevlm.artemis import DataSource, load_artemis
from sevlm.config import ModelConfig, TrainConfig, load_configs, override_configs
from sevlm.examples import ExampleConfig, iter_batches
from sevlm.generate import Decoder
from sevlm.lexicon import read_lexicon
from sevlm.tokenizer import load_tokenizer
from sevlm.training import (
    Stepper,
    autocast_dtype,
    compile_backend,
    eval_shard,
    evaluate_shard,
    linear_schedule,
    parameter_groups,
    reduce_eval,
    to_device,
)
from sevlm.weights import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(sample):
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny")
    tokenizer = load_tokenizer()
    model = build_model(config, tokenizer)
    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    example = ExampleConfig(image_size=64, lexicon=str(sample.lexicon))
    decoder = Decoder(model, tokenizer, read_lexicon(sample.lexicon))
    return config, model, data, example, decoder


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    assert TrainConfig(select_metric="val/lm_loss").better(1.0, 2.0)
    assert not TrainConfig().better(1.0, 2.0) and TrainConfig().better(0.0, None)


def test_the_selection_mode_follows_the_metric() -> None:
    """A mode against the metric would keep the worst checkpoint: the mode is the metric's
    own direction, also where an override changes the metric of a preset that set both."""
    assert TrainConfig().select_mode == "max"  # val/bleu4
    assert TrainConfig(select_metric="val/loss").select_mode == "min"
    with pytest.raises(ValueError, match="val/bleu4 is better, so its mode is max, not 'min'"):
        TrainConfig(select_mode="min")
    with pytest.raises(ValueError, match="no metric 'val/bleu'; one of val/loss"):
        TrainConfig(select_metric="val/bleu")  # caught here, not at the first validation
    _, paper = load_configs("paper", None, {"select_metric": "val/lm_loss"})
    assert paper.select_mode == "min"
    _, tiny = load_configs("tiny", None, {"train.select_metric": "val/bleu4"})
    assert tiny.select_mode == "max"
    _, moved = override_configs(ModelConfig.preset("tiny"), tiny, {"select_metric": "val/loss"})
    assert moved.select_mode == "min"


def test_parameter_groups_follow_the_released_recipe(setup) -> None:
    _, model, *_ = setup
    groups = parameter_groups(model, TrainConfig())
    assert [g["lr"] for g in groups] == [2e-5, 4e-5]
    assert all(g["weight_decay"] == 0.0 for g in groups)
    vad = {id(p) for p in model.vad_encoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == vad
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_linear_schedule() -> None:
    factor = linear_schedule(TrainConfig(max_steps=10, warmup_steps=2))
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_precision_on_cpu_is_fp32() -> None:
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("bf16", CPU) is None


@pytest.mark.parametrize(
    ("capability", "dtype"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16)]
)
def test_auto_precision_by_gpu_generation(monkeypatch, capability, dtype) -> None:
    # a 2080 Ti (sm75) gets fp16 with a grad scaler, not emulated bf16; Ampere gets bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype("auto", torch.device("cuda")) == dtype
    assert autocast_dtype("fp32", torch.device("cuda")) is None


def test_steps_lower_the_loss(setup, sample) -> None:
    config, _, data, example, _ = setup
    torch.manual_seed(1)
    model = build_model(config, load_tokenizer())
    stepper = Stepper(model, model, TrainConfig(lr=2e-3, lr_vad=2e-3, max_steps=100), CPU)
    batch = to_device(next(iter_batches(data.split("train"), example, batch_size=8)), CPU)
    used = stepper.optimizer.param_groups[0]["lr"]
    first = stepper.step(batch)
    assert first["train/lr"] == used != stepper.optimizer.param_groups[0]["lr"]  # not the next
    for _ in range(15):
        last = stepper.step(batch)
    assert last["train/lm_loss"] < first["train/lm_loss"] - 3.0  # from about 11 nats
    assert {"train/lm_loss", "train/vad_loss", "train/cl_loss", "train/grad_norm"} <= set(last)
    assert stepper.scheduler.get_last_lr()[0] < 2e-3  # decaying
    state = stepper.state_dict()
    again = Stepper(model, model, TrainConfig(lr=2e-3, lr_vad=2e-3, max_steps=100), CPU)
    again.load_state_dict(state)
    assert again.scheduler.last_epoch == stepper.scheduler.last_epoch


def test_sharded_evaluation_equals_one_process(setup) -> None:
    _, model, data, example, decoder = setup
    val = data.split("val")
    args = dict(example_config=example, decoder=decoder, device=CPU, batch_size=4, max_new_tokens=8)
    whole = reduce_eval([evaluate_shard(model, eval_shard(val, 0, 1, None), **args)], val)
    parts = [evaluate_shard(model, eval_shard(val, r, 3, None), **args) for r in range(3)]
    keys = [set(p["predictions"]) for p in parts]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])
    assert set.union(*keys) == {p.key for p in val}  # every image exactly once
    split = reduce_eval(parts, val)
    assert split.keys() == whole.keys()
    for key, value in whole.items():
        assert split[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize(
    ("resources", "kwargs", "expected"),
    [
        ({"CPU": 16, "GPU": 4}, {}, (4, True, {"CPU": 1.0, "GPU": 1.0}, 1)),  # one per GPU
        ({"CPU": 16, "GPU": 4}, {"gpus_per_worker": 0.5}, (8, True, {"CPU": 1.0, "GPU": 0.5}, 1)),
        ({"CPU": 2}, {}, (1, False, {"CPU": 1.0}, 2)),  # CPU only: one worker, both cores
        ({"CPU": 2}, {"num_workers": 2}, (2, False, {"CPU": 0.75}, 1)),  # room for data tasks
    ],
)
def test_scaling_from_cluster_resources(resources, kwargs, expected) -> None:
    pytest.importorskip("ray")
    from sevlm_train.driver import Scaling, scaling_config

    config, threads = scaling_config(Scaling(**kwargs), resources)
    got = (config.num_workers, config.use_gpu, config.resources_per_worker, threads)
    assert got == expected


@pytest.mark.parametrize(
    ("resources", "concurrent_runs", "expected"),
    [({"CPU": 2}, 1, 2), ({"CPU": 2}, 2, 1), ({"CPU": 16, "GPU": 4}, 4, 4), ({"CPU": 2}, 3, 1)],
)
def test_data_tasks_are_a_runs_share_of_the_cpus(resources, concurrent_runs, expected) -> None:
    pytest.importorskip("ray")
    from sevlm_train.driver import Scaling, data_tasks

    assert data_tasks(Scaling(concurrent_runs=concurrent_runs), resources) == expected


def _one_step(config: ModelConfig, train: TrainConfig, batch: dict) -> tuple[dict, dict]:
    """Metrics and parameters after one step from the same initial weights."""
    torch.manual_seed(2)
    model = build_model(config, load_tokenizer())
    metrics = Stepper(model, model, train, CPU).step(batch)
    return metrics, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_keeps_the_batch(setup) -> None:
    # Two identical halves hold as many tokens each, so two micro-batches of 4 must give the
    # step of the whole batch of 8. No dropout; no contrastive head, whose negatives are the
    # micro-batch's own.
    config, _, data, example, _ = setup
    config = ModelConfig.from_dict({**config.to_dict(), "dropout": 0.0, "w_cl": 0.0})
    half = to_device(next(iter_batches(data.split("train"), example, batch_size=4)), CPU)
    batch = {k: torch.cat([v, v]) for k, v in half.items()}
    train = TrainConfig(lr=1e-3, lr_vad=1e-3, max_steps=10, batch_size=8)
    whole, whole_params = _one_step(config, train, batch)
    parts, parts_params = _one_step(
        config, TrainConfig(**{**train.to_dict(), "grad_accum": 2}), batch
    )
    assert float(parts["train/loss"]) == pytest.approx(float(whole["train/loss"]), rel=1e-5)
    assert float(parts["train/grad_norm"]) == pytest.approx(
        float(whole["train/grad_norm"]), rel=1e-4
    )
    for name, value in whole_params.items():
        torch.testing.assert_close(parts_params[name], value, rtol=1e-4, atol=1e-6, msg=name)
    torch.manual_seed(2)
    initial = build_model(config, load_tokenizer()).state_dict()
    assert not torch.equal(initial["wte.weight"], whole_params["wte.weight"])  # it did step


def test_grad_accum_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")


def test_compile_auto_compiles_on_cuda_only() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_backend("auto", cuda) == "inductor" and compile_backend("auto", cpu) is None
    assert compile_backend("off", cuda) is None
    assert compile_backend("aot_eager", cpu) == "aot_eager"
    assert TrainConfig().compile == "auto"


def test_compiled_step_matches_eager(setup) -> None:
    # aot_eager: Dynamo's graph capture and AOT autograd, what compiling changes about the
    # model, without inductor's minutes of code generation on CPU.
    config, _, data, example, _ = setup
    config = ModelConfig.from_dict({**config.to_dict(), "dropout": 0.0})
    batch = to_device(next(iter_batches(data.split("train"), example, batch_size=4)), CPU)
    train = TrainConfig(lr=1e-3, lr_vad=1e-3, max_steps=10)
    eager, eager_params = _one_step(config, train, batch)
    compiled, compiled_params = _one_step(
        config, TrainConfig(**{**train.to_dict(), "compile": "aot_eager"}), batch
    )
    assert float(compiled["train/loss"]) == pytest.approx(float(eager["train/loss"]), rel=1e-4)
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-3, atol=1e-5, msg=name)
