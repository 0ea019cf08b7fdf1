"""What nas ships for clusters (deploy/), checked offline: the Kubernetes manifests against the Kubernetes
schemas (kubernetes-validate ships them), the container recipe's inputs, and every `nas` option the
manifests and Slurm scripts use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes release still widely run that has every field used


def manifests() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", doc) for p in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for i, doc in enumerate(yaml.safe_load_all(p.read_text())) if doc]


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_the_kubernetes_manifests_validate_against_the_schemas(name, doc):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # strict: an unknown field is an error


def test_the_manifests_hold_what_the_search_needs():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in manifests()}
    assert {("StatefulSet", "nas-postgres"), ("Service", "nas-postgres"), ("Job", "nas-search"),
            ("Job", "nas-finish")} <= kinds
    search = next(doc for _, doc in manifests() if doc["metadata"]["name"] == "nas-search")
    assert search["spec"]["completionMode"] == "Indexed"
    assert "--study-trials" in search["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_the_container_recipe_copies_what_exists():
    recipe = (DEPLOY / "docker" / "Dockerfile").read_text()
    sources = [w for line in recipe.splitlines() if line.startswith("COPY") for w in line.split()[1:-1]]
    assert sources and all((DEPLOY.parent / s).exists() for s in sources), sources
    assert "[postgres]" in recipe  # the driver the workers reach PostgreSQL with


def _options_used(command: str) -> set[str]:
    """The `--options` that the shipped files pass to `nas COMMAND`."""
    texts = [p.read_text() for p in [*(DEPLOY / "kubernetes").glob("*.yaml"), *(DEPLOY / "slurm").iterdir()]]
    used = set()
    for text in texts:
        for call in re.findall(rf"nas {command}\b[^\n]*(?:\n[ \t]+--[^\n]*)*", text):
            used |= set(re.findall(r"(--[a-z][a-z-]+)", call))
    return used


@pytest.mark.parametrize("command", ["search", "best", "report"])
def test_every_option_the_shipped_files_pass_exists(command):
    from typer.main import get_command

    from nas.cli import app

    known = {o for p in get_command(app).commands[command].params for o in p.opts}
    used = _options_used(command)
    assert used and used <= known, used - known
