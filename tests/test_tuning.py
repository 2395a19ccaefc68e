"""``--tune``: the same search width and trial count for every method, selection from validation only."""

from __future__ import annotations

import json
import math

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.runs.plan import prepare
from bench.runs.record import RunSpec
from bench.runs.store import RunStore
from bench.runs.tuning import TuneRequest, select_settings, trial_cells, untuned_cells, validation_scores
from bench.tuning.base import METHODS, build_method
from bench.tuning.search import parse_tuned_fields, search_space, trial_values, with_values
from tests.run_support import TINY_PROTOCOL, quiet_context, stored_record, synthetic_cache, tiny_request

DATASETS = ["shapes-colours", "shapes-sizes"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory, DATASETS)


def _registered() -> list[str]:
    build_method("zero-shot")  # registers every method
    return [entry.name for entry in METHODS]


def test_every_method_that_trains_gets_the_same_width_around_its_default():
    for name in _registered():
        method = build_method(name)
        space = search_space(method, ("lr", "weight_decay"))
        if not method.trains:
            assert space == (), name
            continue
        lr, decay = space
        assert lr.low == pytest.approx(method.config.lr / 10) and lr.high == pytest.approx(method.config.lr * 10), name
        assert (decay.low, decay.high) == (1e-4, 1e-1), name


def test_three_lr_trials_are_a_tenth_the_default_and_ten_times_it_default_first():
    space = search_space(build_method("sdpt"), ("lr",))
    default = build_method("sdpt").config.lr
    values = [t["lr"] for t in trial_values(space, 3)]
    assert values[0] == pytest.approx(default)
    assert sorted(values) == pytest.approx([default / 10, default, default * 10])


def test_two_fields_get_the_same_relative_points_for_every_method():
    def positions(name: str) -> list[tuple[float, float]]:
        method = build_method(name)
        space = search_space(method, ("lr", "weight_decay"))
        return [(round(math.log10(t["lr"] / space[0].low), 2), round(t["weight_decay"], 6)) for t in trial_values(space, 5)]

    assert positions("sdpt") == positions("lora") == positions("full")


def test_full_fine_tuning_moves_its_text_encoder_lr_with_its_lr():
    config = build_method("full").config
    tuned = with_values(config, {"lr": config.lr * 3})
    assert tuned.text_encoder_lr == pytest.approx(config.text_encoder_lr * 3)


@pytest.mark.parametrize("text", ["", "lr,lr", "num_tokens", "lr,momentum"])
def test_only_known_fields_can_be_tuned(text):
    with pytest.raises(BenchError, match="--tune"):
        parse_tuned_fields(text)


def test_every_method_gets_the_same_number_of_trials_and_zero_shot_none(cache, tmp_path):
    methods = ["zero-shot", "sdpt", "lora", "full", "sdpt-head"]
    inputs = prepare(tiny_request(methods, DATASETS, seeds=(0, 1, 2)), quiet_context(tmp_path, cache), tuned=True)
    trials = trial_cells(inputs, TuneRequest(("lr",), trials=4))
    per_method = {m: sum(c.spec.method == m for c in trials) for m in methods}
    assert per_method == {"zero-shot": 0, "sdpt": 8, "lora": 8, "full": 8, "sdpt-head": 8}  # 4 trials x 2 datasets
    assert all(c.spec.is_trial and c.spec.train_seed == 0 for c in trials)  # on the first replicate only
    assert [c.spec.method for c in untuned_cells(inputs)] == ["zero-shot"] * 2  # once per dataset, not per seed


def _trial_records(trials, scores):
    return {c.key: stored_record(c.spec, c.key, ap=score) for c, score in zip(trials, scores)}


def _validation_only(records):
    return {key: type(r)(r.key, r.spec, r.val, {}, r.best_step, r.cost, r.provenance) for key, r in records.items()}


def test_selection_picks_the_best_validation_score_per_dataset_or_per_suite(cache, tmp_path):
    inputs = prepare(tiny_request(["sdpt"], DATASETS), quiet_context(tmp_path, cache), tuned=True)
    tune = TuneRequest(("lr",), trials=3)
    trials = trial_cells(inputs, tune)
    lrs = {c.key: c.spec.tuned_values["lr"] for c in trials}
    order = sorted(set(lrs.values()))
    # shapes-colours prefers the largest lr, shapes-sizes the smallest; in the mean the smallest wins
    wanted = {"shapes-colours": order[2], "shapes-sizes": order[0]}
    scores = [0.5 if lrs[c.key] == wanted[c.spec.dataset] else (0.4 if c.spec.dataset == "shapes-colours" else 0.1)
              for c in trials]
    val = validation_scores(trials, _validation_only(_trial_records(trials, scores)))
    per_dataset, missing = select_settings(trials, val, tune)
    assert not missing
    assert {k[2]: s.values["lr"] for k, s in per_dataset.items()} == wanted
    per_suite, _ = select_settings(trials, val, TuneRequest(("lr",), trials=3, scope="suite"))
    assert [s.values["lr"] for s in per_suite.values()] == [order[0]]


def test_a_group_with_a_missing_trial_gets_no_selection(cache, tmp_path):
    inputs = prepare(tiny_request(["sdpt"], DATASETS[:1]), quiet_context(tmp_path, cache), tuned=True)
    tune = TuneRequest(("lr",), trials=3)
    trials = trial_cells(inputs, tune)
    val = validation_scores(trials, _validation_only(_trial_records(trials[:2], [0.3, 0.4])))
    selections, missing = select_settings(trials, val, tune)
    assert selections == {} and [c.key for c in missing] == [trials[2].key]


def test_selection_refuses_anything_but_validation_only_trials(cache, tmp_path):
    inputs = prepare(tiny_request(["sdpt"], DATASETS[:1]), quiet_context(tmp_path, cache), tuned=True)
    trials = trial_cells(inputs, TuneRequest(("lr",), trials=2))
    with_test = _trial_records(trials, [0.3, 0.4])  # records carrying test metrics
    with pytest.raises(BenchError, match="selection reads trials only"):
        validation_scores(trials, with_test)


@pytest.mark.slow
def test_a_tuned_sweep_never_opens_test_before_selecting(cache, tmp_path, capsys, monkeypatch):
    """Trials run and select with the test split unreadable; only the selected-setting cells need it."""
    import bench.runs.cell as cell_module

    opened = []
    real_open = cell_module.open_split

    def watching_open(dataset, split, *args, **kwargs):
        opened.append(split)
        return real_open(dataset, split, *args, **kwargs)

    monkeypatch.setattr(cell_module, "open_split", watching_open)
    results = tmp_path / "results"
    args = ["--methods", "zero-shot,sdpt,lora", "--datasets", DATASETS[0], "--protocol", "shapes", "--seeds", "0,1",
            "--tune", "lr", "--tune-trials", "2", "--results", str(results), "--cache-dir", str(cache), "--no-progress",
            *[a for k, v in TINY_PROTOCOL.items() for a in ("--protocol-set", f"{k}={json.dumps(v)}")]]
    assert main(args) == 0
    out = capsys.readouterr().out
    records, _ = RunStore(results / "runs").load_records()
    trials = [r for r in records if r.spec.is_trial]
    finals = [r for r in records if not r.spec.is_trial]
    assert len(trials) == 4 and all(r.test == {} and r.val for r in trials)  # 2 methods x 2 trials, val only
    assert sorted(r.spec.method for r in finals) == ["lora", "lora", "sdpt", "sdpt", "zero-shot"]
    for record in finals:
        assert "AP" in record.test
        if record.spec.method != "zero-shot":
            chosen = max((t for t in trials if t.spec.method == record.spec.method), key=lambda t: t.val["AP"])
            assert record.spec.tuning["values"] == chosen.spec.tuning["values"]
            assert record.spec.tuning["trials"] == 2 and record.spec.tuning["scope"] == "dataset"
            if record.spec.train_seed == 0:  # the trials' replicate: the winning trial's weights scored, not retrained
                assert record.val == chosen.val and record.best_step == chosen.best_step
    # the first cells opened (trials, and zero-shot) read test only for zero-shot
    assert opened.count("test") == len(finals)
    assert "selected sdpt on shapes-colours" in out
    assert main(args) == 0  # everything is stored: nothing runs again
    assert "running 0" in capsys.readouterr().out


def test_spec_of_a_trial_says_so():
    spec = RunSpec(model="glip-nano", method="sdpt", dataset="d", tuning={"stage": "trial", "values": {"lr": 0.1}})
    assert spec.is_trial and spec.tuned_values == {"lr": 0.1} and spec.method_label == "sdpt"
