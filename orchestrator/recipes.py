"""Where a recipe argument points: a YAML file, or the name of a packaged recipe.

    resolve_recipe("configs/quickstart.yaml")   # a file: itself
    resolve_recipe("quickstart")                 # a packaged recipe: .../configs/quickstart.yaml
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def packaged_recipes() -> dict[str, str]:
    """name -> path of every recipe shipped in the `configs` package."""
    root = resources.files("configs")
    return {p.name.removesuffix(".yaml"): str(p) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe(arg: str) -> str:
    if Path(arg).is_file():
        return arg
    packaged = packaged_recipes()
    name = Path(arg).name.removesuffix(".yaml")
    if name in packaged and not Path(arg).parent.parts[1:]:  # "quickstart", "quickstart.yaml", "configs/quickstart.yaml"
        return packaged[name]
    raise FileNotFoundError(f"config file not found: {arg} (packaged recipes: {', '.join(sorted(packaged))})")
