"""Static checks of README.md and docs/: they follow the code, the settings and the deploy files."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import PipelineMetrics
from streamer.core.dead_letters import REASONS, STATE_REASONS
from streamer.settings import SECTIONS, build_settings
from tests.unit.test_deploy_files import ALERTS, DASHBOARD, ROOT, _load_yaml, _panel_exprs

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAKEFILE = ROOT / "Makefile"
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a page (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _section(page: str, heading: str) -> str:
    """From the level-2 heading to the next one (its subsections included)."""
    start = page.index(f"\n## {heading}\n")
    end = page.find("\n## ", start + 1)
    return page[start : end if end != -1 else len(page)]


@pytest.fixture(scope="module")
def readme() -> str:
    return _read(README)


@pytest.fixture(scope="module")
def configuration_doc() -> str:
    return _read(DOCS / "configuration.md")


@pytest.fixture(scope="module")
def records_doc() -> str:
    return _read(DOCS / "records.md")


@pytest.fixture(scope="module")
def operations_doc() -> str:
    return _read(DOCS / "operations.md")


@pytest.fixture(scope="module")
def monitoring_section(operations_doc: str) -> str:
    return _section(operations_doc, "Monitoring")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = _load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


class TestReadme:
    def test_it_is_at_most_about_200_lines(self, readme: str) -> None:
        lines = len(readme.splitlines())
        assert lines <= README_MAX_LINES, (
            f"README.md has {lines} lines; keep it to {README_MAX_LINES} and put depth in docs/"
        )

    def test_its_set_up_commands_are_make_targets(self, readme: str) -> None:
        targets = set(re.findall(r"^([\w-]+):", _read(MAKEFILE), flags=re.MULTILINE))
        named = set(re.findall(r"`make ([\w-]+)`", readme))
        assert {"demo", "test"} <= named
        assert named <= targets, f"README names make targets the Makefile lacks: {named - targets}"

    def test_make_test_runs_the_whole_suite(self) -> None:
        recipe = re.search(r"^test: .*\n((?:\t.*\n)+)", _read(MAKEFILE), flags=re.MULTILINE)
        assert recipe, "the Makefile has no test target"
        commands = [line.split() for line in recipe.group(1).splitlines()]
        # Every test directory, each once: the unit tests on both cores, then the rest,
        # listing its slowest steps so that every CI log shows where the time goes.
        assert commands == [
            ["$(BIN)/pytest", "-q", "-n", "2", "tests/unit"],
            ["$(BIN)/pytest", "-q", "--durations=30", "tests/integration"],
        ]
        assert sorted(
            p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"
        ) == ["integration", "unit"]

    def test_its_minimal_configuration_passes_validation(self, readme: str) -> None:
        (config,) = _code_blocks(readme, "toml")
        settings = build_settings(tomllib.loads(config), environ={})
        assert settings.kafka.input_topic
        assert settings.kafka.output_topic

    def test_it_links_every_docs_page(self, readme: str) -> None:
        linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", readme))
        for page in DOCS.glob("*.md"):
            assert page.name in linked, f"README does not link docs/{page.name}"


class TestLinks:
    @pytest.mark.parametrize("page", _pages(), ids=lambda path: path.relative_to(ROOT).as_posix())
    def test_every_link_to_a_file_or_an_anchor_resolves(self, page: Path) -> None:
        text = _read(page)
        for target in _LINK.findall("\n".join(_prose_lines(text))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(_read(linked)), (
                    f"{page.name} links to {target}, but {linked.name} has no such heading"
                )

    @pytest.mark.parametrize("page", _pages(), ids=lambda path: path.relative_to(ROOT).as_posix())
    def test_no_page_refers_to_an_issue_number(self, page: Path) -> None:
        found = re.findall(r"\bissues? #?\d+", _read(page), flags=re.IGNORECASE)
        assert not found, f"{page.name} refers to the tracker: {found}"


class TestConfigurationDoc:
    @pytest.mark.parametrize(
        ("section", "key"),
        [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)],
    )
    def test_config_reference_mentions_every_option(
        self, configuration_doc: str, section: str, key: str
    ) -> None:
        start = configuration_doc.index(f"**[{section}]**")
        end = configuration_doc.find("**[", start + 1)
        table = configuration_doc[start : end if end != -1 else len(configuration_doc)]
        assert f"| `{key}` |" in table, f"docs/configuration.md's [{section}] table lacks {key}"

    def test_config_reference_is_the_current_output_of_config_reference(
        self, configuration_doc: str
    ) -> None:
        reference = subprocess.run(
            [sys.executable, "-m", "streamer", "config-reference", "--markdown"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        assert reference in configuration_doc, (
            "docs/configuration.md's reference table is stale: paste the output of "
            "`streamer config-reference --markdown` under 'Reference'"
        )


class TestRecordsDoc:
    def test_it_lists_every_dead_letter_reason(self, records_doc: str) -> None:
        for reason in (*REASONS, *STATE_REASONS):
            assert f"`{reason}`" in records_doc, reason


class TestOperationsDoc:
    def test_it_lists_every_metric(self, operations_doc: str) -> None:
        registry = CollectorRegistry()
        PipelineMetrics(registry)
        for metric in registry.collect():
            suffix = {"counter": "_total", "info": "_info"}.get(metric.type, "")
            assert f"`{metric.name}{suffix}`" in operations_doc, metric.name

    def test_it_describes_every_panel_with_its_queries(
        self, monitoring_section: str, dashboard: dict[str, Any]
    ) -> None:
        for panel in dashboard["panels"]:
            assert f"**{panel['title']}**" in monitoring_section, panel["title"]
        for title, expr in _panel_exprs(dashboard):
            assert f"`{expr}`" in monitoring_section, (
                f"docs/operations.md lacks the query of {title!r}: {expr}"
            )

    def test_it_names_every_alert(
        self, monitoring_section: str, rules: list[dict[str, Any]]
    ) -> None:
        for rule in rules:
            assert f"`{rule['alert']}`" in monitoring_section, rule["alert"]

    def test_it_states_the_health_endpoint_contract(self, monitoring_section: str) -> None:
        for word in ("/healthz", "/readyz", "200", "503"):
            assert word in monitoring_section
