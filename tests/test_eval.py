"""eval_passkey.py and eval_ppl.py on CPU: a tiny random Llama saved with save_model, and a byte-level
tokenizer.json built here (one token per byte, so lengths are easy to reason about)."""
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import eval_passkey
import eval_ppl
from eval_common import parse_lengths
from eval_passkey import FILLER, NEEDLE, build_prompt, first_int, run_length
from load_hf_weights import load_model, save_model
from model import Llama, LlamaConfig
from tokenizer import _byte_alphabet, load_tokenizer

VOCAB = 257  # 256 bytes + <|endoftext|> (BOS and EOS)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tok_dir = d / "tok"
    tok_dir.mkdir()
    spec = {"model": {"type": "BPE", "vocab": {c: b for b, c in _byte_alphabet().items()}, "merges": []},
            "decoder": {"type": "ByteLevel"}, "normalizer": None, "added_tokens": [{"id": 256, "content": "<|endoftext|>"}],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "add_prefix_space": False}]}}
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              tie_word_embeddings=True, bos_token_id=256, eos_token_id=256))
    model.init_weights(std=0.2)  # larger than usual: outputs that depend on the input, not near-ties
    save_model(model, d / "run" / "hf", tokenizer_dir=tok_dir)  # laid out like train.py's --out-dir
    return d / "run" / "hf"


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir).eval(), load_tokenizer(tiny_dir)


# --- passkey: prompt and scoring ---

def check_prompt(tok, L, depth, key=12345):
    ids = build_prompt(tok, L, depth, key)
    per_filler = len(tok.encode(FILLER * 8, bos=False)) / 8
    assert L - per_filler < len(ids) <= L, (L, len(ids), per_filler)  # the stated tolerance
    assert ids[0] == tok.bos_id
    before, after = tok.decode(ids[1:]).split(NEEDLE.format(key=key))
    n_before, n = before.count(FILLER), before.count(FILLER) + after.count(FILLER)
    assert abs(n_before / n - depth) <= 0.5 / n  # the key after round(depth * n) of the n filler repeats


@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_prompt_length_and_depth(tiny, depth):
    for L in (400, 1000, 2500):
        check_prompt(tiny[1], L, depth)


def test_prompt_length_and_depth_smollm2(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    for L in (2048, 16384):
        for depth in (0.0, 0.5, 0.93):
            check_prompt(tok, L, depth, key=90210)


def test_prompt_shorter_than_fixed_part(tiny):
    with pytest.raises(ValueError, match="fixed part"):
        build_prompt(tiny[1], 100, 0.5, 12345)


@pytest.mark.parametrize("text, value", [(" 12345.", 12345), ("The pass key is 12345. Remember", 12345),
                                         ("123456", 123456), (" 1 2345", 1), ("no digits", None), ("", None),
                                         ("\n\n-42 and 7", 42)])
def test_first_int(text, value):
    assert first_int(text) == value


def test_scoring_edge_cases():
    key = 12345
    assert first_int(" 12345 is it") == key  # leading space, trailing text
    assert first_int("123456") != key  # extra digits are wrong
    assert first_int("key: 1234 5") != key  # a split key is wrong
    assert first_int("nothing") != key


class Scripted(torch.nn.Module):
    """The tiny model (so that the KV cache fills as usual) answering a fixed text, one byte-token per step."""

    def __init__(self, real, answer):
        super().__init__()
        self.real, self.config, self.answer, self.steps = real, real.config, answer.encode(), 0

    def forward(self, x, kv_cache=None, logits_to_keep=0):
        self.real(x, kv_cache=kv_cache, logits_to_keep=1)
        logits = torch.zeros(1, 1, VOCAB)
        logits[0, 0, self.answer[min(self.steps, len(self.answer) - 1)]] = 1.0
        self.steps += 1
        return logits


@pytest.mark.parametrize("answer, output", [(" 12345. Remember it.", " 12345."), (" 123 45 6789", " 123 "),
                                            (" the pass key.", " the pass ")])
def test_decoding_stops_once_the_first_integer_is_complete(tiny, answer, output):
    """Passkey decoding ends at the first non-digit after a run of digits (the score cannot change after it);
    an answer without digits runs the full --max-new-tokens."""
    (t,) = run_length(Scripted(tiny[0], answer), tiny[1], 400, [0.5], [12345], max_new_tokens=10)
    assert t["output"] == output and t["correct"] == (first_int(answer) == 12345)


@pytest.mark.parametrize("rope", [None, {"rope_type": "dynamic", "factor": 2.0}, {"rope_type": "yarn", "factor": 2.0}])
def test_shared_prefix_equals_fresh_prefill(tiny_dir, tiny, rope):
    model = load_model(tiny_dir, rope=rope).eval()
    depths, keys = [0.1, 0.9, 0.5, 0.5], [11111, 22222, 33333, 44444]
    shared = run_length(model, tiny[1], 900, depths, keys, share=True)
    fresh = run_length(model, tiny[1], 900, depths, keys, share=False)
    assert [t["output"] for t in shared] == [t["output"] for t in fresh]
    assert [t["depth"] for t in shared] == [0.9, 0.5, 0.5, 0.1]  # deepest first
    assert all(t["prefilled"] == t["prompt_tokens"] for t in fresh)
    if rope is None:  # the later trials prefill only what follows the shared intro + filler
        assert max(t["prefilled"] for t in shared[1:]) < shared[0]["prefilled"] == shared[0]["prompt_tokens"]


def test_parse_lengths():
    assert parse_lengths(["2k", "4096", "1k:3k:1k", "8k:16k"]) == [1024, 2048, 3072, 4096, 8192, 16384]


# --- perplexity ---

def direct_nll(model, ids):
    """Summed next-token NLL of ids [1, T] from the full logits."""
    with torch.no_grad():
        logp = F.log_softmax(model(ids)[0].double(), dim=-1)
    return -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum().item()


def docs_of(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([[256]]), torch.randint(0, 256, (1, n - 1), generator=g)], 1) for n in lengths]


def test_truncate_equals_full_logits(tiny):
    model = tiny[0]
    docs = docs_of(300, 150)
    res = {r["length"]: r for r in eval_ppl.evaluate(model, docs, [64, 150, 200], "truncate", log=lambda s: None)}
    for L in (64, 150):
        nll = sum(direct_nll(model, d[:, :L]) for d in docs)
        assert res[L]["tokens"] == 2 * (L - 1) and res[L]["windows"] == 2
        assert res[L]["ppl"] == pytest.approx(math.exp(nll / (2 * (L - 1))), rel=1e-5)  # token-weighted
        per_window = [direct_nll(model, d[:, :L]) / (L - 1) for d in docs]
        assert res[L]["ppl_window_mean"] == pytest.approx(math.exp(sum(per_window) / 2), rel=1e-5)
    assert res[200]["documents"] == 1 and res[200]["tokens"] == 199  # the 150-token document is left out at 200
    # one pass through the KV cache in small pieces equals separate windows
    pieces = eval_ppl.truncate_nll(model, docs[0], [64, 150, 300], piece=16)
    for L, (nll, n) in pieces.items():
        assert n == L - 1 and nll == pytest.approx(direct_nll(model, docs[0][:, :L]), rel=1e-5)


def test_sliding_equals_full_logits_and_scores_each_token_once(tiny):
    model, (doc,) = tiny[0], docs_of(230)
    L, stride = 64, 24
    ref, prev_end = 0.0, 0
    for begin in range(0, 230, stride):  # each window scores the tokens after the previous window's end
        end = min(begin + L, 230)
        with torch.no_grad():
            logp = F.log_softmax(model(doc[:, begin:end])[0].double(), dim=-1)
        ref -= sum(logp[i - 1 - begin, doc[0, i]].item() for i in range(max(prev_end, begin + 1), end))
        if end == 230:
            break
        prev_end = end
    (r,) = eval_ppl.evaluate(model, [doc], [L], "sliding", stride, log=lambda s: None)
    assert r["tokens"] == 229 and r["ppl"] == pytest.approx(math.exp(ref / 229), rel=1e-5)

    seen = []  # token ids = positions: the labels show which positions get scored

    def fake(ids, labels, reduction):
        seen.extend(labels[0, 1:][labels[0, 1:] != -100].tolist())
        return torch.tensor(0.0)
    for n, L, stride in [(230, 64, 24), (230, 64, 63), (50, 64, 16), (65, 64, 1)]:
        seen.clear()
        windows = eval_ppl.sliding_nll(fake, torch.arange(n)[None], L, stride)
        assert sorted(seen) == list(range(1, n)) and sum(w[1] for w in windows) == n - 1


# --- command lines ---

def test_passkey_cli(tiny_dir, tmp_path, capsys):
    out = tmp_path / "pk.json"
    eval_passkey.main(["--model", str(tiny_dir.parent), "--len", "400", "700", "--trials", "3", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [(r["length"], r["trials"]) for r in data["results"]] == [(400, 3), (700, 3)]
    assert all(0 <= r["accuracy"] <= 1 and r["prompt_tokens"][1] <= r["length"] for r in data["results"])
    assert len(data["trials"]) == 6 and data["settings"]["seed"] == 0
    eval_passkey.main(["--model", str(tiny_dir), "--len", "400", "--depths", "0", "1", "--trials", "2",
                       "--rope", "yarn", "--factor", "2", "--out", str(out)])
    assert [d["depth"] for d in json.loads(out.read_text())["results"][0]["by_depth"]] == [0, 1]
    assert "accuracy" in capsys.readouterr().out


def test_passkey_reuse_runs_only_missing_trials(tiny_dir, tmp_path, capsys):
    """--reuse: a 2-trial run extended to 4 trials runs 2 more, and equals a fresh 4-trial run."""
    a, b, fresh = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "fresh.json"
    base = ["--model", str(tiny_dir), "--len", "400", "--max-new-tokens", "3"]
    eval_passkey.main([*base, "--trials", "2", "--out", str(a)])
    capsys.readouterr()
    eval_passkey.main([*base, "--trials", "4", "--reuse", str(a), "--out", str(b)])
    assert capsys.readouterr().out.count("L=400 trial") == 2  # only the two new trials ran
    eval_passkey.main([*base, "--trials", "4", "--out", str(fresh)])
    assert json.loads(fresh.read_text())["settings"]["complete"] is True
    key = lambda f: sorted((t["depth"], t["key"], t["output"]) for t in json.loads(f.read_text())["trials"])
    assert key(b) == key(fresh) and len(key(b)) == 4
    with pytest.raises(SystemExit):
        eval_passkey.main([*base, "--trials", "4", "--seed", "1", "--reuse", str(a)])
    err = capsys.readouterr().err
    assert f"--reuse {a}: its seed 0 differ" in err


def test_ppl_cli(tiny_dir, tmp_path):
    (tmp_path / "a.txt").write_text("Once upon a time. " * 30)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": "x y z " * 50}) + "\n")
    out = tmp_path / "ppl.json"
    for mode in ("truncate", "sliding"):
        eval_ppl.main(["--model", str(tiny_dir), "--data", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"),
                       "--len", "128", "256", "--mode", mode, "--stride", "64", "--min-tokens", "100", "--out", str(out)])
        data = json.loads(out.read_text())
        assert data["settings"]["documents"] == ["a.txt", "b.jsonl:2"]
        assert [(r["length"], r["documents"]) for r in data["results"]] == [(128, 2), (256, 2)]
        assert all(r["ppl"] > 1 and r["tokens"] > 0 for r in data["results"])


LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0], "long_factor": [1.0, 2.0, 4.0, 8.0]}


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0}, LONGROPE], ids=["dynamic", "longrope"])
def test_length_dependent_rope_scores_each_length_alone(tiny_dir, rope):
    """dynamic NTK and longrope pick their frequencies from how far the input reaches (here: past the
    checkpoint's 256 positions or not), so the window ids[:L] is its own forward at each L: one pass
    through the KV cache would score L = 400 partly with the frequencies of the first 200 tokens."""
    model = load_model(tiny_dir, rope=rope).eval()
    docs = docs_of(500, 450)
    res = {r["length"]: r for r in eval_ppl.evaluate(model, docs, [200, 400], "truncate", log=lambda s: None)}
    for L in (200, 400):
        nll = sum(direct_nll(model, d[:, :L]) for d in docs)
        assert res[L]["ppl"] == pytest.approx(math.exp(nll / (2 * (L - 1))), rel=1e-5)
    one_pass = eval_ppl.truncate_nll(model, docs[0], [200, 400])  # what the per-length path avoids
    assert abs(one_pass[400][0] / direct_nll(model, docs[0][:, :400]) - 1) > 1e-3


def test_ppl_max_docs_counts_only_long_enough_documents(tiny_dir, tmp_path):
    texts = ("short", "x y z " * 50, "Once " * 60)  # the first is below --min-tokens: it does not count
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "ppl.json"
    eval_ppl.main(["--model", str(tiny_dir), "--data", str(tmp_path / "a.jsonl"), "--len", "128", "--min-tokens", "100",
                   "--max-docs", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["settings"]["documents"] == ["a.jsonl:2"] and data["results"][0]["documents"] == 1


def test_ppl_compare_draws_earlier_runs(tiny_dir, tmp_path, monkeypatch):
    """--compare A.json B.json --out P.png draws one line per run (alone, or beside the run just made)."""
    pytest.importorskip("matplotlib")
    runs = {"yarn": [(128, 9.0), (256, 7.5)], "base": [(128, 8.0), (256, 30.0), (512, None)]}
    for name, pts in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"results": [{"length": L, "ppl": v} for L, v in pts]}))
    drawn = []
    monkeypatch.setattr(eval_ppl, "save_png", lambda fig, out: drawn.append(
        (str(out), [(line.get_label(), list(zip(line.get_xdata(), line.get_ydata()))) for line in fig.axes[0].get_lines()])))
    compare = ["--compare", str(tmp_path / "yarn.json"), str(tmp_path / "base.json")]
    eval_ppl.main([*compare, "--out", str(tmp_path / "plot.png")])
    assert drawn == [(str(tmp_path / "plot.png"), [("yarn", runs["yarn"]), ("base", runs["base"][:2])])]  # no point for None
    (tmp_path / "a.txt").write_text("Once upon a time. " * 30)
    eval_ppl.main(["--model", str(tiny_dir), "--data", str(tmp_path / "a.txt"), "--len", "128", *compare,
                   "--out", str(tmp_path / "new.json")])
    assert [label for label, _ in drawn[1][1]] == ["yarn", "base", "new"]


@pytest.mark.parametrize("script, argv, message", [
    (eval_passkey, ["--model", "nowhere", "--len", "1k"], "no model at nowhere"),
    (eval_passkey, ["--len", "100", "--trials", "1"], "below the prompt's fixed part"),
    (eval_passkey, ["--len", "1k", "--rope", "linear"], "needs --factor"),
    (eval_ppl, ["--data", "EMPTY", "--len", "64"], "no documents"),
    (eval_ppl, ["--data", "MISSING", "--len", "64"], "cannot read --data"),
    (eval_ppl, ["--len", "64"], "--data is required"),
    (eval_ppl, ["--data", "EMPTY", "--len", "64", "--mode", "sliding", "--stride", "64"], "--stride must be"),
    (eval_passkey, ["--len", "400", "700", "--trials", "1", "2", "3"], "--trials: one number or one per length (2), got 3"),
    (eval_passkey, ["--len", "400", "--depths", "0.5", "1.5"], "--depths must lie in [0, 1]"),
    (eval_passkey, ["--len", "400", "--reuse", "MISSING"], "--reuse MISSING: [Errno 2] No such file or directory"),
    (eval_passkey, ["--len", "400", "--reuse", "EMPTY"], "--reuse EMPTY: Expecting value: line 1 column 1"),
])
def test_bad_input(tiny_dir, tmp_path, capsys, script, argv, message):
    (tmp_path / "empty.txt").write_text("")
    paths = {"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "missing.txt")}
    argv = [paths.get(a, a) for a in argv]
    message = message.replace("MISSING", paths["MISSING"]).replace("EMPTY", paths["EMPTY"])
    if "--model" not in argv:
        argv += ["--model", str(tiny_dir)]
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script", [eval_passkey, eval_ppl])
@pytest.mark.parametrize("broken", ["tokenizer.json", "model.safetensors"])
def test_corrupt_model_folder_is_one_line(tiny_dir, tmp_path, capsys, script, broken):
    """A truncated weights file or an invalid tokenizer.json under --model: argparse's error naming the file."""
    shutil.copytree(tiny_dir, tmp_path / "m")
    f = tmp_path / "m" / broken
    f.write_bytes(f.read_bytes()[:100])
    (tmp_path / "doc.txt").write_text("x " * 200)
    with pytest.raises(SystemExit) as e:
        script.main(["--model", str(tmp_path / "m"), "--len", "128", *(["--data", str(tmp_path / "doc.txt")] if script is eval_ppl else [])])
    why = "not valid JSON" if broken == "tokenizer.json" else "not a readable safetensors file"
    assert e.value.code == 2 and f": error: --model {tmp_path / 'm'}: {f}: {why}" in capsys.readouterr().err.strip().splitlines()[-1]


def test_passkey_stopped_run_keeps_finished_lengths(tiny_dir, tmp_path, monkeypatch, capsys):
    """Stopped during its second length, a run's JSON holds the first (complete: false); --reuse it to go on."""
    out, real = tmp_path / "pk.json", eval_passkey.run_length
    def stop_at_700(model, tok, length, *a, **k):
        if length == 700:
            raise KeyboardInterrupt
        return real(model, tok, length, *a, **k)
    monkeypatch.setattr(eval_passkey, "run_length", stop_at_700)
    argv = ["--model", str(tiny_dir), "--len", "400", "700", "--trials", "2", "--max-new-tokens", "2"]
    with pytest.raises(KeyboardInterrupt):
        eval_passkey.main([*argv, "--out", str(out)])
    partial = json.loads(out.read_text())
    assert partial["settings"]["complete"] is False and [r["length"] for r in partial["results"]] == [400]
    monkeypatch.setattr(eval_passkey, "run_length", real)
    capsys.readouterr()
    eval_passkey.main([*argv, "--reuse", str(out), "--out", str(out)])
    assert capsys.readouterr().out.count(" trial ") == 2  # only the two at 700 ran
    assert [r["length"] for r in json.loads(out.read_text())["results"]] == [400, 700]


def test_passkey_stopped_run_keeps_finished_trials(tiny_dir, tmp_path, monkeypatch, capsys):
    """Stopped inside a length (a 32k trial takes minutes), the JSON keeps every finished trial; --resume goes on,
    and once the run is complete, does nothing."""
    out, real, calls = tmp_path / "pk.json", eval_passkey.greedy, []
    def stop_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(eval_passkey, "greedy", stop_at_third)
    argv = ["--model", str(tiny_dir), "--len", "400", "--trials", "4", "--max-new-tokens", "2"]
    with pytest.raises(KeyboardInterrupt):
        eval_passkey.main([*argv, "--out", str(out)])
    partial = json.loads(out.read_text())
    assert partial["settings"]["complete"] is False and len(partial["trials"]) == 2 and partial["results"] == []
    monkeypatch.setattr(eval_passkey, "greedy", real)
    capsys.readouterr()
    eval_passkey.main([*argv, "--resume", "--out", str(out)])
    assert capsys.readouterr().out.count(" trial ") == 2  # only the two missing ones ran
    done = json.loads(out.read_text())
    assert done["settings"]["complete"] is True and done["results"][0]["trials"] == 4
    monkeypatch.setattr(eval_passkey, "load", lambda *a: pytest.fail("a complete --out is not run again"))
    assert eval_passkey.main([*argv, "--resume", "--out", str(out)]) == done["results"]
    assert "complete: nothing to do" in capsys.readouterr().out and json.loads(out.read_text()) == done


def test_length_table_rows_columns_and_gaps(capsys):
    """The campaigns' markdown table: one column per length any row has, '-' where a row lacks it."""
    from eval_common import length_table
    length_table("T", {"a": {2048: 1, 8192: 3}, "b": {4096: 2}}, {"a": "row a", "b": "row b"}, lambda r: f"<{r}>")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "T" and lines[2] == "| row | 2k | 4k | 8k |" and lines[3] == "|---|---:|---:|---:|"
    assert lines[4:] == ["| row a | <1> | - | <3> |", "| row b | - | <2> | - |"]
