"""Rebuild the evaluation data shipped in t2lcli/data/benchmarks from ../shared/data/benchmarks (developer tool).

Usage: .venv/bin/python tools/build_eval_data.py [SRC] — deterministic output (gzip mtime 0), so reruns give
identical bytes. Ships the evaluation splits in full and a small head of the training splits as few-shot pools.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "t2lcli" / "data" / "benchmarks"
FEWSHOT_ROWS = 200
# dataset -> {split: (source split, max rows or None)}
PLAN: dict[str, dict[str, tuple[str, int | None]]] = {
    "gsm8k": {"test": ("test", None), "train": ("train", FEWSHOT_ROWS)},
    "arc_easy": {"test": ("test", None), "train": ("train", FEWSHOT_ROWS)},
    "arc_challenge": {"test": ("test", None)},
    "boolq": {"validation": ("validation", None)},
    "piqa": {"validation": ("validation", None)},
    "winogrande": {"validation": ("validation", None), "train": ("train", FEWSHOT_ROWS)},
    "openbookqa": {"test": ("test", None), "train": ("train", FEWSHOT_ROWS)},
    "humaneval": {"test": ("test", None)},
    "mbpp": {"test": ("test", None), "prompt": ("prompt", None)},
}


def main(src: Path) -> None:
    manifest = json.loads((src.parent / "MANIFEST.json").read_text())
    by_file = {b["file"]: b for b in manifest["benchmarks"]}
    index = []
    for name, splits in PLAN.items():
        for split, (src_split, rows) in splits.items():
            path = src / name / f"{src_split}.jsonl"
            lines = [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]  # not splitlines(): U+2028 inside strings
            total = len(lines)
            if rows is not None:
                lines = lines[:rows]
            data = ("\n".join(lines) + "\n").encode("utf-8")
            out = DEST / name / f"{split}.jsonl.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                gz.write(data)
            meta = by_file[f"benchmarks/{name}/{src_split}.jsonl"]
            index.append({
                "dataset": name, "split": split, "file": f"{name}/{split}.jsonl.gz", "rows": len(lines),
                "of_rows": total, "sha256_uncompressed": hashlib.sha256(data).hexdigest(),
                "source": meta["source"], "license": meta["license"], "note": meta.get("note", ""),
            })
    (DEST / "INDEX.json").write_text(json.dumps(index, indent=1) + "\n")
    (DEST / "NOTICE").write_text(notice(index))
    print(f"wrote {len(index)} files to {DEST}")


def notice(index: list[dict]) -> str:
    lines = [
        "Evaluation data shipped with t2l (t2lcli/data/benchmarks)",
        "=========================================================",
        "",
        "These files are third-party data, redistributed unchanged except for re-serialisation as gzip JSONL and, where",
        f"marked, truncation to the first {FEWSHOT_ROWS} rows (few-shot pools). They keep their original licences, listed",
        "per file below; t2l's own Apache-2.0 licence does not apply to them. Source = repository@commit:path from which",
        "the rows were read (see ../shared/data/MANIFEST.json of the t2l development tree for full checksums).",
        "",
        "Licences: MIT (GSM8K, HumanEval), CC-BY-4.0 (MBPP), CC-BY-SA-4.0 (ARC), CC-BY-SA-3.0 (BoolQ), AFL-3.0 (PIQA),",
        "CC-BY (WinoGrande), Apache-2.0 (OpenBookQA). CC-BY-SA data stays under CC-BY-SA when redistributed.",
        "",
        "Citations: GSM8K (Cobbe et al. 2021), HumanEval (Chen et al. 2021), MBPP (Austin et al. 2021), ARC (Clark et",
        "al. 2018), BoolQ (Clark et al. 2019), PIQA (Bisk et al. 2020), WinoGrande (Sakaguchi et al. 2020), OpenBookQA",
        "(Mihaylov et al. 2018).",
        "",
    ]
    for e in index:
        part = "" if e["rows"] == e["of_rows"] else f" (first {e['rows']} of {e['of_rows']} rows)"
        lines += [
            f"{e['file']}: {e['rows']} rows{part}",
            f"  licence: {e['license']}",
            f"  source:  {e['source']}",
        ]
        if e["note"]:
            lines.append(f"  note:    {e['note']}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "benchmarks")
