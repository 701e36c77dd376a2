"""`t2l merge`: into the base, combinations (scale-correct with rsLoRA), description mixing, runtime exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from numeric import TINY_LLAMA_DEPTH, assert_close, close

PROMPT_IDS = [[1, 17, 42, 99, 5, 63, 120, 7, 33]]


# --------------------------------------------------------------------------------------------- helpers


def make_adapter(base_dir: Path, out: Path, r: int, seed: int, modules=("q_proj", "v_proj"), rslora: bool = True,
                 alpha: float = 16.0, base_name: str | None = None, amp: float = 0.3) -> Path:
    """A random (non-zero) PEFT adapter for the tiny base, written with t2l's own writer."""
    from t2lcli.engine.adapters import Adapter, peft_config, save_adapter
    from t2lcli.engine.base_model import read_config, shape_from_config

    shape = shape_from_config(read_config(base_dir), list(modules))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m in modules:
        s = shape.modules[m]
        for layer in range(shape.n_layers):
            tensors[shape.peft_key(m, layer, "A")] = torch.randn(r, s.d_in, generator=g) * amp
            tensors[shape.peft_key(m, layer, "B")] = torch.randn(s.d_out, r, generator=g) * amp
    cfg = peft_config(r, alpha, list(modules), base_name or str(base_dir), use_rslora=rslora)
    return save_adapter(Adapter(cfg, tensors, {"description": f"random adapter {seed}"}), out)


def base_logits(base_dir: Path, state_update=None, ids=None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    if state_update is not None:
        sd = model.state_dict()
        with torch.no_grad():
            for k, d in state_update.items():
                sd[k].add_(d)
    with torch.no_grad():
        return model(torch.tensor(ids or PROMPT_IDS)).logits


def peft_logits(base_dir: Path, adapter_dir: Path, ids=None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(torch.tensor(ids or PROMPT_IDS)).logits


def deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """{base weight key: scaling · B @ A} of an adapter folder."""
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(adapter_dir)
    return {p[len("base_model.model."):] + ".weight": ad.delta(p) for p in ad.prefixes()}


def no_temp_left(parent: Path) -> bool:
    return not any(p.name.startswith(".t2l-tmp-") for p in parent.iterdir())


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("merge_src")
    return {
        "a8": make_adapter(tiny_base_dir, d / "a8", r=8, seed=1),
        "b4": make_adapter(tiny_base_dir, d / "b4", r=4, seed=2),
        "c8": make_adapter(tiny_base_dir, d / "c8", r=8, seed=3),
        "qkv": make_adapter(tiny_base_dir, d / "qkv", r=4, seed=4, modules=("q_proj", "k_proj", "v_proj")),
        "r16": make_adapter(tiny_base_dir, d / "r16", r=16, seed=5),
        "plain": make_adapter(tiny_base_dir, d / "plain", r=8, seed=6, rslora=False, alpha=32.0),
    }


# --------------------------------------------------------------------------------------------- into the base


def test_into_base_matches_peft_and_streams_shards(runner, cli_app, tmp_path, tiny_base_dir, adapters):
    out = tmp_path / "merged"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--into-base", "-o", str(out), "--max-shard-size", "30KB", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["kind"] == "merged-model" and info["merged_modules"] == 4
    assert math.isclose(info["effective_scale"], 16 / math.sqrt(8), rel_tol=1e-9)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == info["shards"] > 1  # several shards: streamed one at a time
    for s in shards:
        assert (out / s).is_file()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (out / f).is_file(), f
    card = (out / "README.md").read_text()
    assert "5.65685" in card and "use_rslora=True" in card and str(adapters["a8"].resolve()) in card

    merged = base_logits(out)
    via_peft = peft_logits(tiny_base_dir, adapters["a8"])
    base = base_logits(tiny_base_dir)
    assert (via_peft - base).abs().max() > 1e-2  # the adapter really changes the output
    assert_close(merged, via_peft, depth=TINY_LLAMA_DEPTH)  # W + ΔW vs. the adapter hook: other sums


def test_into_base_reads_a_sharded_base_and_writes_profile_or_flag_dtype(runner, cli_app, tmp_path, tiny_base_dir, adapters):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded_base"
    AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)).save_pretrained(sharded, max_shard_size="40KB")
    AutoTokenizer.from_pretrained(str(tiny_base_dir)).save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    out = tmp_path / "m16"
    res = runner.invoke(cli_app, ["merge", str(adapters["plain"]), "--into-base", "--base-model", str(sharded), "--dtype", "bf16", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    shard = sorted(out.glob("model-*.safetensors"))[0]
    with safe_open(str(shard), framework="pt") as fh:
        assert all(fh.get_slice(k).get_dtype() == "BF16" for k in fh.keys())
    # the exact fp32 merge of the non-rsLoRA adapter (scale alpha/r = 4), compared in bf16
    ref = base_logits(tiny_base_dir, deltas(adapters["plain"]))
    merged = base_logits(out)
    assert (merged - ref).abs().max() < 0.05


def test_into_base_finds_text_layers_under_another_prefix(tmp_path, tiny_base_dir, adapters):
    """Multimodal checkpoints keep the text decoder under e.g. model.language_model.layers.N; the adapter still fits."""
    import shutil

    from safetensors.torch import load_file, save_file

    from t2lcli.engine.adapters import load_adapter
    from t2lcli.engine.merge.into_base import merge_into_base

    mm = tmp_path / "mm"
    shutil.copytree(tiny_base_dir, mm)
    sd = load_file(str(mm / "model.safetensors"))
    save_file({k.replace("model.layers.", "model.language_model.layers."): v for k, v in sd.items()}, str(mm / "model.safetensors"))
    merge_into_base(load_adapter(adapters["a8"]), str(mm), tmp_path / "out", dtype="float32", progress=False)
    out = {}
    for f in (tmp_path / "out").glob("model-*.safetensors"):
        out.update(load_file(str(f)))
    d = deltas(adapters["a8"])
    key = "model.language_model.layers.1.self_attn.v_proj.weight"
    assert_close(out[key], sd["model.layers.1.self_attn.v_proj.weight"] + d["model.layers.1.self_attn.v_proj.weight"])
    # bitwise: a weight no adapter touches is copied
    assert torch.equal(out["model.language_model.layers.1.self_attn.k_proj.weight"], sd["model.layers.1.self_attn.k_proj.weight"])


# --------------------------------------------------------------------------------------------- combinations


def test_linear_of_one_adapter_with_weight_one_is_the_adapter(runner, cli_app, tmp_path, tiny_base_dir, adapters):
    out = tmp_path / "lin1"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--method", "linear", "--weights", "1.0", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["lora_alpha"] == cfg["r"] == 8 and isinstance(cfg["lora_alpha"], int)
    src, new = deltas(adapters["a8"]), deltas(out)
    for k in src:
        assert_close(new[k], src[k], depth=2, msg=k)
    assert_close(peft_logits(tiny_base_dir, out), peft_logits(tiny_base_dir, adapters["a8"]), depth=TINY_LLAMA_DEPTH)


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_rslora_sources_combine_to_the_weighted_sum_of_their_deltas(runner, cli_app, tmp_path, tiny_base_dir, adapters, method):
    """The peft add_weighted_adapter case: rsLoRA sources of different ranks; the result must not be sqrt(r) off."""
    out = tmp_path / method
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(adapters["b4"]), "--weights", "0.6,0.4", "--method", method,
                                  "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["lora_alpha"] == cfg["r"]
    if method == "cat":
        assert cfg["r"] == 12
    d1, d2, got = deltas(adapters["a8"]), deltas(adapters["b4"]), deltas(out)
    expected = {k: 0.6 * d1[k] + 0.4 * d2[k] for k in d1}
    for k in expected:
        assert_close(got[k], expected[k], depth=2, msg=k)
    # the forward pass in peft equals the base with the weighted sum of the individual deltas added
    assert_close(peft_logits(tiny_base_dir, out), base_logits(tiny_base_dir, expected), depth=TINY_LLAMA_DEPTH)
    card = (out / "README.md").read_text()
    assert "Provenance" in card and "0.6" in card and str(adapters["b4"].resolve()) in card


def test_svd_truncates_to_rank_and_reports_the_error(runner, cli_app, tmp_path, adapters):
    out = tmp_path / "svd8"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(adapters["c8"]), "--method", "svd", "--rank", "8", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert 0.05 < info["max_relative_error"] < 1.0  # two independent rank-8 deltas cannot fit in rank 8
    d1, d2, got = deltas(adapters["a8"]), deltas(adapters["c8"]), deltas(out)
    for k in d1:
        target = 0.5 * d1[k] + 0.5 * d2[k]
        u, s, vh = torch.linalg.svd(target.double())
        best = (u[:, :8] * s[:8]) @ vh[:8]  # Eckart-Young optimum
        assert_close(got[k].double(), best, dtype=torch.float32, depth=20, msg=k)  # fp32 SVD vs. a float64 reference
    # at rank = sum of ranks (16 = v_proj's output size), svd is exact
    out16 = tmp_path / "svd16"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(adapters["c8"]), "--method", "svd", "--rank", "16", "-o", str(out16), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["max_relative_error"] < 1e-6


def test_ties_and_dare(runner, cli_app, tmp_path, adapters):
    from t2lcli.engine.merge.algebra import dare_merge, ties_merge

    # TIES by hand: trim keeps each one's top half (t1: 4, 2; t2: 3, -5); at [1,0] the sum 2-5 elects '-', so t1's 2 is
    # dropped; at [0,0] only t1 survives. Without trimming, agreeing entries get a w-weighted mean: (1·4 + 3·2) / 4 = 2.5
    t1 = torch.tensor([[4.0, -1.0], [2.0, 0.1]])
    t2 = torch.tensor([[2.0, 3.0], [-5.0, 0.2]])
    assert_close(ties_merge([t1, t2], [1.0, 1.0], density=0.5), torch.tensor([[4.0, 3.0], [-5.0, 0.0]]))
    assert_close(ties_merge([t1, t2], [1.0, 3.0], density=1.0), torch.tensor([[2.5, 3.0], [-5.0, (0.1 + 0.6) / 4]]))
    # DARE with density 1 is the weighted sum; with a seed it is reproducible
    assert_close(dare_merge([t1, t2], [0.5, 0.5], 1.0, seed=0, salt=0), 0.5 * t1 + 0.5 * t2)
    big = [torch.randn(64, 64), torch.randn(64, 64)]
    # bitwise: the same seed in one process draws the same mask; another seed another mask
    assert torch.equal(dare_merge(big, [1, 1], 0.5, 3, 0), dare_merge(big, [1, 1], 0.5, 3, 0))
    assert not torch.equal(dare_merge(big, [1, 1], 0.5, 3, 0), dare_merge(big, [1, 1], 0.5, 4, 0))

    # one source, density 1, weight 1, rank r: ties and dare give back the source ΔW
    for method in ("ties", "dare"):
        out = tmp_path / method
        res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--method", method, "--density", "1.0", "--weights", "1", "-o", str(out)])
        assert res.exit_code == 0, res.output
        src, got = deltas(adapters["a8"]), deltas(out)
        for k in src:
            assert_close(got[k], src[k], depth=2, msg=f"{method} {k}")
    out = tmp_path / "ties3"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(adapters["b4"]), str(adapters["c8"]), "--method", "ties",
                                  "--weights", "0.5,0.3,0.2", "--rank", "4", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["density"] == 0.2
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


# --------------------------------------------------------------------------------------------- descriptions


def test_mixing_descriptions_in_task_space(runner, cli_app, tmp_path, tiny_checkpoint_dir):
    from t2lcli.engine.adapters import load_adapter
    from t2lcli.engine.generate import Generator

    d1, d2 = "answer math word problems step by step", "translate english to french"
    gen = Generator.load(str(tiny_checkpoint_dir))
    ref1, ref2 = gen.generate([d1, d2])

    out = tmp_path / "w10"
    res = runner.invoke(cli_app, ["merge", "-c", str(tiny_checkpoint_dir), "-d", d1, "-d", d2, "--weights", "1,0", "-o", str(out)])
    assert res.exit_code == 0, res.output
    got = load_adapter(out)
    assert got.config["use_rslora"] is True and got.config["r"] == ref1.config["r"]
    for k in ref1.tensors:
        assert_close(got.tensors[k], ref1.tensors[k], depth=10, msg=k)  # a batch of 2 vs. alone: other shapes

    out = tmp_path / "mix"
    res = runner.invoke(cli_app, ["merge", "-c", str(tiny_checkpoint_dir), "-d", d1, "-d", d2, "--weights", "0.7,0.3", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    mix = load_adapter(out)
    # equals the hypernetwork run on the weighted mean of the two task codes z
    net = gen.ckpt.hypernet
    with torch.no_grad():
        z = net.encode(gen.embed([d1, d2]))
        zm = 0.7 * z[0:1] + 0.3 * z[1:2]
        for m in net.config.target_modules:
            a, b = net.generate_module(zm, m)
            key = gen.ckpt.shape.peft_key(m, 1, "A")
            assert_close(mix.tensors[key], a[0, 1], depth=10, msg=key)
    p = next(iter(ref1.prefixes()))
    assert not close(mix.delta(p), ref1.delta(p), depth=10) and not close(mix.delta(p), ref2.delta(p), depth=10)
    card = (out / "README.md").read_text()
    assert "task-encoder output z" in card and d1 in card and d2 in card


# --------------------------------------------------------------------------------------------- exports


def test_export_vllm_folds_the_scale_and_prints_the_command(runner, cli_app, tmp_path, tiny_base_dir, adapters):
    out = tmp_path / "serve-a8"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--export", "vllm", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["lora_alpha"] == 8 and cfg["modules_to_save"] is None
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as fh:
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in fh.keys())
    assert f"vllm serve {tiny_base_dir} --enable-lora --lora-modules serve-a8={out.resolve()} --max-lora-rank 8" in res.stdout
    assert_close(peft_logits(tiny_base_dir, out), peft_logits(tiny_base_dir, adapters["a8"]), depth=TINY_LLAMA_DEPTH)
    assert "effective_scale" in (out / "README.md").read_text()

    res = runner.invoke(cli_app, ["merge", str(adapters["b4"]), "--export", "vllm", "--max-lora-rank", "16", "--runtime-base", "org/model",
                                  "--name", "b", "-o", str(tmp_path / "b4v")])
    assert res.exit_code == 0, res.output
    assert "vllm serve org/model --enable-lora --lora-modules b=" in res.stdout and res.stdout.strip().endswith("--max-lora-rank 16")

    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--export", "sglang", "-o", str(tmp_path / "sg")])
    assert res.exit_code == 0, res.output
    assert "python -m sglang.launch_server --model-path" in res.stdout and "--lora-paths sg=" in res.stdout
    assert "--lora-target-modules q_proj v_proj" in res.stdout


def test_export_rank_over_the_runtime_limit_is_refused_with_the_svd_hint(runner, cli_app, tmp_path, adapters):
    out = tmp_path / "too-big"
    res = runner.invoke(cli_app, ["merge", str(adapters["r16"]), "--export", "vllm", "--max-lora-rank", "8", "-o", str(out)])
    assert res.exit_code == 1
    assert "rank 16 is over vLLM's max_lora_rank 8" in res.stderr and "--method svd --rank 8" in res.stderr
    assert "Traceback" not in res.output and not out.exists() and no_temp_left(tmp_path)
    # the suggested fix works
    res = runner.invoke(cli_app, ["merge", str(adapters["r16"]), "--method", "svd", "--rank", "8", "--export", "vllm", "--max-lora-rank", "8", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--export", "vllm", "--max-lora-rank", "10", "-o", str(tmp_path / "x")])
    assert res.exit_code == 1 and "not a value vLLM accepts" in res.stderr


def test_export_llamacpp_gguf_reads_back_equal_to_the_source(runner, cli_app, tmp_path, tiny_base_dir, adapters):
    import gguf

    from t2lcli.engine.adapters import load_adapter
    from t2lcli.engine.merge.export import permute_rows

    out = tmp_path / "gg"
    res = runner.invoke(cli_app, ["merge", str(adapters["qkv"]), "--export", "llamacpp", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"llama-cli -m BASE.gguf --lora {(out / 'adapter.gguf').resolve()}" in res.stdout
    reader = gguf.GGUFReader(str(out / "adapter.gguf"))

    def kv(key):
        f = reader.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0]

    assert kv("general.type") == "adapter" and kv("adapter.type") == "lora" and kv("general.architecture") == "llama"
    assert kv("adapter.lora.alpha") == 4.0
    src = load_adapter(adapters["qkv"])
    s = src.scaling
    tensors = {t.name: t for t in reader.tensors}
    n_head, n_kv = 4, 2  # the tiny Llama
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v"}
    assert len(tensors) == 2 * 3 * 2
    for layer in range(2):
        for mod, gname in names.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            a, b = src.tensors[f"{prefix}.lora_A.weight"], src.tensors[f"{prefix}.lora_B.weight"]
            ta, tb = tensors[f"blk.{layer}.{gname}.weight.lora_a"], tensors[f"blk.{layer}.{gname}.weight.lora_b"]
            # ggml ne order: lora_a [d_in, r], lora_b [r, d_out] -> checked by llama.cpp against the base tensor
            assert list(ta.shape) == [a.shape[1], a.shape[0]] and list(tb.shape) == [b.shape[1], b.shape[0]]
            assert torch.equal(torch.from_numpy(ta.data.copy()), a)  # bitwise: A is written as it is
            expected_b = s * b
            if mod != "v_proj":
                expected_b = permute_rows(expected_b, n_head if mod == "q_proj" else n_kv)
            assert_close(torch.from_numpy(tb.data.copy()), expected_b, msg=f"{layer} {mod}")
    # permuting B's rows permutes ΔW's rows exactly like llama.cpp permutes the base W
    b, a = src.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"], src.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert_close(permute_rows(b, n_head) @ a, permute_rows(b @ a, n_head))
    eye = permute_rows(torch.eye(32), n_head)
    assert torch.equal(eye.sum(0), torch.ones(32)) and torch.equal(eye.sum(1), torch.ones(32))  # a permutation
    # head 0 (rows 0..7): HF order [0,1,2,3 | 4,5,6,7] -> llama.cpp pairs (0,4),(1,5),...
    assert eye[:8].argmax(1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_export_ollama_writes_modelfile(runner, cli_app, tmp_path, adapters):
    out = tmp_path / "ol"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--export", "ollama", "-o", str(out)])
    assert res.exit_code == 1 and "--runtime-base" in res.stderr and not out.exists()
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--export", "ollama", "--runtime-base", "/models/base.gguf", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "Modelfile").read_text() == "FROM /models/base.gguf\nADAPTER ./adapter.gguf\n"
    assert (out / "adapter.gguf").is_file() and "ollama create ol -f" in res.stdout


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "average"], "unknown method 'average'"),
        (["--weights", "0.5,0.3,0.2"], "--weights has 3 value(s) but there are 2 adapters"),
        (["--weights", "0,0"], "all weights are zero"),
        (["--weights", "abc,1"], "'abc' is not a number"),
        (["--method", "ties", "--weights", "-1,0.5"], "must be >= 0"),
        (["--method", "cat", "--rank", "4"], "--rank does not apply to --method cat"),
        (["--density", "0.5"], "--density applies only to --method ties or dare"),
        (["--export", "tgi"], "unknown export target 'tgi'"),
        (["--into-base", "--export", "vllm"], "choose one of --into-base and --export"),
        (["--dtype", "bf16"], "--dtype applies only to --into-base"),
        (["--max-lora-rank", "16"], "apply only to --export"),
    ],
)
def test_bad_combinations_fail_cleanly(runner, cli_app, tmp_path, adapters, extra, message):
    out = tmp_path / "out"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(adapters["c8"]), "-o", str(out), *extra])
    assert res.exit_code == 2, res.output  # flag values and combinations: usage errors, checked before torch is imported
    assert message in res.stderr and "Traceback" not in res.output
    assert res.stderr.count("error:") == 1
    assert not out.exists() and no_temp_left(tmp_path)


def test_different_bases_or_modules_are_refused(runner, cli_app, tmp_path, tiny_base_dir, adapters):
    other = make_adapter(tiny_base_dir, tmp_path / "other", r=8, seed=9, base_name="some-org/other-model")
    out = tmp_path / "out"
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(other), "-o", str(out)])
    assert res.exit_code == 1 and "different base models" in res.stderr and not out.exists()
    # asserting the same base explicitly is allowed (shapes are still checked)
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(other), "--base-model", str(tiny_base_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), str(adapters["qkv"]), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "target different modules" in res.stderr and not (tmp_path / "o2").exists()


def test_existing_output_and_empty_requests(runner, cli_app, tmp_path, tiny_checkpoint_dir, adapters):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for args in (["--into-base"], ["--export", "vllm"], [str(adapters["c8"])]):
        res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), *args, "-o", str(out)])
        assert res.exit_code == 1 and "output already exists" in res.stderr
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "-o", str(tmp_path / "n")])
    assert res.exit_code == 2 and "nothing to do with one adapter" in res.stderr  # flags alone: usage errors
    res = runner.invoke(cli_app, ["merge", "-c", str(tiny_checkpoint_dir), "-d", "solve math", "-d", "translate", "--weights", "0,0", "-o", str(tmp_path / "d")])
    assert res.exit_code == 2 and "positive total" in res.stderr and not (tmp_path / "d").exists()
    res = runner.invoke(cli_app, ["merge", "-o", str(tmp_path / "e")])
    assert res.exit_code == 2 and "nothing to merge" in res.stderr
    res = runner.invoke(cli_app, ["merge", str(adapters["a8"]), "--into-base", "--base-model", str(tmp_path / "nope"), "-o", str(tmp_path / "f")])
    assert res.exit_code == 1 and "not found" in res.stderr and not (tmp_path / "f").exists()


# --------------------------------------------------------------------------------------------- real SmolLM2


@pytest.mark.slow
def test_smollm2_into_base_matches_peft_and_gguf_q_permutation(tmp_path, monkeypatch):
    """Real SmolLM2-135M: merged logits == peft logits; our Q/K row permutation matches the packaged llama.cpp GGUF."""

    from conftest import REAL_T2L_HOME

    monkeypatch.setenv("T2L_HOME", REAL_T2L_HOME)
    from t2lcli.engine.base_model import gguf_source, resolve_model
    from t2lcli.engine.merge.export import permute_rows
    from t2lcli.engine.merge.into_base import merge_into_base
    from t2lcli.registry import lookup

    base = resolve_model("smollm2-135m-instruct")
    src = make_adapter(base, tmp_path / "ad", r=8, seed=11, amp=0.05, base_name="smollm2-135m-instruct")
    from t2lcli.engine.adapters import load_adapter

    merge_into_base(load_adapter(src), None, tmp_path / "merged", dtype="float32", max_shard_bytes=200_000_000, progress=False)
    assert len(list((tmp_path / "merged").glob("model-*.safetensors"))) == 3
    merged = base_logits(tmp_path / "merged")
    ref = peft_logits(base, src)
    plain = base_logits(base)
    assert (ref - plain).abs().max() > 0.05
    assert (merged - ref).abs().max() < 1e-3, (merged - ref).abs().max()

    # the q/k permutation we apply to lora_b is the one llama.cpp applied to the base's own q/k weights
    import gguf
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(gguf_source(lookup("smollm2-135m-instruct"))))
    t = {x.name: x for x in reader.tensors}
    with safe_open(str(next(base.glob("*.safetensors"))), framework="pt") as fh:
        for name, key, heads in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
                                 ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3)):
            hf = fh.get_tensor(key).float()
            gg = torch.from_numpy(gguf.quants.dequantize(t[name].data, t[name].tensor_type).copy()).reshape(hf.shape)
            assert (permute_rows(hf, heads) - gg).abs().max() < 2e-2
            assert (hf - gg).abs().max() > 0.1  # and the unpermuted weight does not match


@pytest.mark.slow
def test_llamacpp_runtime_applies_the_gguf_export(runner, cli_app, tmp_path, monkeypatch):
    """Real llama.cpp (the probe in tests/tools, built against llama.cpp; path in T2L_LLAMA_PROBE) loads t2l's GGUF
    adapter on the packaged Q4_1 SmolLM2 and shifts the logits like peft does on the HF weights; two wrong exports
    (no q/k permutation; rsLoRA scale ignored) are measurably worse, so the comparison can tell them apart."""
    import os
    import subprocess

    import numpy as np

    probe = os.environ.get("T2L_LLAMA_PROBE")
    if not probe or not Path(probe).is_file():
        pytest.skip("set T2L_LLAMA_PROBE to a built tests/tools/llama_lora_logits (needs a llama.cpp build)")
    from conftest import REAL_T2L_HOME

    monkeypatch.setenv("T2L_HOME", REAL_T2L_HOME)
    import t2lcli.engine.merge.export as ex
    from t2lcli.engine.adapters import fold_scale, load_adapter
    from t2lcli.engine.base_model import gguf_source, read_config, resolve_model
    from t2lcli.registry import lookup

    base = resolve_model("smollm2-135m-instruct")
    src = make_adapter(base, tmp_path / "ad", r=8, seed=21, amp=0.08, modules=("q_proj", "k_proj", "v_proj"), base_name="smollm2-135m-instruct")
    res = runner.invoke(cli_app, ["merge", str(src), "--export", "llamacpp", "-o", str(tmp_path / "gg")])
    assert res.exit_code == 0, res.output
    ad, cfg = load_adapter(src), read_config(base)
    monkeypatch.setattr(ex, "PERMUTED_ARCHS", ())
    ex.write_gguf_adapter(tmp_path / "noperm.gguf", *ex.gguf_tensors(fold_scale(ad), cfg), 8.0, "noperm")
    monkeypatch.setattr(ex, "PERMUTED_ARCHS", ("llama",))
    ex.write_gguf_adapter(tmp_path / "raw.gguf", *ex.gguf_tensors(ad, cfg), 16.0, "raw")  # alpha/r = 2 instead of 5.66

    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(base))("The capital of France is Paris. The capital of Germany is")["input_ids"]
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids)))
    run = subprocess.run([probe, str(gguf_source(lookup("smollm2-135m-instruct"))), str(tmp_path / "ids.txt"), str(tmp_path / "out"),
                          str(tmp_path / "gg" / "adapter.gguf"), str(tmp_path / "noperm.gguf"), str(tmp_path / "raw.gguf")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    hf0, hf1 = base_logits(base, ids=[ids])[0, -1].numpy(), peft_logits(base, src, ids=[ids])[0, -1].numpy()
    l0 = np.fromfile(tmp_path / "out.base.f32", dtype=np.float32)
    d_hf = hf1 - hf0
    rel = [float(np.linalg.norm((np.fromfile(tmp_path / f"out.{i}.f32", dtype=np.float32) - l0) - d_hf) / np.linalg.norm(d_hf)) for i in (1, 2, 3)]
    assert rel[0] < 0.15, rel  # Q4_1 base vs bf16 HF weights: measured 0.05
    assert rel[1] > 2 * rel[0] and rel[2] > 2 * rel[0], rel  # measured 0.41 and 0.45
