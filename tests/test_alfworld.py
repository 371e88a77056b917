"""ALFWorld on the real engine (alfworld's TextWorld PddlEnv + AlfredDemangler + AlfredInfos):
generated games of all six task types are won by their planner plans, observations and admissible
actions have ALFWorld's exact shapes, seeds pick games deterministically across env instances, the
success counter, and the install message when the optional extra is missing."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from envs.alfworld.env import success_by_task_type
from envs.alfworld.generator import INSTALL_HINT, TASK_TYPES

REPO = Path(__file__).resolve().parents[1]
try:
    from envs.alfworld.generator import import_alfworld
    import_alfworld()
    HAVE_ENGINE, WHY = True, ""
except ImportError as e:  # the optional extra is not installed
    HAVE_ENGINE, WHY = False, f"alfworld extra not installed ({e})"
needs_engine = pytest.mark.skipif(not HAVE_ENGINE, reason=WHY)
SEED = 7
INTRO = re.compile(r"-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room\. Looking "
                   r"quickly around you, you see ((?:a [a-z]+ \d+, )+and a [a-z]+ \d+)\.\n\n"
                   r"Your task is to: (.+\.)")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One generated game per task type, under <ALFWORLD_DATA>/json_2.1.1/train (the real layout)."""
    if not HAVE_ENGINE:
        pytest.skip(WHY)
    from envs.alfworld.generator import generate
    base = tmp_path_factory.mktemp("alfworld_data")
    paths = generate(str(base / "json_2.1.1"), per_type=1, seed=SEED, split="train")
    assert len(paths) == 6
    return base


def _env(data_root: Path, **kw):
    from envs.alfworld.env import ALFWorldEnv
    return ALFWorldEnv(data_dir=str(data_root / "json_2.1.1"), **kw)


@needs_engine
def test_generated_games_have_alfworlds_layout_and_content(data_root):
    import alfworld.info as info
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv
    domain = Path(info.ALFRED_PDDL_PATH).read_text()
    grammar = Path(info.ALFRED_TWL2_PATH).read_text()
    games = sorted((data_root / "json_2.1.1" / "train").glob("*/trial_*/game.tw-pddl"))
    assert sorted(re.sub(r"-.*", "", g.parent.parent.name) for g in games) == sorted(TASK_TYPES)
    for g in games:
        task_dir, trial = g.parent.parent.name, g.parent.name
        traj = json.loads((g.parent / "traj_data.json").read_text())
        p = traj["pddl_params"]
        t = traj["task_type"]
        assert trial == f"trial_{SEED * 100_000 + TASK_TYPES.index(t) * 10_000}"
        recep = p["toggle_target"] if t == "look_at_obj_in_light" else p["parent_target"]
        assert task_dir == f"{t}-{p['object_target']}-None-{recep}-{traj['scene']['scene_num']}"
        game = json.loads(g.read_text())
        assert set(game) == {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
        assert game["pddl_domain"] == domain and game["solvable"] is True
        assert game["grammar"] == grammar.replace("UNKNOWN GOAL", traj["goal_text"])
        assert re.search(rf"\(objectType \?o1? {p['object_target']}Type\)", game["pddl_problem"])
        assert 3 <= len(game["walkthrough"]) <= 16
    # alfworld's own loader (AlfredTWEnv.collect_game_files) accepts exactly these games.
    cfg = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
           "dataset": {"data_path": str(data_root / "json_2.1.1" / "train"), "num_train_games": -1}}
    assert sorted(AlfredTWEnv(cfg, "train").game_files) == [str(g) for g in games]


@needs_engine
def test_generation_is_deterministic_per_seed(data_root, tmp_path):
    from envs.alfworld.generator import game_seed, generate_game
    t = "pick_heat_then_place_in_recep"
    p, game, traj = generate_game(t, game_seed(SEED, t, 0))
    written = next((data_root / "json_2.1.1" / "train").glob(f"{t}-*/trial_*/game.tw-pddl"))
    assert json.loads(written.read_text()) == game
    assert json.loads((written.parent / "traj_data.json").read_text()) == traj
    # The CLI in a fresh process writes the same bytes for the same seed.
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "envs.alfworld.generator", "--out", str(out), "--per-type",
                        "1", "--seed", str(SEED), "--task-types", t], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "wrote 1 games" in r.stdout, r.stderr
    assert "RuntimeWarning" not in r.stderr
    cli_game = out / "train" / written.parent.parent.name / written.parent.name / "game.tw-pddl"
    assert cli_game.read_bytes() == written.read_bytes()
    other = generate_game(t, game_seed(SEED + 1, t, 0))[1]
    assert other["pddl_problem"] != game["pddl_problem"]
    with pytest.raises(ValueError, match="task_type must be one of"):
        generate_game("pick_and_place_with_movable_recep", 0)


@needs_engine
def test_unsolvable_problems_are_rejected_and_resampled(monkeypatch):
    from envs.alfworld import generator as gen
    solver = gen.Solver()
    p, game, _ = gen.generate_game("pick_and_place_simple", 5, solver)
    # Without canContain facts for the target type nothing can be put there: no plan exists.
    broken = dict(game, pddl_problem=re.sub(rf"\(canContain {p.recep}Type \w+\)", "", game["pddl_problem"]))
    assert broken["pddl_problem"] != game["pddl_problem"]
    assert solver.solve(broken) is None and solver.last_error
    assert solver.solve(game) == game["walkthrough"]  # the same engine recovers
    # A draw the solver rejects is dropped and the next draw is used.
    real, seen = gen.Solver.solve, []
    def reject_first(self, g):
        seen.append(g["pddl_problem"])
        return None if len(seen) == 1 else real(self, g)
    monkeypatch.setattr(gen.Solver, "solve", reject_first)
    _, game2, _ = gen.generate_game("pick_and_place_simple", 5, solver)
    assert len(seen) == 2 and seen[0] == game["pddl_problem"] and game2["pddl_problem"] == seen[1] != seen[0]
    monkeypatch.setattr(gen.Solver, "solve", lambda self, g: None)
    with pytest.raises(RuntimeError, match="no solvable pick_and_place_simple game after 50 attempts"):
        gen.generate_game("pick_and_place_simple", 5, solver)


@needs_engine
@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_expert_plan_wins_every_task_type(data_root, task_type):
    env = _env(data_root, task_types=[task_type])
    assert env.num_games == 1
    obs, info = env.reset(0)
    assert INTRO.fullmatch(obs) and info["task_type"] == task_type and not info["won"]
    plan = env.walkthrough()
    for k, action in enumerate(plan):
        assert action in info["admissible_actions"]
        obs, reward, done, info = env.step(action)
        assert obs != "Nothing happens." and info["action_valid"] and info["anchor"] == obs
        last = k == len(plan) - 1
        # Reward only at the end: the goal is not met before the plan's last action.
        assert (reward, done, info["won"]) == ((10.0, True, True) if last else (0.0, False, False))
    assert info["step"] == len(plan) and not info["truncated"]
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("look")
    env.close()


@needs_engine
def test_observation_and_admissible_action_formats(data_root):
    env = _env(data_root, task_types=["pick_cool_then_place_in_recep"])  # always a kitchen
    obs, info = env.reset(0)
    seen, task = INTRO.fullmatch(obs).groups()
    receptacles = {s.removeprefix("and ").removeprefix("a ") for s in seen.split(", ")}
    traj = json.loads((Path(info["gamefile"]).parent / "traj_data.json").read_text())
    assert task == info["task"] == traj["goal_text"] + "."
    acts = info["admissible_actions"]
    assert "help" not in acts and info["anchor"] == obs
    assert sorted(acts) == sorted([f"go to {r}" for r in receptacles] + ["inventory", "look"])
    assert {"fridge 1", "microwave 1", "sinkbasin 1"} <= receptacles
    obs, r, done, info = env.step("go to fridge 1")
    assert obs == "You arrive at fridge 1. The fridge 1 is closed." and (r, done) == (0.0, False)
    assert "open fridge 1" in info["admissible_actions"] and "help" not in info["admissible_actions"]
    obs, *_ = env.step("Open  Fridge 1")  # case and spacing are normalised like verl-agent's projection
    assert re.fullmatch(r"You open the fridge 1\. The fridge 1 is open\. In it, you see "
                        r"(nothing|(a [a-z]+ \d+, )*(and )?a [a-z]+ \d+)\.", obs)
    assert env.step("inventory")[0] == "You are not carrying anything."


@needs_engine
def test_same_seed_same_game_across_instances(data_root):
    a, b = _env(data_root), _env(data_root)
    firsts = {}
    for seed in range(8):
        obs_a, info_a = a.reset(seed)
        firsts[seed] = (obs_a, info_a["gamefile"])
    a.step("look")
    for seed in (7, 3, 3):  # order and earlier episodes do not matter
        obs_b, info_b = b.reset(seed)
        assert (obs_b, info_b["gamefile"]) == firsts[seed]
    assert len({g for _, g in firsts.values()}) >= 3  # seeds actually spread over the games
    seq = _env(data_root, selection="sequential")
    assert sorted(seq.game_for_seed(s) for s in range(6)) == sorted(seq.games)


@needs_engine
def test_invalid_action_is_a_no_op_and_max_steps_truncates(data_root):
    env = _env(data_root, max_steps=3, task_types=["look_at_obj_in_light"])
    obs0, info0 = env.reset(5)
    obs, r, done, info = env.step("fly to the moon")
    assert (obs, r, done, info["action_valid"], info["won"]) == ("Nothing happens.", 0.0, False, False, False)
    assert info["admissible_actions"] == info0["admissible_actions"]
    obs, r, done, info = env.step("look")
    assert obs == "You are in the middle of a room. Looking quickly around you, you see nothing."
    obs, r, done, info = env.step("inventory")
    assert (r, done, info["truncated"], info["won"], info["step"]) == (0.0, True, True, False, 3)
    assert env.reset(5)[0] == obs0  # a new episode after truncation


@needs_engine
def test_bad_configuration_errors(data_root, monkeypatch, tmp_path):
    from envs.alfworld.env import ALFWorldEnv
    with pytest.raises(FileNotFoundError, match="valid_seen"):
        _env(data_root, split="valid_seen")
    with pytest.raises(ValueError, match="task_types: unknown"):
        _env(data_root, task_types=["pick_and_place"])
    with pytest.raises(ValueError, match="max_steps"):
        _env(data_root, max_steps=0)
    # $ALFWORLD_DATA with the real json_2.1.1/ level is found without data_dir.
    monkeypatch.setenv("ALFWORLD_DATA", str(data_root))
    assert ALFWorldEnv(split="train").num_games == 6
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no playable ALFWorld games"):
        ALFWorldEnv(data_dir=str(tmp_path))


def test_success_by_task_type_counts():
    results = [{"task_type": "pick_two_obj_and_place", "won": True},
               {"task_type": "pick_and_place_simple", "won": False},
               {"task_type": "pick_two_obj_and_place", "won": False},
               {"task_type": "pick_and_place_simple", "won": True},
               {"task_type": "pick_and_place_simple", "won": True},
               {"task_type": "custom", "won": True}]
    out = success_by_task_type(results)
    assert list(out) == ["pick_and_place_simple", "pick_two_obj_and_place", "custom", "all"]
    assert out["pick_and_place_simple"] == {"episodes": 3, "successes": 2, "success_rate": 2 / 3}
    assert out["pick_two_obj_and_place"] == {"episodes": 2, "successes": 1, "success_rate": 0.5}
    assert out["all"] == {"episodes": 6, "successes": 4, "success_rate": 4 / 6}
    assert success_by_task_type([]) == {"all": {"episodes": 0, "successes": 0, "success_rate": 0.0}}
    with pytest.raises(KeyError, match=r"results\[1\] has no 'won' field"):
        success_by_task_type([{"task_type": "x", "won": 1}, {"task_type": "x"}])


def test_missing_extra_raises_with_install_command():
    """A fresh interpreter where `alfworld` and `textworld` cannot be imported (sys.modules entries
    set to None make `import` raise ImportError): the module imports, building the env fails."""
    code = ("import sys; sys.modules['alfworld'] = None; sys.modules['textworld'] = None\n"
            "from envs.alfworld.env import ALFWorldEnv\n"
            "try:\n    ALFWorldEnv(data_dir='.')\n"
            "except ImportError as e:\n    print('IMPORT-ERROR:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("IMPORT-ERROR: ALFWorld support needs the optional extra")
    assert INSTALL_HINT in out.stdout
    assert "pip install -e '.[alfworld]'" in INSTALL_HINT and "pip install -e '.[alfworld]'" in (REPO / "README.md").read_text()
    assert "pip install alfworld==0.4.2 'textworld[pddl]==1.7.0'" in INSTALL_HINT
