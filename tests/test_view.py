"""`hyflow view`: the page of a fixture run directory, rendered by a real headless Chromium.

    .venv/bin/python -m pytest tests/test_view.py -q

The fixture run has all three dump kinds (samples, agent episodes, FoR trajectories), torn last
lines and a hostile string. Each browser check loads the page with its filter state in the URL
fragment (`view.html#step=2&minReward=0.5&group=g1`), takes Chromium's DOM after the scripts ran
(`--dump-dom`) and re-reads the rendered content. Needs /usr/bin/chromium (Debian: `apt-get install
-y chromium`); the browser tests skip without it.
"""
from __future__ import annotations

import json
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orchestrator.view import main, render

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "</script><img src=x onerror=alert(1)>"
TRUNCATED = "start of a long answer …[truncated 1234 chars]… end of it"
NO_CHROMIUM = "needs /usr/bin/chromium (apt-get install -y chromium)"
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

METRICS = [
    {"step": 0, "val/accuracy": 0.25, "val/success_rate": 0.1},
    {"step": 1, "reward/mean": 0.125, "response_length/mean": 40.0, "actor/kl": 0.0, "actor/entropy": 1.5,
     "timing/rollout_s": 3.0, "timing/train_s": 2.0, "env/success_rate": 0.2, "sync/bytes": 1000,
     "sync/max_abs_diff": "inf", "for/log_r_mean": -3.0, "for/accuracy": 0.5, "note": "text"},
    {"step": 2, "reward/mean": 0.375, "response_length/mean": 35.0, "actor/kl": 0.01, "actor/entropy": None,
     "timing/rollout_s": 3.5, "timing/train_s": 2.5, "env/success_rate": 0.4, "for/log_r_mean": -2.0},
    {"step": 3, "reward/mean": 0.5, "response_length/mean": 30.0, "actor/kl": 0.02, "actor/entropy": 1.2,
     "timing/rollout_s": 2.5, "timing/train_s": 2.0, "val/accuracy": 0.5, "for/log_r_mean": -1.5},
]
# step 2: group g1 (4 samples of one prompt), group g2 (the hostile and the truncated response)
G1 = [("answer is 4", 1.0, 0.75), ("answer is 5", 0.0, -0.75), ("answer is four", 0.75, 0.25), ("banana", 0.25, -0.25)]
G2 = [(HOSTILE, 0.5, 0.5), (TRUNCATED, 0.0, -0.5)]


def _sample(group, prompt, response, reward, adv, **extra):
    return {"kind": "sample", "step": 2, "group": group, "prompt": prompt, "response": response, "reward": reward,
            "advantage": adv, "length": len(response), "finish_reason": "stop", "data_source": "gsm",
            "ground_truth": "4", **extra}


def _turn(obs, action, anchor, adv):
    return {"observation": obs, "action": action, "response": f"<think>x</think><action>{action}</action>",
            "env_reward": 0.0, "penalty": 0.0, "valid": True, "anchor": anchor, "advantage": adv}


EPISODES = [  # group e1: "room A" repeats 2x, "room B" 2x, "room C" once
    {"kind": "episode", "step": 3, "group": "e1", "traj": 0, "won": True, "return": 10.0, "task_type": "pick",
     "length": 2, "turns": [_turn("you are in room A", "go north", "room A", 0.5),
                            _turn("you see room B", "take apple", "room B", 0.9)]},
    {"kind": "episode", "step": 3, "group": "e1", "traj": 1, "won": False, "return": 0.0, "task_type": "pick",
     "length": 3,
     "turns": [_turn("you are in room A", "go south", "room A", -0.5), _turn("dark room C", "look", "room C", -0.1),
               _turn("you see room B", "go west", "room B", -0.9)]},
    {"kind": "episode", "step": 3, "group": "e2", "traj": 2, "won": False, "return": 0.0, "task_type": "clean",
     "length": 1,
     "turns": [_turn("kitchen", "open fridge", "kitchen", 0.0)]},
]
TRAJS = [
    {"kind": "trajectory", "step": 0, "problem": 0, "actions": ["unstack red", "stack red on blue"],
     "states": ["red on green", "red in hand", "red on blue"], "log_r": -1.25, "log_pf": -3.5, "log_z": 0.5,
     "correct": True, "replayed": False},
    {"kind": "trajectory", "step": 0, "problem": 0, "actions": ["pick up green"], "states": [], "log_r": -7.5,
     "log_pf": None, "log_z": 0.5, "correct": False, "replayed": True},
    {"kind": "trajectory", "step": 0, "problem": 1, "actions": ["4 * 6 = 24"], "states": [], "log_r": 0.0,
     "log_pf": -1.0, "log_z": None, "correct": True, "replayed": False},
]


def _jsonl(path: Path, rows, torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + torn, encoding="utf-8")


def make_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("trainer:\n  experiment_name: view-fixture\nalgorithm:\n  advantage: gigpo\n"
                                     "model:\n  path: /models/tiny\nenv:\n  name: alfworld\nfor_:\n  enabled: false\n")
    _jsonl(run / "metrics.jsonl", METRICS, torn='{"step": 4, "reward/me')
    _jsonl(run / "rollouts" / "step_1.jsonl", [_sample("old", "old prompt", "old response", 0.0, 0.0)])
    _jsonl(run / "rollouts" / "step_2.jsonl",
           [_sample("g1", "What is 2+2?", r, rw, a, extra_key=[1, 2]) for r, rw, a in G1]
           + [_sample("g2", "Say something", r, rw, a) for r, rw, a in G2] + [{"kind": "future-kind", "x": 1}],
           torn='{"kind": "sample", "response": "torn')
    _jsonl(run / "rollouts" / "step_3.jsonl", EPISODES)
    _jsonl(run / "val" / "step_0.jsonl", TRAJS)
    return run


def page_data(html: str) -> dict:
    tag = '<script type="application/json" id="hyflow-data">'
    start = html.index(tag) + len(tag)
    return json.loads(html[start:html.index("</script>", start)])


# ---- without a browser -----------------------------------------------------------------------

def test_render_embeds_the_rows_escaped_and_skips_torn_lines(tmp_path):
    run = make_run(tmp_path)
    html = render(run)
    assert HOSTILE not in html and "<img" not in html  # only ever escaped inside the JSON block
    assert "http://" not in html.replace('"http://www.w3.org/2000/svg"', "") and "https://" not in html
    d = page_data(html)
    assert d["run"]["name"] == "view-fixture" and d["run"]["advantage"] == "gigpo" and d["run"]["for_enabled"] is False
    rows = d["rollouts"]["rollouts"]["2"]
    assert [r["response"] for r in rows] == [r for r, _, _ in G1 + G2]  # unknown kind and torn line dropped
    assert "extra_key" not in rows[0] and rows[4]["reward"] == 0.5
    assert [r["log_r"] for r in d["rollouts"]["val"]["0"]] == [-1.25, -7.5, 0.0]
    assert d["metrics"]["steps"] == [0, 1, 2, 3]  # torn metrics line skipped
    assert d["metrics"]["series"]["reward/mean"] == [None, 0.125, 0.375, 0.5]
    assert "sync/max_abs_diff" not in d["metrics"]["series"] and "note" not in d["metrics"]["series"]
    assert any("metrics.jsonl: skipped 1" in n for n in d["notes"])
    assert any("rollouts/step_2.jsonl: skipped 1" in n for n in d["notes"])


def test_steps_and_size_cap_limit_what_is_embedded(tmp_path):
    run = make_run(tmp_path)
    d = page_data(render(run, steps=1))
    assert set(d["rollouts"]["rollouts"]) == {"3"} and set(d["rollouts"]["val"]) == {"0"}
    assert any("3 steps dumped, the last 1 embedded" in n for n in d["notes"])
    assert set(page_data(render(run, steps="all"))["rollouts"]["rollouts"]) == {"1", "2", "3"}
    big = [_sample("g", "p", "y" * 5000, 0.0, 0.0) for _ in range(400)]  # ~2 MB of rows
    _jsonl(run / "rollouts" / "step_4.jsonl", big)
    html = render(run, steps="all", max_mb=1.0)
    d = page_data(html)
    assert len(html.encode()) <= 2**20 and 0 < len(d["rollouts"]["rollouts"]["4"]) < 400
    assert "3" not in d["rollouts"]["rollouts"]  # older steps go first
    assert any("of 400 rows embedded" in n for n in d["notes"])
    assert "rollouts: steps 1..3 (3 files) left out (the page reached --max-mb)" in d["notes"]
    assert "val: step 0 left out (the page reached --max-mb)" in d["notes"] and not d["rollouts"]["val"]


def test_cli_writes_the_page_and_fails_clearly(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main([str(run)]) == 0 and (run / "view.html").stat().st_size > 10_000
    assert main([str(run), "--out", str(tmp_path / "x.html"), "--steps", "all"]) == 0
    assert set(page_data((tmp_path / "x.html").read_text())["rollouts"]["rollouts"]) == {"1", "2", "3"}
    capsys.readouterr()
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run directory" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2 and "no metrics.jsonl" in capsys.readouterr().err


# ---- in Chromium -----------------------------------------------------------------------------

class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def cls(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        if self.tag in ("script", "style"):
            return ""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag=None, cls=None, **attrs) -> list[Node]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if ((tag is None or c.tag == tag) and (cls is None or cls in c.cls())
                        and all(c.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                    out.append(c)
                out += c.all(tag, cls, **attrs)
        return out

    def one(self, *a, **kw) -> Node:
        found = self.all(*a, **kw)
        assert len(found) == 1, (a, kw, len(found))
        return found[0]


class _Tree(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    tmp = tmp_path_factory.mktemp("view")
    run = make_run(tmp)
    page = tmp / "view.html"
    page.write_text(render(run), encoding="utf-8")
    profile = tmp / "profile"

    def chromium(*args):
        return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=90)

    def dump(fragment: str = "") -> Node:
        res = chromium("--dump-dom", page.as_uri() + ("#" + fragment if fragment else ""))
        assert res.returncode == 0 and "<body" in res.stdout, res.stderr[-2000:]
        tree = _Tree()
        tree.feed(res.stdout)
        body = tree.root.one("body")
        assert body.attrs.get("data-ready") == "1", "the page script did not finish"
        return tree.root
    return {"dump": dump, "chromium": chromium, "page": page, "tmp": tmp}


def _vals(nodes) -> list[float]:
    return [float(n.attrs["data-v"]) for n in nodes]


@needs_chromium
def test_header_and_metric_curves(browser):
    dom = browser["dump"]("metric=sync/bytes")
    info = {dd.attrs["data-key"]: dd.text() for dd in dom.one("dl", id="run-info").all("dd")}
    assert info["experiment"] == "view-fixture" and info["advantage"] == "gigpo" and info["model"] == "/models/tiny"
    assert info["env"] == "alfworld" and info["FoR"] == "off"
    assert "metrics.jsonl: skipped 1 unreadable line(s)" in dom.one("ul", id="notes").text()
    charts = {f.attrs["data-keys"]: f for f in dom.all("figure", cls="chart")}
    assert set(charts) == {"reward/mean", "response_length/mean", "actor/kl", "actor/entropy",
                           "timing/rollout_s timing/train_s", "val/accuracy", "env/success_rate val/success_rate",
                           "for/log_r_mean", "for/accuracy", "sync/bytes"}
    reward = charts["reward/mean"]
    assert _vals(reward.all("circle")) == [0.125, 0.375, 0.5]
    assert [c.attrs["data-step"] for c in reward.all("circle")] == ["1", "2", "3"]
    assert "reward/mean @ step 2: 0.375" in [t.text() for t in reward.all("title")]
    assert reward.one("polyline").attrs["data-n"] == "3" and "last 0.5" in reward.text()
    assert _vals(charts["actor/entropy"].all("circle")) == [1.5, 1.2]  # the null is skipped
    timing = charts["timing/rollout_s timing/train_s"]
    assert _vals(timing.all("circle", data_key="timing/train_s")) == [2.0, 2.5, 2.0]
    assert _vals(charts["sync/bytes"].all("circle")) == [1000]  # the picked metric
    picker = [o.attrs["value"] for o in dom.one("select", id="metric-pick").all("option")]
    assert "sync/bytes" in picker and "timing/train_s" in picker and "sync/max_abs_diff" not in picker


@needs_chromium
def test_reward_filter_sort_and_group_view(browser):
    dom = browser["dump"]("src=rollouts&step=2&minReward=0.5&sort=score_asc&group=g1")
    table = dom.one("table", cls="rows")
    assert _vals(table.all("td", cls="reward")) == [0.5, 0.75, 1.0]  # reward >= 0.5, ascending
    shown = [td.text() for td in table.all("div", cls="response")]
    assert shown == [HOSTILE, "answer is four", "answer is 4"]
    assert not dom.all("img")  # the hostile response is shown as text
    assert "answer is 5" not in table.text() and "banana" not in table.text() and TRUNCATED not in table.text()
    assert dom.one("span", id="count").text() == "3 of 6 shown"
    # the group view: every sample of g1 (the filter does not hide group members), with advantages
    assert dom.one("h2", id="group-title").text() == "Group: g1"
    cards = dom.one("div", id="group-cols").all("div", cls="card")
    assert [c.one("div", cls="response").text() for c in cards] == [r for r, _, _ in G1]
    assert [float(c.one("span", cls="advantage").attrs["data-v"]) for c in cards] == [a for _, _, a in G1]
    assert [c.one("span", cls="advantage").text() for c in cards] == [
        "advantage 0.75", "advantage -0.75", "advantage 0.25", "advantage -0.25"]
    assert [c.one("span", cls="reward").text() for c in cards] == ["reward 1", "reward 0", "reward 0.75", "reward 0.25"]
    assert dom.one("div", id="group-head").one("div", cls="prompt").text() == "What is 2+2?"
    assert {tr.attrs["data-group"] for tr in table.all("tr", cls="in-group")} == {"g1"}


@needs_chromium
def test_search_hostile_text_and_truncation_marks(browser):
    dom = browser["dump"]("step=2&maxReward=0.3&q=ANSWER&group=g2")  # case-insensitive text, reward <= 0.3
    assert [td.text() for td in dom.one("table", cls="rows").all("div", cls="response")] == ["answer is 5", TRUNCATED]
    assert dom.one("span", id="count").text() == "2 of 6 shown"
    # the hostile response is text in the group view; no element was injected
    assert not dom.all("img") and not [n for n in dom.all() if any(k.startswith("on") for k in n.attrs)]
    responses = [c.one("div", cls="response") for c in dom.one("div", id="group-cols").all("div", cls="card")]
    assert [r.text() for r in responses] == [HOSTILE, TRUNCATED]
    assert responses[1].one("mark", cls="trunc").text() == "…[truncated 1234 chars]…"


@needs_chromium
def test_episodes_turn_by_turn_with_anchor_groups(browser):
    dom = browser["dump"]("step=3&group=e1&focus=1")  # the newest step is episodes
    assert _vals(dom.one("table", cls="rows").all("td", cls="reward")) == [10.0, 0.0, 0.0]
    cards = dom.one("div", id="group-cols").all("div", cls="card")
    assert len(cards) == 2 and "focus" in cards[1].cls() and "focus" not in cards[0].cls()
    turns = [c.all("div", cls="turn") for c in cards]
    assert [[t.one("div", cls="observation").text() for t in ts] for ts in turns] == [
        ["you are in room A", "you see room B"], ["you are in room A", "dark room C", "you see room B"]]
    assert [[t.one("div", cls="action").text() for t in ts] for ts in turns] == [
        ["go north", "take apple"], ["go south", "look", "go west"]]
    assert _vals(t.one("span", cls="advantage") for ts in turns for t in ts) == [0.5, 0.9, -0.5, -0.1, -0.9]

    def badge(t):
        b = t.all("span", cls="anchor-badge")
        return (b[0].attrs["data-anchor"], b[0].text(), b[0].attrs.get("style")) if b else None
    a0, b0 = badge(turns[0][0]), badge(turns[0][1])
    assert a0[:2] == ("A1", "A1 ×2") and b0[:2] == ("A2", "A2 ×2") and a0[2] and a0[2] != b0[2]
    assert badge(turns[1][0]) == a0 and badge(turns[1][2]) == b0  # same anchor state: same badge and colour
    assert badge(turns[1][1]) is None and turns[1][1].one("span", cls="anchor-solo").text() == "unique state"
    assert "card" in cards[0].cls() and "won" in cards[0].one("h3").text() and "lost" in cards[1].one("h3").text()


@needs_chromium
def test_for_trajectories_with_log_r(browser):
    dom = browser["dump"]("src=val&step=0&group=problem+0&sort=score_desc")
    table = dom.one("table", cls="rows", data_kind="trajectory")
    assert _vals(table.all("td", cls="log-r")) == [0.0, -1.25, -7.5]
    assert dom.one("span", id="score-name").text() == "log R"
    cards = dom.one("div", id="group-cols").all("div", cls="card")
    assert [c.one("span", cls="log-r").text() for c in cards] == ["log R -1.25", "log R -7.5"]
    assert [s.text() for s in cards[0].all("div", cls="state")] == ["red on green", "red in hand", "red on blue"]
    assert [s.text() for s in cards[0].all("div", cls="action")] == ["unstack red", "stack red on blue"]
    assert not cards[1].all("div", cls="state") and "replayed" in cards[1].one("h3").text()


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    idat, i = b"", 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"IDAT":
            idat += data[i + 8:i + 8 + n]
        i += 12 + n
    return w, h, zlib.decompress(idat)


@needs_chromium
def test_screenshot_is_a_real_picture(browser):
    shot = browser["tmp"] / "view.png"
    res = browser["chromium"](f"--screenshot={shot}", "--window-size=1280,2000",
                              browser["page"].as_uri() + "#step=3&group=e1")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    w, h, raw = _png_pixels(shot.read_bytes())
    assert (w, h) == (1280, 2000) and shot.stat().st_size > 20_000
    stride = len(raw) // h
    rows = {raw[y * stride + 1:(y + 1) * stride] for y in range(0, h, 10)}
    assert len(set(raw)) > 50 and len(rows) > 60  # many colours and many different lines: not a blank page
