"""eval_ruler.py on CPU with test_eval's tiny random Llama and byte-level tokenizer (one token per byte):
prompts (deterministic, filled to --len within one unit, each needle once), scoring, chat template, CLI."""
import json
import re
from pathlib import Path

import pytest

import eval_ruler as R
from eval_passkey import FILLER
from load_hf_weights import load_model
from model import KVCache
from test_eval import tiny, tiny_dir  # noqa: F401 (fixtures)
from tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TEXT = Path(R.__file__).parent / R.TEXT
HAYS = [(task, hay) for task in R.TASKS for hay in (["filler", "text"] if task != "lines" else [None])]


def trial(tok, task, hay, L, seed=0, i=0, wrap=None):
    words = TEXT.read_text().split() if hay == "text" else hay
    wrap = wrap or R.plain_wrapper(tok)
    return R.make_trial(tok, task, words, wrap, seed, L, i, R.MAX_NEW[task]), R.builder(tok, task, words, wrap, seed, L, i)


@pytest.mark.parametrize("task, hay", HAYS)
def test_prompt_deterministic_fits_len_holds_each_needle_once(tiny, task, hay):
    tok = tiny[1]
    for L in ((1300, 2200) if hay != "text" else (2600, 4000)):  # the book's first sentences are long
        t, build = trial(tok, task, hay, L)
        assert t["ids"] == trial(tok, task, hay, L)[0]["ids"]  # the same prompt every time
        assert t["ids"] != trial(tok, task, hay, L, seed=1)[0]["ids"] and t["ids"] != trial(tok, task, hay, L, i=1)[0]["ids"]
        n, new = t["units"], R.MAX_NEW[task]
        assert len(t["ids"]) + new <= L < len(build(n + 1)[0]) + new  # n units fit, n + 1 do not
        if hay == "filler":  # ... so the prompt is short of L by less than one unit
            assert L - len(t["ids"]) - new < len(tok.encode(FILLER + "\n", bos=False))
        assert all(0 <= d <= 1 for d in t["depths"]) and len(t["depths"]) == len(t["expected"])
        assert len(set(t["depths"])) == len(t["depths"])  # distinct places
        text = tok.decode(t["ids"][1:])
        body = text[text.rfind(R.VT_INTRO):] if task == "vt" else text[text.index("\n"):]  # after intro (and example)
        if task.startswith("niah"):
            needles = re.findall(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.", text)
            assert len(needles) == 4 == len(set(needles)) == len({k for k, _ in needles}) * (
                4 if task == "niah_multivalue" else 1)  # 4 keys, or 1 key with 4 values
            assert all(text.count(v) == 1 for v in t["expected"]) and {v for _, v in needles} >= set(t["expected"])
            assert len(t["expected"]) == (1 if task == "niah_multikey" else 4)
            asked = {k for k, v in needles if v in t["expected"]}
            assert all(text.count(k) == [n for n, _ in needles].count(k) + 2 for k in asked)  # + question, answer
            one = task == "niah_multikey"  # RULER's singular wording for a single answer
            assert text.startswith("A special magic number is hidden" if one else "Some special magic numbers are hidden")
            assert text.endswith("mentioned in the provided text " + ("is" if one else "are"))
            needle_at = [body.index(f"is: {v}.") for v in t["expected"]]
        elif task == "vt":
            a, value = t["expected"], re.search(rf"VAR {t['expected'][0]} = (\d+)", text)[1]
            assert text.count(f"VAR {a[0]} = {value}") == 1 and text.count(f"VAR {a[0]} =") == 1
            assert all(text.count(f"VAR {b} = VAR {c}") == 1 for c, b in zip(a, a[1:]))  # each hop once ...
            needle_at = [body.index(f"VAR {a[0]} = {value}")] + [body.index(f"VAR {b} = VAR {c}") for c, b in zip(a, a[1:])]
            assert needle_at == sorted(needle_at)  # ... in the chain's order
            assert all(len(v) == 5 for v in a) and len(set(a)) == 5
            assert text.count("they are:  ") == 1  # the one-shot example's answer (RULER's double space)
        else:
            (value,) = t["expected"]
            (name,) = re.findall(rf"line ([a-z]+-[a-z]+): REGISTER_CONTENT is <{value}>\n", text)
            assert text.count(f"<{value}>") == 1 and text.count(f"line {name}:") == 1
            assert text.count(f"in line {name}? I need the number.") == 1
            values = re.findall(r"REGISTER_CONTENT is <(\d+)>", text)
            assert len(values) == len(set(values)) == n + 1
            assert t["depths"] == [pytest.approx(values.index(value) / n)]  # distractor lines before it / all
        if hay == "filler":  # depth: the share of the filler units that come before the needle
            assert t["depths"] == [pytest.approx(body[:i].count(FILLER) / n) for i in needle_at]


def test_text_haystack_is_the_text_in_order(tiny):
    """The text haystack is the book's first words, needles between sentences, nothing else in between."""
    t, _ = trial(tiny[1], "niah_multivalue", "text", 2000)
    text = tiny[1].decode(t["ids"][1:])
    body = text.split("\n")[1]
    body = re.sub(r" ?One of the special magic numbers for [a-z]+-[a-z]+ is: \d{7}\.", "", body)
    assert body.split() == TEXT.read_text().split()[:t["units"]]
    assert R.units(["One.", "two", "three!'", "Four?"], 6) == (["One.", "two three!'", "Four?", "One.", "two"], " ")  # repeated


@pytest.mark.parametrize("task, hay", HAYS)
def test_scorer_full_and_partial_answers(tiny, task, hay):
    t, _ = trial(tiny[1], task, hay, 3000)
    e = t["expected"]
    assert R.string_match_all(" " + ", ".join(e) + ".", e) == 1
    assert R.string_match_all(" and ".join(x.lower() for x in e), e) == 1  # case-insensitive
    assert R.string_match_all("", e) == 0
    assert R.string_match_all(e[0], e) == 1 / len(e)  # partial: the first of 4 is 0.25
    if len(e) > 1:
        assert R.string_match_all(" ".join(e[:2]) + " 9999999", e) == 2 / len(e)


def test_string_match_all():
    assert R.string_match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1
    assert R.string_match_all("1234567", ["1234567", "7654321", "1111111", "2222222"]) == 0.25
    assert R.string_match_all("they are: abcde FGHIJ", ["ABCDE", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert R.string_match_all("12345", ["1234567"]) == 0


class Spy:
    """The model, recording the tokens that its KV cache holds after each call."""
    def __init__(self, model):
        self.model, self.config, self.held = model, model.config, []

    def __call__(self, x, kv_cache, logits_to_keep):
        self.held = self.held[:kv_cache.length] + x[0].tolist()
        return self.model(x, kv_cache=kv_cache, logits_to_keep=logits_to_keep)


@pytest.mark.parametrize("rope", [None, {"rope_type": "dynamic", "factor": 2.0}])
def test_shared_prefix_equals_fresh_prefill(tiny_dir, tiny, rope):
    """Prompts after the first prefill only what they do not share with the one before; the cache then holds
    exactly the prompt (the tokens fed after the shared ones), and the answers equal fresh prefills. Dynamic NTK
    (RoPE from the input's length) shares only between prompts of one length."""
    model, tok = load_model(tiny_dir, rope=rope).eval(), tiny[1]
    todo = [trial(tok, "niah_multivalue", "text", 3000, i=i)[0] for i in range(3)]
    ids = {t["trial"]: t["ids"] for t in todo}
    fresh = [dict(t) for t in todo]
    for t in fresh:
        R.run_trials(model, tok, [t], 5, KVCache(model.config, 1, 3000), prev=[])
    spy, shared, held = Spy(model), [dict(t) for t in todo], []
    R.run_trials(spy, tok, shared, 5, KVCache(model.config, 1, 3000), prev=[],
                 log=lambda i, t: held.append(spy.held[:t["prompt_tokens"]] == ids[t["trial"]]))
    assert held == [True] * 3
    assert [t["output"] for t in shared] == [t["output"] for t in fresh]
    assert len({t["prompt_tokens"] for t in shared}) == 3  # three lengths
    if rope is None:  # the book's text before the first needle is shared
        assert sum(t["prefilled"] for t in shared) < sum(t["prompt_tokens"] for t in shared)
    else:
        assert all(t["prefilled"] == t["prompt_tokens"] for t in shared)


def test_answer_stops_at_eos(tiny, monkeypatch):
    model, tok = tiny
    t = trial(tok, "lines", None, 1500)[0]
    (first,) = R.greedy(model, t["ids"], KVCache(model.config, 1, 1500), 0, 1, None)
    monkeypatch.setattr(tok, "eos_id", first)  # the model's first answer token ends the answer
    R.run_trials(model, tok, [t], 3, KVCache(model.config, 1, 1500), prev=[])
    assert t["output"] == ""


CHATML = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")


def test_chat_template_control_tokens_by_id(tiny_dir, tmp_path):
    """Tokens of the template get their ids; the same name inside the task text stays plain text."""
    for f in ("tokenizer.json", "config.json"):
        (tmp_path / f).write_text((tiny_dir / f).read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    tok = load_tokenizer(tmp_path)
    ids = R.chat_wrapper(tok)("hi <|endoftext|>", " A:")
    assert ids == [256, *b"user\nhi <|endoftext|>", 256, *b"\n", 256, *b"assistant\n A:"]
    with pytest.raises(ValueError, match="no chat_template"):
        R.chat_wrapper(load_tokenizer(tiny_dir))


def test_chat_template_smollm2_equals_transformers(smollm2_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    text, answer = "Some special magic numbers are hidden.\nThe grass is green. 1234567", " The numbers are"
    rendered = hf.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    ours = R.chat_wrapper(load_tokenizer(smollm2_dir))(text, answer)
    assert ours == hf(rendered + answer, add_special_tokens=False)["input_ids"]
    assert rendered.startswith("<|im_start|>system\n") and ours[0] == 1


def run(capsys, *argv):
    out = R.main([str(a) for a in argv])
    return out, capsys.readouterr()


def test_cli_json_table_png_and_reuse(tiny_dir, tmp_path, capsys):
    """All tasks with RULER's answer lengths; then --reuse: a 1-trial run extended to 2 runs only the new trial
    of each task, and equals a fresh 2-trial run."""
    out = tmp_path / "r.json"
    results, printed = run(capsys, "--model", tiny_dir, "--len", 3000, "--trials", 1, "--template", "none", "--out", out)
    data = json.loads(out.read_text())
    assert data["settings"]["max_new_tokens"] == R.MAX_NEW and data["settings"]["complete"] is True
    assert data["settings"]["haystack"] == R.HAYSTACK
    assert [(r["task"], r["length"], r["trials"]) for r in data["results"]] == [(t, 3000, 1) for t in R.TASKS]
    assert all(0 <= r["score"] <= 1 and r["prompt_tokens"][1] + R.MAX_NEW[r["task"]] <= 3000 for r in data["results"])
    assert {"depths", "expected", "output", "score", "units"} <= set(data["trials"][0])
    assert "niah_multiquery  |" in printed.out and "mean" in printed.out
    pytest.importorskip("matplotlib")
    assert out.with_suffix(".png").is_file()

    a, b, fresh = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "fresh.json"
    base = ["--model", tiny_dir, "--len", 1400, 1700, "--max-new-tokens", 3, "--template", "none", "--haystack", "filler",
            "--task", "niah_multikey", "vt"]
    run(capsys, *base, "--trials", 1, "--out", a)
    _, printed = run(capsys, *base, "--trials", 2, "--reuse", a, "--out", b)
    assert printed.out.count(" trial ") == 4  # the second trial of 2 tasks at 2 lengths
    run(capsys, *base, "--trials", 2, "--out", fresh)
    key = lambda f: sorted((t["task"], t["length"], t["trial"], t["output"], t["score"])
                           for t in json.loads(f.read_text())["trials"])
    assert key(b) == key(fresh) and len(key(b)) == 8
    for flag, value, what in [("--seed", 1, "seed 0"), ("--haystack", TEXT, "haystack of niah_multikey 'filler'"),
                              ("--max-new-tokens", 4, "max_new_tokens of niah_multikey 3")]:
        with pytest.raises(SystemExit):
            run(capsys, *_set(base, flag, value), "--trials", 2, "--reuse", a)
        assert f"--reuse {a}: its {what}" in capsys.readouterr().err


def _set(argv, flag, value):
    """argv with flag's value replaced (or the flag added)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@pytest.mark.parametrize("argv, message", [
    (["--task", "niah_single"], "argument --task: invalid choice: 'niah_single'"),
    (["--len", 500], "--len 500 is below niah_multikey's fixed part (664 tokens: an empty haystack and 128 to generate)"),
    (["--len", 900, "--task", "vt"], "--len 900 is below vt's fixed part"),
    (["--len", 750, "--task", "niah_multikey", "--haystack", "filler"],
     "--len 750: niah_multikey needs 4 places for its needles, its haystack of 0 units holds 1"),
    (["--len", 850, "--task", "niah_multiquery", "--haystack", "filler"],
     "--len 850: niah_multiquery needs 4 places for its needles, its haystack of 0 units holds 1"),
    (["--template", "chat"], "--template chat: no chat_template in"),
    (["--haystack", "MISSING"], "--haystack MISSING: [Errno 2] No such file or directory"),
    (["--haystack", "EMPTY"], "--haystack EMPTY: no text in it"),
    (["--len", 1400, 1500, "--trials", 1, 2, 3], "--trials: one number or one per length (2), got 3"),
    (["--reuse", "MISSING"], "--reuse MISSING: [Errno 2] No such file or directory"),
])
def test_bad_input(tiny_dir, tmp_path, capsys, argv, message):
    (tmp_path / "empty.txt").write_text(" \n")
    paths = {"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "missing.txt")}
    argv = [paths.get(a, a) for a in argv]
    for k, v in paths.items():
        message = message.replace(k, v)
    defaults = {"--len": 3000, "--trials": 1, "--template": "none"}
    argv += [x for k, v in defaults.items() if k not in argv for x in (k, v)]
    with pytest.raises(SystemExit) as e:
        R.main([str(a) for a in argv + ["--model", tiny_dir]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err.strip().splitlines()[-1], err  # after the usage: one line


@pytest.mark.parametrize("stop", [3, 4])
def test_stopped_run_keeps_finished_trials(tiny_dir, tmp_path, monkeypatch, capsys, stop):
    """Stopped at vt's first or second trial, a run's JSON holds what finished (complete: false), lines' score
    among its results; --reuse it to run only the trials that were missing."""
    out, real, calls = tmp_path / "r.json", R.greedy, []

    def stopping(*a, **k):
        calls.append(1)
        if len(calls) == stop:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(R, "greedy", stopping)
    argv = ["--model", tiny_dir, "--len", 1400, "--trials", 2, "--max-new-tokens", 2, "--template", "none",
            "--haystack", "filler", "--task", "lines", "vt"]
    with pytest.raises(KeyboardInterrupt):
        run(capsys, *argv, "--out", out)
    partial = json.loads(out.read_text())
    assert partial["settings"]["complete"] is False and [r["task"] for r in partial["results"]] == ["lines"]
    assert [t["task"] for t in partial["trials"]] == ["lines", "lines", "vt"][:stop - 1]
    monkeypatch.setattr(R, "greedy", real)
    capsys.readouterr()
    _, printed = run(capsys, *argv, "--reuse", out, "--out", out)
    assert printed.out.count(" trial ") == printed.out.count("vt L=1400 trial") == 5 - stop  # only those missing
    data = json.loads(out.read_text())
    assert [r["task"] for r in data["results"]] == ["lines", "vt"] and data["settings"]["complete"] is True
    assert [(t["task"], t["trial"]) for t in data["trials"]] == [("lines", 0), ("lines", 1), ("vt", 0), ("vt", 1)]
