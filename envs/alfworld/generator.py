"""Synthetic ALFWorld games: ALFRED-domain PDDL problems that alfworld's own TextWorld engine plays.

The real ALFWorld games (3,553 train / 140 valid_seen / 134 valid_unseen) are not on any package
registry, but alfworld==0.4.2 ships the domain (`alfred.pddl`) and the text grammar
(`alfred.twl2`). A game is just a JSON file `game.tw-pddl` = {pddl_domain, grammar (with the goal
text in place of "UNKNOWN GOAL"), pddl_problem, solvable, walkthrough} next to a `traj_data.json`
({task_type, pddl_params, ...}), in the folder layout alfworld's loaders walk:

    <root>/<split>/<task_type>-<Obj>-<Mrecep>-<Recep>-<scene>/trial_<seed>/{game.tw-pddl,traj_data.json}

This module samples a room (kitchen, bathroom, bedroom, living room: receptacle types and counts,
openable cabinets/drawers/fridge/microwave/safe), objects with their ALFRED types and affordances
(pickupable, cleanable/heatable/coolable/sliceable, toggleable desk lamps), `canContain` facts from
ALFRED's own receptacle table (alfworld.gen.constants.VAL_RECEPTACLE_OBJECTS), and one of the six
task types with ALFRED's goal PDDL and goal-text templates (alfworld.gen.goal_library). Entity ids
follow ALFRED's mangling ("Cabinet|-01.20|+00.92|-01.81" -> "Cabinet_bar__minus_01_dot_20_...") so
alfworld's AlfredDemangler names them "cabinet 1", "sinkbasin 1", ... exactly as in real games.

Every game is solved by Fast Downward (the planner inside textworld[pddl]) and the plan is replayed
on the engine to `won` *before* the game is written; a problem that fails is resampled. Generation
is deterministic: game `i` of task type `t` under base seed `s` depends only on (t, s, i).

CLI: python -m envs.alfworld.generator --out DIR --per-type N --seed S [--split train]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
INSTALL_HINT = ("pip install -e '.[alfworld]'   (in the hyflow checkout, as the README says; equivalently: pip install alfworld==0.4.2 "
                "'textworld[pddl]==1.7.0'; builds jericho and fast-downward from source, needs g++ "
                "and cmake, and the venv's bin/ first on PATH)")
MAX_PLAN_STEPS = 40     # plans here are 4-16 steps; anything longer means a broken problem
MAX_ATTEMPTS = 50       # resamples per game before giving up

# Room templates: receptacle type -> (min, max) count. Rooms follow ALFRED's four scene types
# (scene numbers: kitchens 1-30, living rooms 201-230, bedrooms 301-330, bathrooms 401-430).
ROOMS: dict[str, dict[str, Any]] = {
    "Kitchen": {
        "scenes": range(1, 31),
        "receptacles": {"Cabinet": (3, 6), "CounterTop": (1, 3), "Drawer": (1, 3), "Fridge": (1, 1),
                        "Microwave": (1, 1), "SinkBasin": (1, 1), "StoveBurner": (2, 4),
                        "DiningTable": (0, 1), "CoffeeMachine": (1, 1), "GarbageCan": (1, 1),
                        "Toaster": (0, 1), "Shelf": (0, 2)},
        "objects": ["Apple", "Bowl", "Bread", "ButterKnife", "Cup", "DishSponge", "Egg", "Fork",
                    "Kettle", "Knife", "Ladle", "Lettuce", "Mug", "Pan", "PepperShaker", "Plate",
                    "Pot", "Potato", "SaltShaker", "SoapBottle", "Spatula", "Spoon", "Tomato",
                    "WineBottle"],
    },
    "LivingRoom": {
        "scenes": range(201, 231),
        "receptacles": {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (1, 1), "SideTable": (1, 2),
                        "TVStand": (0, 1), "Drawer": (0, 3), "Cabinet": (0, 3), "Shelf": (0, 2),
                        "GarbageCan": (1, 1), "DiningTable": (0, 1), "Dresser": (0, 1), "Safe": (0, 1)},
        "objects": ["Book", "Bowl", "Box", "Candle", "CellPhone", "CreditCard", "KeyChain", "Laptop",
                    "Newspaper", "Pillow", "Plate", "RemoteControl", "Statue", "TissueBox", "Vase",
                    "Watch", "WateringCan"],
        "lamp": True,
    },
    "Bedroom": {
        "scenes": range(301, 331),
        "receptacles": {"Bed": (1, 1), "Desk": (0, 1), "SideTable": (1, 2), "Dresser": (0, 1),
                        "Drawer": (2, 5), "Shelf": (0, 3), "GarbageCan": (1, 1),
                        "LaundryHamper": (0, 1), "ArmChair": (0, 1), "Safe": (0, 1)},
        "objects": ["AlarmClock", "BaseballBat", "BasketBall", "Book", "Bowl", "CD", "CellPhone",
                    "Cloth", "CreditCard", "KeyChain", "Laptop", "Mug", "Pen", "Pencil", "Pillow",
                    "Statue", "TennisRacket", "Vase", "Watch"],
        "lamp": True,
    },
    "Bathroom": {
        "scenes": range(401, 431),
        "receptacles": {"Cabinet": (1, 4), "CounterTop": (1, 1), "SinkBasin": (1, 2),
                        "BathtubBasin": (0, 1), "Toilet": (1, 1), "TowelHolder": (0, 1),
                        "HandTowelHolder": (0, 1), "ToiletPaperHanger": (1, 1), "GarbageCan": (1, 1),
                        "Drawer": (0, 2), "Shelf": (0, 2)},
        "objects": ["Candle", "Cloth", "DishSponge", "HandTowel", "Plunger", "ScrubBrush", "SoapBar",
                    "SoapBottle", "SprayBottle", "TissueBox", "ToiletPaper", "Towel"],
    },
}
OPENABLE = {"Cabinet", "Drawer", "Fridge", "Microwave", "Safe"}
LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser")      # where desk lamps stand
# Rooms each task type can use (ALFRED's GOALS_VALID) and the appliance its state change needs.
TASK_ROOMS = {
    "pick_and_place_simple": ("Kitchen", "LivingRoom", "Bathroom", "Bedroom"),
    "pick_two_obj_and_place": ("Kitchen", "LivingRoom", "Bathroom", "Bedroom"),
    "look_at_obj_in_light": ("LivingRoom", "Bedroom"),
    "pick_clean_then_place_in_recep": ("Kitchen", "Bathroom"),
    "pick_heat_then_place_in_recep": ("Kitchen",),
    "pick_cool_then_place_in_recep": ("Kitchen",),
}
TASK_AFFORDANCE = {"pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
                   "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
                   "pick_cool_then_place_in_recep": ("Coolable", "Fridge")}
APPLIANCES = ("SinkBasin", "BathtubBasin", "Microwave", "Fridge")
# Receptacle ids ALFRED writes as "<Parent>|x|y|z|<Basin>" (the demangler then says "sinkbasin").
BASIN_PARENT = {"SinkBasin": "Sink", "BathtubBasin": "Bathtub"}


def import_alfworld():
    """(alfworld constants, goal library, info, textworld, AlfredDemangler); ImportError with the
    install command when the optional extra is missing."""
    try:
        import textworld
        import textworld.envs.pddl.pddl as twpddl
        import alfworld.gen.constants as constants
        import alfworld.gen.goal_library as goal_library
        import alfworld.info as alf_info
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    except ImportError as e:
        raise ImportError(f"ALFWorld support needs the optional extra ({e}). Install it with: "
                          f"{INSTALL_HINT}") from e
    if twpddl.fast_downward_missing:
        raise ImportError(f"textworld is installed without its PDDL planner (fast_downward). "
                          f"Install it with: {INSTALL_HINT}")
    return constants, goal_library, alf_info, textworld, AlfredDemangler, AlfredInfos


def mangle(name: str) -> str:
    """ALFRED id -> PDDL identifier ("Mug|-01.20|+00.92" -> "Mug_bar__minus_01_dot_20_bar__plus_00_dot_92")."""
    for a, b in (("|", "_bar_"), ("-", "_minus_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(a, b)
    return name


@dataclass
class Problem:
    """One sampled game before it is rendered to PDDL."""
    task_type: str
    room: str
    scene: int
    obj: str                    # object target type, e.g. "Mug"
    recep: str                  # parent target type ("" for look_at_obj_in_light)
    toggle: str                 # "DeskLamp" for look_at_obj_in_light, else ""
    receptacles: dict = field(default_factory=dict)   # receptacle id -> type
    objects: dict = field(default_factory=dict)       # object id -> type
    contents: dict = field(default_factory=dict)      # object id -> receptacle id
    goal_text: str = ""


class _Ids:
    """Unique ALFRED-style ids with random coordinates, and unique location names."""

    def __init__(self, rng: random.Random):
        self.rng, self.used, self.locs = rng, set(), set()

    def entity(self, typ: str) -> str:
        while True:
            xyz = "|".join(f"{self.rng.uniform(-3, 3):+06.2f}" for _ in range(3))
            key = BASIN_PARENT.get(typ, typ) + "|" + xyz + (f"|{typ}" if typ in BASIN_PARENT else "")
            if key not in self.used:
                self.used.add(key)
                return mangle(key)

    def location(self) -> str:
        while True:
            r = self.rng
            loc = f"loc|{r.randint(-12, 12)}|{r.randint(-12, 12)}|{r.randint(0, 3)}|{r.choice((0, 15, 30, 45, 60))}"
            if loc not in self.locs:
                self.locs.add(loc)
                return mangle(loc)


def _sample_problem(task_type: str, rng: random.Random, constants, goal_library) -> Problem | None:
    """Sample a room, a task and an object placement; None when this draw cannot host the task."""
    val = {r: set(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    room = rng.choice(TASK_ROOMS[task_type])
    spec = ROOMS[room]
    counts = {t: rng.randint(lo, hi) for t, (lo, hi) in spec["receptacles"].items()}
    if task_type == "look_at_obj_in_light" and not any(counts.get(t) for t in LAMP_RECEPTACLES):
        counts["SideTable"] = 1
    rtypes = sorted(t for t, n in counts.items() if n > 0)

    # Task targets: an object type the room holds, a parent receptacle type that accepts it.
    obj_pool = [o for o in spec["objects"] if any(o in val.get(r, ()) for r in rtypes)]
    if task_type in TASK_AFFORDANCE:
        affordance, appliance = TASK_AFFORDANCE[task_type]
        if appliance not in rtypes:
            return None
        obj_pool = [o for o in obj_pool if o in constants.VAL_ACTION_OBJECTS[affordance]]
        # The state-changing appliances are never the destination (as in ALFRED's task set).
        parents = lambda o: [r for r in rtypes if o in val.get(r, ()) and r not in APPLIANCES]
    else:
        parents = lambda o: [r for r in rtypes if o in val.get(r, ())]
    if task_type == "look_at_obj_in_light":
        obj = rng.choice(obj_pool)
        recep, toggle = "", "DeskLamp"
    else:
        # The object must also fit somewhere that is *not* the parent type, so the goal starts unmet.
        choices = [(o, r) for o in obj_pool for r in parents(o)
                   if any(o in val.get(s, ()) for s in rtypes if s != r)]
        if not choices:
            return None
        obj, recep = rng.choice(choices)
        toggle = ""

    ids = _Ids(rng)
    p = Problem(task_type, room, rng.choice(list(spec["scenes"])), obj, recep, toggle)
    for t in rtypes:
        for _ in range(counts[t]):
            p.receptacles[ids.entity(t)] = t
    by_type: dict[str, list[str]] = {}
    for rid, t in sorted(p.receptacles.items()):
        by_type.setdefault(t, []).append(rid)

    def place(otype: str, avoid: str = "") -> None:
        homes = [rid for t in rtypes if otype in val.get(t, ()) and t != avoid for rid in by_type[t]]
        oid = ids.entity(otype)
        p.objects[oid] = otype
        p.contents[oid] = rng.choice(homes)

    n_target = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    for _ in range(n_target):
        place(obj, avoid=recep)
    distractors = [o for o in spec["objects"] if o != obj and any(o in val.get(r, ()) for r in rtypes)]
    for otype in rng.sample(distractors, k=min(len(distractors), rng.randint(4, 8))):
        for _ in range(rng.randint(1, 2)):
            place(otype)
    if spec.get("lamp"):
        lamp_homes = [rid for t in LAMP_RECEPTACLES for rid in by_type.get(t, [])]
        if lamp_homes:
            lid = ids.entity("DeskLamp")
            p.objects[lid] = "DeskLamp"
            p.contents[lid] = rng.choice(lamp_homes)

    template = rng.choice(goal_library.gdict[task_type]["templates"])
    p.goal_text = template.format(obj=obj.lower(), recep=recep.lower(), toggle=toggle.lower(), mrecep="")
    return p


def render_pddl(p: Problem, name: str, rng: random.Random, constants, goal_library) -> str:
    """The PDDL problem text for `p` (objects, init facts, ALFRED goal for its task type)."""
    action = constants.VAL_ACTION_OBJECTS
    val = constants.VAL_RECEPTACLE_OBJECTS
    rtypes = sorted(set(p.receptacles.values()) | {"SinkBasin", "Microwave", "Fridge"})  # named by the domain
    otypes = sorted(set(p.objects.values()) | {"Knife", "ButterKnife"})
    ids = _Ids(rng)
    loc_of = {rid: ids.location() for rid in sorted(p.receptacles)}
    start = ids.location()

    objs = ["agent1 - agent"]
    objs += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    objs += [f"{o} - object" for o in sorted(p.objects)] + [f"{r} - receptacle" for r in sorted(p.receptacles)]
    objs += [f"{loc} - location" for loc in sorted(set(loc_of.values()) | {start})]

    init = [f"(atLocation agent1 {start})"]
    for rid, t in sorted(p.receptacles.items()):
        init += [f"(receptacleType {rid} {t}Type)", f"(receptacleAtLocation {rid} {loc_of[rid]})"]
        if t in OPENABLE:
            init.append(f"(openable {rid})")
    present = set(p.objects.values())
    for rt in sorted(set(p.receptacles.values())):
        init += [f"(canContain {rt}Type {ot}Type)" for ot in sorted(present) if ot in val.get(rt, ())]
    for oid, t in sorted(p.objects.items()):
        rid = p.contents[oid]
        init += [f"(objectType {oid} {t}Type)", f"(inReceptacle {oid} {rid})",
                 f"(objectAtLocation {oid} {loc_of[rid]})"]
        if t == "DeskLamp":
            init.append(f"(toggleable {oid})")
            continue
        init.append(f"(pickupable {oid})")
        for aff, pred in (("Cleanable", "cleanable"), ("Heatable", "heatable"),
                          ("Coolable", "coolable"), ("Sliceable", "sliceable")):
            if t in action[aff]:
                init.append(f"({pred} {oid})")
        if t in constants.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {oid})")

    goal = goal_library.gdict[p.task_type]["pddl"].replace("#", "-")
    goal = goal.format(obj=p.obj, recep=p.recep, toggle=p.toggle, mrecep="")
    body = "\n        ".join
    # The goal snippet closes the `(define` itself (ALFRED's convention).
    return (f"\n(define (problem {name})\n(:domain alfred)\n(:objects\n        {body(objs)}\n        )\n\n"
            f"(:init\n        {body(init)}\n        )\n\n{goal}")


class Solver:
    """Fast Downward through textworld's PddlEnv (+ AlfredDemangler for ALFWorld's names). One
    engine is reused for every game: each PddlEnv dlopens its own copy of the planner library."""

    def __init__(self, engine=None):
        self.engine = engine or import_alfworld()
        textworld, demangler = self.engine[3], self.engine[4]
        from textworld.envs.pddl.pddl import PddlEnv
        self.env = demangler(shuffle=False)(PddlEnv(textworld.EnvInfos(policy_commands=True, won=True)))
        self.last_error = ""

    def solve(self, game: dict) -> list[str] | None:
        """The planner's plan for `game` (demangled commands), replayed on the engine to `won`; None
        when there is no plan (the translator rejects a provably unsolvable task outright, which
        surfaces as an exception while loading) or the replay does not win."""
        self.env.request_infos.policy_commands = True
        try:
            self.env.load(game)
            state = self.env.reset()
        except Exception as e:  # unsolvable / malformed problems fail inside the planner
            self.last_error = f"{type(e).__name__}: {e}"
            return None
        plan = list(state.get("policy_commands") or [])
        if not plan or len(plan) > MAX_PLAN_STEPS:
            self.last_error = f"planner returned {len(plan)} steps"
            return None
        self.env.request_infos.policy_commands = False  # no replanning needed to replay
        for cmd in plan:
            state, _, _ = self.env.step(cmd)
            if state.feedback == "Nothing happens.":
                self.last_error = f"plan step {cmd!r} was rejected"
                return None
        if not state["won"]:
            self.last_error = "plan replay did not win"
            return None
        return plan


def game_seed(seed: int, task_type: str, index: int) -> int:
    """Integer seed of game `index` of `task_type` under base seed `seed` (names its trial folder)."""
    if not 0 <= index < 10_000:
        raise ValueError(f"index must be in [0, 10000), got {index}")
    return seed * 100_000 + TASK_TYPES.index(task_type) * 10_000 + index


def generate_game(task_type: str, seed: int, solver: Solver | None = None) -> tuple[Problem, dict, dict]:
    """(problem, game.tw-pddl dict, traj_data dict) for one solvable game; deterministic in seed."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    solver = solver or Solver()
    constants, goal_library, alf_info = solver.engine[:3]
    with open(alf_info.ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(alf_info.ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    rng = random.Random(f"hyflow-alfworld:{task_type}:{seed}")
    for _ in range(MAX_ATTEMPTS):
        p = _sample_problem(task_type, rng, constants, goal_library)
        if p is None:
            continue
        pddl = render_pddl(p, f"plan_trial_{seed}", rng, constants, goal_library)
        game = {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", p.goal_text),
                "pddl_problem": pddl, "solvable": True, "walkthrough": None}
        plan = solver.solve(game)
        if plan is None:
            continue  # drop and resample: only games the planner solves are written
        game["walkthrough"] = plan
        traj = {"task_type": task_type, "task_id": f"trial_{seed}",
                "pddl_params": {"object_target": p.obj, "parent_target": p.recep,
                                "toggle_target": p.toggle, "mrecep_target": "", "object_sliced": False},
                "scene": {"scene_num": p.scene, "room_type": p.room},
                "goal_text": p.goal_text, "generator": "hyflow envs.alfworld.generator"}
        return p, game, traj
    raise RuntimeError(f"no solvable {task_type} game after {MAX_ATTEMPTS} attempts (seed {seed}); "
                       f"last planner failure: {solver.last_error}")


def game_dir(root: str, split: str, p: Problem, seed: int) -> str:
    """`<root>/<split>/<task_type>-<Obj>-<Mrecep>-<Recep>-<scene>/trial_<seed>` (ALFWorld layout)."""
    recep = p.toggle if p.task_type == "look_at_obj_in_light" else p.recep
    return os.path.join(root, split, f"{p.task_type}-{p.obj}-None-{recep}-{p.scene}", f"trial_{seed}")


def generate(out: str, per_type: int, seed: int = 0, split: str = "train",
             task_types: tuple[str, ...] = TASK_TYPES) -> list[str]:
    """Write `per_type` solvable games of each task type under `out/split`; returns game paths."""
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}")
    if not split or os.sep in split:
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    solver = Solver()
    paths = []
    for task_type in task_types:
        for i in range(per_type):
            gs = game_seed(seed, task_type, i)
            p, game, traj = generate_game(task_type, gs, solver)
            d = game_dir(out, split, p, gs)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "game.tw-pddl"), "w") as f:
                json.dump(game, f)
            with open(os.path.join(d, "traj_data.json"), "w") as f:
                json.dump(traj, f, indent=1)
            paths.append(os.path.join(d, "game.tw-pddl"))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m envs.alfworld.generator", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="dataset root (games go under OUT/SPLIT/...)")
    ap.add_argument("--per-type", type=int, required=True, help="games per task type")
    ap.add_argument("--seed", type=int, default=0, help="base seed (same seed -> same games)")
    ap.add_argument("--split", default="train", help="split folder: train, valid_seen, valid_unseen, ...")
    ap.add_argument("--task-types", default=",".join(TASK_TYPES), help="comma-separated subset")
    a = ap.parse_args(argv)
    types = tuple(t.strip() for t in a.task_types.split(",") if t.strip())
    bad = [t for t in types if t not in TASK_TYPES]
    if bad:
        ap.error(f"--task-types: unknown {bad}; known: {list(TASK_TYPES)}")
    paths = generate(a.out, a.per_type, a.seed, a.split, types)
    print(f"wrote {len(paths)} games under {os.path.join(a.out, a.split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
