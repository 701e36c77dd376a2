"""Issue 11 (1): fuzzing every parser and user-facing input with hypothesis.

The property everywhere: a clean result or a `T2LError` with a one-line message (CLI: exit 0/1/2, one `error:` line,
no traceback) - never another exception type, never a file outside the output folder, never code from a file run.
Cases per target are counted and written to `<basetemp>/hardening_report.json` (printed with `pytest -s`).
Scale with T2L_FUZZ_EXAMPLES=N (default 30 per target; 4x for the cheap pure-Python parsers).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hardening_common import FUZZ, FUZZ_CHEAP, Tally, cli_clean, expect_clean, only_inside, report_at_end, tree
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from t2lcli.descriptions import MAX_DESCRIPTION_CHARS, MAX_NAME, BadLine, Item, iter_items, slugify
from t2lcli.errors import T2LError
from t2lcli.text import has_visible_text

TALLY = Tally()
SAFE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$")
RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


_report = report_at_end("fuzz_cases_per_target", lambda: TALLY.as_dict() if TALLY.cases else None)


@pytest.fixture(scope="module")
def jail(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzzjail")


def _sandbox(jail: Path) -> Path:
    """jail/<random>/a/b/sandbox: an output name that escapes would land somewhere under jail, where it is seen."""
    box = Path(tempfile.mkdtemp(dir=jail)) / "a" / "b" / "sandbox"
    box.mkdir(parents=True)
    return box


def _drop(box: Path) -> None:
    shutil.rmtree(box.parents[2], ignore_errors=True)


# ------------------------------------------------------------------------------------------------ strategies

ANY_CHAR = st.characters(codec=None, categories=None)  # surrogates and control characters included
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
SCRIPTS = st.sampled_from(["math", "Résumé", "数学の問題", "حل المسائل", "Ελληνικά", "🙂👍🏻", "\u202egnp.exe", "\u0000", "\x1b[31m",
                           "\r\n", "\t", "\u200b", "\ufeff", "Ǆ", "ﬃ", "İ", "../../x", "/abs", "con", "NUL", "."])


@st.composite
def descriptions(draw) -> str:
    kind = draw(st.sampled_from(["text", "mixed", "huge", "blank", "surrogates", "limit"]))
    if kind == "text":
        return draw(st.text(alphabet=ANY_CHAR, max_size=200))
    if kind == "mixed":
        return "".join(draw(st.lists(st.one_of(SCRIPTS, st.text(max_size=12), SURROGATE), min_size=1, max_size=12)))
    if kind == "huge":  # up to ~1 MB
        return draw(st.text(min_size=1, max_size=8)) * draw(st.integers(1000, 130_000))
    if kind == "blank":
        return "".join(draw(st.lists(st.sampled_from([" ", "\t", "\n", "\r", "\u3000", "\x0b", "\x0c"]), max_size=20)))
    if kind == "surrogates":
        return draw(st.text(max_size=20)) + draw(SURROGATE) + draw(st.text(max_size=20))
    n = MAX_DESCRIPTION_CHARS + draw(st.integers(-2, 2))
    return ("a" * n)[:n]


EVIL_NAMES = st.sampled_from(["../../x", "..", ".", "/abs", "/etc/passwd", "con", "CON", "nul.txt", "aux", "com1", "lpt9", "a/b",
                              "a\\b", "~", "~root", "-rf", "--force", "x" * 300, "é" * 90, "\x00", " ", "", ".hidden", ".t2l-tmp-x",
                              "name\nnewline", "CON.", "....", "-", "_", "a" * 81, "数学"])


@st.composite
def batch_lines(draw) -> bytes:
    kind = draw(st.sampled_from(["txt", "json", "json_name", "json_bad", "json_types", "bytes", "blank", "long", "deep", "dup"]))
    if kind == "txt":
        return draw(descriptions()).encode("utf-8", "surrogatepass").replace(b"\n", b" ")
    if kind == "json":
        return json.dumps({"description": draw(descriptions())}).encode()
    if kind == "json_name":
        name = draw(st.one_of(EVIL_NAMES, st.text(alphabet=ANY_CHAR, max_size=100)))
        return json.dumps({"description": draw(st.text(min_size=1, max_size=40)), "name": name}).encode()
    if kind == "json_bad":
        return draw(st.sampled_from([b"{", b'{"description": }', b'{"description": "x"', b"{'description': 'x'}", b'{"name": "x"}',
                                     b'{"description": null}', b"{}", b"{" + b"x" * 50, b'{"description": "\\ud800"}',
                                     b'{"description": "a", "description": 1}', b'{"description": "\\u0000"}']))
    if kind == "json_types":
        val = draw(st.one_of(st.integers(), st.floats(), st.lists(st.integers(), max_size=3), st.none(), st.booleans(),
                             st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
        key = draw(st.sampled_from(["description", "name"]))
        obj = {"description": "ok task", key: val}
        return json.dumps(obj).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=60)).replace(b"\n", b"")
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"   \t "]))
    if kind == "long":
        return b"y" * draw(st.sampled_from([MAX_DESCRIPTION_CHARS + 1, 300_000, (1 << 20) + 5]))
    if kind == "deep":
        n = draw(st.integers(100, 100_000))
        return b'{"description": ' + b"[" * n + b"]" * n + b"}"
    return json.dumps({"description": "same task", "name": draw(st.sampled_from(["dup", "dup-2", "dup-3", "DUP"]))}).encode()


@st.composite
def batch_files(draw) -> tuple[bytes, str]:
    lines = draw(st.lists(batch_lines(), max_size=12))
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = end.join(lines) + draw(st.sampled_from([b"", end]))
    return data, draw(st.sampled_from([".txt", ".jsonl", ".json", ""]))


YAML_TOKENS = ["a:", "threads:", "hypernet:", "base:", "encoder:", "dtype:", "device:", "batch_size:", "train:", "steps:",
               "hypernet.latent:", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "&y ", "*y", "<<: ", "!!int ", "!!float ",
               "!!timestamp ", "!!binary ", "!!set ", "!!python/object/apply:os.system ", "!!python/name:os.system", "!!str ", "? ",
               ": ", "'", '"', "1", "-1", "0x1f", "1e999", "2020-13-45", "abc", ".nan", ".inf", "~", "null", "yes", "---", "...",
               "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "#", "\t", "|\n", ">\n", "\\", "\x00", "\ufeff", "\udcff", "cuda:0", "bfloat16"]


def _alias_bomb(depth: int, width: int, key: str) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + f"\n{key}: *a{depth - 1}\n"


def _merge_bomb(depth: int) -> str:
    lines = ["m0: &m0 {x: 1, y: 2}"] + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@st.composite
def yaml_docs(draw, keys: list[str]) -> str:
    kind = draw(st.sampled_from(["structured", "tokens", "bomb", "merge", "deep", "recursive", "roots", "text"]))
    if kind == "structured":
        scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
                            st.sampled_from(["float32", "bfloat16", "cpu", "cuda:0", "cuda:x", "auto", "8bit", "sdpa", "L", "S", "sft", ""]))
        key = st.one_of(st.sampled_from(keys), st.text(max_size=10))
        doc = draw(st.recursive(scalars, lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(key, ch, max_size=6)), max_leaves=25))
        if draw(st.booleans()):
            doc = {draw(st.sampled_from(keys)): doc}
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    if kind == "tokens":
        return "".join(draw(st.lists(st.sampled_from(YAML_TOKENS), max_size=40)))
    if kind == "bomb":
        return _alias_bomb(draw(st.integers(2, 12)), draw(st.integers(2, 12)), draw(st.sampled_from(keys)))
    if kind == "merge":
        return _merge_bomb(draw(st.integers(2, 40)))
    if kind == "deep":
        n = draw(st.integers(10, 20_000))
        return draw(st.sampled_from([f"{keys[0]}: " + "[" * n + "]" * n, f"{keys[0]}: " + "{a: " * n + "1" + "}" * n,
                                     "".join(f"{' ' * i}k{i}:\n" for i in range(min(n, 3000))) + " " * min(n, 3000) + "v\n"]))
    if kind == "recursive":
        return draw(st.sampled_from(["a: &a [*a]\n", f"{keys[0]}: &r {{x: *r}}\n", "&a [*a, *a]"]))
    if kind == "roots":
        return draw(st.sampled_from(["[1, 2]", "42", "'text'", "~", "", "---\n...", "- a\n- b", "!!set {a, b}", "--- 1\n--- 2\n"]))
    return draw(st.text(alphabet=ANY_CHAR, max_size=200))


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------- descriptions


@FUZZ_CHEAP
@given(text=descriptions())
def test_fuzz_preprocess(text):
    from t2lcli.engine.encoder import EncoderSpec, preprocess

    out: list[str] = []
    outcome = expect_clean(lambda: out.append(preprocess(text, EncoderSpec())))
    if outcome == "ok":
        out[0].encode("utf-8")  # valid text for the tokenizer and for every file it reaches
        assert out[0].strip() and len(out[0]) <= MAX_DESCRIPTION_CHARS + 1
    else:
        assert not text.strip() or len(text.strip()) > MAX_DESCRIPTION_CHARS or not has_visible_text(text)
    TALLY.add("description: encoder.preprocess", outcome)


@FUZZ
@given(text=descriptions(), dashdash=st.booleans(), scale=st.one_of(st.none(), st.floats(), st.sampled_from(["1e39", "-0", "x", "1e-45"])))
def test_fuzz_generate_description_cli(runner, cli_app, tiny_checkpoint_dir, jail, text, dashdash, scale):
    from t2lcli.engine.adapters import load_adapter

    box = _sandbox(jail)
    try:
        before = tree(jail)
        args = ["generate", "-c", str(tiny_checkpoint_dir), "-o", str(box / "out"), "--json"]
        args += [] if scale is None else ["--scale", str(scale)]
        args += ["--", text] if dashdash else [text]
        outcome = cli_clean(runner.invoke(cli_app, args))
        only_inside(before, tree(jail), os.path.relpath(box / "out", jail))
        if outcome == "ok":
            ad = load_adapter(box / "out")
            meta = json.loads((box / "out" / "t2l_adapter.json").read_text(encoding="utf-8"))
            meta["description"].encode("utf-8")
            assert ad.tensors
        else:
            assert not (box / "out").exists()
        TALLY.add("description: t2l generate DESCRIPTION", outcome)
    finally:
        _drop(box)


# ------------------------------------------------------------------------------------------------ batch files


def _check_items(items: list, out: Path) -> list[Item]:
    good = [it for it in items if isinstance(it, Item)]
    names = [it.name for it in good]
    assert len(set(names)) == len(names), names
    for it in good:
        assert SAFE_NAME.match(it.name) and len(it.name) <= MAX_NAME and it.name not in RESERVED, it.name
        assert (out / it.name).resolve().parent == out.resolve()
        it.description.encode("utf-8")
        assert it.description.strip() and len(it.description.strip()) <= MAX_DESCRIPTION_CHARS
        assert has_visible_text(it.description)
    lines = [it.line for it in items]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)
    for it in items:
        if isinstance(it, BadLine):
            assert it.reason and "\n" not in it.reason and len(it.reason) < 300
    return good


@FUZZ_CHEAP
@given(data=batch_files())
def test_fuzz_batch_iter_items(jail, data):
    content, suffix = data
    box = _sandbox(jail)
    try:
        src = box / f"batch{suffix}"
        src.write_bytes(content)
        items = list(iter_items(str(src)))
        _check_items(items, box / "out")
        TALLY.add("batch file: batch.iter_items", "bad lines" if any(isinstance(i, BadLine) for i in items) else "ok")
    finally:
        _drop(box)


@FUZZ_CHEAP
@given(text=st.one_of(EVIL_NAMES, st.text(alphabet=ANY_CHAR, max_size=300)))
def test_fuzz_slugify(text):
    name = slugify(text, "fallback-000001")
    assert SAFE_NAME.match(name) and len(name) <= MAX_NAME and name.lower() not in RESERVED, name
    assert Path(name).name == name and name not in (".", "..")
    TALLY.add("batch file: batch.slugify (names)", "ok")


@FUZZ
@given(data=batch_files(), skip_bad=st.booleans())
def test_fuzz_generate_batch_cli(runner, cli_app, tiny_checkpoint_dir, jail, data, skip_bad):
    from t2lcli.engine.adapters import load_adapter

    content, suffix = data
    box = _sandbox(jail)
    try:
        src = box / f"batch{suffix}"
        src.write_bytes(content)
        before = tree(jail)
        args = ["generate", "-f", str(src), "-c", str(tiny_checkpoint_dir), "-o", str(box / "out"), "--json"]
        res = runner.invoke(cli_app, args + (["--skip-bad"] if skip_bad else []))
        outcome = cli_clean(res)
        only_inside(before, tree(jail), os.path.relpath(box / "out", jail))
        expected = _check_items(list(iter_items(str(src))), box / "out")
        made = sorted(p.name for p in (box / "out").iterdir()) if (box / "out").exists() else []
        assert not [m for m in made if m.startswith(".")], made  # no temporaries left
        for name in made:
            load_adapter(box / "out" / name)
        if outcome == "ok":
            assert made == sorted(it.name for it in expected)
            assert len(res.stdout.strip().splitlines()) == len(made)
        else:
            assert made == []  # batch input is validated before anything is written
        TALLY.add("batch file: t2l generate --from-file", outcome)
    finally:
        _drop(box)


# -------------------------------------------------------------------------------------- profiles, --set, recipes

PROFILE_KEYS = ["name", "description", "threads", "hypernet", "encoder", "base", "memory_budget_gb", "source", "device", "dtype",
                "quantization", "attn_implementation", "offload", "batch_size", "device_map"]
RECIPE_KEYS = ["mode", "description", "base_model", "encoder", "hypernet", "data", "train", "log", "recon", "variant", "latent", "r",
               "steps", "lr", "target_modules", "train_frac", "val_end", "schedule", "loss", "targets", "seed"]


def _timed(fn) -> str:
    t0 = time.perf_counter()
    outcome = expect_clean(fn)
    assert time.perf_counter() - t0 < 10, "a small document took more than 10 s"
    return outcome


@FUZZ_CHEAP
@given(doc=st.one_of(yaml_docs(PROFILE_KEYS), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_fuzz_profile_yaml(jail, doc):
    from t2lcli.hw_profiles import load_profile

    box = _sandbox(jail)
    try:
        path = box / "p.yaml"
        _write_text(path, doc)
        TALLY.add("profile YAML: hardware.load_profile", _timed(lambda: load_profile(str(path))))
    finally:
        _drop(box)


SET_KEYS = ["threads", "base.dtype", "hypernet.device", "encoder.batch_size", "base.device_map", "memory_budget_gb", "base",
            "train.steps", "hypernet.latent", "a.b.c", "1bad", "", " ", "base..dtype", "_x", "x-y", "base.dtype.x"]


@st.composite
def set_items(draw) -> list[str]:
    items = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "typed", "typed", "fuzzed"]))
        if kind == "text":
            items.append(draw(st.text(alphabet=ANY_CHAR, max_size=40)))
            continue
        if kind == "typed":  # a known key with a plausible (sometimes wrong) value
            key, value = draw(st.sampled_from([
                ("threads", st.integers(-2, 64)), ("memory_budget_gb", st.floats(-1, 1e3)), ("hypernet.batch_size", st.integers(-1, 512)),
                ("base.dtype", st.sampled_from(["float32", "bfloat16", "float16", "auto", "float64", "fp8"])),
                ("encoder.device", st.sampled_from(["cpu", "cuda", "cuda:1", "auto", "mps", "tpu", "cuda:"])),
                ("base.quantization", st.sampled_from(["none", "8bit", "4bit", "2bit"])), ("base.offload", st.booleans()),
                ("base.device_map", st.sampled_from(["auto", "null", "~", "balanced", "1"])),
                ("train.steps", st.integers(-1, 10**6)), ("hypernet.latent", st.integers(0, 1024)), ("train.lr", st.floats(0, 1)),
                ("mode", st.sampled_from(["sft", "recon", "lora", "x"])), ("hypernet.variant", st.sampled_from(["L", "M", "S", "XL"]))]))
            items.append(f"{key}={draw(value)}")
            continue
        key = draw(st.one_of(st.sampled_from(SET_KEYS), st.text(max_size=10)))
        value = draw(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=20), yaml_docs(["x"]).map(lambda d: d.replace("\n", " ")),
                               st.sampled_from(["[&a0 {x: 1}, &a1 {<<: [*a0, *a0]}, &a2 {<<: [*a1, *a1]}]", "&a [*a]", "{a: 1}", "[1]",
                                                "'" + "[" * 5000])))
        items.append(f"{key}={value}")
    return items


@FUZZ_CHEAP
@given(items=set_items())
def test_fuzz_set_overrides(items):
    from t2lcli.hw_profiles import load_profile, parse_set_overrides

    expect_clean(parse_set_overrides, items)
    TALLY.add("--set: hardware.load_profile(overrides)", _timed(lambda: load_profile(None, items)))


@FUZZ_CHEAP
@given(doc=st.one_of(yaml_docs(RECIPE_KEYS), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))), items=set_items())
def test_fuzz_recipe_yaml(jail, doc, items):
    from t2lcli.recipe import load_recipe

    box = _sandbox(jail)
    try:
        path = box / "r.yaml"
        _write_text(path, doc)
        TALLY.add("recipe YAML: recipe.load_recipe", _timed(lambda: load_recipe(str(path))))
        TALLY.add("--set: recipe.load_recipe(overrides)", _timed(lambda: load_recipe(str(path), items)))
    finally:
        _drop(box)


@pytest.mark.parametrize("doc,needle", [
    (_alias_bomb(10, 9, "threads"), "alias bomb"),  # 9^10 = 3.5 billion values
    (_alias_bomb(30, 2, "hypernet"), "alias bomb"),
    (_merge_bomb(40), "alias bomb"),  # 2^40 merged keys; plain yaml.safe_load needs minutes from depth ~22
    ("threads: " + "[" * 100_000 + "]" * 100_000, "nested more than"),
    ("threads: &a [*a]\n", "refers to itself"),
    ("threads: !!python/object/apply:os.system ['echo PWNED']\n", "could not determine a constructor"),
    ("threads: !!timestamp 2020-13-45\n", "invalid value"),
])
def test_yaml_bombs_are_refused_quickly(runner, cli_app, tmp_path, doc, needle):
    from t2lcli.hw_profiles import load_profile
    from t2lcli.recipe import load_recipe

    path = tmp_path / "bomb.yaml"
    path.write_text(doc)
    for load, err in ((lambda: load_profile(str(path)), "profile"), (lambda: load_recipe(str(path)), "recipe")):
        t0 = time.perf_counter()
        with pytest.raises(T2LError) as info:
            load()
        assert time.perf_counter() - t0 < 2.0
        assert needle in info.value.message and err in info.value.message and len(info.value.message) < 500
    t0 = time.perf_counter()
    res = runner.invoke(cli_app, ["generate", "x", "--profile", str(path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and needle in res.stderr and "Traceback" not in res.output and time.perf_counter() - t0 < 5
    flow = doc.replace("\n", " ") if "&" in doc and "<<" not in doc else None
    if flow is None:
        return
    with pytest.raises(T2LError):  # the same bomb inside one --set value is a plain string at worst, never expanded
        load_profile(None, [f"threads={flow}"])


def test_plain_yaml_features_still_work(tmp_path):
    """Anchors, aliases and merge keys of ordinary size still load (the limits are far above real configs)."""
    from t2lcli.safe_yaml import load_yaml

    doc = "base: &b {dtype: bfloat16, device: cpu}\nencoder:\n  <<: *b\n  batch_size: 4\nlist: [*b, *b]\n"
    assert load_yaml(doc) == {"base": {"dtype": "bfloat16", "device": "cpu"}, "encoder": {"dtype": "bfloat16", "device": "cpu", "batch_size": 4},
                              "list": [{"dtype": "bfloat16", "device": "cpu"}] * 2}
    big = {"tasks": [f"task{i:05d}" for i in range(20_000)], "nested": [[[[i]]] for i in range(100)]}
    assert load_yaml(yaml.safe_dump(big)) == big


# ---------------------------------------------------------------------------------------------- adapter folders

ST_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
             torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]
SAFE_DTYPE_NAMES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "XX", "", 5, None]


@pytest.fixture(scope="module")
def base_adapter(tiny_checkpoint_dir, tmp_path_factory) -> Path:
    from t2lcli.engine.generate import Generator

    gen = Generator.load(str(tiny_checkpoint_dir))
    out = tmp_path_factory.mktemp("fuzz_adapter") / "adapter"
    gen.save(gen.adapters_from_embeddings(torch.randn(1, gen.ckpt.config.emb_dim), ["a task"])[0], out)
    return out


@st.composite
def raw_safetensors(draw, keys: list[str]) -> bytes:
    """A hand-made safetensors file: fuzzed header (dtypes, shapes, offsets, lengths) + fuzzed payload."""
    header: dict = {}
    for key in draw(st.lists(st.sampled_from([*keys, "x", "__metadata__"]), max_size=4, unique=True)):
        if key == "__metadata__":
            header[key] = draw(st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), st.integers(), st.none()))
            continue
        shape = draw(st.lists(st.integers(-2, 2**40), max_size=4))
        start = draw(st.integers(-5, 200))
        header[key] = {"dtype": draw(st.sampled_from(SAFE_DTYPE_NAMES)), "shape": shape,
                       "data_offsets": draw(st.sampled_from([[start, start + draw(st.integers(-4, 400))], [start], "x", None]))}
    text = json.dumps(header).encode()
    if draw(st.booleans()):
        text = draw(st.sampled_from([b"{", b"[]", b"null", b"\xff\xfe", b'{"a": {"dtype": "F32"}}', b" " * 10]))
    n = draw(st.sampled_from([len(text), len(text) + 1, max(0, len(text) - 1), 2**63, 0, 2**40]))
    payload = draw(st.binary(max_size=300))
    return struct.pack("<Q", n % 2**64) + text + payload


def _tensor_like(draw, t: torch.Tensor) -> torch.Tensor:
    kind = draw(st.sampled_from(["shape", "dtype", "nan", "inf", "scalar", "empty", "3d", "huge"]))
    if kind == "shape":
        return torch.randn(draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    if kind == "dtype":
        dt = draw(st.sampled_from(ST_DTYPES))
        return (t.clone() * 10).to(dt) if dt != torch.bool else t > 0
    if kind in ("nan", "inf"):
        x = t.clone().float()
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float("nan") if kind == "nan" else float("-inf")
        return x
    if kind == "scalar":
        return torch.tensor(1.5)
    if kind == "empty":
        return torch.zeros(0, t.shape[-1])
    if kind == "3d":
        return t.clone()[None]
    return torch.full(t.shape, 3e38).float()


@st.composite
def adapter_mutations(draw, keys: list[str]) -> list[tuple]:
    muts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "truncate", "garbage", "raw", "tensor", "drop_key", "add_key", "config", "config_key",
                                     "bin", "meta", "dir"]))
        if kind == "delete":
            muts.append((kind, draw(st.sampled_from(["adapter_config.json", "adapter_model.safetensors", "README.md", "t2l_adapter.json"]))))
        elif kind == "truncate":
            muts.append((kind, draw(st.floats(0, 0.999))))
        elif kind == "garbage":
            muts.append((kind, draw(st.binary(max_size=100))))
        elif kind == "raw":
            muts.append((kind, draw(raw_safetensors(keys))))
        elif kind == "tensor":
            muts.append((kind, draw(st.sampled_from(keys)), draw(st.randoms(use_true_random=False)).random()))
        elif kind in ("drop_key", "add_key"):
            muts.append((kind, draw(st.sampled_from(keys)), draw(st.sampled_from(["weird.key", "base_model.model.x.lora_A.weight",
                                                                                   "base_model.model.layers.0.q.lora_C.weight"]))))
        elif kind == "config":
            muts.append((kind, draw(st.recursive(st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=8)),
                                                 lambda ch: st.one_of(st.lists(ch, max_size=3), st.dictionaries(st.text(max_size=6), ch, max_size=3)),
                                                 max_leaves=10))))
        elif kind == "config_key":
            muts.append((kind, draw(st.sampled_from(["r", "lora_alpha", "peft_type", "target_modules", "use_rslora", "base_model_name_or_path"])),
                         draw(st.one_of(st.none(), st.booleans(), st.integers(-3, 2**65), st.floats(), st.text(max_size=10),
                                        st.lists(st.integers(), max_size=3), st.just("x" * 100_000)))))
        elif kind == "bin":
            muts.append((kind,))
        elif kind == "meta":
            muts.append((kind, draw(st.binary(max_size=40))))
        else:
            muts.append((kind, draw(st.sampled_from(["adapter_config.json", "adapter_model.safetensors"]))))
    return muts


def _apply_adapter_mutation(folder: Path, mut: tuple, draw_tensor) -> None:
    w, c = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    kind = mut[0]
    if kind == "delete":
        if (folder / mut[1]).is_dir():
            shutil.rmtree(folder / mut[1])
        else:
            (folder / mut[1]).unlink(missing_ok=True)
    elif kind == "truncate" and w.is_file():
        data = w.read_bytes()
        w.write_bytes(data[: int(len(data) * mut[1])])
    elif kind in ("garbage", "raw"):
        if w.is_dir():
            shutil.rmtree(w)
        w.write_bytes(mut[1])
    elif kind in ("tensor", "drop_key", "add_key") and w.is_file():
        try:
            tensors = load_file(str(w))
        except Exception:
            return  # already damaged by an earlier mutation
        key = mut[1] if mut[1] in tensors else next(iter(tensors), None)
        if key is None:
            return
        if kind == "tensor":
            tensors[key] = draw_tensor(tensors[key])
        elif kind == "drop_key":
            tensors.pop(key)
        else:
            tensors[mut[2]] = torch.zeros(2, 2)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(w))
    elif kind == "config":
        if c.is_dir():
            shutil.rmtree(c)
        c.write_text(json.dumps(mut[1]))
    elif kind == "config_key" and c.is_file():
        try:
            cfg = json.loads(c.read_text())
            cfg[mut[1]] = mut[2]
            c.write_text(json.dumps(cfg))
        except (ValueError, TypeError):
            pass
    elif kind == "bin":
        with open(folder / "adapter_model.bin", "wb") as fh:
            pickle.dump({"x": 1}, fh)
    elif kind == "meta":
        (folder / "t2l_adapter.json").write_bytes(mut[1])  # never made a folder by "dir"
    elif kind == "dir":
        target = folder / mut[1]
        if target.is_file():
            target.unlink()
        target.mkdir(exist_ok=True)


@FUZZ
@given(data=st.data())
def test_fuzz_adapter_folders(runner, cli_app, base_adapter, jail, data):
    from t2lcli.engine.adapters import load_adapter

    keys = sorted(load_file(str(base_adapter / "adapter_model.safetensors")))
    box = _sandbox(jail)
    try:
        folder = box / "adapter"
        shutil.copytree(base_adapter, folder)
        for mut in data.draw(adapter_mutations(keys)):
            _apply_adapter_mutation(folder, mut, lambda t: _tensor_like(data.draw, t))
        outcome = expect_clean(load_adapter, folder)
        if outcome == "ok":  # whatever loads is usable: finite 2-D float pairs of one rank
            ad = load_adapter(folder)
            for prefix in ad.prefixes():
                assert torch.isfinite(ad.delta(prefix)).all()
        TALLY.add("adapter folder: adapters.load_adapter", outcome)
        before = tree(jail)
        TALLY.add("adapter folder: t2l inspect ADAPTER", cli_clean(runner.invoke(cli_app, ["inspect", str(folder), "--json"])))
        res = runner.invoke(cli_app, ["merge", str(folder), str(base_adapter), "-o", str(box / "merged"), "--json"])
        TALLY.add("adapter folder: t2l merge ADAPTER ADAPTER", cli_clean(res))
        only_inside(before, tree(jail), os.path.relpath(box / "merged", jail))
        if res.exit_code == 0:
            load_adapter(box / "merged")
    finally:
        _drop(box)


# ------------------------------------------------------------------------------------------- native checkpoints

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**70), st.floats(), st.text(max_size=12),
              st.sampled_from(["L", "M", "S", "q_proj", "model.layers.{l}.self_attn.q_proj", "{0}", "{l.__class__}", "mean", "last"])),
    lambda ch: st.one_of(st.lists(ch, max_size=3), st.dictionaries(st.text(max_size=8), ch, max_size=3)), max_leaves=8)


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, (*prefix, i))


def _set_path(obj, path, value, delete=False):
    if not path:
        return value
    node = obj
    for p in path[:-1]:
        node = node[p]
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return obj


@FUZZ
@given(data=st.data())
def test_fuzz_native_checkpoints(runner, cli_app, tiny_checkpoint_dir, jail, data):
    from t2lcli.engine.checkpoint import load_checkpoint

    box = _sandbox(jail)
    try:
        folder = box / "ck"
        shutil.copytree(tiny_checkpoint_dir, folder)
        cfg_path, w = folder / "t2l_config.json", folder / "hypernet.safetensors"
        keys = sorted(load_file(str(w)))
        for _ in range(data.draw(st.integers(1, 3))):
            kind = data.draw(st.sampled_from(["config_leaf", "config_delete", "config_raw", "config_valid", "config_valid", "truncate", "raw",
                                              "tensor", "delete"]))
            if kind == "config_valid" and cfg_path.is_file():  # values of the right type: loads, then generate runs on them
                try:
                    cfg = json.loads(cfg_path.read_text())
                    assert isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("hypernet", "encoder"))
                except (ValueError, AssertionError):
                    continue
                section, key, value = data.draw(st.sampled_from([
                    ("hypernet", "lora_alpha", st.floats(-1e30, 1e30)), ("hypernet", "use_rslora", st.booleans()),
                    ("hypernet", "training_task", st.sampled_from(["sft", "recon"])), ("hypernet", "factorized", st.booleans()),
                    ("hypernet", "pred_z_score", st.booleans()), ("hypernet", "delta_w_scaling", st.floats(-1e30, 1e30)),
                    ("hypernet", "dropout", st.floats(0, 1)), (None, "base_model", st.text(max_size=20)),
                    (None, "training", JSON_VALUES), ("encoder", "pooling", st.sampled_from(["mean", "cls", "last"])),
                    ("encoder", "add_full_stop", st.booleans()), ("encoder", "prefix", st.text(max_size=10))]))
                node = cfg[section] if section else cfg
                node[key] = data.draw(value)
                cfg_path.write_text(json.dumps(cfg))
            elif kind.startswith("config") and cfg_path.is_file():
                try:
                    cfg = json.loads(cfg_path.read_text())
                except ValueError:
                    continue
                paths = list(_json_paths(cfg))
                path = data.draw(st.sampled_from(paths))
                if kind == "config_raw":
                    cfg_path.write_bytes(data.draw(st.binary(max_size=80)))
                    continue
                cfg = _set_path(cfg, path, data.draw(JSON_VALUES), delete=kind == "config_delete")
                cfg_path.write_text(json.dumps(cfg))
            elif kind == "truncate" and w.is_file():
                raw = w.read_bytes()
                w.write_bytes(raw[: int(len(raw) * data.draw(st.floats(0, 0.999)))])
            elif kind == "raw":
                w.write_bytes(data.draw(raw_safetensors(keys)))
            elif kind == "tensor" and w.is_file():
                try:
                    state = load_file(str(w))
                except Exception:
                    continue
                key = data.draw(st.sampled_from(keys))
                if key in state:
                    state[key] = _tensor_like(data.draw, state[key])
                save_file({k: v.contiguous() for k, v in state.items()}, str(w))
            elif kind == "delete":
                (folder / data.draw(st.sampled_from(["t2l_config.json", "hypernet.safetensors"]))).unlink(missing_ok=True)
        outcome = expect_clean(load_checkpoint, str(folder))
        TALLY.add("native checkpoint: checkpoint.load_checkpoint", outcome)
        emb = box / "emb.safetensors"
        save_file({"embedding": torch.nn.functional.normalize(torch.randn(2, 16), dim=-1) * 4}, str(emb))
        before = tree(jail)
        TALLY.add("native checkpoint: t2l inspect CHECKPOINT", cli_clean(runner.invoke(cli_app, ["inspect", str(folder), "--json"])))
        res = runner.invoke(cli_app, ["generate", "--embedding-file", str(emb), "-c", str(folder), "-o", str(box / "gen")])
        TALLY.add("native checkpoint: t2l generate -c CHECKPOINT", cli_clean(res))
        only_inside(before, tree(jail), os.path.relpath(box / "gen", jail))
        if res.exit_code == 0:
            from t2lcli.engine.adapters import load_adapter

            for sub in (box / "gen").iterdir():
                load_adapter(sub)  # an adapter that was written is complete and finite
    finally:
        _drop(box)


# ----------------------------------------------------------------------------------------- official checkpoints

DANGEROUS = [("os", "system"), ("posix", "system"), ("builtins", "exec"), ("builtins", "eval"), ("__builtin__", "eval"),
             ("subprocess", "check_call"), ("subprocess", "Popen"), ("builtins", "open"), ("io", "open"), ("pathlib", "Path.touch"),
             ("shutil", "copyfile"), ("importlib", "import_module"), ("builtins", "getattr"), ("runpy", "run_path"),
             ("torch", "load"), ("torch.serialization", "load"), ("numpy", "load"), ("pickle", "loads"), ("codecs", "encode"),
             ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage"),
             ("builtins", "set"), ("builtins", "__import__")]


def _arg_for(func: str, marker: str) -> str:
    return {"system": f"touch {marker}", "check_call": f"touch {marker}", "Popen": f"touch {marker}",
            "exec": f"open({marker!r}, 'w').write('x')", "eval": f"open({marker!r}, 'w')", "run_path": marker}.get(func, marker)


def _pickle_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


@st.composite
def crafted_pickles(draw, marker: str) -> bytes:
    """Raw pickle programs that call something when unpickled (GLOBAL/STACK_GLOBAL + REDUCE/BUILD/INST/OBJ/NEWOBJ)."""
    module, name = draw(st.sampled_from(DANGEROUS))
    arg = _pickle_str(_arg_for(name, marker))
    form = draw(st.sampled_from(["global_reduce", "stack_global", "inst", "build", "nested", "newobj", "soup"]))
    glob = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    if form == "global_reduce":
        body = glob + b"(" + arg + b"tR"
    elif form == "stack_global":
        body = _pickle_str(module) + _pickle_str(name) + b"\x93" + b"(" + arg + b"tR"
    elif form == "inst":
        body = b"(" + arg + b"i" + module.encode() + b"\n" + name.encode() + b"\n"
    elif form == "build":
        body = glob + b")R}" + _pickle_str("marker") + arg + b"sb"
    elif form == "newobj":
        body = glob + b"(" + arg + b"t\x81"
    elif form == "nested":  # a payload hidden as one value of an otherwise plain dict
        body = b"}(" + _pickle_str("task_encoder.mlp.0.bias") + glob + b"(" + arg + b"tRu"
    else:
        body = draw(st.binary(max_size=80))
    proto = draw(st.sampled_from([b"\x80\x02", b"\x80\x04", b"\x80\x05", b""]))
    return proto + body + b"."


def _rewrite_pickle(pt: Path, pkl: bytes) -> None:
    try:
        with zipfile.ZipFile(pt) as src:
            members = [(i.filename, src.read(i.filename)) for i in src.infolist()]
    except Exception:  # a zip damaged by an earlier mutation: leave it as it is
        return
    with zipfile.ZipFile(pt, "w", zipfile.ZIP_STORED) as z:
        for name, blob in members:
            z.writestr(name, pkl if name.endswith("/data.pkl") else blob)


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory) -> Path:
    from test_official import make_official

    return make_official(tmp_path_factory.mktemp("fuzz_official") / "ck")


@FUZZ
@given(data=st.data())
def test_fuzz_official_checkpoints(runner, cli_app, official_folder, jail, data):
    from t2lcli.engine.checkpoint import load_checkpoint

    box = _sandbox(jail)
    marker = box.parents[2] / "PWNED"
    try:
        folder = box / "ck"
        shutil.copytree(official_folder, folder)
        pt = folder / "hypermod.pt"
        kinds = data.draw(st.lists(st.sampled_from(["pickle", "payload", "truncate", "flip", "zip", "args", "args_key", "adapter_key",
                                                    "state", "delete"]), min_size=1, max_size=3))
        for kind in kinds:
            if kind == "pickle" and zipfile.is_zipfile(pt):
                _rewrite_pickle(pt, data.draw(crafted_pickles(str(marker))))
            elif kind == "payload":
                sd = torch.load(official_folder / "hypermod.pt", weights_only=True)
                import builtins
                import subprocess

                func = data.draw(st.sampled_from([os.system, builtins.exec, builtins.eval, subprocess.check_call, builtins.open]))
                arg = _arg_for(func.__name__, str(marker))
                where = data.draw(st.sampled_from(["value", "list", "top"]))
                obj = _Payload(func, arg)
                if where == "value":
                    sd["task_encoder.mlp.0.bias"] = obj
                elif where == "list":
                    sd["extra"] = [torch.zeros(1), {"x": obj}]
                else:
                    sd = obj
                torch.save(sd, pt)
            elif kind == "truncate" and pt.is_file():
                raw = pt.read_bytes()
                pt.write_bytes(raw[: int(len(raw) * data.draw(st.floats(0, 0.999)))])
            elif kind == "flip" and pt.is_file() and pt.stat().st_size:
                raw = bytearray(pt.read_bytes())
                for _ in range(data.draw(st.integers(1, 20))):
                    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
                pt.write_bytes(bytes(raw))
            elif kind == "zip":
                with zipfile.ZipFile(pt, "w") as z:
                    for _ in range(data.draw(st.integers(0, 3))):
                        z.writestr(data.draw(st.sampled_from(["archive/data.pkl", "archive/version", "x/data.pkl", "../evil", "/abs"])),
                                   data.draw(st.binary(max_size=50)))
            elif kind == "args":
                _write_text(folder / "args.yaml", data.draw(yaml_docs(["emb_model", "encoder_type", "training_task", "shared_AB_head"])))
            elif kind in ("args_key", "adapter_key"):
                path = folder / ("args.yaml" if kind == "args_key" else "adapter_config.json")
                try:
                    doc = yaml.safe_load(path.read_text()) if kind == "args_key" else json.loads(path.read_text())
                except Exception:
                    continue
                if not isinstance(doc, dict):
                    continue
                key = data.draw(st.sampled_from(["emb_model", "encoder_type", "training_task", "shared_AB_head", "autoreg_gen",
                                                 "hypernet_latent_size", "head_in_size", "delta_w_scaling", "pred_z_score", "factorized",
                                                 "target_modules", "r", "lora_alpha", "peft_type", "use_rslora", "model_dir"]))
                doc[key] = data.draw(JSON_VALUES)
                path.write_text(yaml.safe_dump(doc) if kind == "args_key" else json.dumps(doc))
            elif kind == "state":
                sd = torch.load(official_folder / "hypermod.pt", weights_only=True)
                key = data.draw(st.sampled_from(sorted(sd)))
                sd[key] = _tensor_like(data.draw, sd[key])
                torch.save(sd, pt)
            elif kind == "delete":
                (folder / data.draw(st.sampled_from(["hypermod.pt", "args.yaml", "adapter_config.json"]))).unlink(missing_ok=True)
        outcome = expect_clean(load_checkpoint, str(folder))
        assert not marker.exists(), f"a crafted file ran code ({kinds})"
        TALLY.add("official checkpoint: checkpoint.load_checkpoint (hypermod.pt/args.yaml/adapter_config.json)", outcome)
        if "pickle" in kinds or "payload" in kinds:
            TALLY.add("official checkpoint: crafted pickles (code never ran)", outcome)
        before = tree(jail)
        res = runner.invoke(cli_app, ["convert", str(folder), "-o", str(box / "conv")])
        TALLY.add("official checkpoint: t2l convert", cli_clean(res))
        assert not marker.exists()
        only_inside(before, tree(jail), os.path.relpath(box / "conv", jail))
    finally:
        _drop(box)
        marker.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- other flags and small files


@FUZZ_CHEAP
@given(text=st.one_of(st.text(alphabet=ANY_CHAR, max_size=40), st.lists(st.sampled_from(["1", "-1", "0.5", "1e308", "1e999", "nan", "inf",
                                                                                       "x", "", " ", "9" * 400, "1_0", "0x10"]), max_size=5).map(",".join)),
       n=st.integers(1, 4))
def test_fuzz_merge_weights_and_sizes(text, n):
    from t2lcli.engine.merge.run import parse_size, parse_weights

    TALLY.add("flag: merge --weights", expect_clean(parse_weights, text, n, "adapters"))
    size_text = text if len(text) % 2 else text.replace(",", "") + "GB"
    TALLY.add("flag: merge --max-shard-size", expect_clean(parse_size, size_text))


@FUZZ_CHEAP
@given(text=st.one_of(st.text(alphabet=ANY_CHAR, max_size=40), st.lists(st.sampled_from(["1", "8", "-1", "0", "9" * 5000, "x", "", "gsm8k",
                                                                                       "arc", "sni:", "sni:/x", "GSM8K=5", "=3", "a=b"]),
                                                                     max_size=5).map(",".join)))
def test_fuzz_bench_and_eval_flags(text):
    from t2lcli.commands.eval import _parse_limits

    from t2lcli.engine.bench import parse_batch
    from t2lcli.engine.eval_tasks import parse_task_names

    TALLY.add("flag: bench --batch", expect_clean(parse_batch, text))
    TALLY.add("flag: eval --tasks", expect_clean(parse_task_names, text))
    TALLY.add("flag: eval --limit", expect_clean(_parse_limits, text.split(",")))


@st.composite
def embedding_blobs(draw) -> bytes:
    """Well-formed .npy / safetensors files of random shapes and dtypes (objects included), or fuzzed bytes."""
    import io

    import numpy as np

    kind = draw(st.sampled_from(["npy", "safetensors", "raw", "bytes"]))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    if kind == "npy":
        dtype = draw(st.sampled_from(["float32", "float16", "float64", "int8", "bool", "complex64", "U3", "object"]))
        arr = np.zeros(shape, dtype=dtype) if dtype != "object" else np.array([_Payload(print, "x")] * 2, dtype=object)
        if dtype.startswith("float") and arr.size and draw(st.booleans()):
            arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1e30]))
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=True)
        data = buf.getvalue()
        return data[: draw(st.integers(0, len(data)))] if draw(st.integers(0, 4)) == 0 else data
    if kind == "safetensors":
        from safetensors.torch import save as st_save

        n = draw(st.integers(1, 3))
        names = draw(st.sampled_from([["embedding"], ["x"], ["embedding", "x"], ["a", "b"]]))[:n]
        dt = draw(st.sampled_from(ST_DTYPES))
        return st_save({k: torch.zeros(shape, dtype=dt) for k in names})
    if kind == "raw":
        return draw(raw_safetensors(["embedding", "x"]))
    return draw(st.binary(max_size=200))


@FUZZ_CHEAP
@given(blob=embedding_blobs(), suffix=st.sampled_from([".safetensors", ".npy", ""]))
def test_fuzz_embedding_file(jail, blob, suffix):
    from t2lcli.engine.generate import load_embeddings

    box = _sandbox(jail)
    try:
        path = box / f"emb{suffix}"
        path.write_bytes(blob)
        TALLY.add("embedding file: generate.load_embeddings", expect_clean(load_embeddings, path))
    finally:
        _drop(box)
