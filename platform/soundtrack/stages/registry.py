"""The model registry: self-contained entries that generate, serve and bench load by name.

Layout of an entry (``<storage>/registry/<name>/``)::

    model/      a generator directory (SoundtrackGenerator.save: safetensors weights,
                generator.json) whose sampler defaults ARE the chosen inference settings,
                so ``load_generator("registry:<name>")`` generates with them by default
    card.json   format, name, created_at, the model it came from, the inference settings,
                metrics (validation and test, with paired intervals against the defaults),
                and the search that chose it (run directory, config, trial id, objective)

Entries are written into a temporary folder and renamed into place, so a reader never
sees half an entry; writing an existing name replaces it (the previous card is kept as
``card.previous.json`` in the new entry).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from soundtrack.errors import RegistryError
from soundtrack.pipelines.generator import SoundtrackGenerator

REGISTRY_FORMAT = "soundtrack-registry/1"
CARD = "card.json"


def entry_dir(name: str, storage: str | os.PathLike = "runs") -> Path:
    """``<storage>/registry/<name>`` (the name must be one folder name).

    Raises:
        RegistryError: an empty name or one with a path separator.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise RegistryError(f"registry name {name!r} must be a single folder name (letters, digits, - and _)")
    return Path(storage) / "registry" / name


def register(name: str, model_dir: str | os.PathLike, settings: Mapping[str, Any], card: Mapping[str, Any],
             storage: str | os.PathLike = "runs") -> Path:
    """Write a registry entry: the model with ``settings`` as its sampler defaults, plus a card.

    Args:
        name: the entry's name (``registry:<name>``).
        model_dir: the source generator directory.
        settings: sampler overrides (``SoundtrackGenerator.generate`` keywords) that become
            the entry's defaults.
        card: metadata for ``card.json`` (config, metrics, search provenance); ``format``,
            ``name``, ``created_at``, ``source_model`` and ``settings`` are added.
        storage: the storage root.

    Returns:
        the entry directory.

    Raises:
        RegistryError: a bad name.
        soundtrack.pipelines.generator.GeneratorError: the model does not load or the settings
            are invalid.
    """
    out = entry_dir(name, storage)
    gen = SoundtrackGenerator.load(model_dir)
    gen.sampler = gen.sampler_config(**dict(settings))  # validated like per-call overrides
    doc = {
        "format": REGISTRY_FORMAT,
        "name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_model": str(Path(model_dir)),
        "settings": {k: v for k, v in dict(settings).items()},
        "sampler": json.loads(json.dumps(dataclasses.asdict(gen.sampler), default=str)),
        **dict(card),
    }
    gen.card = {**gen.card, "registry": name, "source_model": str(Path(model_dir))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen.save(tmp / "model")
    if (out / CARD).exists():
        shutil.copy2(out / CARD, tmp / "card.previous.json")
    (tmp / CARD).write_text(json.dumps(doc, indent=2, default=str))
    old = out.with_name(f".{name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_card(name: str, storage: str | os.PathLike = "runs") -> dict:
    """The ``card.json`` of a registry entry.

    Raises:
        RegistryError: no such entry or no readable card (the message lists the entries).
    """
    d = entry_dir(name, storage)
    p = d / CARD
    if not p.is_file():
        root = Path(storage) / "registry"
        have = sorted(x.name for x in root.iterdir() if x.is_dir() and not x.name.startswith(".")) if root.is_dir() else []
        raise RegistryError(f"no registry entry {name!r} with a {CARD} under {root} (entries: {', '.join(have) or 'none'})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{p} is not readable JSON ({exc})") from exc
