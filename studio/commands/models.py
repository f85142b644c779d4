"""``python -m studio models list|fetch``: the catalog's sets and what is on this machine."""

from __future__ import annotations

import argparse
import json

from studio.errors import ConfigError
from studio.models.catalog import ModelSet, load_catalog
from studio.models.resolver import ModelResolver
from studio.settings import Settings


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", help="list or fetch model sets", description="Model sets.")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = msub.add_parser("list", parents=[common], help="each set and which components are local")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=list_sets)
    fetch = msub.add_parser("fetch", parents=[common], help="download a set's components")
    fetch.add_argument("set", help="model set name")
    fetch.add_argument(
        "--with-optional", action="store_true", help="also fetch optional components"
    )
    fetch.set_defaults(handler=fetch_set)


def component_status(resolver: ModelResolver, model_set: ModelSet, name: str) -> tuple[str, str]:
    """``(status, where)``: available / builds on first use / missing (optional)."""
    comp = model_set.components[name]
    path = resolver.find_local(model_set, name)
    if path is not None:
        return "available", str(path)
    if comp.source == "builtin":
        return "builds on first use", str(resolver.settings.models_dir / "builtin")
    return ("missing (optional)" if comp.optional else "missing"), comp.origin


def set_usable(resolver: ModelResolver, model_set: ModelSet) -> bool:
    """Every required component is local or can be built here."""
    return all(
        component_status(resolver, model_set, name)[0] in ("available", "builds on first use")
        for name, comp in model_set.components.items()
        if not comp.optional
    )


def list_sets(args: argparse.Namespace, settings: Settings) -> int:
    resolver = ModelResolver(settings)
    report = []
    for model_set in load_catalog().values():
        comps = []
        for name, comp in model_set.components.items():
            status, where = component_status(resolver, model_set, name)
            comps.append(
                {
                    "name": name,
                    "status": status,
                    "where": where,
                    "origin": comp.origin,
                    "format": comp.format,
                    "licence": comp.licence,
                    "optional": comp.optional,
                }
            )
        report.append(
            {
                "set": model_set.name,
                "family": model_set.family,
                "title": model_set.title,
                "usable": set_usable(resolver, model_set),
                "components": comps,
            }
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"models dir: {settings.models_dir}")
    for entry in report:
        usable = "usable" if entry["usable"] else "needs weights"
        print(f"\n{entry['set']} [{entry['family']}, {usable}] - {entry['title']}")
        for c in entry["components"]:
            print(f"  {c['name']:<22} {c['status']:<20} {c['origin']}  ({c['licence']})")
    return 0


def fetch_set(args: argparse.Namespace, settings: Settings) -> int:
    catalog = load_catalog()
    if args.set not in catalog:
        raise ConfigError(f"unknown model set {args.set!r}; known: {', '.join(catalog)}")
    model_set = catalog[args.set]
    resolver = ModelResolver(settings)
    for name, comp in model_set.components.items():
        if comp.optional and not args.with_optional:
            continue
        print(f"{name}: {resolver.resolve(model_set, name)}")
    return 0
