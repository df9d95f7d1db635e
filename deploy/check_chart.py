"""Lints and renders deploy/helm/lookalike with the real Helm engine
(helm-python-sdk: Helm's Go SDK as a native library), validates every
rendered object against the Kubernetes schemas (kubernetes-validate, strict)
of the oldest and newest supported versions, runs yamllint over the output,
and writes the manifests and server configs to OUT/<values>/ for
test_chart.py and the Rust config test.

Usage: python check_chart.py OUT
"""

import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

CHART = pathlib.Path(__file__).resolve().parent / "helm" / "lookalike"
KUBE_VERSIONS = ["1.27.0", "1.37.0"]
# Custom resources have no bundled schema; test_chart.py checks them.
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}
YAMLLINT = YamlLintConfig(
    "extends: default\n"
    "rules: {line-length: {max: 160}, document-start: disable, comments: {min-spaces-from-content: 1}}\n"
)


def values_files():
    return sorted((CHART / "ci").glob("*-values.yaml"))


def load_values(path):
    return yaml.safe_load(path.read_text()) or {}


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name="lookalike", namespace="search", is_install=True)


def lint(path, values):
    """Errors of a strict lint at every supported Kubernetes version."""
    problems = []
    for kube in KUBE_VERSIONS:
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{kube}")
        problems += [f"{kube} {m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
        problems += [f"{kube} {e}" for e in report["errors"]]
    return [f"{path.name}: {p}" for p in problems]


def validate(name, manifests):
    problems = []
    for template, text in manifests.items():
        if template.endswith("NOTES.txt"):
            continue
        for p in linter.run(text, YAMLLINT):
            if p.level == "error":
                problems.append(f"{name} {template}:{p.line}: yamllint {p.message}")
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
                continue
            for kube in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, kube, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    problems.append(f"{name} {template} {doc['kind']} @ {kube}: {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problems.append(f"{name} {template}: {e.message}")
    return problems


def main(out):
    problems = []
    for f in [CHART / "Chart.yaml", CHART / "values.yaml", *values_files()]:
        for r in linter.run(f.read_text(), YAMLLINT):
            problems.append(f"{f.relative_to(CHART)}:{r.line}: yamllint {r.message}")
    for path in values_files():
        name = path.name.removesuffix("-values.yaml")
        values = load_values(path)
        problems += lint(path, values)
        manifests = render(values)
        problems += validate(name, manifests)
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "manifests.yaml").write_text(
            "\n---\n".join(t for k, t in sorted(manifests.items()) if not k.endswith("NOTES.txt"))
        )
        for doc in yaml.safe_load_all((dest / "manifests.yaml").read_text()):
            if doc and doc["kind"] == "ConfigMap":
                (dest / "lookalike.toml").write_text(doc["data"]["lookalike.toml"])
        print(f"chart: {path.name}: lint clean, {len(manifests)} templates valid for {', '.join(KUBE_VERSIONS)}")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1])))
