"""
RULER-style synthetic long-context tasks (Hsieh et al. 2024, arXiv 2404.06654; NVIDIA/RULER
scripts/synthetic.yaml and scripts/data/synthetic/), offline, beside eval_passkey.py. Passkey retrieval is
the easy case; these separate models that passkey cannot (PoSE issue #5: strong passkey, weak lines).

  niah_multikey    RULER niah_multikey_1: 4 needles "One of the special magic numbers for {key} is: {value}."
                   with distinct keys; the question asks for one key's value (the other 3 are distractors)
  niah_multivalue  RULER niah_multivalue: 1 key, 4 needles with 4 values; all 4 must be produced
  niah_multiquery  RULER niah_multiquery: 4 keys, 1 value each, all 4 asked at once
  vt               RULER vt: "VAR ABCDE = 12345", then 4 hops "VAR FGHIJ = VAR ABCDE" ... hidden in the haystack,
                   after a one-shot example; the answer is all 5 variables that hold 12345
  lines            LongChat-Lines (LongChat longeval, names as in LRT-NL): every line "line {adjective-noun}:
                   REGISTER_CONTENT is <{number}>"; the question asks for one named line's number

    python eval_ruler.py --model cache/SmolLM2-135M-Instruct --len 2k --trials 3 --out results/ruler/calibration_2k.json
    python eval_ruler.py --model DIR --len 2k 4k 8k 16k --trials 10 --rope yarn --factor 2 --out results/ruler/yarn2.json
    python eval_ruler.py --model DIR --task vt lines --len 8k --haystack filler --reuse old.json --out new.json

Score (RULER string_match_all): the fraction of the expected strings that occur in the output, case-insensitive.
Length (RULER max_seq_length): prompt + --max-new-tokens <= --len, with the most whole haystack units that fit
(n units fit, n + 1 do not). A unit is one passkey filler (--haystack filler), one word of a text (--haystack
PATH), one line (lines). Needles go in distinct places between the filler units or the text's sentences; a
trial's depths say, for each needle that holds an answer, the share of those pieces before it (lines: of the
other lines).
Trial i of a task at length L is drawn from (--seed, task, L, i): the same prompt in every run. Greedy
decoding through the KV cache is inference.greedy (prompts of a length share their common prefix).

Differences from RULER (and LongChat):
- haystack: a public-domain book (default data/train/alice29.txt) for the niah tasks instead of Paul Graham's
  essays, and the passkey filler ("noise") for vt, as synthetic.yaml; sentences are split after . ! ? (and a
  closing quote) by a regex, not nltk; RULER's essay haystack draws depths from a 40-point grid, ours draws distinct places
  uniformly for both haystacks (RULER's noise rule).
- keys: adjective-noun pairs of the 100 x 100 words below (RULER: wonderwords' lists); keys and values are
  distinct within a prompt (RULER does not enforce it).
- randomness per trial from (seed, task, length, trial); RULER seeds a whole dataset (and shuffles every
  niah sample's needles with the same fixed seed).
- vt: the one-shot example is drawn per trial with its own 500-token budget (RULER draws one and renames its
  variables and value per sample); no trailing space after "VAR X = VAR Y".
- singular wording for one answer (RULER's "Some"->"A", "are"->"is") touches the task text only; RULER's
  replace also rewrites the chat template's own words (SmolLM2's "You are" -> "You is").
- lines: LongChat's prompt plus an answer prefix (RULER style; LongChat has none), values 10000-49999 (LongChat
  1-50000), string_match_all instead of LongChat's "last integer in the output equals the value".
- --template none prepends BOS as eval_passkey does (RULER's 'base' template has none); scores are 0-1, not %.
"""
import argparse
import json
import re
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from eval_common import add_common_args, load, parse_lengths, pyplot, resolve_device_args, reused_runs, save_png, write_json
from eval_passkey import FILLER
from inference import PrefixCache, greedy, shared_prefix

# RULER's tokens_to_generate (lines: LongChat's max_new_tokens)
MAX_NEW = {"niah_multikey": 128, "niah_multivalue": 128, "niah_multiquery": 128, "vt": 30, "lines": 100}
NIAH = {"niah_multikey": dict(keys=4), "niah_multivalue": dict(values=4), "niah_multiquery": dict(queries=4)}
TEXT = "data/train/alice29.txt"  # the default text haystack, relative to this file
HAYSTACK = {"niah_multikey": TEXT, "niah_multivalue": TEXT, "niah_multiquery": TEXT, "vt": "filler", "lines": None}

ADJECTIVES = """able ancient angry bitter black blue bold brave brief bright broad busy calm careful cheap clean clear
clever close cold cool crisp curious dark dear deep dry eager early easy empty fair famous fancy fast fierce fine firm
flat free fresh full funny gentle giant glad golden grand gray green happy hard heavy hidden high hollow honest huge
humble jolly kind large late lazy lively lonely long loud lucky mighty modern narrow neat noble odd pale plain polite
proud quick quiet rapid rare red rich rough round royal rusty sharp shiny silent silly simple sleepy slow small smooth
soft solid""".split()
NOUNS = """anchor apple arrow badge basket beach bell bird blanket boat bottle bridge brush bucket button cabin camel
candle canyon carpet castle cherry circle cloud coast comet cookie copper crown desert diamond dolphin dragon drum eagle
engine falcon feather fence forest fountain garden glacier guitar hammer harbor helmet horse island jacket jungle kettle
kitten ladder lantern lemon lion magnet meadow mirror monkey mountain ocean orchard owl palace parrot pencil pepper piano
pillow planet pocket pony puzzle rabbit ribbon river rocket saddle sailor shadow shell spoon squirrel statue sugar sword
teapot thunder tiger tower tunnel turtle valley violin wagon whale window wizard""".split()
NAMES = [f"{a}-{n}" for a in ADJECTIVES for n in NOUNS]  # 10,000 keys / line names

# RULER scripts/data/synthetic/constants.py (the niah text is plural; one answer makes it singular, see niah)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
              "I will quiz you about the numbers afterwards.")
NIAH_QUESTION = "What are all the special magic numbers for {query} mentioned in the provided text?"
NIAH_ANSWER = " The special magic numbers for {query} mentioned in the provided text are"
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
VT_QUESTION = "Question: Find all variables that are assigned the value {query} in the text above."
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
             "assigned the value {query}, they are: ")
# LongChat longeval/utils.py generate_lines_testcases; the answer prefix is ours
LINES_INTRO = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
               "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
               "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
               "the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n")
LINES_QUESTION = "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {name}? I need the number."
LINES_ANSWER = " The <REGISTER_CONTENT> in line {name} is"


def string_match_all(output, expected):
    """RULER's metric for one trial: the fraction of the expected strings found in the output, case-insensitive."""
    return sum(e.lower() in output.lower() for e in expected) / len(expected)


# --- haystacks and needles ---

def units(hay, n):
    """The first n haystack units as (pieces the needles go between, separator). RULER 'noise': the filler,
    one per line; RULER 'essay': the first n words of the text (repeated if it is shorter), cut into sentences."""
    if hay == "filler":
        return [FILLER] * n, "\n"
    words = (hay * (n // len(hay) + 1))[:n]
    return (re.split(r"(?:(?<=[.!?])|(?<=[.!?]['\")]))\s+", " ".join(words)) if n else []), " "  # after . ! ? (and a quote)


def insert(hay, n, needles, rng):
    """Needles, in their order, at distinct places drawn uniformly between the first n units. Returns the
    context, each needle's depth (pieces before it / pieces) and the number of places (too few: reused)."""
    pieces, sep = units(hay, n)
    places = len(pieces) + 1
    at = np.sort(rng.choice(places, len(needles), replace=places < len(needles)))
    for j, (p, needle) in enumerate(zip(at, needles)):  # each insertion moves the later places one on
        pieces.insert(p + j, needle)
    return sep.join(pieces), [float(p) / max(places - 1, 1) for p in at], places


def distinct_names(rng, k):
    return [NAMES[i] for i in rng.choice(len(NAMES), k, replace=k > len(NAMES))]


# --- the tasks: (rng, haystack, n units) -> text, answer prefix, expected strings, their depths, places needed/had ---

def niah(rng, hay, n, keys=1, values=1, queries=1):
    keys = max(keys, queries)  # RULER: num_needle_k = max(num_needle_k, num_needle_q)
    names = distinct_names(rng, keys)
    vals = (rng.choice(9 * 10**6, (keys, values), replace=False) + 10**6).astype(str)  # 7 digits (RULER)
    needles = [(i, j) for i in range(keys) for j in range(values)]
    order = rng.permutation(len(needles))  # RULER shuffles the needles
    asked = rng.choice(keys, queries, replace=False)
    context, depths, places = insert(hay, n, [NEEDLE.format(key=names[i], value=vals[i, j]) for i, j in
                                              (needles[o] for o in order)], rng)
    depth = {needles[o]: d for o, d in zip(order, depths)}
    query = names[asked[0]] if queries == 1 else ", ".join(names[i] for i in asked[:-1]) + ", and " + names[asked[-1]]
    intro, question, answer = NIAH_INTRO, NIAH_QUESTION.format(query=query), NIAH_ANSWER.format(query=query)
    if queries * values == 1:  # RULER's singular: "A special magic number is hidden ... What is the ..."
        intro, question, answer = [s.replace("Some", "A").replace("are all", "is").replace("are", "is")
                                   .replace("numbers", "number") for s in (intro, question, answer)]
    expected = [(i, j) for i in asked for j in range(values)]
    return (f"{intro}\n{context}\n{question}", answer, [str(vals[e]) for e in expected], [depth[e] for e in expected],
            (len(needles), places))


def vt(rng, hay, n, hops=4, letters=5):
    names = []
    while len(names) < hops + 1:  # distinct upper-case names (RULER: 5 letters, 3 in the one-shot example)
        name = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), letters))
        names += [name] if name not in names else []
    value = str(rng.integers(10000, 99999))  # RULER: np.random.randint(10000, 99999)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(hops)]
    dot = "" if hay == "filler" else "."  # RULER ends the chain's sentences with "." inside a text
    context, depths, places = insert(hay, n, [c + dot for c in chain], rng)  # sorted places: the chain in order
    return (f"{VT_INTRO}\n{context}\n{VT_QUESTION.format(query=value)}", VT_ANSWER.format(n=hops + 1, query=value),
            names, depths, (len(chain), places))


def lines(rng, hay, n):
    """n distractor lines and the asked one at a uniform place among them; names and values distinct."""
    names, values = distinct_names(rng, n + 1), rng.choice(40000, n + 1, replace=False) + 10000
    asked = int(rng.integers(n + 1))
    record = "".join(f"line {a}: REGISTER_CONTENT is <{v}>\n" for a, v in zip(names, values))
    return (LINES_INTRO + record + LINES_QUESTION.format(name=names[asked]), LINES_ANSWER.format(name=names[asked]),
            [str(values[asked])], [asked / max(n, 1)], (n + 1, len(NAMES)))


TASKS = {**{name: partial(niah, **needles) for name, needles in NIAH.items()}, "vt": vt, "lines": lines}


def fit(count, budget):
    """The most units n with count(n) <= budget, given count(0) <= budget: then count(n + 1) > budget.
    (RULER: a binary search on the number of haystack units.)"""
    lo, hi = 0, 1
    while count(hi) <= budget:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo


def builder(tok, task, hay, wrap, seed, length, trial):
    """build(n) -> (prompt ids, expected, depths, (places needed, had)) of one trial with n haystack units;
    every call with the same n gives the same prompt."""
    stream = [seed, zlib.crc32(task.encode()), length, trial]
    example = ""
    if task == "vt":  # RULER's one-shot example: a chain of 3-letter names in at most 500 tokens, then its answer
        ex = lambda n: vt(np.random.default_rng(stream + [1]), hay, n, letters=3)
        text, answer, names, _, _ = ex(fit(lambda n: len(tok.encode("".join(ex(n)[:2]), bos=False)), 500))
        example = f"{text}{answer} {' '.join(names)}\n\n"

    def build(n):
        text, answer, expected, depths, places = TASKS[task](np.random.default_rng(stream), hay, n)
        return wrap(example + text, answer), expected, depths, places
    return build


def make_trial(tok, task, hay, wrap, seed, length, trial, max_new):
    """The prompt of one trial (a dict), or ValueError naming the flag when --len cannot hold the task."""
    build = builder(tok, task, hay, wrap, seed, length, trial)
    fixed = len(build(0)[0]) + max_new
    if fixed > length:
        raise ValueError(f"--len {length} is below {task}'s fixed part ({fixed} tokens: an empty haystack and "
                         f"{max_new} to generate)")
    n = fit(lambda n: len(build(n)[0]), length - max_new)
    ids, expected, depths, (needed, places) = build(n)
    if needed > places:
        raise ValueError(f"--len {length}: {task} needs {needed} places for its needles, its haystack of {n} units "
                         f"holds {places}" if task != "lines" else f"--len {length}: lines needs {needed} distinct "
                         f"line names, there are {places}")
    return {"task": task, "trial": trial, "ids": ids, "expected": list(expected), "depths": depths, "units": n}


# --- prompt templates ---

def chat_wrapper(tok):
    """(task text, answer prefix) -> ids in the checkpoint's chat template (tokenizer_config.json's chat_template,
    rendered as transformers' apply_chat_template: one user turn, add_generation_prompt), then the answer prefix
    after the assistant header, as RULER does. Control tokens of the template by id; the task text stays plain."""
    import jinja2.sandbox

    file = Path(tok.path).parent / "tokenizer_config.json"
    config = json.loads(file.read_text()) if file.is_file() else {}
    if not isinstance(config.get("chat_template"), str):
        raise ValueError(f"--template chat: no chat_template in {file}; use --template none")
    name = lambda t: t.get("content", "") if isinstance(t, dict) else t or ""  # "<s>" or {"content": "<s>", ...}
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    before, after = env.from_string(config["chat_template"]).render(
        messages=[{"role": "user", "content": "\0"}], add_generation_prompt=True,
        bos_token=name(config.get("bos_token")), eos_token=name(config.get("eos_token"))).split("\0")
    special = re.compile("(" + "|".join(map(re.escape, sorted(tok.special, key=len, reverse=True))) + ")")

    def encode(text):  # control-token names in the template -> their ids, the rest as plain text
        return [i for part in special.split(text) if part
                for i in ([tok.special[part]] if part in tok.special else tok.encode(part, bos=False))]
    head = encode(before)
    return lambda text, answer: head + tok.encode(text, bos=False) + encode(after + answer)


def plain_wrapper(tok):
    """RULER's 'base' template: the task text and the answer prefix, after BOS as in eval_passkey."""
    return lambda text, answer: tok.encode(text + answer, bos=tok.bos_id is not None)


# --- running ---

def run_trials(model, tok, trials, max_new, cache, prev, log=None, piece=4096):
    """Greedy answers for trial dicts (with "ids"), in place. Prompts sharing a prefix with the one before
    prefill only the rest (exact: causal attention); sorted so that neighbours share the most. prev: the ids
    whose keys/values are in cache. Returns the ids last prefilled."""
    for i, t in enumerate(sorted(trials, key=lambda t: t["ids"])):
        ids, t0 = t.pop("ids"), time.perf_counter()
        shared = shared_prefix(model, ids, prev)
        progress = lambda done, todo: print(f"  prefill {done}/{todo} tokens, {done / (time.perf_counter() - t0):.0f} "
                                            f"tok/s", flush=True)
        text = tok.decode(greedy(model, ids, cache, shared, max_new, tok.eos_id, piece, progress))
        t.update(output=text, score=string_match_all(text, t["expected"]), prompt_tokens=len(ids),
                 prefilled=len(ids) - shared, seconds=round(time.perf_counter() - t0, 2))
        prev = ids
        if log:
            log(i, t)
    return prev


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lengths=["2k", "4k", "8k", "16k"])
    add = parser.add_argument
    add("--task", nargs="+", choices=list(TASKS), default=list(TASKS), help="tasks (default: all)")
    add("--trials", type=int, nargs="+", default=[20], help="trials per task and length; one number or one per length "
        "(default: %(default)s)")
    add("--seed", type=int, default=0, help="trial i of a task at length L comes from (SEED, task, L, i) (default: 0)")
    add("--max-new-tokens", type=int, help="greedy tokens per answer, every task (default: RULER's tokens_to_generate: "
        "niah 128, vt 30; lines 100, LongChat's)")
    add("--haystack", help=f"'filler' (eval_passkey's) or a text file, for every task but lines (its lines are its "
        f"haystack) (default: RULER's choice: {TEXT} for the niah tasks, in place of essays; filler for vt)")
    add("--template", choices=["chat", "none"], default="chat", help="chat: the task as the user turn of the "
        "checkpoint's chat template (tokenizer_config.json), as RULER runs chat models; none: plain text after BOS, "
        "RULER's 'base' (default: %(default)s: SmolLM2-135M-Instruct is a chat model, and at 2k it scored 0.41 with it "
        "against 0.36 without, results/ruler/calibration_2k*.json)")
    add("--reuse", nargs="+", default=[], help="JSON of earlier runs with the same model, rope, factor, dtype, seed, "
        "template and, per task, haystack and --max-new-tokens: their trials are taken, only missing ones run")
    args = parser.parse_args(argv)
    resolve_device_args(parser, args)
    lengths = parse_lengths(args.len)
    if len(args.trials) not in (1, len(lengths)):
        parser.error(f"--trials: one number or one per length ({len(lengths)}), got {len(args.trials)}")
    n_trials = dict(zip(lengths, args.trials * len(lengths) if len(args.trials) == 1 else args.trials))
    tasks = list(dict.fromkeys(args.task))
    max_new = {t: args.max_new_tokens or MAX_NEW[t] for t in tasks}
    haystack = {t: HAYSTACK[t] if args.haystack is None or t == "lines" else args.haystack for t in tasks}
    texts = {}
    for spec in set(haystack.values()) - {None, "filler"}:
        try:
            texts[spec] = (Path(__file__).parent / TEXT if spec == TEXT else Path(spec)).read_text(errors="replace").split()
        except OSError as e:
            parser.error(f"--haystack {spec}: {e}")
        if not texts[spec]:
            parser.error(f"--haystack {spec}: no text in it")
    hay = {t: texts.get(h, h) for t, h in haystack.items()}
    known = {}  # (task, length, trial) -> trial record
    per_task = lambda before: [f"{k} of {t} {v!r}" for k, now in (("haystack", haystack), ("max_new_tokens", max_new))
                               for t, v in (before.get(k) or {}).items() if t in now and now[t] != v]
    for old in reused_runs(parser, args, ("model", "rope", "factor", "dtype", "seed", "template"), per_task):
        known |= {(t["task"], t["length"], t["trial"]): t for t in old.get("trials", []) if t["task"] in tasks}
    model, tok = load(parser, args)
    try:
        wrap = chat_wrapper(tok) if args.template == "chat" else plain_wrapper(tok)
        for L in lengths:  # bad --len fails now, not after the shorter lengths have run
            for task in tasks:
                make_trial(tok, task, hay[task], wrap, args.seed, L, 0, max_new[task])
    except ValueError as e:
        parser.error(str(e))
    p = next(model.parameters())
    t_start, results, records = time.perf_counter(), [], []
    save = lambda complete, trials: write_json(args, {"lengths": lengths, "task": tasks, "max_new_tokens": max_new,
                                                      "haystack": haystack, "tokenizer": str(tok.path),
                                                      "complete": complete}, results, trials=trials, quiet=not complete)
    for L in lengths:
        cache, prev = None, []
        for task in tasks:
            try:
                todo = [make_trial(tok, task, hay[task], wrap, args.seed, L, i, max_new[task])
                        for i in range(n_trials[L]) if (task, L, i) not in known]
            except ValueError as e:  # trial 0 passed the check above, a later one may still lack places
                parser.error(str(e))
            finished = [known[task, L, i] for i in range(n_trials[L]) if (task, L, i) in known]

            def log(i, t):
                depths = " ".join(f"{d:.2f}" for d in t["depths"])
                print(f"{task} L={L} trial {i + 1}/{len(todo)} (#{t['trial']}) depths {depths} -> {t['output'][:60]!r} "
                      f"score {t['score']:.2f} ({t['seconds']:.1f} s, {(time.perf_counter() - t_start) / 60:.1f} min in)",
                      flush=True)
                finished.append(t | {"length": L})
                if args.out:  # after every trial (a 16k prompt takes minutes on a CPU): --reuse picks a stopped run up
                    save(False, records + finished)
            if todo:
                cache = cache or PrefixCache(model.config, 1, L, p.device, p.dtype)  # prompt + answer <= L tokens
                prev = run_trials(model, tok, todo, max_new[task], cache, prev, log)
            trials = sorted(finished, key=lambda t: t["trial"])
            records += trials
            results.append({"task": task, "length": L, "score": float(np.mean([t["score"] for t in trials])),
                            "trials": len(trials), "prompt_tokens": [min(t["prompt_tokens"] for t in trials),
                                                                     max(t["prompt_tokens"] for t in trials)]})
            if args.out:
                save((L, task) == (lengths[-1], tasks[-1]), records)
    score = {(r["task"], r["length"]): r["score"] for r in results}
    print(f"\nRULER-style tasks (string_match_all, 0-1), {args.model}, rope {args.rope or 'of the checkpoint'} "
          f"(factor {args.factor}), template {args.template}, {(time.perf_counter() - t_start) / 60:.1f} min")
    print(f"{'task':<16} | " + " | ".join(f"{L:>6}" for L in lengths))
    for task in tasks + ["mean"]:
        row = [score[task, L] if task != "mean" else np.mean([score[t, L] for t in tasks]) for L in lengths]
        print(f"{task:<16} | " + " | ".join(f"{s:>6.2f}" for s in row))
    if args.out and (plt := pyplot()):
        grid = [[score[t, L] for L in lengths] for t in tasks]
        fig, ax = plt.subplots(figsize=(2.8 + 0.9 * len(lengths), 1.2 + 0.45 * len(tasks)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for (r, c), s in np.ndenumerate(np.array(grid)):
            ax.text(c, r, f"{s:.2f}", ha="center", va="center", fontsize=8)
        ax.set(xticks=range(len(lengths)), xticklabels=lengths, yticks=range(len(tasks)), yticklabels=tasks,
               xlabel="prompt + answer length (tokens)", title=Path(args.out).stem)
        fig.colorbar(im, label="string_match_all")
        save_png(fig, args.out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
