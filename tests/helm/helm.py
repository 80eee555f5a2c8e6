"""Runs Helm's engine (PyPI's helm-python-sdk, Helm v4) for kiln's tests; prints JSON.

    python helm.py lint CHART                      -> {"ok": bool, "messages": [...]}
    python helm.py render CHART VALUES RELEASE NS  -> {template: rendered text}  (VALUES: JSON)
    python helm.py validate CHART VALUES           -> {"ok": bool, "error": str}
"""
import json
import sys

from helm_python import chart as helm_chart


def lint(path):
    result = helm_chart.lint(path, strict=True)
    print(json.dumps(result, default=str))


def render(path, values, release, namespace):
    chart = helm_chart.Chart.load(path)
    files = chart.render(json.loads(values), name=release, namespace=namespace, is_install=True)
    print(json.dumps(files))


def validate(path, values):
    chart = helm_chart.Chart.load(path)
    try:
        chart.validate_schema(json.loads(values))
        print(json.dumps({"ok": True, "error": ""}))
    except Exception as e:  # the SDK raises HelmValuesError; report any refusal
        print(json.dumps({"ok": False, "error": str(e)}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "lint":
        lint(sys.argv[2])
    elif cmd == "render":
        render(*sys.argv[2:6])
    elif cmd == "validate":
        validate(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")
