"""Issue 11 (6): the untrusted-files policy of README "Untrusted files", checked file type by file type: nothing a
downloaded file contains is ever executed, and refusing it is one clear line.

(Crafted hypermod.pt pickles and YAML python tags: tests/test_official.py and tests/test_hardening_fuzz.py.)
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml


class _Touch:
    """Unpickling this creates `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(res, *needles: str) -> str:
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def custom_code_base(tiny_base_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny base, but its config asks for the repository's own Python (auto_map), which would create a marker."""
    folder = tmp_path / "custom_code_base"
    shutil.copytree(tiny_base_dir, folder)
    marker = tmp_path / "CODE_RAN"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "customllama"
    cfg["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaConfig\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'customllama'\n")
    (folder / "modeling_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaForCausalLM\n"
        "from .configuration_custom import CustomConfig\nclass CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    return folder, marker


def test_base_model_code_never_runs_even_when_stdin_says_yes(custom_code_base, tmp_path):
    """transformers asks "run the custom code? [y/N]" on stdin when trust_remote_code is left unset; a piped "y" would
    run it. t2l passes trust_remote_code=False for base models, so there is no prompt and nothing runs."""
    folder, marker = custom_code_base
    code = "from t2lcli.engine.base_model import load_base_model\nload_base_model(__import__('sys').argv[1])\n"
    env = {**os.environ, "T2L_LOAD_PLUGINS": "", "T2L_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", code, str(folder)], input="y\ny\ny\n", capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "T2LError" in res.stderr and "custom code" in res.stderr
    assert "Do you wish to run the custom code" not in res.stdout + res.stderr
    assert not marker.exists(), "the model folder's code ran"


def test_preview_with_a_checkpoint_naming_a_custom_code_base(runner, cli_app, custom_code_base, tiny_checkpoint_dir, tmp_path):
    """A checkpoint's base_model field (file content) points at a folder with code: --preview refuses it."""
    folder, marker = custom_code_base
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint_dir, ck)
    meta = json.loads((ck / "t2l_config.json").read_text())
    meta["base_model"] = str(folder)
    (ck / "t2l_config.json").write_text(json.dumps(meta))
    res = runner.invoke(cli_app, ["generate", "Answer math.", "-c", str(ck), "-o", str(tmp_path / "a"), "--preview", "hi"], input="y\ny\n")
    _one_line(res, "custom code")
    assert not marker.exists()


def test_training_recipe_naming_a_custom_code_base(runner, cli_app, custom_code_base, tiny_encoder_dir, tmp_path):
    folder, marker = custom_code_base
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(folder), "encoder": str(tiny_encoder_dir), "train": {"steps": 1}}))
    _one_line(runner.invoke(cli_app, ["train", str(recipe), "-o", str(tmp_path / "run")], input="y\n"), "custom code")
    assert not marker.exists()


def test_pickle_adapter_bin_is_never_read(runner, cli_app, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    marker = tmp_path / "PICKLE_RAN"
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    with open(folder / "adapter_model.bin", "wb") as fh:
        pickle.dump({"base_model.model.x.lora_A.weight": _Touch(marker)}, fh)
    cases = {"inspect": (["inspect", str(folder)], "is not an adapter or a checkpoint"),
             "merge": (["merge", str(folder), "-o", str(tmp_path / "out"), "--export", "vllm"], "adapter_model.bin is not read: pickle")}
    for args, needle in cases.values():
        _one_line(runner.invoke(cli_app, args), needle)
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_npy_embeddings_with_objects_are_refused(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    marker = tmp_path / "NPY_RAN"
    path = tmp_path / "emb.npy"
    np.save(path, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    res = runner.invoke(cli_app, ["generate", "--embedding-file", str(path), "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "a")])
    _one_line(res, "cannot read", "emb.npy")
    assert not marker.exists() and not (tmp_path / "a").exists()


def test_trainer_state_files_are_read_without_running_code(tmp_path):
    """trainer_state.pt / net.pt / embeddings.pt of a run folder: weights_only; a hostile or damaged one is a T2LError."""
    import torch

    from t2lcli.engine.train import _load_pt
    from t2lcli.errors import T2LError

    marker = tmp_path / "STATE_RAN"
    evil = tmp_path / "trainer_state.pt"
    torch.save({"step": 3, "optimizer": _Touch(marker)}, evil)
    with pytest.raises(T2LError, match="refused"):
        _load_pt(evil)
    assert not marker.exists()
    good = tmp_path / "net.pt"
    torch.save({"w": torch.zeros(2)}, good)
    good.write_bytes(good.read_bytes()[:50])
    with pytest.raises(T2LError, match="damaged or truncated"):
        _load_pt(good)
