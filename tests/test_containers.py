"""Singularity.def and environment.yml agree with pyproject.toml (no Apptainer is needed: we parse them)."""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header ("Bootstrap", "From", ...) and sections keyed "post", "apprun lab", ... -> body text."""
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*(\S*)\s*$", line)
        if m:
            current = f"{m[1]} {m[2]}".strip()
            if current in sections:
                raise ValueError(f"Singularity.def: section %{current} appears twice")
            sections[current] = ""
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current] += line + "\n"
    return header, sections


@pytest.fixture(scope="module")
def definition():
    return parse_def((ROOT / "Singularity.def").read_text())


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pins(requirements) -> dict[str, Requirement]:
    out = {}
    for line in requirements:
        line = line.strip()
        if line and not line.startswith(("-", "#")):
            req = Requirement(line)
            if canonicalize_name(req.name) != "spice-lartpc":  # an extra naming another extra of the project
                out[canonicalize_name(req.name)] = req
    return out


def torch_pin(project) -> str:
    spec = pins(project["dependencies"])["torch"].specifier
    (only,) = list(spec)
    assert only.operator == "==", f"pyproject pins torch with {only}, expected =="
    return only.version


def me_version() -> str:
    return re.search(r"^ME_VERSION=(\S+)", (ROOT / "tools/build_minkowski.sh").read_text(), re.M)[1]


def labels(sections) -> dict[str, str]:
    return dict(line.strip().split(None, 1) for line in sections["labels"].splitlines() if line.strip())


def test_sections_present(definition):
    header, sections = definition
    assert header["Bootstrap"] == "docker"
    for name in ("labels", "help", "files", "environment", "post", "runscript", "test",
                 "apprun paper", "apprun demo", "apprun lab"):
        assert sections.get(name, "").strip(), f"Singularity.def lacks a non-empty %{name}"


def test_runscript_and_apps_call_make(definition):
    _, sections = definition
    assert re.search(r'^\s*exec make\b.*"\$@"\s*$', sections["runscript"], re.M), "%runscript must run make \"$@\""
    assert re.search(r"^\s*exec make\b.*\bpaper\b", sections["apprun paper"], re.M)
    assert re.search(r"^\s*exec make\b.*\bdemo\b", sections["apprun demo"], re.M)
    assert re.search(r"jupyter lab\b.*--port=\"\$\{1:-\d+\}\"", sections["apprun lab"]), "lab app takes the port as $1"


def test_help_has_exact_commands(definition):
    _, sections = definition
    assert "apptainer build spice.sif Singularity.def" in sections["help"]
    assert re.search(r"apptainer run --nv (--app lab )?spice\.sif", sections["help"])
    assert "apptainer run --nv --app lab spice.sif" in sections["help"]


def test_base_image_pins_torch_and_cuda12(definition, project):
    header, sections = definition
    m = re.fullmatch(r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda(?P<cuda>12\.\d+)-cudnn\d+-devel(@sha256:(?P<digest>\w+))?",
                     header["From"])
    assert m, f"unexpected base image {header['From']!r} (want a pytorch/pytorch CUDA 12 devel tag)"
    assert m["torch"] == torch_pin(project) == labels(sections)["spice.torch"]
    assert m["cuda"] == labels(sections)["spice.cuda"]
    if m["digest"] is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"]), "a digest must be 64 lowercase hex digits"
    else:  # an unpinned digest must say how to pin it
        assert "skopeo inspect" in (ROOT / "Singularity.def").read_text()


def test_post_builds_minkowski_for_cuda(definition):
    _, sections = definition
    post, lab = sections["post"], labels(sections)
    arch = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', post)[1]
    assert arch == lab["spice.cuda_arch_list"] == "7.0 7.5 8.0 8.6 8.9 9.0"
    assert "ME_CPU_ONLY=0" in post and "tools/build_minkowski.sh" in post
    assert lab["spice.minkowskiengine"] == me_version() == "0.5.4"
    script = (ROOT / "tools/build_minkowski.sh").read_text()
    assert "--blas=openblas" in script and "collections.abc" in script and "thrust/execution_policy.h" in script


def test_python_and_jupyterlab_pins_agree(definition, project, environment):
    _, sections = definition
    post = sections["post"]
    requires = SpecifierSet(project["requires-python"])
    minimum = re.search(r"sys\.version_info >= \((\d+), (\d+)\)", post)
    assert minimum and f">={minimum[1]}.{minimum[2]}" == str(requires), "%post must check pyproject's requires-python"
    conda_python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Version(conda_python.split("=")[1]) in requires
    jl_def = re.search(r"jupyterlab==([\d.]+)", post)[1]
    jl_env = pins(next(d for d in environment["dependencies"] if isinstance(d, dict))["pip"])["jupyterlab"]
    assert str(jl_env.specifier) == f"=={jl_def}" and labels(sections)["spice.jupyterlab"] == jl_def
    assert "-c tools/constraints.txt" in post


def test_files_exist_in_checkout(definition):
    _, sections = definition
    for line in sections["files"].splitlines():
        if line.strip():
            src, dest = line.split()
            assert (ROOT / src).exists(), f"%files copies {src}, which is not in the checkout"
            assert dest.startswith("/opt/spice/")


def test_test_section_checks_both_backends_and_gpu_when_visible(definition):
    _, sections = definition
    body = sections["test"]
    script = re.search(r"<<'EOF'\n(.*?)^EOF$", body, re.S | re.M)[1]
    compile(script, "%test", "exec")  # valid Python
    for needed in ("import MinkowskiEngine", '("torch", "minkowski")', "torch.cuda.is_available()", "SPICE("):
        assert needed in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_shell_sections_parse(definition):
    _, sections = definition
    for name in ("post", "runscript", "apprun paper", "apprun demo", "apprun lab", "test"):
        result = subprocess.run(["bash", "-n"], input=sections[name], text=True, capture_output=True)
        assert result.returncode == 0, f"%{name}: {result.stderr}"
    result = subprocess.run(["bash", "-n", str(ROOT / "tools/build_minkowski.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_environment_covers_pyproject(environment, project):
    assert environment["name"] == "spice"
    pip_section = next(d for d in environment["dependencies"] if isinstance(d, dict))["pip"]
    env = pins(pip_section)
    wanted = pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    for name, req in wanted.items():
        assert name in env, f"environment.yml lacks {req}"
        assert env[name].specifier == req.specifier, f"environment.yml has {env[name]}, pyproject {req}"
    assert "-e ." in pip_section and "-c tools/constraints.txt" in pip_section


def test_constraints_satisfy_pyproject(project):
    lines = (ROOT / "tools/constraints.txt").read_text().splitlines()
    frozen = {canonicalize_name(r.name): next(iter(r.specifier)).version for r in pins(lines).values()}
    for name, req in pins(project["dependencies"] + project["optional-dependencies"]["dev"]).items():
        if name == "torch":
            assert name not in frozen, "torch is pinned by the base image / pyproject, not by constraints"
            continue
        assert name in frozen, f"tools/constraints.txt does not pin {name}"
        assert req.specifier.contains(frozen[name], prereleases=True), f"{name}=={frozen[name]} violates {req}"


def test_makefile_minkowski_target():
    text = (ROOT / "Makefile").read_text()
    target = re.search(r"^minkowski:.*\n((?:\t.*\n)+)", text, re.M)
    assert target, "Makefile has no minkowski target"
    assert "tools/build_minkowski.sh" in target[1] and "$(PY)" in target[1]
    assert re.search(r"^WHEEL_CACHE \?= \$\(HOME\)/\.cache/spice/wheels", text, re.M)


def test_every_cuda_test_carries_the_cuda_marker():
    """benchmarks/gpu_checks.py runs `pytest -m cuda`: a test that skips without CUDA but lacks the marker
    would never run anywhere."""
    import ast
    unmarked, marked = [], 0
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            needs_cuda = any("not torch.cuda.is_available()" in d for d in decorators)
            has_marker = "pytest.mark.cuda" in decorators
            marked += has_marker
            if needs_cuda and not has_marker:
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, f"add @pytest.mark.cuda to {unmarked}"
    assert marked >= 5  # sparse ops, whole network, bf16 training, clustering, MinkowskiEngine


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("active, python", [({}, ".venv/bin/python"), ({"CONDA_DEFAULT_ENV": "base"}, ".venv/bin/python"),
                                            ({"CONDA_DEFAULT_ENV": "spice"}, "python"),
                                            ({"VIRTUAL_ENV": "/opt/other-venv"}, "python")])
def test_make_uses_an_active_environment_instead_of_venv(active, python):
    """environment.yml users run `make test` in their conda env (not conda's base); .venv is made otherwise."""
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_DEFAULT_ENV")} | active
    for target in ("test", "demo"):
        out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        runs = [line for line in out.stdout.splitlines() if " -m pytest" in line or " -m spice.notebooks run" in line]
        assert runs and all(line.startswith(python + " -m") for line in runs), out.stdout
        assert (".venv" in out.stdout) == (python == ".venv/bin/python")


@pytest.mark.minkowski
@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_test_section_passes_here(definition, tmp_path):
    """The container's %test, run as Apptainer would (bash), with this environment's Python as `python`."""
    pytest.importorskip("MinkowskiEngine", reason="MinkowskiEngine not installed: run `make minkowski`")
    import os
    import sys
    _, sections = definition
    wrapper = tmp_path / "python"  # a wrapper, not a link: a link outside the venv would lose its packages
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", sections["test"]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu: forward pass OK on both backends" in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("make") is None, reason="bash or make not installed")
def test_runscript_runs_make_in_the_checkout(definition):
    """`apptainer run spice.sif help` from a checkout: %runscript runs `make help` there."""
    _, sections = definition
    result = subprocess.run(["bash", "-c", sections["runscript"], "runscript", "help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "make test" in result.stdout and "make paper" in result.stdout
