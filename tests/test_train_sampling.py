"""Task sampling weights (issue #22, second round): label tasks (classification-like answers) can be drawn less
often than generation tasks. `data.label_task_weight` 1 (the default) draws exactly as before the option existed,
0 leaves label tasks out; the detection and the weighted draw are tested on the tiny data of test_train.py."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from test_train import tiny_data, train_base_dir, write_recipe  # noqa: F401  (module fixtures)


def _tasks(n: int):
    from t2lcli.engine.data import Task

    return [Task(f"t{i}", "", ["d"], [{"input": str(j), "output": [str(j)]} for j in range(10)]) for i in range(n)]


def test_label_tasks_are_the_ones_a_few_answers_cover():
    from t2lcli.engine.data import is_label_task

    assert is_label_task(["Yes", "No"] * 50)
    assert is_label_task([str(i % 14) for i in range(800)])  # 14 classes
    assert not is_label_task([f"a sentence number {i}" for i in range(800)])
    assert not is_label_task([])
    # 20 answers covering 85% of 200: not a label task at the 90% bar
    assert not is_label_task([str(i % 20) for i in range(170)] + [f"free text {i}" for i in range(30)])


def test_uniform_weights_draw_exactly_as_without_weights():
    """weights of 1 (the default recipe) must not change a seeded run's batches: the shipped default reproduces."""
    from t2lcli.engine.data import HierarchicalSampler

    tasks = _tasks(9)
    a = HierarchicalSampler(tasks, 4, 1, 0.8, 0.9, seed=3)
    b = HierarchicalSampler(tasks, 4, 1, 0.8, 0.9, seed=3, weights=[1.0] * 9)
    first = [i for i, *_ in a.sample()]
    assert first == random.Random(3).sample(range(9), 4)  # the draw the sampler always made
    assert [i for i, *_ in b.sample()] == first
    for _ in range(20):
        assert [i for i, *_ in a.sample()] == [i for i, *_ in b.sample()]


def test_weighted_draw_follows_the_weights_and_resumes():
    from t2lcli.engine.data import HierarchicalSampler

    tasks = _tasks(10)
    weights = [0.0, 0.0, 0.25, 0.25] + [1.0] * 6
    s = HierarchicalSampler(tasks, 3, 1, 0.8, 0.9, seed=0, weights=weights)
    counts: Counter[int] = Counter()
    for _ in range(2000):
        picks = [i for i, *_ in s.sample()]
        assert len(set(picks)) == 3  # without replacement within a step
        counts.update(picks)
    assert counts[0] == counts[1] == 0  # weight 0: left out while enough tasks have a positive weight
    low, high = (counts[2] + counts[3]) / 2, sum(counts[i] for i in range(4, 10)) / 6
    assert 0.1 < low / high < 0.5, (low, high)  # drawn far less often (exact ratio depends on n; ~0.28 here)
    state = s.state()
    first = [[i for i, *_ in s.sample()] for _ in range(5)]
    s.set_state(state)
    assert [[i for i, *_ in s.sample()] for _ in range(5)] == first
    with pytest.raises(ValueError):
        HierarchicalSampler(tasks, 3, 1, 0.8, 0.9, seed=0, weights=[1.0])


def test_trainer_finds_label_tasks_and_weight_zero_leaves_them_out(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for
    from t2lcli.engine.train import Trainer
    from t2lcli.hardware import ComponentSettings
    from t2lcli.recipe import load_recipe

    # the tiny tasks: first/last word (10 distinct answers) and count (3) are label tasks, reverse is not
    over = {"data.label_task_weight": 0.0, "train.n_tasks_per_step": 1, "train.steps": 2, "log.val_every": 0}
    path = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **over)
    model, tok = load_base_model(str(train_base_dir), ComponentSettings(device="cpu", dtype="float32", attn_implementation="sdpa"))
    tr = Trainer(load_recipe(str(path)), tmp_path / "o", model, tok, TextEncoder(encoder_spec_for(str(tiny_encoder_dir))))
    assert tr.label_tasks == ["task002_first", "task003_last", "task004_count"]
    names = {tr.tasks[i].name for _ in range(30) for i, *_ in tr.sampler.sample()}
    assert names == {"task001_reverse"}
    res = runner.invoke(cli_app, ["train", str(path), "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "run" / "final" / "t2l_config.json").read_text())["training"]
    assert prov["label_tasks"] == tr.label_tasks and prov["recipe"]["data"]["label_task_weight"] == 0.0
    bad = write_recipe(tmp_path / "b.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **{"data.label_task_weight": 1.5})
    res = runner.invoke(cli_app, ["train", str(bad), "-o", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "label_task_weight" in res.output and "Traceback" not in res.output
