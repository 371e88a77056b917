"""The WebShop purchase reward (princeton-nlp/WebShop `web_agent_site/engine/goal.py`), offline.

    score = r_type * (n_attr_matched + n_option_matched + 1[price <= price_upper])
                   / (n_goal_attributes + n_goal_options + 1)

* attributes: a goal attribute matches when some product attribute has
  `token_set_ratio > 85`, or else when it is a substring of the lower-cased title, features or
  description (as the original).
* options: each purchased option (name -> value) is compared with the goal's option values after
  `normalize_color`. Options named "size" must match exactly; the others fuzzily
  (`token_set_ratio > 85`); an unmatched value still counts when it is a substring of the
  lower-cased title / features / description. This is the upstream variant with
  `EXACT_MATCH_OPTS = ["size"]`, which is what "size exact" in the WebShop paper refers to.
* r_type in {0, 0.1, 0.5, 1}: 1 when the query matches, or >= 2 product-category levels match, or
  title_score > 0.2; else 0.5; then 0.1 when title_score < 0.1 and 0 when title_score == 0.
  title_score = |nouns(purchased title) & nouns(goal title)| / |nouns(goal title)| (0.2 when the
  goal title has none).

Deviations from the original (documented, deliberate):
1. No spaCy. `title_nouns` approximates spaCy's NOUN/PROPN tokens by content words: lower-cased
   alphabetic tokens of >= 2 letters that are neither English stop words nor in a short list of
   common adjectives (basic colours included), units and marketing words. Nouns and proper nouns
   are kept as spaCy would; numbers, frequent adjectives and function words are dropped.
   So r_type can differ from the original on titles where spaCy's tagger would disagree.
2. Fuzzy scores come from `rapidfuzz.fuzz.token_set_ratio` with `default_process` and rounding to
   an integer, which is what `thefuzz` (the original's dependency) computes internally.
3. The option match count is capped at the number of goal options, so a product with more option
   groups than the goal cannot score above 1 (the original could exceed 1 in that corner case).
4. A goal with `price_upper <= 0` counts the price term as 0 (the original adds `None` and fails).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from rapidfuzz import fuzz, utils

FUZZY_THRESHOLD = 85
EXACT_MATCH_OPTS = ("size",)

# web_agent_site/engine/normalize.py COLOR_SET (order matters: the first colour contained wins).
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue",
    "blush", "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne",
    "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper",
    "coral", "cranberry", "cream", "crystal", "dark", "denim", "eggplant", "elephant", "espresso",
    "fuchsia", "gold", "granite", "grape", "graphite", "grass", "gray", "green", "grey", "heather",
    "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac", "lime",
    "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom",
    "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink", "plum",
    "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver",
    "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal", "tiger",
    "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)

_STOPWORDS = frozenset("""
a an and are as at be but by for from has have if in into is it its no not of on or our so such
that the their then there these they this to was will with you your we he she his her them than
too very can all any each more most other some only own same just also up down out off over under
again further once here when where why how what which who whom both few nor
""".split())
# Words spaCy tags ADJ/NUM/ADV in product titles, plus units and marketing fillers.
_NON_NOUNS = frozenset("""
new best premium natural organic free pure small medium large big mini extra super ultra high low
long short light heavy soft hard easy quick fast slow full half double single multi non anti
professional portable compatible adjustable waterproof wireless durable lightweight comfortable
classic modern vintage original perfect great good fresh deluxe unisex casual slim regular
plus pro max inch inches oz ounce ounces fl lb lbs pound pounds ml pack count pcs pc set piece
pieces size sizes black white red blue green yellow pink purple orange grey gray brown beige navy
""".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def normalize_color(value: str) -> str:
    """The first COLOR_SET colour contained in `value`, else `value` (normalize.py)."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def fuzzy_score(a: str, b: str) -> int:
    """thefuzz's `token_set_ratio` (processed, rounded) via rapidfuzz."""
    return int(round(fuzz.token_set_ratio(a, b, processor=utils.default_process)))


def title_nouns(title: str) -> list[str]:
    """Offline stand-in for spaCy's NOUN/PROPN tokens of a title (deviation 1)."""
    return [w for w in _WORD.findall(title.lower())
            if len(w) >= 2 and w not in _STOPWORDS and w not in _NON_NOUNS]


def _product_text(product: Mapping[str, Any]) -> tuple[str, str, str]:
    return (product["Title"].lower(), " ".join(product["BulletPoints"]).lower(),
            product["Description"].lower())


def get_type_reward(purchased: Mapping[str, Any], goal: Mapping[str, Any]) -> dict[str, Any]:
    """r_type from query equality, product-category overlap and title noun overlap."""
    query_match = purchased["query"] == goal["query"]
    p_cat = {x.strip() for x in purchased["product_category"].split("›")}
    g_cat = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(p_cat & g_cat) >= 2
    desired = title_nouns(goal["name"])
    got = title_nouns(purchased["name"])
    title_score = 0.2 if not desired else len(set(got) & set(desired)) / len(desired)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return dict(r_type=r_type, query_match=query_match, category_match=category_match,
                title_score=title_score)


def get_attribute_reward(purchased: Mapping[str, Any], goal: Mapping[str, Any]) -> tuple[float, int]:
    """(fraction, count) of goal attributes found on the purchased product."""
    texts = _product_text(purchased)
    n = 0
    for g_attr in goal["attributes"]:
        if any(fuzzy_score(p_attr, g_attr) > FUZZY_THRESHOLD for p_attr in purchased["Attributes"]):
            n += 1
        elif any(g_attr in t for t in texts):
            n += 1
    return (n / len(goal["attributes"]) if goal["attributes"] else 0.0), n


def get_option_reward(purchased: Mapping[str, Any], goal_options: Sequence[str],
                      purchased_options: Mapping[str, str]) -> tuple[float | None, int]:
    """(fraction or None without goal options, count) of purchased options matching the goal."""
    goal_values = [normalize_color(o) for o in goal_options]
    texts = _product_text(purchased)
    n = 0
    for name, value in purchased_options.items():
        value = normalize_color(value)
        if name.lower() in EXACT_MATCH_OPTS:
            matched = value in goal_values
        else:
            matched = any(fuzzy_score(g, value) > FUZZY_THRESHOLD for g in goal_values)
        if matched or any(value in t for t in texts):
            n += 1
    n = min(n, len(goal_values))  # deviation 3
    return (n / len(goal_values) if goal_values else None), n


def goal_option_values(goal: Mapping[str, Any]) -> list[str]:
    """Goal options as a list of values (synthetic goals hold a dict name -> value)."""
    opts = goal["goal_options"]
    return list(opts.values()) if isinstance(opts, Mapping) else list(opts)


def get_reward(purchased: Mapping[str, Any], goal: Mapping[str, Any], price: float,
               options: Mapping[str, str]) -> tuple[float, dict[str, Any]]:
    """The WebShop score in [0, 1] for buying `purchased` at `price` with `options`, and its parts."""
    r_type = get_type_reward(purchased, goal)
    r_price = bool(price <= goal["price_upper"]) if goal["price_upper"] > 0 else None
    r_att, n_att = get_attribute_reward(purchased, goal)
    goal_values = goal_option_values(goal)
    r_option, n_opt = get_option_reward(purchased, goal_values, options)
    denom = len(goal["attributes"]) + len(goal_values) + 1
    score = (n_att + n_opt + int(bool(r_price))) / denom * r_type["r_type"]
    info = dict(r_type=r_type["r_type"], r_att=r_att, n_attr_matched=n_att, r_option=r_option,
                n_option_matched=n_opt, r_price=r_price, query_match=r_type["query_match"],
                category_match=r_type["category_match"], title_score=r_type["title_score"])
    return score, info
