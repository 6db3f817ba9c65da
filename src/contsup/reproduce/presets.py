"""Paper experiments as data: TOML presets expanded into named, typed run configurations.

A preset file holds a shared `[base]` of settings, one or more grids (`[grid]` or `[[grid]]`, each a
table of setting -> list of values whose product is taken) and recipes `[recipe.NAME]` whose settings
override the base and grid (with `[recipe.NAME.per_dataset.DATASET]` for dataset-specific values).
Settings form one flat namespace (see `SETTINGS`); `context = "E2E"` means end-to-end training (K = 1).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from contsup.checks import check_run, check_type
from contsup.data.specs import DATASETS
from contsup.errors import ContsupError
from contsup.method.heads import ReconWeights, parse_recon
from contsup.method.network import LocalConfig
from contsup.run import DataConfig, RunConfig
from contsup.train.trainer import TrainConfig

# Every setting a preset may use, with its default (the paper's defaults, spec §3-§5).
SETTINGS: dict[str, Any] = {
    "dataset": "cifar10",
    "data_root": None,
    "train_subset": 0,
    "val_split": 0,
    "arch": "resnet32",
    "modules": 4,
    "context": "R1E",
    "head": "1c2f",
    "loss": "softmax",
    "width": 128,
    "widen": 1.0,
    "cut_table": "auto",
    "cuts": None,
    "recon": "none",  # none | paper | [ixx1, ixy1, ixx2, ixy2]
    "recon_dataset": None,  # with recon = "paper": take the paper's weights for this dataset instead
    "epochs": 160,
    "batch_size": 1024,
    "lr": 0.8,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup_epochs": None,
    "seed": 0,
    "device": "auto",
    "bf16": False,
    "channels_last": False,
}
E2E = "E2E"
# The TOML types each setting accepts (TOML has no null: a setting whose default is None is either left out
# or given a value of these types). Values are then checked by the same rules as the command line.
_NUMBER = (int, float)
TYPES: dict[str, type | tuple[type, ...]] = {
    "dataset": str, "data_root": str, "train_subset": int, "val_split": int, "arch": str, "modules": int,
    "context": str, "head": str, "loss": str, "width": int, "widen": _NUMBER, "cut_table": str, "cuts": list,
    "recon": (str, list), "recon_dataset": str, "epochs": int, "batch_size": int, "lr": _NUMBER,
    "momentum": _NUMBER, "weight_decay": _NUMBER, "warmup_epochs": int, "seed": int, "device": str,
    "bf16": bool, "channels_last": bool,
}
_CONTEXT = re.compile(r"E2E|E|R\d{1,4}E?")
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def _check_keys(where: str, keys: Iterable[str]) -> None:
    unknown = sorted(set(keys) - set(SETTINGS))
    if unknown:
        raise ContsupError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")


def _check_value(where: str, key: str, value: Any) -> None:
    """One preset value: its TOML type, and the strings that name files or folders."""
    try:
        check_type(key, value, TYPES[key])
        if key == "recon" and isinstance(value, list) and (
                len(value) != 4 or not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value)):
            raise ContsupError(f"recon must be 'none', 'paper' or four numbers, got {value!r}")
        if key == "context" and not _CONTEXT.fullmatch(value):
            raise ContsupError(f"context must be E2E, E, Rn or RnE, got {value!r}")
        if key in ("dataset", "recon_dataset") and value not in DATASETS:
            raise ContsupError(f"{key} must be one of {', '.join(DATASETS)}, got {value!r}")
    except ContsupError as err:
        raise ContsupError(f"{where}: {err}") from None


def _check_table(where: str, table: Any, grid: bool = False) -> None:
    """A table of settings: known keys, values of the right types (each listed value, in a grid)."""
    if not isinstance(table, dict):
        raise ContsupError(f"{where} must be a table")
    _check_keys(where, table)
    for key, value in table.items():
        if grid and (not isinstance(value, list) or not value):
            raise ContsupError(f"{where}: {key} must be a non-empty list")
        for v in value if grid else [value]:
            _check_value(where, key, v)


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
    for key in ("title", "description"):
        if not isinstance(doc.get(key, ""), str):
            raise ContsupError(f"{path.name}: {key} must be a string")
    base = doc.get("base", {})
    _check_table(f"{path.name} [base]", base)
    raw_grids = doc.get("grid", [{}])
    grids = [raw_grids] if isinstance(raw_grids, dict) else raw_grids
    if not isinstance(grids, list):
        raise ContsupError(f"{path.name}: grid must be a table or an array of tables")
    for g in grids:
        _check_table(f"{path.name} [grid]", g, grid=True)
    recipes = doc.get("recipe", {})
    if not isinstance(recipes, dict) or not recipes:
        raise ContsupError(f"{path.name}: no [recipe.NAME] tables")
    for rname, recipe in recipes.items():
        if not isinstance(recipe, dict):
            raise ContsupError(f"{path.name}: recipe.{rname} must be a table")
        per = recipe.get("per_dataset", {})
        _check_table(f"{path.name} [recipe.{rname}]", {k: v for k, v in recipe.items() if k != "per_dataset"})
        if not isinstance(per, dict):
            raise ContsupError(f"{path.name}: recipe.{rname}.per_dataset must be a table")
        for ds, over in per.items():
            _check_table(f"{path.name} [recipe.{rname}.per_dataset.{ds}]", over)
    return Preset(path.stem, doc.get("title", path.stem), doc.get("description", ""), base, grids, recipes, path)


def _grid_points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_only(items: Sequence[str] | None) -> dict[str, list[str]]:
    """`--only KEY=V1,V2` filters (values of one key are alternatives; keys must all match)."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ContsupError(f"--only takes KEY=VALUE[,VALUE...], got {item!r}")
        _check_keys("--only", [key])
        out.setdefault(key, []).extend(v.strip() for v in value.split(","))
    return out


def _matches(settings: Mapping[str, Any], only: Mapping[str, list[str]]) -> bool:
    return all(str(settings[k]).lower() in {v.lower() for v in values} for k, values in only.items())


def normalize(settings: dict[str, Any]) -> dict[str, Any]:
    """Canonical settings: E2E is one module with no cuts, local heads, context or reconstruction."""
    s = dict(settings)
    if str(s["context"]).upper() == E2E:
        s.update(context=E2E, modules=1, cut_table="auto", cuts=None, recon="none", recon_dataset=None,
                 **{k: SETTINGS[k] for k in ("head", "loss", "width", "widen")})
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
                s = {**SETTINGS, **preset.base, **point, **rec, "seed": seed}
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
    """Folder name of a configuration, from the settings that tell configurations apart."""
    parts = [s["arch"], s["dataset"], f"K{s['modules']}", s["context"]]
    if s["loss"] != "softmax":
        parts.append(s["loss"])
    if s["head"] != "1c2f":
        parts.append(s["head"])
    if s["width"] != 128 or s["widen"] != 1.0:
        parts.append(f"w{s['width']}x{_num(s['widen'])}")
    if s["cuts"] is not None:
        parts.append("cuts" + "_".join(str(c).replace(", ", ".").strip("()[]") for c in s["cuts"]))
    elif s["cut_table"] not in ("auto", "equal"):
        parts.append(s["cut_table"])
    recon = s["recon"]
    if isinstance(recon, list):
        parts.append("recon" + "_".join(_num(v) for v in recon))
    elif recon != "none":
        parts.append(f"recon-{recon}" + (f"-{s['recon_dataset']}" if s["recon_dataset"] else ""))
    if s["train_subset"]:
        parts.append(f"n{s['train_subset']}")
    parts.append(f"s{s['seed']}")
    return "-".join(str(p) for p in parts)


def resolve_recon(s: Mapping[str, Any]) -> ReconWeights | None:
    """The reconstruction weights of a configuration: none, the paper's (for `recon_dataset`), or 4 numbers."""
    recon = s["recon"]
    text = ",".join(str(v) for v in recon) if isinstance(recon, list) else str(recon)
    balanced = str(s["cut_table"]).startswith("balanced")
    return parse_recon(text, s["arch"], s["recon_dataset"] or s["dataset"], s["modules"], balanced)


def to_config(s: Mapping[str, Any], out: str | Path | None = None, progress: bool = False) -> RunConfig:
    """The typed RunConfig of one configuration's settings."""
    e2e = s["context"] == E2E
    cuts = s["cuts"]
    if cuts is not None:
        cuts = [tuple(c) if isinstance(c, list) else c for c in cuts]
    local = LocalConfig(
        modules=s["modules"], context="R0" if e2e else s["context"], head=s["head"], loss=s["loss"],
        width=s["width"], widen=s["widen"], cut_table=s["cut_table"], cuts=cuts, recon=resolve_recon(s),
    )
    train = TrainConfig(
        epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], momentum=s["momentum"],
        weight_decay=s["weight_decay"], warmup_epochs=s["warmup_epochs"], seed=s["seed"], device=s["device"],
        bf16=s["bf16"], channels_last=s["channels_last"], progress=progress,
    )
    data = DataConfig(s["dataset"], s["data_root"], True, s["val_split"], s["train_subset"])
    cfg = RunConfig(data, s["arch"], local, train, None if out is None else str(out))
    check_run(cfg)
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
