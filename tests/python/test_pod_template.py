"""`executor-shim pod-template` against the Kubernetes API's own schema.

Every combination of the command's flags is rendered by the real binary and
validated, offline and strict (an unknown field is an error, as a strict
`kubectl apply --validate=strict` makes it), against the OpenAPI schemas of
the Kubernetes versions that matter:

- the non-native form (the sidecar in `containers`) against 1.25, the
  oldest version it claims to support (and the oldest the validator
  bundles), 1.29 and the newest bundled;
- the native-sidecar form (an init container with `restartPolicy: Always`)
  against 1.29, where native sidecars are on by default, and the newest.

The validator is `kubernetes-validate` (PyPI), which bundles the schemas
converted from each release's OpenAPI document, with a `-strict` variant
that forbids additional properties. Rendering thousands of templates, the
test builds one validator per version from those bundled files (what
`kubernetes_validate.validate` does on every call, at ~100 ms a call), and
checks that both give the same verdicts.

The binary: `$EXECUTOR_SHIM`, else `target/{debug,release}/executor-shim`
(`.ci/python-tests.sh` builds it and sets the variable).
"""

import copy
import importlib.resources
import itertools
import json
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from conftest import REPO

OLDEST_NON_NATIVE = "1.25"
NATIVE_SIDECARS = "1.29"
NEWEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
VERSIONS = {False: [OLDEST_NON_NATIVE, NATIVE_SIDECARS, NEWEST], True: [NATIVE_SIDECARS, NEWEST]}

# Each flag, off (absent) or on (with a value that is not the default).
FLAGS = [
    ("--native-sidecar", []),
    ("--memory-medium", []),
    ("--size-limit", ["2Gi"]),
    ("--cpu", ["500m"]),
    ("--memory", ["1Gi"]),
    ("--parallel", ["4"]),
    ("--user", ["7000"]),
    ("--group", ["7001"]),
    ("--volume", ["data"]),
    ("--entrypoint", ["/opt/bin/sidecar-entrypoint"]),
    ("--executor-container", ["exec"]),
    ("--", ["/app/geocode", "--fast", "a: b # not a comment"]),
]


def _find_shim():
    env = os.environ.get("EXECUTOR_SHIM")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        p = target / profile / "executor-shim"
        if p.is_file():
            return str(p)
    return shutil.which("executor-shim")


@pytest.fixture(scope="module")
def shim():
    path = _find_shim()
    if not path:
        pytest.fail(
            "executor-shim not found: run `cargo build -p executor-shim-cli` "
            "or set EXECUTOR_SHIM (.ci/python-tests.sh does both)"
        )
    return path


def render(shim, flags):
    argv = [shim, "pod-template", "--image", "registry.example/geocoder:1.2"]
    command = []
    for flag, values in flags:
        if flag == "--":
            command = ["--", *values]
        else:
            argv += [flag, *values]
    r = subprocess.run(argv + command, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv + command}: {r.stderr}"
    return r.stdout, r.stderr


# libyaml when PyYAML has it: the pure-Python loader is the slowest step here.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text):
    return yaml.load(text, Loader=LOADER)


_VALIDATORS = {}


def validator(version):
    """A strict Pod validator for `version` from the schemas
    kubernetes-validate bundles (built once; see the module docs)."""
    if version not in _VALIDATORS:
        root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
        d = root / f"v{version}.0-local-strict"
        assert d.is_dir(), f"kubernetes-validate bundles no strict schema for {version}"
        schema = json.loads((d / "pod-v1.json").read_text())
        defs = json.loads((d / "_definitions.json").read_text())
        registry = Resource.from_contents(schema) @ Registry()
        registry = Resource.from_contents(defs) @ registry
        _VALIDATORS[version] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return _VALIDATORS[version]


def errors(pod, version):
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator(version).iter_errors(pod)
    ]


def library_verdict(pod, version, strict=True):
    """kubernetes_validate's own entry point: the version it used, or the error."""
    try:
        return kubernetes_validate.validate(pod, version, strict=strict)
    except kubernetes_validate.ValidationError as e:
        return f"invalid: {e.message}"


def sidecar_of(pod):
    spec = pod["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "sidecar")


def check_combination(item):
    """Validates one rendered combination against its versions; returns
    (validations done, error lines)."""
    on, text = item
    pod = load(text)
    native = on[0]
    named = [f for f, o in zip(FLAGS, on) if o]
    failures = [f"{v} {named}: {e}" for v in VERSIONS[native] for e in errors(pod, v)]
    # What the flags promise, beyond the schema.
    sidecar = sidecar_of(pod)
    if ("initContainers" in pod["spec"]) != native:
        failures.append(f"{named}: the sidecar is in the wrong list")
    if not {"startupProbe", "livenessProbe", "securityContext"} <= set(sidecar):
        failures.append(f"{named}: probes or securityContext missing")
    if ("resources" in sidecar) != (on[3] or on[4]):
        failures.append(f"{named}: resources do not follow --cpu/--memory")
    return len(VERSIONS[native]), failures


def test_every_flag_combination_is_a_valid_pod_for_every_version_that_matters(shim):
    combos = list(itertools.product([False, True], repeat=len(FLAGS)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        rendered = list(
            pool.map(lambda on: render(shim, [f for f, o in zip(FLAGS, on) if o])[0], combos)
        )
    # Validation is CPU-bound Python: one process per core.
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(check_combination, zip(combos, rendered), chunksize=64))
    checked = sum(n for n, _ in results)
    failures = [f for _, fs in results for f in fs]
    assert not failures, "\n".join(failures[:20])
    print(f"\nFIGURE pod_template_combinations={len(combos)} validations={checked} "
          f"versions={sorted({v for vs in VERSIONS.values() for v in vs})}")


def test_the_cached_validator_agrees_with_kubernetes_validate(shim):
    text, _ = render(shim, [f for f in FLAGS])  # every flag on (native form)
    native = load(text)
    text, _ = render(shim, [f for f in FLAGS if f[0] != "--native-sidecar"])
    plain = load(text)
    for pod, versions in ((native, VERSIONS[True]), (plain, VERSIONS[False])):
        for version in versions:
            assert library_verdict(pod, version) == version
            assert errors(pod, version) == []


def test_strict_validation_rejects_what_a_cluster_would_reject(shim):
    """The negative test: the validator as set up here does fail a template
    with a field Kubernetes does not know, or a value of the wrong type."""
    text, _ = render(shim, [("--native-sidecar", []), ("--cpu", ["1"]), ("--memory", ["1Gi"])])
    good = load(text)
    cases = []

    bogus = copy.deepcopy(good)
    sidecar_of(bogus)["startupProbe"]["bogusField"] = 1
    cases.append(("an unknown field in a probe", bogus, "'bogusField' was unexpected"))

    bogus = copy.deepcopy(good)
    sidecar_of(bogus)["probes"] = []
    cases.append(("an unknown container field", bogus, "'probes' was unexpected"))

    bogus = copy.deepcopy(good)
    sidecar_of(bogus)["securityContext"]["runAsUser"] = "5001"
    cases.append(("a uid as a string", bogus, "'5001' is not of type 'integer'"))

    for what, pod, message in cases:
        for version in VERSIONS[True]:
            errs = errors(pod, version)
            assert any(message in e for e in errs), f"{what} passed {version}: {errs}"
            assert library_verdict(pod, version).startswith("invalid:"), what
    # Strictness is what catches the unknown field: the lax schema lets it by.
    assert library_verdict(cases[0][1], NATIVE_SIDECARS, strict=False) == NATIVE_SIDECARS


def test_the_native_form_needs_native_sidecars():
    """Before 1.28 the Container schema has no `restartPolicy`: the native
    form is not a 1.25 pod, which is why it claims 1.29+ and is checked there."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "initContainers": [{"name": "sidecar", "image": "x", "restartPolicy": "Always"}],
            "containers": [{"name": "spark-kubernetes-executor"}],
        },
    }
    assert any("'restartPolicy' was unexpected" in e for e in errors(pod, OLDEST_NON_NATIVE))
    assert errors(pod, NATIVE_SIDECARS) == []


def test_the_printed_spark_submit_line_names_every_setting(shim):
    _, stderr = render(shim, [("--native-sidecar", []), ("--executor-container", ["exec"]),
                              ("--volume", ["data"])])
    for setting in (
        "spark.kubernetes.executor.podTemplateFile=executor-pod.yaml",
        "spark.kubernetes.executor.podTemplateContainerName=exec",
        "spark.executorEnv.SIDECAR_VOLUME=/opt/sidecar/shared-volumes/data",
    ):
        assert f"--conf {setting}" in stderr, stderr
