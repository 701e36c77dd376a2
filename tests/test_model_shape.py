"""ModelShape from a config.json alone, checked against published numbers and against transformers' own modules.

The fixtures in tests/assets/configs/ are the published `config.json` files of the real targets (architecture
numbers only, no weights). Every shape is cross-checked against the model transformers builds on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2lcli.engine.base_model import ModelShape, read_config, shape_from_config
from t2lcli.errors import T2LError

CONFIGS = Path(__file__).parent / "assets" / "configs"
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# (fixture, model_type, layers, hidden, {module: (d_in, d_out)}) from the published architecture numbers
EXPECTED = [
    ("llama-3.1-8b-instruct", "llama", 32, 4096,
     {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
      "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096)}),
    ("mistral-7b-instruct-v0.2", "mistral", 32, 4096,
     {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
      "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096)}),
    ("gemma-2-2b-it", "gemma2", 26, 2304,
     {"q_proj": (2304, 2048), "k_proj": (2304, 1024), "v_proj": (2304, 1024), "o_proj": (2048, 2304),
      "gate_proj": (2304, 9216), "up_proj": (2304, 9216), "down_proj": (9216, 2304)}),
    ("qwen2.5-0.5b-instruct", "qwen2", 24, 896,
     {"q_proj": (896, 896), "k_proj": (896, 128), "v_proj": (896, 128), "o_proj": (896, 896),
      "gate_proj": (896, 4864), "up_proj": (896, 4864), "down_proj": (4864, 896)}),
    ("gemma-3-270m", "gemma3_text", 18, 640,
     {"q_proj": (640, 1024), "k_proj": (640, 256), "v_proj": (640, 256), "o_proj": (1024, 640),
      "gate_proj": (640, 2048), "up_proj": (640, 2048), "down_proj": (2048, 640)}),
    # multimodal Gemma-3: the decoder sits under text_config and omits keys that have defaults (8 heads, 4 KV, 256)
    ("gemma-3-4b-it", "gemma3_text", 34, 2560,
     {"q_proj": (2560, 2048), "k_proj": (2560, 1024), "v_proj": (2560, 1024), "o_proj": (2048, 2560),
      "gate_proj": (2560, 10240), "up_proj": (2560, 10240), "down_proj": (10240, 2560)}),
]


@pytest.mark.parametrize(("name", "mtype", "layers", "hidden", "dims"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_published_shapes(name, mtype, layers, hidden, dims):
    shape = shape_from_config(_config(name))
    assert (shape.model_type, shape.n_layers, shape.hidden_size) == (mtype, layers, hidden)
    assert {m: (s.d_in, s.d_out) for m, s in shape.modules.items()} == dims


def test_issue_examples_q_v():
    llama = shape_from_config(_config("llama-3.1-8b-instruct"), ["q_proj", "v_proj"])
    assert list(llama.modules) == ["q_proj", "v_proj"]
    assert (llama.modules["q_proj"].d_in, llama.modules["q_proj"].d_out) == (4096, 4096)
    assert (llama.modules["v_proj"].d_in, llama.modules["v_proj"].d_out) == (4096, 1024)
    assert llama.n_layers == 32
    gemma = shape_from_config(_config("gemma-2-2b-it"), ["q_proj", "v_proj"])
    assert (gemma.modules["q_proj"].d_in, gemma.modules["q_proj"].d_out) == (2304, 2048)
    assert (gemma.modules["v_proj"].d_in, gemma.modules["v_proj"].d_out) == (2304, 1024)
    assert gemma.n_layers == 26
    mistral = shape_from_config(_config("mistral-7b-instruct-v0.2"), ["q_proj", "v_proj"])
    assert mistral.to_dict()["modules"] == llama.to_dict()["modules"] and mistral.n_layers == 32


def test_peft_keys():
    shape = shape_from_config(_config("llama-3.1-8b-instruct"))
    assert shape.peft_key("q_proj", 3, "A") == "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    assert shape.peft_key("down_proj", 31, "B") == "base_model.model.model.layers.31.mlp.down_proj.lora_B.weight"
    mm = shape_from_config(_config("gemma-3-4b-it"))
    assert mm.peft_key("v_proj", 0, "B") == "base_model.model.model.language_model.layers.0.self_attn.v_proj.lora_B.weight"


@pytest.mark.parametrize("name", [e[0] for e in EXPECTED])
def test_matches_model_built_on_meta_device(name):
    """Every module path and in/out size equals the nn.Linear transformers builds from the same config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = _config(name)
    shape = shape_from_config(raw)
    cfg = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for layer in range(shape.n_layers):
        for mod in ALL_MODULES:
            path = shape.modules[mod].path.format(l=layer)
            assert path in linears, f"{name}: {path} is not a Linear in {type(model).__name__}"
            lin = linears[path]
            assert (lin.in_features, lin.out_features) == (shape.modules[mod].d_in, shape.modules[mod].d_out), path
    # and no decoder layer was missed: the layer count equals the model's
    decoder_q = [n for n in linears if n.endswith("self_attn.q_proj") and "vision" not in n]
    assert len(decoder_q) == shape.n_layers


def test_round_trip_and_restrict(tiny_base_dir):
    shape = shape_from_config(read_config(tiny_base_dir))
    assert shape.n_layers == 2 and shape.modules["q_proj"].d_in == 32 and shape.modules["v_proj"].d_out == 16
    again = ModelShape.from_dict(json.loads(json.dumps(shape.to_dict())))
    assert again == shape
    with pytest.raises(T2LError, match="no module"):
        shape.restrict(["q_proj", "w_proj"])


def test_bad_configs(tmp_path):
    with pytest.raises(T2LError, match="unsupported model type 'bert'"):
        shape_from_config({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8})
    with pytest.raises(T2LError, match="non-numeric"):
        shape_from_config({"model_type": "llama", "hidden_size": "wide", "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 8})
    with pytest.raises(T2LError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(T2LError, match="cannot read"):
        read_config(tmp_path)


def test_defaults_filled_from_the_config_class():
    """A config that leaves sizes to transformers' defaults gets the same numbers transformers would build."""
    cfg = _config("gemma-2-2b-it")
    del cfg["head_dim"], cfg["num_key_value_heads"]  # Gemma2Config defaults: head_dim 256 (not 2304 / 8), 4 KV heads
    shape = shape_from_config(cfg, ["q_proj", "v_proj"])
    assert (shape.modules["q_proj"].d_out, shape.modules["v_proj"].d_out) == (2048, 1024)


def test_complete_configs_need_no_transformers():
    """Generation's cold start stays free of transformers when config.json spells out the sizes."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from t2lcli.engine.base_model import shape_from_config\n"
        f"for name in {['llama-3.1-8b-instruct', 'mistral-7b-instruct-v0.2', 'gemma-2-2b-it', 'qwen2.5-0.5b-instruct', 'gemma-3-270m']!r}:\n"
        f"    shape_from_config(json.load(open({str(CONFIGS)!r} + '/' + name + '.json')))\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
