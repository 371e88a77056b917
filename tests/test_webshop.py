"""WebShop text env: exact page strings, search, paging, options, the purchase reward computed by
hand, no-op actions, determinism and anchors, the env registry with real entry points, and the
loader for the real file formats."""
from __future__ import annotations

import json
import random
import textwrap
import uuid
from pathlib import Path

import pytest

from envs.base import TextEnv, list_envs, make_env, register_env
from envs.webshop import WebShopEnv, get_reward, parse_action, strip_instruction
from envs.webshop.catalog import (Catalog, generate_catalog, generate_raw, load_webshop_dir,
                                  load_webshop_files, product_prices, products_from_raw)
from envs.webshop.engine import SearchEngine, tokenize
from envs.webshop.reward import get_option_reward, get_type_reward, normalize_color

GOAL_ASIN = "B000000001"
GOAL_TITLE = "Acme Deodorant Stick Travel Case Gift Box Mirror Towel Brush Comb Soap"
INSTR = "i need a long lasting aluminum free deodorant with scent: citrus, and size: 2.6 ounce"


def _item(asin, name, query, cat, price, options=None, desc="Plain product.", bullets=("Simple",),
          category="beauty"):
    return {"asin": asin, "name": name, "query": query, "product_category": cat,
            "category": category, "pricing": price, "full_description": desc,
            "small_description": list(bullets), "images": [""],
            "customization_options": options}


def _small_raw():
    """A goal deodorant, four decoys for r_type 0 / 0.1 / 0.5 and 11 notebooks for paging."""
    opts = {"Scent": [{"value": "Citrus"}, {"value": "Cedar"}],
            "Size": [{"value": "2.6 Ounce"}, {"value": "2.6 Ounce (Pack of 2)"}]}
    raw = [
        _item(GOAL_ASIN, GOAL_TITLE, "deodorant", "Beauty › Personal Care › Deodorants", "$12.99",
              opts, desc="Gentle stick for daily use.", bullets=("Fresh all day", "No stains")),
        _item("B000000002", "Zenith Soap Dish", "soap dish", "Home › Bath › Soap Dishes", "$5.00"),
        _item("B000000003", "Zenith Soap Towel Rack", "towel rack", "Home › Bath › Towel Racks",
              "$15.00", desc="Long lasting steel."),
        _item("B000000004", "Zenith Candle", "candle", "Home › Decor › Candles", "$9.50"),
        _item("B000000005", "Zenith Lip Balm", "lip balm", "Beauty › Personal Care › Lip Care",
              "$3.25"),
    ]
    raw += [_item(f"B00000010{i}" if i < 10 else f"B0000001{i}", f"Brand{i} Spiral Notebook",
                  "notebook", "Office Products › Paper › Notebooks", f"${2 + i}.50",
                  category="office") for i in range(11)]
    attrs = {GOAL_ASIN: {"attributes": ["long lasting", "aluminum free"],
                         "instruction": "i need a long lasting aluminum free deodorant",
                         "instruction_attributes": ["long lasting", "aluminum free"]},
             "B000000002": {"attributes": ["non slip"]}}
    reviews = [{"asin": GOAL_ASIN, "average_rating": 4.5, "reviews": [
        {"title": "Smells great", "stars": 5, "review": "Lasts all day."},
        {"title": "Meh", "score": 3}]}]
    return raw, attrs, reviews


def _goal(price_upper=20.0, options=None):
    return {"asin": GOAL_ASIN, "category": "beauty", "query": "deodorant", "name": GOAL_TITLE,
            "product_category": "Beauty › Personal Care › Deodorants", "instruction_text": INSTR,
            "attributes": ["long lasting", "aluminum free"], "price_upper": price_upper,
            "goal_options": options or {"scent": "citrus", "size": "2.6 ounce"}, "weight": 1.0}


@pytest.fixture(scope="module")
def small():
    raw, attrs, reviews = _small_raw()
    products = products_from_raw(raw, attrs, reviews=reviews)
    return Catalog(products, product_prices(products, random.Random(0)),
                   [_goal(), _goal(price_upper=10.0)])


def _env(catalog, goal_idx=0, **kw):
    env = WebShopEnv(catalog, **kw)
    env.reset(goal_idx=goal_idx)
    return env


# ------------------------------------------------------------------------------ pages
def test_pages_are_exactly_webshop_text_mode(small):
    env = WebShopEnv(small)
    obs, info = env.reset(goal_idx=0)
    assert obs == f"WebShop [SEP] Instruction: [SEP] {INSTR} [SEP] Search"
    assert env.get_available_actions() == {"has_search_bar": True, "clickables": ["search"]}
    assert info["admissible_actions"] == ["search[<your query>]", "click[search]"]
    assert info["anchor"] == "'Search'" and info["task_type"] == "beauty"
    assert info["won"] is False and info["task_score"] == 0.0

    obs, r, done, info = env.step("search[Deodorant]")
    assert obs == (f"Instruction: [SEP] {INSTR} [SEP] Back to Search [SEP] Page 1 (Total results: 1)"
                   f" [SEP] Next > [SEP] {GOAL_ASIN} [SEP] {GOAL_TITLE} [SEP] $12.99")
    assert (r, done, info["action_valid"]) == (0.0, False, True)
    assert info["available_actions"] == {"has_search_bar": False, "clickables": [
        "back to search", "next >", GOAL_ASIN.lower()]}
    assert info["anchor"] == ("'Back to Search' [SEP] 'Page 1 (Total results: 1)' [SEP] 'Next >' "
                              f"[SEP] '{GOAL_ASIN}' [SEP] '{GOAL_TITLE}' [SEP] '$12.99'")

    obs, _, _, info = env.step(f"click[{GOAL_ASIN.lower()}]")
    item = (f"Instruction: [SEP] {INSTR} [SEP] Back to Search [SEP] < Prev [SEP] scent [SEP] citrus"
            f" [SEP] cedar [SEP] size [SEP] 2.6 ounce [SEP] 2.6 ounce (pack of 2) [SEP] {GOAL_TITLE}"
            " [SEP] Price: $12.99 [SEP] Rating: 4.5 [SEP] Description [SEP] Features [SEP] Reviews"
            " [SEP] Buy Now")
    assert obs == item
    assert info["available_actions"]["clickables"] == [
        "back to search", "< prev", "description", "features", "reviews", "buy now", "citrus",
        "cedar", "2.6 ounce", "2.6 ounce (pack of 2)"]

    head = f"Instruction: [SEP] {INSTR} [SEP] Back to Search [SEP] < Prev"
    for button, body in [("description", "Gentle stick for daily use."),
                         ("features", "Fresh all day [SEP] No stains"),
                         ("reviews", '"Smells great" [SEP] 5 [SEP] Lasts all day. [SEP] "Meh" [SEP] 3')]:
        obs, _, _, info = env.step(f"click[{button}]")
        assert obs == f"{head} [SEP] {body}"
        assert info["available_actions"]["clickables"] == ["back to search", "< prev"]
        assert env.step("click[< prev]")[0] == item
    obs, *_ = env.step("click[< prev]")  # item page -> back to the results
    assert obs.startswith(f"Instruction: [SEP] {INSTR} [SEP] Back to Search [SEP] Page 1")
    obs, *_ = env.step("click[back to search]")
    assert obs == f"WebShop [SEP] Instruction: [SEP] {INSTR} [SEP] Search"


def test_search_ranks_the_distinctive_product_first_and_paginates(small):
    env = _env(small)
    env.step("search[travel case mirror towel]")
    assert env.get_available_actions()["clickables"][2] == GOAL_ASIN.lower()

    obs, *_ = env.step("search[spiral notebooks]")
    asins = [c for c in env.get_available_actions()["clickables"] if c.startswith("b0")]
    assert "Page 1 (Total results: 11)" in obs and len(asins) == 10
    assert "< Prev" not in obs
    obs, _, _, info = env.step("click[next >]")
    page2 = [c for c in info["available_actions"]["clickables"] if c.startswith("b0")]
    assert len(page2) == 1 and not set(page2) & set(asins)
    p = small.by_asin[page2[0].upper()]
    assert obs == (f"Instruction: [SEP] {INSTR} [SEP] Back to Search [SEP] Page 2 (Total results: "
                   f"11) [SEP] < Prev [SEP] Next > [SEP] {p['asin']} [SEP] {p['Title']} [SEP] "
                   f"{p['Price']}")
    obs, *_ = env.step("click[< prev]")
    assert "Page 1 (Total results: 11)" in obs
    assert env.step("search[qwertyuiop]")[0].endswith("Page 1 (Total results: 0) [SEP] Next >")


def test_search_engine_bm25_and_caches(small, tmp_path):
    assert tokenize("The Boxes of Stories, 2.6 Ounces") == ["boxe", "story", "2.6", "ounce"]
    assert SearchEngine.for_catalog(small) is SearchEngine.for_catalog(
        Catalog(small.products, small.prices, small.goals))   # same content -> same index
    # disk cache: written once, then read back by an engine built for the same fingerprint
    engine = SearchEngine.for_catalog(generate_catalog(30, 5), cache_dir=tmp_path)
    (path,) = tmp_path.glob("webshop-bm25-*.json")
    stored = json.loads(path.read_text())
    assert stored["asins"] == engine.asins and len(stored["tokens"]) == 30
    stored["tokens"] = [["zzz"]] * 30            # prove the next build reads the file
    path.write_text(json.dumps(stored))
    SearchEngine._memory.pop(stored["fingerprint"])
    again = SearchEngine.for_catalog(generate_catalog(30, 5), cache_dir=tmp_path)
    assert again.search("zzz") == engine.asins  # all tie: catalog order


# ------------------------------------------------------------------------------ reward
def _buy(catalog, asin, options=(), goal_idx=0, **kw):
    env = _env(catalog, goal_idx=goal_idx, **kw)
    env.step(f"search[{catalog.by_asin[asin]['Title']}]")
    env.step(f"click[{asin.lower()}]")
    for o in options:
        env.step(f"click[{o}]")
    return env.step("click[buy now]")


def test_buying_the_goal_with_its_options_wins(small):
    obs, r, done, info = _buy(small, GOAL_ASIN, ["cedar", "citrus", "2.6 ounce"])
    assert (r, done, info["won"], info["task_score"]) == (1.0, True, True, 1.0)
    assert obs == "Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0"
    assert info["reward_info"]["n_option_matched"] == 2
    _, r, _, info = _buy(small, GOAL_ASIN, ["citrus", "2.6 ounce"], reward_mode="gigpo")
    assert (r, info["won"]) == (10.0, True)


@pytest.mark.parametrize("asin,options,goal_idx,expected", [
    # (attrs + options + price) / (2 + 2 + 1) * r_type
    (GOAL_ASIN, ["cedar", "2.6 ounce"], 0, (2 + 1 + 1) / 5),           # wrong scent (fuzzy)
    (GOAL_ASIN, ["citrus", "2.6 ounce (pack of 2)"], 0, (2 + 1 + 1) / 5),  # size is exact
    (GOAL_ASIN, [], 0, (2 + 0 + 1) / 5),                                # no option chosen
    (GOAL_ASIN, ["citrus", "2.6 ounce"], 1, (2 + 2 + 0) / 5),           # $12.99 > $10 budget
    ("B000000003", [], 0, (1 + 0 + 1) / 5 * 0.5),   # 2/12 title nouns, no query/category: 0.5
    ("B000000002", [], 0, (0 + 0 + 1) / 5 * 0.1),   # 1/12 title nouns: 0.1
    ("B000000004", [], 0, 0.0),                     # no shared noun: 0
    ("B000000005", [], 0, 0.0),                     # category matches but title_score 0 -> 0
])
def test_fractional_rewards_match_hand_computation(small, asin, options, goal_idx, expected):
    _, r, done, info = _buy(small, asin, options, goal_idx=goal_idx)
    assert done and not info["won"]
    assert r == pytest.approx(expected) and info["task_score"] == pytest.approx(expected)
    _, r, _, _ = _buy(small, asin, options, goal_idx=goal_idx, reward_mode="gigpo")
    assert r == 0.0


def test_reward_parts():
    product = {"Title": "Acme Stick", "BulletPoints": ["fresh"], "Description": "navy blue cap"}
    assert get_option_reward(product, ["2.6 ounce"], {"size": "2.6 ounce (pack of 2)"}) == (0.0, 0)
    assert get_option_reward(product, ["2.6 ounce"], {"count": "2.6 ounce (pack of 2)"}) == (1.0, 1)
    assert get_option_reward(product, ["red"], {"color": "blue"}) == (1.0, 1)  # found in text
    assert get_option_reward(product, ["a", "b"], {"x": "a", "y": "a", "z": "a"})[1] == 2  # capped
    assert normalize_color("violet lavender") == "lavender" and normalize_color("xyz") == "xyz"
    goal = {"query": "q", "product_category": "A › B", "name": "Red Running Shoes"}
    other = {"query": "q2", "product_category": "A › C", "name": "Trail Shoes"}
    assert get_type_reward(other, goal) == dict(r_type=1.0, query_match=False,
                                                category_match=False, title_score=0.5)
    score, info = get_reward({**other, "Title": "Trail Shoes", "BulletPoints": [],
                              "Description": "", "Attributes": ["non slip sole"]},
                             {**goal, "attributes": ["non slip"], "goal_options": [],
                              "price_upper": 50.0}, price=60.0, options={})
    assert score == pytest.approx((1 + 0 + 0) / 2) and info["r_price"] is False


def test_invalid_actions_are_noops(small):
    env = _env(small)
    start = env.step("search[deodorant]")[0]
    for bad in ["click[nonexistent]", "click[< prev]", "jump[x]", "search[]", "hello",
                "Click[back to search]", "click[search]"]:
        obs, r, done, info = env.step(bad)
        assert (obs, r, done, info["action_valid"]) == (start, 0.0, False, False), bad
    env = _env(small)
    assert env.step("click[search]")[3]["action_valid"] is False
    assert parse_action("search[red shoes]") == ("search", "red shoes")
    assert parse_action("click[buy now] thanks") == ("click", "buy now")
    assert parse_action("buy") == ("buy", None)


def test_episode_end_and_step_cap(small):
    env = _env(small, max_steps=2)
    env.step("hello")
    obs, r, done, info = env.step("search[deodorant]")
    assert done and info["truncated"] and not info["won"] and r == 0.0
    assert env.step("click[back to search]")[1:3] == (0.0, True)  # after the end: no-op
    with pytest.raises(ValueError, match="reward_mode"):
        WebShopEnv(small, reward_mode="dense")
    with pytest.raises(RuntimeError, match="reset"):
        WebShopEnv(small).step("search[x]")


# ------------------------------------------------------------------------------ determinism
def test_same_seed_same_goal_pages_and_anchors():
    a, b = WebShopEnv(num_products=120, catalog_seed=3), WebShopEnv(num_products=120,
                                                                     catalog_seed=3)
    assert generate_raw(50, 9) == generate_raw(50, 9) and generate_raw(50, 9) != generate_raw(50, 8)
    obs_a, info_a = a.reset(seed=11)
    obs_b, info_b = b.reset(seed=11)
    assert obs_a == obs_b and a.goal == b.goal and info_a["anchor"] == info_b["anchor"]
    assert len({a.reset(seed=s)[1]["goal_idx"] for s in range(20)}) > 10  # seeds spread goals
    a.reset(seed=11)
    goal = a.goal
    for act in [f"search[{goal['query']}]", "click[next >]", "click[< prev]",
                f"search[{goal['name']}]", f"click[{goal['asin'].lower()}]", "click[features]"]:
        ra, rb = a.step(act), b.step(act)
        assert ra[0] == rb[0] and ra[3]["anchor"] == rb[3]["anchor"], act
        assert ra[3]["anchor"] == strip_instruction(ra[0], goal["instruction_text"])
        assert goal["instruction_text"] not in ra[3]["anchor"]
    assert a.step("click[< prev]")[3]["anchor"] != ra[3]["anchor"]  # a different page


def test_generated_catalog_goals_are_all_reachable():
    cat = generate_catalog(300, 0)
    assert len(cat.products) == 300 and len({p["asin"] for p in cat.products}) == 300
    assert {p["category"] for p in cat.products} == {"beauty", "electronics", "fashion", "food",
                                                     "furniture"}
    for g in cat.goals:  # the oracle purchase scores exactly 1 for every goal
        assert get_reward(cat.by_asin[g["asin"]], g, cat.prices[g["asin"]],
                          g["goal_options"])[0] == 1.0
    test, train = WebShopEnv(cat, split="test"), WebShopEnv(cat, split="train")
    assert len(test.goals) == 500 and len(train.goals) == len(cat.goals) - 500
    for i in range(6):  # full episodes through the pages: search the title, buy with the options
        env = WebShopEnv(cat, split="train", reward_mode="gigpo")
        env.reset(seed=i)
        g = env.goal
        env.step(f"search[{g['name']}]")
        assert env.get_available_actions()["clickables"][2] == g["asin"].lower()
        env.step(f"click[{g['asin'].lower()}]")
        for v in g["goal_options"].values():
            assert env.step(f"click[{v}]")[3]["action_valid"]
        _, r, done, info = env.step("click[buy now]")
        assert (r, done, info["won"], info["task_score"]) == (10.0, True, True, 1.0)


# ------------------------------------------------------------------------------ registry
def test_registry_builtin_unknown_and_duplicates(small):
    assert "webshop" in list_envs()
    env = make_env("webshop", catalog=small)
    assert isinstance(env, WebShopEnv) and isinstance(env, TextEnv)
    with pytest.raises(KeyError, match=r"unknown env 'nope'.*'webshop'"):
        make_env("nope")
    with pytest.raises(ValueError, match="'webshop' is already registered"):
        register_env("webshop")(type("Other", (WebShopEnv,), {}))
    register_env("webshop")(WebShopEnv)  # re-registering the same class is a no-op


def _write_dist(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for rel, src in modules.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(textwrap.dedent(src))


def test_entry_point_envs(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    pkg = f"hyflow_envplug_{tag}"
    _write_dist(tmp_path, f"hyflow-envplug-{tag}", f"""
        [hyflow.envs]
        echo_{tag} = {pkg}.echo:EchoEnv
        {pkg} = {pkg}
        """, {f"{pkg}/__init__.py": f"""
            from envs.base import register_env
            from {pkg}.echo import EchoEnv

            @register_env("shout_{tag}")
            class ShoutEnv(EchoEnv):
                def step(self, action_text):
                    return action_text.upper(), 0.0, False, {{}}
            """, f"{pkg}/echo.py": """
            from envs.base import TextEnv

            class EchoEnv(TextEnv):
                def reset(self, seed=None):
                    return f"seed {seed}", {"won": False}
                def step(self, action_text):
                    return action_text, 1.0, True, {"won": True}
            """})
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env(f"echo_{tag}")
    assert env.reset(4)[0] == "seed 4" and env.step("hi")[:3] == ("hi", 1.0, True)
    assert make_env(f"shout_{tag}").step("hi")[0] == "HI"
    assert {f"echo_{tag}", f"shout_{tag}", "webshop"} <= set(list_envs())


def test_broken_env_plugin_names_the_entry_point(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    _write_dist(tmp_path, f"hyflow-envbroken-{tag}", f"""
        [hyflow.envs]
        broken_{tag} = hyflow_envbroken_{tag}
        """, {f"hyflow_envbroken_{tag}.py": "raise RuntimeError('env plug-in exploded')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=f"'broken_{tag}' = 'hyflow_envbroken_{tag}'.*exploded"):
        make_env(f"missing_{tag}")


# ------------------------------------------------------------------------------ loader
def _write_files(d: Path, items, attrs, reviews=None, human=None):
    (d / "items_shuffle_1000.json").write_text(json.dumps(items))
    (d / "items_ins_v2_1000.json").write_text(json.dumps(attrs))
    if reviews is not None:
        (d / "reviews.json").write_text(json.dumps(reviews))
    if human is not None:
        (d / "items_human_ins.json").write_text(json.dumps(human))


def test_loader_reads_real_formats(tmp_path):
    items, attrs, reviews = generate_raw(40, 1)
    _write_files(tmp_path, items, attrs, reviews)
    loaded, generated = load_webshop_dir(tmp_path, seed=1), generate_catalog(40, 1)
    assert loaded.products == generated.products and loaded.goals == generated.goals
    assert loaded.prices == generated.prices and loaded.fingerprint == generated.fingerprint

    raw, attrs, _ = _small_raw()
    raw[0]["customization_options"]["Scent"].append({"value": "Lime/Mint "})
    raw.append({**raw[1], "asin": "nan"})                     # skipped as upstream
    raw.append({**raw[1], "pricing": "$10.00 - $14.00"})      # duplicate asin: skipped
    human = {GOAL_ASIN: [{"instruction": "i want citrus deodorant.", "instruction_options":
                          ["citrus"], "instruction_attributes": ["long lasting"]},
                         {"instruction": "skip me", "instruction_attributes": []}]}
    _write_files(tmp_path, raw, attrs, human=human)
    cat = load_webshop_dir(tmp_path, human=True)
    assert len(cat.products) == 16 and cat.by_asin[GOAL_ASIN]["options"]["scent"][-1] == "lime | mint"
    assert cat.by_asin["B000000002"]["Rating"] == "N.A." and cat.by_asin["B000000003"][
        "Attributes"] == ["DUMMY_ATTR"]
    (goal,) = cat.goals
    upper = goal["price_upper"]
    assert upper in (30.0, 40.0, 50.0)  # 2 of the 4 tens above $12.99, the larger one
    assert goal["instruction_text"] == f"i want citrus deodorant, and price lower than {upper:.2f} dollars"
    env = WebShopEnv(cat)
    env.reset(goal_idx=0)
    env.step("search[deodorant]")
    env.step(f"click[{GOAL_ASIN.lower()}]")
    env.step("click[citrus]")
    assert env.step("click[buy now]")[3]["won"]  # (1 attr + 1 option + price) / 3
    ranged = products_from_raw([{**raw[1], "pricing": "$10.00 - $14.00"}], {})
    assert ranged[0]["Price"] == "$10.0 to $14.0" and 10 <= product_prices(
        ranged, random.Random(0))["B000000002"] <= 14


@pytest.mark.parametrize("mutate,error,match", [
    (lambda r, a: r[3].pop("name"), ValueError,
     r"items_shuffle_1000.json: product #3 \(asin 'B000000004'\): missing field 'name'"),
    (lambda r, a: r[2].update(pricing=12.5), ValueError, r"product #2 .*field 'pricing'"),
    (lambda r, a: r[0].update(customization_options=["red"]), ValueError,
     r"asin 'B000000001'.*field 'customization_options'"),
    (lambda r, a: r[0]["customization_options"].update(Size=[{"val": "x"}]), ValueError,
     r"field 'customization_options.Size'"),
    (lambda r, a: r[1].update(small_description=[1, 2]), ValueError, r"field 'small_description'"),
    (lambda r, a: a[GOAL_ASIN].update(instruction_attributes=[]), ValueError,
     r"items_ins_v2_1000.json: asin 'B000000001': field 'instruction_attributes'"),
    (lambda r, a: a[GOAL_ASIN].update(attributes="long lasting"), ValueError,
     r"items_ins_v2_1000.json: asin 'B000000001': field 'attributes'"),
])
def test_loader_errors_name_file_and_field(tmp_path, mutate, error, match):
    raw, attrs, _ = _small_raw()
    mutate(raw, attrs)
    _write_files(tmp_path, raw, attrs)
    with pytest.raises(error, match=match):
        load_webshop_dir(tmp_path)


def test_loader_file_level_errors(tmp_path):
    raw, attrs, _ = _small_raw()
    _write_files(tmp_path, raw, [attrs])
    with pytest.raises(ValueError, match="items_ins_v2_1000.json: expected a JSON object"):
        load_webshop_dir(tmp_path)
    (tmp_path / "items_shuffle_1000.json").write_text("[{")
    with pytest.raises(ValueError, match="items_shuffle_1000.json: not valid JSON"):
        load_webshop_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="items_shuffle.json"):
        load_webshop_dir(tmp_path, small=False)
    with pytest.raises(ValueError, match="human_goals_path"):
        load_webshop_files(tmp_path / "a.json", tmp_path / "b.json", human=True)
