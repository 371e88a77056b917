"""WebShop products and goals: a generated catalog for tests / offline runs, and a loader for the
real WebShop data files.

Both paths go through the same converter, a port of `web_agent_site/engine/engine.py`
`load_products` + `goal.py` `get_synthetic_goals` / `get_human_goals`, so the generated catalog
is simply a small, synthetic instance of the real file formats:

* `items_shuffle*.json`: a JSON list of raw products, each with `asin` (<= 10 chars; 'nan' and
  longer ones are skipped as upstream), `name`, `full_description`, `small_description` (str or list
  of str), `pricing` ("$12.99", "$10.99 - $24.99" or empty), `customization_options`
  ({option name: [{"value": str, "image": ...}, ...]} or null), `category`, `query`,
  `product_category` ("A › B › C"). Other fields are ignored.
* `items_ins_v2*.json`: {asin: {"attributes": [str], "instruction": str | null,
  "instruction_attributes": [str] | null}} (synthetic goals come from `instruction`).
* `items_human_ins.json`: {asin: [{"instruction": str, "instruction_attributes": [str],
  "instruction_options": [str] or {name: value}}, ...]} (human goals).
* `reviews.json` (optional): [{"asin", "reviews": [{"title", "stars"|"score", "review"}],
  "average_rating"}] (a review's text is its "review" field); without it products show "Rating: N.A." and no reviews, as in verl-agent.

Products are dicts with the upstream internal keys (Title, Description, BulletPoints, Reviews,
Rating, pricing, Price, options, Attributes, category, query, product_category, name). A goal is
{asin, category, query, name, product_category, instruction_text, attributes, price_upper,
goal_options, weight}. Ranged prices are drawn uniformly and goal prices sampled with one seeded
`random.Random`, and goals are shuffled with it (upstream shuffles with `random.seed(233)`), so a
catalog is a pure function of its inputs and seed. Malformed input raises ValueError naming the file,
the product and the field.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .reward import fuzzy_score, normalize_color

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
NO_PRICE_LIMIT = 1_000_000
CANONICAL_SEED = 233  # upstream's fixed goal-shuffle seed


@dataclass
class Catalog:
    """Products (upstream internal format), their prices and the goal list."""
    products: list[dict]
    prices: dict[str, float]
    goals: list[dict]
    by_asin: dict[str, dict] = field(init=False, repr=False)

    def __post_init__(self):
        self.by_asin = {p["asin"]: p for p in self.products}

    def documents(self) -> list[tuple[str, str]]:
        """(asin, text) pairs indexed by search, as upstream's convert_product_file_format.py:
        title, description, first feature and the option text, lower-cased."""
        docs = []
        for p in self.products:
            option_text = ", and ".join(f"{name}: {', '.join(values)}"
                                        for name, values in p["options"].items())
            first = p["BulletPoints"][0] if p["BulletPoints"] else ""
            docs.append((p["asin"], " ".join([p["Title"], p["Description"], first,
                                              option_text]).lower()))
        return docs

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the searchable documents: the search-index cache key."""
        return hashlib.sha256(json.dumps(self.documents()).encode()).hexdigest()


# ------------------------------------------------------------------------------ converter
def _bad(source: str, where: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{source}: {where}: field {name!r} must be {expected}, "
                      f"got {type(value).__name__} {value!r:.60}")


def _req(d: dict, key: str, kind, source: str, where: str, expected: str):
    if key not in d:
        raise ValueError(f"{source}: {where}: missing field {key!r}")
    if not isinstance(d[key], kind):
        raise _bad(source, where, key, expected, d[key])
    return d[key]


def _str_list(value, source, where, name, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(source, where, name, "a list of strings" + (" or null" if allow_none else ""),
                   value)
    return value


def _parse_pricing(text, source, where) -> tuple[list[float], str]:
    if text is None or not text:
        return [100.0], "$100.0"
    if not isinstance(text, str):
        raise _bad(source, where, "pricing", 'a string like "$12.99"', text)
    try:
        pricing = [float(Decimal(re.sub(r"[^\d.]", "", p))) for p in text.split("$")[1:]]
    except InvalidOperation:
        raise _bad(source, where, "pricing", 'a string like "$12.99"', text) from None
    if not pricing:
        raise _bad(source, where, "pricing", 'a string like "$12.99"', text)
    if len(pricing) == 1:
        return pricing, f"${pricing[0]}"
    return pricing[:2], f"${pricing[0]} to ${pricing[1]}"


def products_from_raw(raw: Any, attrs: Any, *, reviews: Any = None, human_ins: Any = None,
                      num_products: int | None = None, sources: tuple[str, str] = (
                          "items", "attributes")) -> list[dict]:
    """Raw items + attribute file (+ optional reviews / human instructions) -> products."""
    src, asrc = sources
    if not isinstance(raw, list):
        raise ValueError(f"{src}: expected a JSON list of products, got {type(raw).__name__}")
    if not isinstance(attrs, dict):
        raise ValueError(f"{asrc}: expected a JSON object asin -> attributes, "
                         f"got {type(attrs).__name__}")
    all_reviews, all_ratings = {}, {}
    for i, r in enumerate(reviews or []):
        if not isinstance(r, dict) or not isinstance(r.get("asin"), str):
            raise ValueError(f"reviews: entry #{i}: missing field 'asin'")
        all_reviews[r["asin"]] = r.get("reviews") or []
        all_ratings[r["asin"]] = r.get("average_rating", "N.A.")
    products, seen = [], set()
    for i, p in enumerate(raw[:num_products] if num_products is not None else raw):
        where = f"product #{i}"
        if not isinstance(p, dict):
            raise ValueError(f"{src}: {where}: expected an object, got {type(p).__name__}")
        asin = _req(p, "asin", str, src, where, "a string")
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        where = f"product #{i} (asin {asin!r})"
        bullets = p.get("small_description", "")
        if isinstance(bullets, str):
            bullets = [bullets]
        _str_list(bullets, src, where, "small_description")
        pricing, price_tag = _parse_pricing(p.get("pricing"), src, where)
        options = {}
        custom = p.get("customization_options")
        if custom:
            if not isinstance(custom, dict):
                raise _bad(src, where, "customization_options", "an object or null", custom)
            for name, contents in custom.items():
                if contents is None:
                    continue
                if not isinstance(contents, list) or not all(
                        isinstance(c, dict) and isinstance(c.get("value"), str) for c in contents):
                    raise _bad(src, where, f"customization_options.{name}",
                               'a list of {"value": str}', contents)
                options[name.lower()] = [c["value"].strip().replace("/", " | ").lower()
                                         for c in contents]
        a = attrs.get(asin) or {}
        if not isinstance(a, dict):
            raise _bad(asrc, f"asin {asin!r}", asin, "an object", a)
        product = {
            "asin": asin,
            "name": _req(p, "name", str, src, where, "a string"),
            "category": _req(p, "category", str, src, where, "a string"),
            "query": _req(p, "query", str, src, where, "a string").lower().strip(),
            "product_category": _req(p, "product_category", str, src, where, "a string"),
            "Title": p["name"],
            "Description": _req(p, "full_description", str, src, where, "a string"),
            "BulletPoints": bullets,
            "Reviews": [_review(r, asin) for r in all_reviews.get(asin, [])],
            "Rating": all_ratings.get(asin, "N.A."),
            "pricing": pricing,
            "Price": price_tag,
            "options": options,
            "Attributes": _str_list(a.get("attributes", ["DUMMY_ATTR"]), asrc,
                                    f"asin {asin!r}", "attributes"),
            "instruction_text": a.get("instruction"),
            "instruction_attributes": _str_list(a.get("instruction_attributes"), asrc,
                                                f"asin {asin!r}", "instruction_attributes",
                                                allow_none=True),
        }
        if product["instruction_text"] is not None and not isinstance(product["instruction_text"], str):
            raise _bad(asrc, f"asin {asin!r}", "instruction", "a string or null",
                       product["instruction_text"])
        if human_ins is not None and asin in human_ins:
            product["instructions"] = human_ins[asin]
        products.append(product)
    return products


def _review(r: Any, asin: str) -> dict:
    if not isinstance(r, dict):
        raise _bad("reviews", f"asin {asin!r}", "reviews", "a list of objects", r)
    return {"title": r.get("title", ""), "score": r.get("score", r.get("stars", 0)),
            "body": r.get("review", "")}  # upstream: body = review, else ''


def product_prices(products: list[dict], rng: random.Random) -> dict[str, float]:
    """One price per product: the single price, or uniform over a [low, high] range (upstream)."""
    return {p["asin"]: p["pricing"][0] if len(p["pricing"]) == 1 else rng.uniform(*p["pricing"][:2])
            for p in products}


def _price_goal(price: float, rng: random.Random) -> tuple[float, str]:
    price_range = [p for p in PRICE_RANGE if p > price][:4]
    if len(price_range) >= 2:
        _, upper = sorted(rng.sample(price_range, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return NO_PRICE_LIMIT, ""


def synthetic_goals(products: list[dict], prices: dict[str, float], rng: random.Random,
                    source: str = "attributes") -> list[dict]:
    """get_synthetic_goals: one goal per option combination of every product with an instruction."""
    goals, counts = [], defaultdict(int)
    for p in products:
        if p.get("instruction_text") is None:
            continue
        attributes = p["instruction_attributes"]
        if not attributes:
            raise ValueError(f"{source}: asin {p['asin']!r}: field 'instruction_attributes' must "
                             f"be a non-empty list when 'instruction' is set")
        upper, price_text = _price_goal(prices[p["asin"]], rng)
        names = sorted(p["options"])
        for combo in itertools.product(*(p["options"][n] for n in names)):
            goal_options = dict(zip(names, combo))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = " with " + option_text if option_text else ""
            goals.append({"asin": p["asin"], "category": p["category"], "query": p["query"],
                          "name": p["Title"], "product_category": p["product_category"],
                          "instruction_text": f"{p['instruction_text']}{option_text}{price_text}",
                          "attributes": attributes, "price_upper": upper,
                          "goal_options": goal_options})
            for att in attributes:
                counts[att] += 1
    for g in goals:  # rarer attributes weigh more (upstream; verl-agent samples uniformly)
        g["weight"] = sum(1.0 / counts[a] for a in g["attributes"]) / len(g["attributes"])
    return goals


def human_goals(products: list[dict], prices: dict[str, float], rng: random.Random,
                source: str = "items_human_ins.json") -> list[dict]:
    """get_human_goals: one goal per human instruction with at least one attribute."""
    goals = []
    for p in products:
        instructions = p.get("instructions", [])
        if not isinstance(instructions, list):
            raise _bad(source, f"asin {p['asin']!r}", p["asin"], "a list of instructions",
                       instructions)
        for j, ins in enumerate(instructions):
            where = f"asin {p['asin']!r} instruction #{j}"
            if not isinstance(ins, dict):
                raise ValueError(f"{source}: {where}: expected an object")
            attributes = _str_list(ins.get("instruction_attributes"), source, where,
                                   "instruction_attributes")
            if not attributes:
                continue
            text = _req(ins, "instruction", str, source, where, "a string")
            opts = ins.get("instruction_options", [])
            if not isinstance(opts, (list, dict)):
                raise _bad(source, where, "instruction_options", "a list or an object", opts)
            upper, price_text = _price_goal(prices[p["asin"]], rng)
            goals.append({"asin": p["asin"], "category": p["category"], "query": p["query"],
                          "name": p["name"], "product_category": p["product_category"],
                          "instruction_text": text.strip(".") + price_text,
                          "attributes": attributes, "price_upper": upper,
                          "goal_options": opts, "weight": 1.0})
    return goals


def build_catalog(products: list[dict], *, human: bool = False, seed: int = CANONICAL_SEED,
                  source: str = "attributes") -> Catalog:
    """Prices, goals and the goal shuffle, all from one seeded generator."""
    rng = random.Random(seed)
    prices = product_prices(products, rng)
    goals = (human_goals(products, prices, rng, source) if human
             else synthetic_goals(products, prices, rng, source))
    rng.shuffle(goals)
    return Catalog(products, prices, goals)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"WebShop {what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{Path(path).name}: not valid JSON ({e})") from None


def load_webshop_files(items_path: str | Path, attrs_path: str | Path, *,
                       human_goals_path: str | Path | None = None,
                       reviews_path: str | Path | None = None, human: bool = False,
                       num_products: int | None = None, seed: int = CANONICAL_SEED) -> Catalog:
    """A catalog from the real WebShop files (see the module docstring for their formats)."""
    if human and human_goals_path is None:
        raise ValueError("human goals need human_goals_path (items_human_ins.json)")
    raw = _read_json(items_path, "items")
    attrs = _read_json(attrs_path, "attributes")
    human_ins = _read_json(human_goals_path, "human goals") if human_goals_path else None
    if human_ins is not None and not isinstance(human_ins, dict):
        raise ValueError(f"{Path(human_goals_path).name}: expected a JSON object asin -> "
                         f"instructions, got {type(human_ins).__name__}")
    reviews = _read_json(reviews_path, "reviews") if reviews_path else None
    products = products_from_raw(raw, attrs, reviews=reviews, human_ins=human_ins,
                                 num_products=num_products,
                                 sources=(Path(items_path).name, Path(attrs_path).name))
    return build_catalog(products, human=human, seed=seed,
                         source=Path(human_goals_path).name if human else Path(attrs_path).name)


def load_webshop_dir(data_dir: str | Path, *, small: bool = True, **kwargs) -> Catalog:
    """`items_shuffle_1000.json` + `items_ins_v2_1000.json` (small=True) or the full files from
    `data_dir`; `items_human_ins.json` and `reviews.json` are used when present."""
    d = Path(data_dir)
    suffix = "_1000" if small else ""
    extra = {k: d / f for k, f in (("human_goals_path", "items_human_ins.json"),
                                   ("reviews_path", "reviews.json")) if (d / f).exists()}
    return load_webshop_files(d / f"items_shuffle{suffix}.json", d / f"items_ins_v2{suffix}.json",
                              **{**extra, **kwargs})


# ------------------------------------------------------------------------------ generator
# WebShop's five categories; per product type: (category, category root, noun = query,
# sub-category path, attribute pool, option groups, price range). Option values are pools below.
_T = [
    ("beauty", "Beauty & Personal Care", [
        ("deodorant", "Personal Care › Deodorants", ["long lasting", "aluminum free",
         "sensitive skin", "cruelty free", "travel size"], ["scent", "size"], (5, 25)),
        ("shampoo", "Hair Care › Shampoo", ["sulfate free", "color safe", "paraben free",
         "dry scalp", "natural ingredients"], ["scent", "size"], (6, 40)),
        ("face moisturizer", "Skin Care › Face › Moisturizers", ["oil free", "fragrance free",
         "dry skin", "anti aging", "dermatologist tested"], ["size"], (8, 60)),
        ("lipstick", "Makeup › Lips › Lipstick", ["long lasting", "cruelty free", "matte finish",
         "vegan formula", "hydrating"], ["color"], (5, 30)),
        ("nail polish", "Foot, Hand & Nail Care › Nail Polish", ["quick drying", "chip resistant",
         "non toxic", "high shine", "vegan formula"], ["color", "size"], (4, 20)),
        ("hair dryer", "Hair Care › Styling Tools › Hair Dryers", ["ionic technology",
         "low noise", "fast drying", "diffuser included", "lightweight design"], ["color"],
         (20, 150))]),
    ("electronics", "Electronics", [
        ("wireless earbuds", "Headphones › Earbud Headphones", ["noise cancelling",
         "water resistant", "long battery life", "fast charging", "touch control"], ["color"],
         (15, 200)),
        ("hdmi cable", "Accessories & Supplies › Cables › HDMI Cables", ["high speed",
         "gold plated", "4k support", "braided cord", "ethernet channel"], ["size"], (5, 30)),
        ("usb c charger", "Accessories & Supplies › Chargers", ["fast charging", "compact design",
         "dual port", "overheat protection", "foldable plug"], ["color"], (8, 50)),
        ("bluetooth speaker", "Portable Audio & Video › Portable Speakers", ["water resistant",
         "deep bass", "long battery life", "stereo pairing", "built in microphone"], ["color"],
         (20, 180)),
        ("phone case", "Cell Phones & Accessories › Cases", ["shock absorbing", "slim profile",
         "wireless charging compatible", "raised edges", "anti scratch"], ["color", "style"],
         (5, 35)),
        ("laptop stand", "Computers & Accessories › Laptop Stands", ["height adjustable",
         "aluminum alloy", "heat dissipation", "foldable design", "non slip"], ["color"],
         (15, 80))]),
    ("fashion", "Clothing, Shoes & Jewelry", [
        ("running shoes", "Men › Shoes › Athletic › Running", ["non slip", "breathable mesh",
         "memory foam", "rubber sole", "lightweight design"], ["color", "size"], (30, 140)),
        ("t-shirt", "Men › Clothing › Shirts › T-Shirts", ["machine wash", "cotton blend",
         "short sleeve", "relaxed fit", "tagless collar"], ["color", "size"], (8, 35)),
        ("rain jacket", "Women › Clothing › Coats, Jackets & Vests", ["water resistant",
         "packable hood", "zip pockets", "windproof shell", "machine wash"], ["color", "size"],
         (25, 160)),
        ("yoga pants", "Women › Clothing › Active › Leggings", ["high waist", "tummy control",
         "moisture wicking", "four way stretch", "hidden pocket"], ["color", "size"], (12, 60)),
        ("wool socks", "Men › Clothing › Socks", ["moisture wicking", "cushioned sole",
         "merino wool", "arch support", "odor resistant"], ["color", "size"], (8, 30)),
        ("baseball cap", "Accessories › Hats & Caps › Baseball Caps", ["adjustable strap",
         "cotton twill", "curved brim", "breathable fabric", "embroidered logo"], ["color"],
         (8, 30))]),
    ("food", "Grocery & Gourmet Food", [
        ("green tea", "Beverages › Tea › Green Tea", ["usda organic", "non gmo",
         "individually wrapped", "gluten free", "antioxidant rich"], ["flavor", "count"], (4, 30)),
        ("dark chocolate", "Snack Foods › Chocolate", ["sugar free", "keto friendly",
         "fair trade", "non gmo", "gluten free"], ["flavor", "count"], (3, 40)),
        ("protein bar", "Snack Foods › Bars › Protein Bars", ["high protein", "low sugar",
         "gluten free", "plant based", "non gmo"], ["flavor", "count"], (10, 45)),
        ("olive oil", "Pantry Staples › Oils › Olive Oil", ["extra virgin", "cold pressed",
         "usda organic", "non gmo", "glass bottle"], ["size"], (8, 60)),
        ("coffee beans", "Beverages › Coffee › Whole Coffee Beans", ["dark roast", "fair trade",
         "single origin", "usda organic", "low acid"], ["size"], (9, 70)),
        ("trail mix", "Snack Foods › Nuts & Seeds › Trail Mix", ["individually wrapped",
         "gluten free", "no added sugar", "resealable bag", "high protein"], ["flavor", "count"],
         (5, 35))]),
    ("furniture", "Home & Kitchen", [
        ("bookshelf", "Furniture › Living Room Furniture › Bookcases", ["easy assemble",
         "solid wood", "space saving", "living room", "storage space"], ["color", "tier"],
         (40, 250)),
        ("office chair", "Furniture › Home Office Furniture › Chairs", ["lumbar support",
         "height adjustable", "breathable mesh", "swivel base", "padded armrests"], ["color"],
         (60, 400)),
        ("nightstand", "Furniture › Bedroom Furniture › Nightstands", ["storage drawer",
         "easy assemble", "solid wood", "charging station", "metal frame"], ["color"], (30, 200)),
        ("bar stool", "Furniture › Kitchen & Dining Room Furniture › Bar Stools",
         ["counter height", "swivel seat", "metal frame", "easy assemble", "footrest ring"],
         ["color", "size"], (40, 220)),
        ("shoe rack", "Storage & Organization › Shoe Organizers", ["space saving",
         "stackable design", "easy assemble", "metal frame", "entryway storage"],
         ["color", "tier"], (15, 90)),
        ("coffee table", "Furniture › Living Room Furniture › Tables › Coffee Tables",
         ["lift top", "storage shelf", "solid wood", "living room", "easy assemble"], ["color"],
         (60, 450))]),
]
PRODUCT_TYPES = [(cat, root, noun, sub, attrs, groups, prices)
                 for cat, root, types in _T for noun, sub, attrs, groups, prices in types]
# Option group name -> (name shown on the item page, pool). "size" options match exactly.
OPTION_POOLS = {
    "color": ("color", ["black", "white", "navy blue", "red", "forest green", "light grey",
                        "pink", "beige", "espresso", "walnut brown", "teal", "burgundy"]),
    "scent": ("scent", ["lavender", "unscented", "fresh citrus", "coconut", "eucalyptus mint",
                        "sandalwood", "vanilla", "cucumber"]),
    "flavor": ("flavor name", ["original", "vanilla", "sea salt", "honey", "jasmine",
                               "peppermint", "salted caramel", "cinnamon", "blueberry", "maple"]),
    "style": ("style", ["clear", "glitter", "leather", "carbon fiber", "floral"]),
    "size": ("size", ["small", "medium", "large", "x-large", "xx-large"]),  # see SIZE_POOLS
    "count": ("size", ["12 count", "24 count", "pack of 6", "20 count (pack of 6)",
                       "100 count"]),
    "tier": ("size", ["3-tier", "4-tier", "5-tier"]),
}
# Size pools per product type (sizes only make sense within a type); default: clothing sizes.
SIZE_POOLS = {
    "deodorant": ["1.7 ounce", "3.4 ounce", "6.7 fl oz"], "shampoo": ["3.4 ounce", "16.9 fl oz",
    "33.8 fl oz"], "face moisturizer": ["1.7 ounce", "3.4 ounce"], "nail polish": ["small",
    "large"], "hdmi cable": ["3 feet", "6 feet", "10 feet"], "olive oil": ["16.9 fl oz",
    "33.8 fl oz"], "coffee beans": ["12 ounce", "2 pound"], "running shoes": ["7", "8", "9",
    "10", "11"], "bar stool": ["24 inch", "30 inch"],
}
BRANDS = ["Acorn", "Bramble", "Cedarline", "Driftwood", "Elmstead", "Fernway", "Glenmore",
          "Harbor", "Ironleaf", "Juniper", "Kestrel", "Larkspur", "Maplewood", "Northwind",
          "Oakhurst", "Pinecrest", "Quillon", "Ridgeway", "Saltmarsh", "Thistle", "Umbra",
          "Vantage", "Willowby", "Yarrow", "Zephyr", "Alder", "Birchwood", "Cobble", "Dunmore",
          "Everly"]
REVIEW_TITLES = ["Works as described", "Great value", "Not what I expected", "Would buy again",
                 "Decent for the price", "Five stars"]
REVIEW_BODIES = ["Arrived quickly and does the job.", "Quality is fine for everyday use.",
                 "It broke after a few weeks.", "Exactly as pictured, very happy with it.",
                 "Returned it, the fit was off."]


def _clean_values(pool: list[str], k: int, rng: random.Random, texts: list[str],
                  exact: bool) -> list[str]:
    """Up to k values whose normalised forms are mutually distinct for the reward (exact for
    sizes, fuzzy <= 85 otherwise) and absent from the product text, so that only the chosen
    option can match."""
    chosen: list[str] = []
    for v in rng.sample(pool, len(pool)):
        nv = normalize_color(v)
        if any(nv in t for t in texts):
            continue
        if any(nv == normalize_color(c) or (not exact and fuzzy_score(nv, normalize_color(c)) > 85)
               for c in chosen):
            continue
        chosen.append(v)
        if len(chosen) == k:
            break
    return sorted(chosen, key=pool.index)  # keep the pool's natural order (sizes ascending)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def generate_raw(num_products: int = 300, seed: int = 0) -> tuple[list, dict, list]:
    """(items, attributes, reviews) in the real file formats, deterministic for `seed`."""
    if num_products < 1:
        raise ValueError(f"num_products must be >= 1, got {num_products}")
    rng = random.Random(seed)
    items, attrs, reviews, asins = [], {}, [], set()
    for i in range(num_products):
        category, root, noun, sub, attr_pool, groups, (lo, hi) = PRODUCT_TYPES[i % len(PRODUCT_TYPES)]
        asin = "B0" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=8))
        while asin in asins:
            asin = "B0" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=8))
        asins.add(asin)
        brand = rng.choice(BRANDS)
        attributes = rng.sample(attr_pool, 3)
        title = f"{brand} {noun.title()} - {attributes[0].title()}, {attributes[1].title()}"
        description = (f"The {brand} {noun} is {attributes[0]} and {attributes[2]}. "
                       f"Made for everyday use at home or on the go.")
        bullets = [f"{a.capitalize()} by design" for a in attributes] + ["Backed by our guarantee"]
        texts = [title.lower(), description.lower(), " ".join(bullets).lower()]
        custom = {}
        for group in groups:
            shown, pool = OPTION_POOLS[group]
            pool = SIZE_POOLS.get(noun, pool) if group == "size" else pool
            values = _clean_values(pool, rng.randint(2, 4), rng, texts, exact=shown == "size")
            if values:  # an empty group would leave the product without goals
                custom[shown] = [{"value": v, "image": None} for v in values]
        price = round(rng.uniform(lo, hi)) - rng.choice([0.01, 0.05, 0.51])
        pricing = (f"${price:.2f}" if rng.random() < 0.9
                   else f"${price:.2f} - ${price + rng.randint(2, 9):.2f}")
        items.append({"asin": asin, "name": title, "full_description": description,
                      "small_description": bullets, "pricing": pricing,
                      "customization_options": custom, "images": [""], "category": category,
                      "query": noun, "product_category": f"{root} › {sub}"})
        wanted = rng.sample(attributes, rng.choice([1, 2]))
        template = rng.choice(["i need {a} {w} {n}", "i am looking for {a} {n} that is {w}",
                               "find me {a} {w} {n}", "i want to buy {a} {n}, {w}"])
        first = (wanted[0] if "{w} {n}" in template else noun)
        attrs[asin] = {"attributes": attributes, "instruction_attributes": wanted,
                       "instruction": template.format(a=_article(first), n=noun,
                                                      w=" and ".join(wanted))}
        revs = [{"title": rng.choice(REVIEW_TITLES), "stars": rng.randint(1, 5),
                 "review": rng.choice(REVIEW_BODIES)} for _ in range(rng.randint(0, 3))]
        if revs:
            reviews.append({"asin": asin, "reviews": revs,
                            "average_rating": round(sum(r["stars"] for r in revs) / len(revs), 1)})
    rng.shuffle(items)  # items_shuffle.json is shuffled; keep the same spirit
    return items, attrs, reviews


@functools.lru_cache(maxsize=8)
def generate_catalog(num_products: int = 300, seed: int = 0) -> Catalog:
    """A generated catalog (cached per (num_products, seed); treat it as read-only)."""
    items, attrs, reviews = generate_raw(num_products, seed)
    products = products_from_raw(items, attrs, reviews=reviews,
                                 sources=("generated items", "generated attributes"))
    return build_catalog(products, seed=seed, source="generated attributes")
