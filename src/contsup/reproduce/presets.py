"""Paper experiments as data: TOML presets expanded into named, typed run configurations.

A preset file holds a shared `[base]` of settings, one or more grids (`[grid]` or `[[grid]]`, each a
table of setting -> list of values whose product is taken) and recipes `[recipe.NAME]` whose settings
override the base and grid (with `[recipe.NAME.per_dataset.DATASET]` for dataset-specific values).
Settings are those of the one schema (`contsup.config`), named by key (`lr`, `dataset`) or dotted path
(`train.lr`); a job's settings are keyed by key. `context = "E2E"` means end-to-end training (K = 1).
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from contsup.config import RunConfig, flatten, nest, resolve, resolve_name, settings
from contsup.errors import ContsupError

# Settings that say how a run is shown or where it is written, not what it computes: not preset settings.
_NOT_PRESET = ("out", "progress")
E2E = "E2E"


def defaults() -> dict[str, Any]:
    """Every preset setting by key, with its default from the schema."""
    return {s.key: s.default for s in settings().values() if s.key not in _NOT_PRESET}


def as_keys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A table of settings named by key or dotted path, keyed by key; unknown names raise ContsupError."""
    out = {}
    for name, value in table.items():
        try:
            key = settings()[resolve_name(name)].key
        except ContsupError as err:
            raise ContsupError(f"{where}: {err}") from None
        if key in _NOT_PRESET:
            raise ContsupError(f"{where}: {key} is not a preset setting")
        out[key] = value
    return out


@dataclass
class Preset:
    """A parsed preset file: its text fields, base settings, grids and recipes."""

    name: str
    title: str
    description: str
    base: dict[str, Any]
    grids: list[dict[str, list[Any]]]
    recipes: dict[str, dict[str, Any]]
    path: Path | None = None


@dataclass
class Job:
    """One configuration of a sweep: its folder name, flat settings and typed config."""

    name: str
    settings: dict[str, Any]
    config: RunConfig = field(repr=False)


def preset_dir() -> Path:
    """The folder of presets shipped with the package."""
    return Path(str(resources.files("contsup") / "presets"))


def available_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in preset_dir().glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """Read and check a preset by name (shipped) or by path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = preset_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise ContsupError(f"unknown preset {str(name_or_path)!r}; see `contsup reproduce --list`")
    if not path.is_file():
        raise ContsupError(f"no preset file {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ContsupError(f"{path}: invalid TOML: {err}") from None
    unknown = sorted(set(doc) - {"title", "description", "base", "grid", "recipe"})
    if unknown:
        raise ContsupError(f"{path.name}: unknown table(s) or key(s) {', '.join(unknown)}")
    base = as_keys(dict(flatten(doc.get("base", {}))), f"{path.name} [base]")
    raw_grids = doc.get("grid", [{}])
    grids = [as_keys(dict(flatten(g)), f"{path.name} [grid]")
             for g in ([raw_grids] if isinstance(raw_grids, dict) else raw_grids)]
    for g in grids:
        for k, v in g.items():
            if not isinstance(v, list) or not v:
                raise ContsupError(f"{path.name} [grid]: {k} must be a non-empty list")
    recipes = {}
    for rname, raw in doc.get("recipe", {}).items():
        raw = dict(raw)
        per = raw.pop("per_dataset", {})
        recipe = as_keys(dict(flatten(raw)), f"{path.name} [recipe.{rname}]")
        recipe["per_dataset"] = {ds: as_keys(dict(flatten(over)), f"{path.name} [recipe.{rname}.per_dataset.{ds}]")
                                 for ds, over in per.items()}
        recipes[rname] = recipe
    if not recipes:
        raise ContsupError(f"{path.name}: no [recipe.NAME] tables")
    return Preset(path.stem, doc.get("title", path.stem), doc.get("description", ""), base, grids, recipes, path)


def _grid_points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_only(items: Sequence[str] | None) -> dict[str, list[str]]:
    """`--only KEY=V1,V2` filters (values of one key are alternatives; keys must all match)."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ContsupError(f"--only takes KEY=VALUE[,VALUE...], got {item!r}")
        key = next(iter(as_keys({name: None}, "--only")))
        out.setdefault(key, []).extend(v.strip() for v in value.split(","))
    return out


def _matches(settings: Mapping[str, Any], only: Mapping[str, list[str]]) -> bool:
    return all(str(settings[k]).lower() in {v.lower() for v in values} for k, values in only.items())


def normalize(settings: dict[str, Any]) -> dict[str, Any]:
    """Canonical settings: E2E is one module with no cuts, local heads, context or reconstruction."""
    s = dict(settings)
    if str(s["context"]).upper() == E2E:
        d = defaults()
        s.update(context=E2E, modules=1, cut_table="auto", cuts=None, recon=None, recon_dataset=None,
                 **{k: d[k] for k in ("head", "loss", "width", "widen", "image_encoder")})
    return s


def expand(preset: Preset, recipe: str, seeds: Sequence[int] | None = None,
           only: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """The preset's distinct settings for a recipe (grids unioned, recipe applied), filtered by `only`."""
    if recipe not in preset.recipes:
        raise ContsupError(f"preset {preset.name!r} has no recipe {recipe!r}; it has {', '.join(preset.recipes)}")
    rec = {k: v for k, v in preset.recipes[recipe].items() if k != "per_dataset"}
    per = preset.recipes[recipe].get("per_dataset", {})
    out: dict[str, dict[str, Any]] = {}
    for grid in preset.grids:
        grid = dict(grid)
        grid_seeds = grid.pop("seed", None)
        for point in _grid_points(grid):
            for seed in seeds if seeds is not None else grid_seeds or [preset.base.get("seed", 0)]:
                s = {**defaults(), **preset.base, **point, **rec, "seed": seed}
                s.update(per.get(s["dataset"], {}))
                s = normalize(s)
                if only and not _matches(s, only):
                    continue
                name = run_name(s)
                if name in out and out[name] != s:
                    differ = sorted(k for k in s if s[k] != out[name][k])
                    raise ContsupError(f"two configurations of {preset.name} differ only in {', '.join(differ)}, "
                                       f"which run folder names leave out ({name}); vary them in separate sweeps")
                out.setdefault(name, s)
    return list(out.values())


def _num(v: float) -> str:
    return f"{v:g}"


def run_name(s: Mapping[str, Any]) -> str:
    """Folder name of a configuration, from the settings that differ from the schema's defaults."""
    d = defaults()
    parts = [s["arch"], s["dataset"], f"K{s['modules']}", s["context"]]
    if s["loss"] != d["loss"]:
        parts.append(s["loss"])
    if s["head"] != d["head"]:
        parts.append(s["head"])
    if s["width"] != d["width"] or s["widen"] != d["widen"]:
        parts.append(f"w{s['width']}x{_num(s['widen'])}")
    if s["image_encoder"] != d["image_encoder"]:
        parts.append(f"enc-{s['image_encoder']}")
    if s["cuts"] is not None:
        parts.append("cuts" + "_".join(str(c).replace(", ", ".").strip("()[]") for c in s["cuts"]))
    elif s["cut_table"] not in ("auto", "equal"):
        parts.append(s["cut_table"])
    recon = s["recon"]
    if isinstance(recon, list):
        parts.append("recon" + "_".join(_num(v) for v in recon))
    elif recon not in (None, "none"):
        parts.append(f"recon-{recon}" + (f"-{s['recon_dataset']}" if s["recon_dataset"] else ""))
    if s["train_subset"]:
        parts.append(f"n{s['train_subset']}")
    parts.append(f"s{s['seed']}")
    return "-".join(str(p) for p in parts)


def to_config(s: Mapping[str, Any], out: str | Path | None = None, progress: bool = False) -> RunConfig:
    """The typed RunConfig of one configuration's settings."""
    over = {**s, "out": None if out is None else str(out), "progress": progress}
    if s["context"] == E2E:
        over["context"] = "R0"
    cfg = resolve(nest(over))
    cfg.local.validate()
    return cfg


def jobs(preset: Preset, recipe: str, out_dir: str | Path, seeds: Sequence[int] | None = None,
         only: Mapping[str, list[str]] | None = None, overrides: Mapping[str, Any] | None = None,
         progress: bool = False) -> list[Job]:
    """Every configuration of a preset's recipe as a Job with its run folder under `out_dir`."""
    result = []
    for s in expand(preset, recipe, seeds, only):
        s = {**s, **(overrides or {})}
        name = run_name(s)
        result.append(Job(name, s, to_config(s, Path(out_dir) / name, progress)))
    return result
