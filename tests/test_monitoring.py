"""deploy/prometheus/ and deploy/grafana/, checked offline: promtool on the alert rules, their unit
tests and the scrape config, and every query of the rules and the dashboard against the series
bridge.metrics exports (metric names, label names, and the label values the code creates).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
ALERTS = PROMETHEUS / "alerts.yaml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yaml"
DASHBOARD = GRAFANA / "bridge.json"

# The series prometheus-client writes for each metric type, after the family's name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
TARGET_LABELS = frozenset({"job", "instance"})  # Prometheus adds them to every scraped series
PROMETHEUS_SERIES = {"up": TARGET_LABELS}  # series Prometheus makes itself for every target
# bridge_* metrics the dashboard leaves out, each with the reason.
NOT_CHARTED = {
    "bridge_transcode_seconds": "a microbenchmark figure (`bridge bench audio`), not an operator's",
}

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)
FUNCTIONS_TEXT = """
    abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
    day_of_year days_in_month delta deriv exp floor histogram_count histogram_sum
    histogram_fraction histogram_quantile holt_winters hour idelta increase irate label_join
    label_replace ln log2 log10 minute month predict_linear rate resets round scalar sgn sort
    sort_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
    sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
    last_over_time present_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh
    deg pi rad
"""
FUNCTIONS = frozenset(FUNCTIONS_TEXT.split())
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
MATCH_OPERATORS = ("=", "!=", "=~", "!~")
TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])                 # [5m], [$__rate_interval], subqueries [1h:5m]
    | (?P<variable>\$\{?\w+\}?)             # Grafana variables outside strings
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<name>[A-Za-z_:][\w:]*)
    | (?P<operator>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)


# ---- what the code exports --------------------------------------------------------------------


@cache
def exported() -> dict[str, frozenset[str]]:
    """Every series name /metrics can show, with its possible label names.

    From `metrics.REGISTRY` (so process_* and python_* come too); a labelled metric with no
    child yet has no samples, so its names follow from its type and its declared label names.
    """
    declared: dict[str, tuple[str, ...]] = {}
    for metric in metrics.METRICS:
        (family,) = metric.describe()
        declared[family.name] = tuple(metric._labelnames)  # prometheus-client keeps them private
    names: dict[str, set[str]] = {}
    for family in metrics.REGISTRY.collect():
        labels = set(declared.get(family.name, ()))
        for suffix in SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            names.setdefault(family.name + suffix, set()).update(labels | extra)
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


@cache
def created_label_values() -> dict[tuple[str, str], frozenset[str]]:
    """The label values bridge.metrics creates at import (every known end reason, recovery,
    error kind, ...), as a fresh interpreter has them: other tests add children in this one."""
    code = (
        "import json\nfrom bridge import metrics\n"
        "print(json.dumps([[s.name, s.labels] for f in metrics.REGISTRY.collect() "
        "for s in f.samples]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    values: dict[tuple[str, str], set[str]] = {}
    for name, labels in json.loads(result.stdout):
        for label, value in labels.items():
            if label != "le":
                values.setdefault((name, label), set()).add(value)
    return {key: frozenset(found) for key, found in values.items()}


# ---- PromQL, as far as these files use it -----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    selectors: tuple[Selector, ...]
    grouping: frozenset[str]  # labels of by / without / on / ignoring / group_left / group_right
    calls: frozenset[str]  # functions and aggregations


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        assert match is not None, f"cannot read {expr[position:]!r} in {expr!r}"
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, match.group()


def parse(expr: str) -> Query:
    """The selectors, grouping labels and calls of a PromQL expression (a tokenizer, not a
    parser: enough to find every name the expression relies on)."""
    found = list(tokens(expr))
    selectors: list[Selector] = []
    grouping: set[str] = set()
    calls: set[str] = set()

    def following(index: int) -> str:
        return found[index][1] if index < len(found) else ""

    i = 0
    while i < len(found):
        kind, text = found[i]
        if text == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        if kind != "name":
            i += 1
            continue
        if text.lower() in GROUPING:
            i += 1
            if following(i) == "(":
                i += 1
                while following(i) != ")":
                    label_kind, label = found[i]
                    if label != ",":
                        assert label_kind == "name", f"{label!r} in a label list of {expr!r}"
                        grouping.add(label)
                    i += 1
                i += 1
            continue
        modifier = text.lower() in AGGREGATIONS and following(i + 1).lower() in GROUPING
        if following(i + 1) == "(" or modifier:  # `sum(...)`, `sum by (...) (...)`
            calls.add(text)
            i += 1
            continue
        if text.lower() in KEYWORDS:
            i += 1
            continue
        i += 1
        matchers: list[tuple[str, str, str]] = []
        if following(i) == "{":
            i += 1
            while following(i) != "}":
                if following(i) == ",":
                    i += 1
                    continue
                (label_kind, label), (_, operator), (value_kind, value) = found[i : i + 3]
                assert label_kind == "name", f"{label!r} is not a label name in {expr!r}"
                assert operator in MATCH_OPERATORS, f"{operator!r} in {expr!r}"
                assert value_kind == "string", f"{value!r} is not a string in {expr!r}"
                matchers.append((label, operator, value[1:-1]))
                i += 3
            i += 1
        selectors.append(Selector(text, tuple(matchers)))
    return Query(tuple(selectors), frozenset(grouping), frozenset(calls))


def problems(expr: str, *, dashboard: bool) -> list[str]:
    """What in `expr` does not match the exported series; dashboard queries must also follow
    the $job and $instance variables."""
    query = parse(expr)
    series = exported() | PROMETHEUS_SERIES
    found = [f"{call}(): not a PromQL function" for call in query.calls - FUNCTIONS - AGGREGATIONS]
    if not query.selectors:
        found.append("no metric at all")
    available = set(TARGET_LABELS)
    for selector in query.selectors:
        if selector.metric not in series:
            found.append(f"{selector.metric}: not a series bridge.metrics exports")
            continue
        labels = series[selector.metric] | TARGET_LABELS
        available |= labels
        for label, operator, value in selector.matchers:
            if label not in labels:
                found.append(f"{selector.metric}{{{label}}}: no such label")
            known = created_label_values().get((selector.metric, label))
            if known and operator in ("=", "=~") and re.fullmatch(r"[\w|]+", value):
                unknown = set(value.split("|")) - known
                if unknown:
                    found.append(f"{selector.metric}{{{label}}}: never {sorted(unknown)}")
        if dashboard and selector.metric not in PROMETHEUS_SERIES:
            for variable in ("job", "instance"):
                if (variable, "=~", f"${variable}") not in selector.matchers:
                    found.append(f'{selector.metric}: no {variable}=~"${variable}"')
    found += [f"by/on ({label}): no such label" for label in query.grouping - available]
    return found


def test_the_tokenizer_finds_names_labels_and_calls() -> None:
    query = parse(
        'histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{a="1", b=~"$v|w",}[5m]))) '
        '> 0.02 and on(job) y{job="q"} offset 1h unless sum(z) without (c) * 60'
    )
    assert [s.metric for s in query.selectors] == ["x_bucket", "y", "z"]
    assert query.selectors[0].matchers == (("a", "=", "1"), ("b", "=~", "$v|w"))
    assert query.grouping == {"job", "le", "c"}
    assert query.calls == {"histogram_quantile", "sum", "rate"}
    with pytest.raises(AssertionError, match="without a metric name"):
        parse('{__name__=~"bridge_.*"}')


def test_the_checks_catch_wrong_names_labels_and_values() -> None:
    wrong = {
        "sum by (le) (bridge_reconnects_total)": "by/on (le): no such label",
        "rate(bridge_reconnect_total[5m])": "bridge_reconnect_total: not a series",
        'bridge_reconnects_total{reason="failed"}': "bridge_reconnects_total{reason}: no such",
        'bridge_reconnects_total{outcome=~"failed|failure"}': "never ['failure']",
        'bridge_text_only_recoveries_total{recovery="giveup"}': "never ['giveup']",
        "rates(bridge_reconnects_total[5m])": "rates(): not a PromQL function",
    }
    for expr, problem in wrong.items():
        (found,) = problems(expr, dashboard=False)
        assert problem in found, expr
    assert problems('bridge_live_calls{job=~"$job"}', dashboard=True) == [
        'bridge_live_calls: no instance=~"$instance"'
    ]
    ok = 'sum by (outcome) (rate(bridge_reconnects_total{outcome=~"reconnected|failed"}[5m]))'
    assert problems(ok, dashboard=False) == []


# ---- alert rules ------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool missing: apt-get install -y prometheus (the Debian package; .ci/run "
            "installs it when run as root). It checks deploy/prometheus/alerts.yaml and runs "
            "its unit tests."
        )
    return found


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


@cache
def rules() -> dict[str, dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    found: dict[str, dict[str, Any]] = {}
    for group in loaded["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] not in found, f"{rule['alert']} defined twice"
            found[rule["alert"]] = rule
    return found


def test_alert_rules_pass_promtool_check() -> None:
    output = run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_every_alert_fires_on_a_broken_line_and_stays_quiet_on_a_healthy_one() -> None:
    """`promtool test rules`: the expected firing alerts at each time, exactly."""
    run_promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    cases = [
        case
        for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in group["alert_rule_test"]
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fires == set(rules()), "every alert has a test in which it fires"
    assert quiet == set(rules()), "every alert has a test in which it stays quiet"


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert jobs == ["bridge"], 'the alerts watch up{job="bridge"}'
    run_promtool("check", "config", str((PROMETHEUS / "prometheus.yml").relative_to(ROOT)))


def test_alert_rules_say_how_bad_and_what_to_do() -> None:
    for name, rule in rules().items():
        assert name.startswith("Bridge"), name
        assert "for" in rule, f"{name}: no `for:`"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: say what to do"
        assert f"`{name}`" in (ROOT / "docs" / "monitoring.md").read_text(), f"{name}: no docs"


@pytest.mark.parametrize("name", sorted(rules()))
def test_alert_queries_use_exported_series(name: str) -> None:
    assert problems(rules()[name]["expr"], dashboard=False) == []


# ---- the dashboard ----------------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # a collapsed row holds its panels
    return found


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by panel title and refId."""
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in panels()
        for target in panel.get("targets", [])
    }


def test_dashboard_is_valid_json_with_unique_ids_and_targets() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']}: no target"
        assert all(t["expr"].strip() for t in targets), panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in targets), panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"


def test_dashboard_variables_choose_the_datasource_and_the_targets() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance"}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    for name in ("job", "instance"):
        variable = variables[name]
        assert variable["datasource"]["uid"] == "${datasource}"
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        assert variable["definition"] == variable["query"]["query"]
        assert match[2] == name
        assert problems(f"sum by ({name}) ({match[1]})", dashboard=False) == []


@pytest.mark.parametrize("where", sorted(dashboard_queries()))
def test_dashboard_queries_use_exported_series(where: str) -> None:
    assert problems(dashboard_queries()[where], dashboard=True) == []


def test_dashboard_charts_every_bridge_metric() -> None:
    charted = {
        selector.metric
        for expr in dashboard_queries().values()
        for selector in parse(expr).selectors
    }
    for metric in metrics.METRICS:
        (family,) = metric.describe()
        if family.name in NOT_CHARTED:
            continue
        names = {family.name + suffix for suffix in SUFFIXES[family.type]}
        assert names & charted, (
            f"{family.name} is on no panel: chart it in deploy/grafana/bridge.json "
            "(and docs/monitoring.md), or add it to NOT_CHARTED with the reason"
        )
    charted_families = {name.removesuffix("_bucket") for name in charted}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= charted_families


def test_grafana_provisioning_loads_the_dashboard_and_a_prometheus_datasource() -> None:
    provisioning = GRAFANA / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    boards = yaml.safe_load((provisioning / "dashboards" / "bridge.yaml").read_text())
    (provider,) = boards["providers"]
    assert provider["type"] == "file"
    # docs/monitoring.md says to mount deploy/grafana/bridge.json there.
    assert provider["options"]["path"] in (ROOT / "docs" / "monitoring.md").read_text()
