"""Paper experiments as data: TOML presets expanded into named, typed run configurations.

A preset file holds a shared `[base]` of settings, one or more grids (`[grid]` or `[[grid]]`, each a
table of setting -> list of values whose product is taken) and recipes `[recipe.NAME]` whose settings
override the base and grid (with `[recipe.NAME.per_dataset.DATASET]` for dataset-specific values).
Settings are those of the one schema (`contsup.config`), named by key (`lr`, `dataset`) or dotted path
(`train.lr`); a job's settings are keyed by key. `context = "E2E"` means end-to-end training (K = 1).
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from contsup.checks import IDLE_AT_K1
from contsup.config import RunConfig, fits, flatten, nest, resolve, resolve_name, settings, type_name
from contsup.data.specs import DATASETS
from contsup.errors import ContsupError
from contsup.files import read_text_file
from contsup.run import check_settings

# Settings that say how a run is shown, where it is written or where its dataset lives: not preset settings
# (a preset file names no place on disk; the command line's --out and --data-dir do).
_NOT_PRESET = ("out", "progress", "data_root", "download")
MAX_CONFIGURATIONS = 10_000  # grid points times seeds of one preset, counted before anything is expanded
E2E = "E2E"
# A preset value must have a TOML type that its setting's schema type allows (TOML has no null: a setting
# whose default is None is left out or given a value); values are then checked as on the command line.
_CONTEXT = re.compile(r"E2E|E|R\d{1,4}E?")
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def defaults() -> dict[str, Any]:
    """Every preset setting by key, with its default from the schema."""
    return {s.key: s.default for s in settings().values() if s.key not in _NOT_PRESET}


def as_keys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A table of settings named by key or dotted path, keyed by key; unknown names raise ContsupError."""
    out: dict[str, Any] = {}
    named_by: dict[str, str] = {}
    for name, value in table.items():
        try:
            key = settings()[resolve_name(name)].key
        except ContsupError as err:
            raise ContsupError(f"{where}: {err}") from None
        if key in named_by:
            raise ContsupError(f"{where}: {named_by[key]!r} and {name!r} both set {key}; give it once")
        named_by[key] = name
        if key in _NOT_PRESET:
            raise ContsupError(f"{where}: {key} is not a preset setting (places and display come from the "
                               "command line: --out, --data-dir, --progress)")
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


def _check_value(where: str, key: str, value: Any) -> None:
    """One preset value: its TOML type, and the strings that name files or folders."""
    try:
        hint = settings()[resolve_name(key)].type
        if not fits(value, hint):
            raise ContsupError(f"{key} must be {type_name(hint)}, got {value!r}")
        if key == "context" and not _CONTEXT.fullmatch(value):
            raise ContsupError(f"context must be E2E, E, Rn or RnE, got {value!r}")
        if key in ("dataset", "recon_dataset") and value not in DATASETS:
            raise ContsupError(f"{key} must be one of {', '.join(DATASETS)}, got {value!r}")
    except ContsupError as err:
        raise ContsupError(f"{where}: {err}") from None


def _check_table(where: str, table: Any, grid: bool = False) -> dict[str, Any]:
    """A table of settings keyed by key: known names, values of the right types (each listed value, in a grid)."""
    if not isinstance(table, dict):
        raise ContsupError(f"{where} must be a table")
    keyed = as_keys(dict(flatten(table)), where)
    for key, value in keyed.items():
        if grid and (not isinstance(value, list) or not value):
            raise ContsupError(f"{where}: {key} must be a non-empty list")
        for v in value if grid else [value]:
            _check_value(where, key, v)
    return keyed


def load_preset(name_or_path: str | Path) -> Preset:
    """Read and check a preset by name (shipped) or by path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = preset_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise ContsupError(f"unknown preset {str(name_or_path)!r}; see `contsup reproduce --list`")
    try:
        doc = tomllib.loads(read_text_file(path, "preset file"))
    except tomllib.TOMLDecodeError as err:
        raise ContsupError(f"{path}: invalid TOML: {err}") from None
    unknown = sorted(set(doc) - {"title", "description", "base", "grid", "recipe"})
    if unknown:
        raise ContsupError(f"{path.name}: unknown table(s) or key(s) {', '.join(unknown)}")
    for key in ("title", "description"):
        if not isinstance(doc.get(key, ""), str):
            raise ContsupError(f"{path.name}: {key} must be a string")
    base = _check_table(f"{path.name} [base]", doc.get("base", {}))
    raw_grids = doc.get("grid", [{}])
    raw_grids = [raw_grids] if isinstance(raw_grids, dict) else raw_grids
    if not isinstance(raw_grids, list):
        raise ContsupError(f"{path.name}: grid must be a table or an array of tables")
    grids = [_check_table(f"{path.name} [grid]", g, grid=True) for g in raw_grids]
    count = sum(math.prod(len(v) for v in g.values()) for g in grids)
    if count > MAX_CONFIGURATIONS:
        raise ContsupError(f"{path.name}: its grids hold {count} configurations, more than the {MAX_CONFIGURATIONS} "
                           "a sweep runs; split it into several presets")
    raw_recipes = doc.get("recipe", {})
    if not isinstance(raw_recipes, dict) or not raw_recipes:
        raise ContsupError(f"{path.name}: no [recipe.NAME] tables")
    recipes = {}
    for rname, raw in raw_recipes.items():
        if not isinstance(raw, dict):
            raise ContsupError(f"{path.name}: recipe.{rname} must be a table")
        per = raw.get("per_dataset", {})
        if not isinstance(per, dict):
            raise ContsupError(f"{path.name}: recipe.{rname}.per_dataset must be a table")
        recipe = _check_table(f"{path.name} [recipe.{rname}]", {k: v for k, v in raw.items() if k != "per_dataset"})
        recipe["per_dataset"] = {ds: _check_table(f"{path.name} [recipe.{rname}.per_dataset.{ds}]", over)
                                 for ds, over in per.items()}
        recipes[rname] = recipe
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


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """Canonical settings: E2E is one module with every setting a network of one module never reads at its default
    (`contsup.checks.IDLE_AT_K1`), recon_dataset is set only where recon takes the paper's weights, micro_batches
    only for torch's pipeline schedules."""
    s = dict(row)
    d = defaults()
    if str(s["context"]).upper() == E2E:
        s.update(context=E2E, modules=1, **{key: d[key] for key in (settings()[p].key for p in IDLE_AT_K1)})
    if str(s["recon"]).lower() != "paper":  # a recipe's recon_dataset for the rows with the paper's weights
        s["recon_dataset"] = None
    if s["parallel"] in ("local", "ddp"):  # a base's micro_batches for the rows of torch's pipeline schedules
        s["micro_batches"] = d["micro_batches"]
    return s


def expand(preset: Preset, recipe: str, seeds: Sequence[int] | None = None,
           only: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """The preset's distinct settings for a recipe (grids unioned, recipe applied), filtered by `only`."""
    if recipe not in preset.recipes:
        raise ContsupError(f"preset {preset.name!r} has no recipe {recipe!r}; it has {', '.join(preset.recipes)}")
    rec = {k: v for k, v in preset.recipes[recipe].items() if k != "per_dataset"}
    per = preset.recipes[recipe].get("per_dataset", {})
    count = sum(math.prod(len(v) for k, v in g.items() if k != "seed") * len(g.get("seed", [0]) if seeds is None
                                                                              else seeds) for g in preset.grids)
    if count > MAX_CONFIGURATIONS:
        raise ContsupError(f"preset {preset.name!r} with these seeds holds {count} configurations, more than the "
                           f"{MAX_CONFIGURATIONS} a sweep runs; pass fewer --seeds")
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
        parts.append("cuts" + s["cuts"].replace(" ", "").replace(",", "_"))  # 1.4 -> cuts1.4; 1.2, 2.1 -> cuts1.2_2.1
    elif s["cut_table"] not in ("auto", "equal"):
        parts.append(s["cut_table"])
    if s["head"] == "auglocal" and (s["aux_depth"], s["aux_pyramid"]) != (d["aux_depth"], d["aux_pyramid"]):
        parts.append(f"d{s['aux_depth']}p{_num(s['aux_pyramid'])}")
    if s["man_momentum"]:
        parts.append(f"man{_num(s['man_momentum'])}" + ("-random" if s["man_ema_start"] == "random" else "")
                     + ("-scaled" if s["man_scale"] else ""))
    if s["head_patches"] > 1:
        parts.append(f"pff{s['head_patches']}")
    if s["cascade"]:
        parts.append(f"cascade{_num(s['cascade'])}")
    if s["checkpoint_segments"]:
        parts.append(f"ckpt{s['checkpoint_segments']}")
    if s["optimizer"] != d["optimizer"]:
        parts.append(s["optimizer"])
    recon = s["recon"]
    if recon not in (None, "none"):
        parts.append(f"recon-{recon.replace(',', '_')}" + (f"-{s['recon_dataset']}" if s["recon_dataset"] else "")
                     + (f"-by-{s['recon_schedule']}" if s["recon_schedule"] != "cut" else "")
                     + (f"-patches{s['recon_patches']}" if s["recon_patches"] > 1 else ""))
    if s["train_subset"]:
        parts.append(f"n{s['train_subset']}")
    if s["parallel"] != d["parallel"]:
        parts.append(s["parallel"] + (f"-m{s['micro_batches']}" if s["parallel"] != "ddp" else ""))
    if s["ranks"] != d["ranks"] or s["threads"] != d["threads"]:
        parts.append(f"{s['ranks']}x{s['threads']}t")  # processes x threads each
    parts.append(f"s{s['seed']}")
    return "-".join(str(p) for p in parts)


def to_config(s: Mapping[str, Any], out: str | Path | None = None, progress: bool = False) -> RunConfig:
    """The typed RunConfig of one configuration's settings."""
    over = {**s, "out": None if out is None else str(out), "progress": progress}
    if s["context"] == E2E:
        over["context"] = "R0"
    cfg = resolve(nest(over))
    check_settings(cfg)  # what a run checks first: the settings and the sizes taken from the dataset
    return cfg


def run_folder(out_dir: str | Path, name: str) -> Path:
    """`out_dir/name`, refused unless `name` is one plain folder name that stays inside `out_dir`."""
    folder = Path(out_dir) / name
    if not _FOLDER.fullmatch(name) or folder.resolve().parent != Path(out_dir).resolve():
        raise ContsupError(f"run folder name {name!r} is not a plain folder name inside {out_dir}")
    return folder


def jobs(preset: Preset, recipe: str, out_dir: str | Path, seeds: Sequence[int] | None = None,
         only: Mapping[str, list[str]] | None = None, overrides: Mapping[str, Any] | None = None,
         progress: bool = False) -> list[Job]:
    """Every configuration of a preset's recipe as a Job with its run folder under `out_dir`."""
    result = []
    for s in expand(preset, recipe, seeds, only):
        s = {**s, **(overrides or {})}
        config = to_config(s, None, progress)  # checks every value before any of them names a folder
        name = run_name(s)
        config.out = str(run_folder(out_dir, name))
        result.append(Job(name, s, config))
    return result
