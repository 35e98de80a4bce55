"""The product (``erasure``) and the demo (``erasure_demo``) stay apart: the product never imports the demo,
the ``erasure-pipeline`` distribution holds only ``erasure``, and the production image copies no demo code.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = "erasure_demo"
# Product code: everything in the image. The one demo job among the Spark jobs (it generates the demo's
# warehouse tables and says so) is the only product-folder file allowed to use the demo package.
PRODUCT_DIRS = ("include/erasure", "dags", "plugins", "spark_jobs")
ALLOWED = {"spark_jobs/generate_warehouse.py"}
_DEMO_NAME = re.compile(rf"^{DEMO}(\.|$)")


def _demo_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every import of the demo package, and every string naming one of its modules
    (``importlib.import_module("erasure_demo.x")``, ``[python, "-m", "erasure_demo.x"]``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _DEMO_NAME.match(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _DEMO_NAME.match(node.module or ""):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DEMO_NAME.match(node.value):
            found.append((node.lineno, repr(node.value)))
    return found


def test_product_code_never_imports_the_demo():
    files = [
        p for d in PRODUCT_DIRS for p in sorted((ROOT / d).rglob("*.py")) if "__pycache__" not in p.parts
    ]
    assert len(files) > 20, "the product's modules were not found"
    assert any(p.parts[-2:] == ("erasure", "__init__.py") for p in files)
    bad = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        bad += [f"{rel}:{line}: {what}" for line, what in _demo_uses(tree)]
    assert not bad, "product code uses the demo package:\n" + "\n".join(bad)


def test_the_check_sees_imports():
    tree = ast.parse(
        "import erasure_demo\nfrom erasure_demo.partners import run\nimport erasure.demox\n"
        "cmd = ['python', '-m', 'erasure_demo.partners.run']\n"
    )
    assert [line for line, _ in _demo_uses(tree)] == [1, 2, 4]


def _distribution(monkeypatch):
    """The distribution setuptools builds from pyproject.toml (the same configuration code as the build)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # package_dir is relative to the project root, as in a build
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "[tool.setuptools] in pyproject.toml is still beta"
        return apply_configuration(Distribution({"script_name": "setup.py"}), ROOT / "pyproject.toml")


def test_distribution_packages_only_the_product(monkeypatch, tmp_path):
    dist = _distribution(monkeypatch)
    assert "erasure" in dist.packages
    assert {p.split(".")[0] for p in dist.packages} == {"erasure"}, dist.packages
    # the files of the wheel: build_py copies exactly the packages' modules and package data
    build_py = dist.get_command_obj("build_py")
    build_py.build_lib = str(tmp_path / "lib")
    build_py.compile = build_py.optimize = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.run_command("build_py")
    built = sorted(
        p.relative_to(tmp_path / "lib").as_posix() for p in (tmp_path / "lib").rglob("*") if p.is_file()
    )
    assert {b.split("/")[0] for b in built} == {"erasure"}, built
    assert "erasure/__init__.py" in built and "erasure/py.typed" in built
    assert not [b for b in built if DEMO in b or "/partners/" in b]


def test_production_image_copies_no_demo_code():
    copies = [
        line.split()[1:]
        for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    ]
    sources = [s for args in copies for s in args[:-1] if not s.startswith("--")]
    assert "include/erasure" in sources
    for src in sources:
        assert src.rstrip("/") not in {".", "include"} and not src.startswith(f"include/{DEMO}"), src
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            src = mount.split(":")[0].rstrip("/")
            assert src not in {".", "./include"} and not src.startswith(f"./include/{DEMO}"), (name, mount)
