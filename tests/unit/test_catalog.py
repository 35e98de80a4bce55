"""Catalog validation: the shipped catalog loads, and bad files fail naming file, target and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from erasure.catalog import CatalogError, load_catalog

ROOT = Path(__file__).resolve().parents[2]

BASE = """
version: 1
pipeline_owner: privacy
subject_types:
  - name: customer
teams:
  - name: privacy
  - name: crm
targets:
  - name: crm_contacts
    kind: sync_api
    owner: crm
    subject_types: [customer]
    identity_key: customer_id
    sync_api:
      base_url: http://127.0.0.1:1
"""


def write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_catalog_loads_every_kind():
    cat = load_catalog(ROOT / "include" / "catalog")
    kinds = {t.kind for t in cat.targets}
    assert kinds == {"sync_api", "kafka", "warehouse_delta", "postgres_table"}
    assert cat.sla_for("CCPA") == 45 and cat.sla_for(None) == 30 and cat.sla_for("unknown") == 30
    assert [t.name for t in cat.targets_for("employee")] == ["support_desk", "hr_directory"]
    assert cat.target("crm_contacts").pool == "erasure_crm_contacts"


def test_of_kind_selects_named_targets_and_names_unknown_ones():
    cat = load_catalog(ROOT / "include" / "catalog")
    wh = [t.name for t in cat.of_kind("warehouse_delta")]
    assert len(wh) >= 2
    assert [t.name for t in cat.of_kind("warehouse_delta", [wh[1]])] == [wh[1]]
    assert cat.of_kind("warehouse_delta", []) == []
    sync = cat.of_kind("sync_api")[0].name  # a target of another kind is not selected silently
    with pytest.raises(ValueError) as err:
        cat.of_kind("warehouse_delta", [wh[0], "nope", sync])
    assert str(err.value).startswith(
        f"targets: {sorted(['nope', sync])} are not enabled warehouse_delta targets"
    )


def test_minimal_catalog_loads(tmp_path):
    cat = load_catalog(write(tmp_path, BASE))
    assert cat.target("crm_contacts").spec.batch_size == 500


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("owner: crm", "owner: nobody"), ["crm_contacts", "owner", "unknown team 'nobody'"]),
        (("kind: sync_api", "kind: ftp"), ["target 'crm_contacts'", "kind"]),
        (("subject_types: [customer]", "subject_types: [robot]"), ["crm_contacts", "subject_types", "robot"]),
        (("subject_types: [customer]", "subject_types: []"), ["target 'crm_contacts'", "subject_types"]),
        (
            ("base_url: http://127.0.0.1:1", "base_url: ftp://x"),
            ["target 'crm_contacts'", "sync_api.base_url"],
        ),
        (
            ("identity_key: customer_id", "identity_key: Customer-Id"),
            ["target 'crm_contacts'", "identity_key"],
        ),
        (
            ("    sync_api:\n      base_url: http://127.0.0.1:1", "    sync_api: null"),
            ["crm_contacts", "needs a 'sync_api' section"],
        ),
        (
            ("name: crm_contacts", "name: crm_contacts\n    colour: red"),
            ["target 'crm_contacts'", "colour", "Extra inputs"],
        ),
        (
            ("identity_key: customer_id", "identity_key: customer_id\n    max_attempts: 0"),
            ["crm_contacts", "max_attempts"],
        ),
    ],
)
def test_bad_catalog_names_file_target_field(tmp_path, mutation, expected):
    old, new = mutation
    text = textwrap.dedent(BASE)
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(CatalogError) as exc:
        load_catalog(path)
    msg = str(exc.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


def test_duplicate_target_names(tmp_path):
    text = textwrap.dedent(BASE) + textwrap.indent(textwrap.dedent(BASE).split("targets:\n", 1)[1], "")
    with pytest.raises(CatalogError, match="duplicate name 'crm_contacts'"):
        load_catalog(write(tmp_path, text))


def test_not_yaml_and_not_mapping(tmp_path):
    with pytest.raises(CatalogError, match=r"bad\.yaml: not valid YAML"):
        load_catalog(write(tmp_path, "targets: [\n", "bad.yaml"))
    with pytest.raises(CatalogError, match="top level must be a mapping"):
        load_catalog(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")
    with pytest.raises(CatalogError, match="no \\*.yaml"):
        load_catalog(tmp_path)


def test_env_references(tmp_path, monkeypatch):
    text = textwrap.dedent(BASE).replace("http://127.0.0.1:1", "${CRM_URL:-http://127.0.0.1:9}")
    monkeypatch.delenv("CRM_URL", raising=False)
    assert load_catalog(write(tmp_path, text)).target("crm_contacts").spec.base_url == "http://127.0.0.1:9"
    monkeypatch.setenv("CRM_URL", "https://crm.internal")
    assert load_catalog(write(tmp_path, text)).target("crm_contacts").spec.base_url == "https://crm.internal"
    strict = textwrap.dedent(BASE).replace("http://127.0.0.1:1", "${CRM_URL_UNSET}")
    with pytest.raises(CatalogError, match="CRM_URL_UNSET is referenced but not set"):
        load_catalog(write(tmp_path, strict))


def test_directory_merges_files_and_reports_origin(tmp_path):
    head, targets = textwrap.dedent(BASE).split("targets:\n", 1)
    write(tmp_path, head, "a.yaml")
    bad = "targets:\n" + targets.replace("owner: crm", "owner: ghost")
    write(tmp_path, bad, "b.yaml")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    assert "ghost" in str(exc.value)


def test_mask_mode_needs_columns(tmp_path):
    wh = """
  - name: wh_dim
    kind: warehouse_delta
    owner: crm
    subject_types: [customer]
    identity_key: customer_id
    warehouse_delta:
      table: dim
      path: dim
      key_column: customer_id
      mode: mask
"""
    with pytest.raises(CatalogError, match="mode 'mask' needs fields or mask_columns") as exc:
        load_catalog(write(tmp_path, textwrap.dedent(BASE) + wh))
    assert "target 'wh_dim'" in str(exc.value)
