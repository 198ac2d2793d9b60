"""Issue 10: property-based fuzzing of every parser that reads what a user or a device wrote.

The property, for each: the input is accepted, or refused with the documented error type (exit code /
HTTP status) and a one-line message; never another exception, a hang, or memory out of proportion to
the input. Inputs are real documents (a built bundle's manifest, the root edgekit.toml, a shipped
device profile, a runner's report, a built eval.npz) mutated at random places, plus random bytes.

Derandomized (a fixed seed per test), so that CI sees the same examples on every run; the example
counts are in each test's ``settings``. ``pytest --hypothesis-show-statistics`` prints them.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from collector_client import TOKEN, report_json, signed_headers
from edgekit_runner import safejson, upload
from edgekit_runner.__main__ import BundleError as RunnerBundleError
from edgekit_runner.__main__ import read_bundle
from edgekit_runner.files import UnsafeFile, load_npz
from edgekit_runner.manifest import NAME as MANIFEST
from edgekit_runner.manifest import ManifestError, read_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.bundle import verify
from edgekit.cli import cli
from edgekit.errors import BundleError, ProfileError, ProjectError
from edgekit.profiles import BUILTIN_DIR, parse_profile_file
from edgekit.project import load_project
from edgekit.results.schema import ReportInvalid, parse_report
from edgekit.results.server import REPORTS_PATH, serve_in_thread
from edgekit.results.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
# Answers the collector documents (README): its own, and http.server's for requests it cannot parse
HTTP_DOCUMENTED = {200, 201, 400, 401, 404, 409, 411, 413, 414, 431, 501, 503, 505}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
toml_values = st.recursive(
    st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)


def _places(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON-like document."""
    found = [prefix]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        found += _places(value, (*prefix, key))
    return found


@st.composite
def mutated(draw: st.DrawFn, doc: Any, values: st.SearchStrategy) -> Any:
    """``doc`` with 1-3 random edits: a value replaced by a random one, a key deleted, or a key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_places(doc)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace":
                doc = draw(values)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(values)
        else:
            parent.append(draw(values))
        if not isinstance(doc, (dict, list)):
            break
    return doc


def _one_line(e: BaseException) -> None:
    text = str(e)
    assert text and "\n" not in text and len(text) < 2000, repr(text[:300])


# ---------------------------------------------------------------- the bundle manifest (every reader)

@pytest.fixture(scope="module")
def manifest_doc(built) -> dict:
    return json.loads((built("jetson-orin-nano") / MANIFEST).read_text())


@pytest.fixture(scope="module")
def fuzz_bundle(built, tmp_path_factory) -> Path:
    import shutil

    return Path(shutil.copytree(built("jetson-orin-nano"), tmp_path_factory.mktemp("fuzz") / "bundle"))


@settings(FUZZ, max_examples=2000)
@given(data=st.data())
def test_fuzz_manifest_readers(data, manifest_doc, fuzz_bundle):
    doc = data.draw(mutated(manifest_doc, json_values))
    raw = json.dumps(doc).encode() if data.draw(st.integers(0, 9)) else data.draw(st.binary(max_size=200))
    (fuzz_bundle / MANIFEST).write_bytes(raw)
    for read, errors in ((read_manifest, ManifestError), (verify, BundleError), (read_bundle, RunnerBundleError)):
        try:
            read(fuzz_bundle)
        except errors as e:
            _one_line(e)
    inspect = CliRunner().invoke(cli, ["inspect", str(fuzz_bundle)])
    assert inspect.exit_code in (0, 6), inspect.output
    assert inspect.exception is None or isinstance(inspect.exception, SystemExit), repr(inspect.exception)


# ---------------------------------------------------------------- edgekit.toml and device profiles

def _toml(doc: dict) -> str:
    """A TOML document with every top-level key as one inline value (inline tables and arrays nest freely)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {value(x)}" for k, x in v.items()) + "}"

    return "".join(f"{json.dumps(k, ensure_ascii=False)} = {value(v)}\n" for k, v in doc.items())


def _fuzz_toml(data: st.DataObject, original: Path, dest: Path) -> None:
    import tomllib

    doc = data.draw(mutated(tomllib.loads(original.read_text()), toml_values))
    if isinstance(doc, dict) and data.draw(st.integers(0, 9)):
        dest.write_text(_toml(doc), encoding="utf-8")
    else:  # the original text with bytes flipped, cut or inserted
        raw = bytearray(original.read_bytes())
        for _ in range(data.draw(st.integers(1, 5))):
            at = data.draw(st.integers(0, len(raw)))
            raw[at:at + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=3))
        dest.write_bytes(bytes(raw))


def _check_config(read, path: Path, error: type[Exception], commands: list[list[str]], codes: tuple[int, ...]) -> None:
    """The reader accepts ``path`` or raises ``error`` in one line; each CLI command exits with one of ``codes``."""
    try:
        read(path)
    except error as e:
        _one_line(e)
    for args in commands:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code in codes, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


@settings(FUZZ, max_examples=1000)
@given(data=st.data())
def test_fuzz_project_file(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("project", numbered=True)
    _fuzz_toml(data, ROOT / "edgekit.toml", folder / "edgekit.toml")
    _check_config(load_project, folder, ProjectError,
                  [["build", "-d", "host-cpu", "--project", str(folder), "--dry-run"]], (0, 2, 3))


@settings(FUZZ, max_examples=1000)
@given(data=st.data())
def test_fuzz_device_profile(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles", numbered=True)
    _fuzz_toml(data, BUILTIN_DIR / "pixel8.toml", folder / "pixel8.toml")
    _check_config(parse_profile_file, folder / "pixel8.toml", ProfileError,
                  [["--profiles-dir", str(folder), *args] for args in (["profiles", "show", "pixel8"],
                                                                       ["profiles", "list"])], (0, 2))


# ---------------------------------------------------------------- run reports: host, store, display, runner

REPORT = json.loads(report_json(memory={"peak_rss_run_mb": 12.5}, timing={"load_ms": 3.0}))


@settings(FUZZ, max_examples=1500)
@given(data=st.data())
def test_fuzz_report_parse_store_and_display(data, tmp_path_factory, monkeypatch):
    doc = data.draw(mutated(REPORT, json_values))
    doc = doc if data.draw(st.integers(0, 9)) else data.draw(st.binary(max_size=200))
    home = tmp_path_factory.mktemp("home", numbered=True)
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    try:
        report = parse_report(json.dumps(doc).encode() if not isinstance(doc, bytes) else doc)
    except ReportInvalid as e:
        _one_line(e)
        return
    ResultsStore().add(report)
    for args in (["results"], ["results", "--json"]):
        result = CliRunner(env={"COLUMNS": "150"}).invoke(cli, args)
        assert result.exit_code == 0, (result.output, result.exception)
    json.loads(result.output, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))


@settings(FUZZ, max_examples=100)
@given(bodies=st.lists(st.one_of(st.binary(max_size=100), mutated(REPORT, json_values).map(
    lambda d: json.dumps(d).encode())), min_size=1, max_size=4))
def test_fuzz_runner_spool_delivery(bodies, tmp_path_factory):
    """The runner side: whatever lies in the spool, flushing it never raises and sorts every file into
    delivered, failed (refused) or still spooled."""
    home = tmp_path_factory.mktemp("spool", numbered=True)
    spool = home / "spool"
    spool.mkdir()
    for i, body in enumerate(bodies):
        (spool / f"{i:032x}.json").write_bytes(body)
    with serve_in_thread(home / "r.db", TOKEN, rejected_dir=home / "rejected") as running:
        outcomes = upload.flush_spool(running.url, TOKEN, spool)
    assert len(outcomes) == len(bodies) and all(o.state in ("delivered", "duplicate", "failed") for o in outcomes)
    assert list(spool.glob("*.json")) == []


# ---------------------------------------------------------------- the collector's HTTP handling

@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    home = tmp_path_factory.mktemp("collector")
    with serve_in_thread(home / "r.db", TOKEN, max_body=64 * 1024, rejected_dir=home / "rejected",
                         request_deadline_s=5.0) as running:
        yield running


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\r\n"), max_size=40)


@settings(FUZZ, max_examples=1000)
@given(method=st.sampled_from(["GET", "POST", "PUT", "POST", "BREW", "post", ""]),
       path=st.sampled_from([REPORTS_PATH, "/api/v1/health", "/", "/../../etc/passwd", "*", "x" * 70_000]),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/9.9", "", "HTTP/1.1 extra"]),
       length=st.one_of(st.none(), st.integers(-5, 200_000).map(str), header_text),
       headers=st.lists(st.tuples(header_text, header_text), max_size=4),
       sign=st.booleans(),
       body=st.one_of(st.binary(max_size=300), mutated(REPORT, json_values).map(lambda d: json.dumps(d).encode())))
def test_fuzz_collector_http(collector, method, path, version, length, headers, sign, body):
    """Raw requests over a socket: an answer with a documented status within seconds, and the server still
    serving; only a signed, valid report is ever stored."""
    lines = [f"{method} {path} {version}".strip()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in headers if k.strip()]
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    if sign:
        head += signed_headers(body).encode()
    host, port = collector.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + b"\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1."), answer[:200]
    assert int(answer.split(b" ", 2)[1]) in HTTP_DOCUMENTED, answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])  # a JSON answer, whatever the request
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 200")


@settings(FUZZ, max_examples=1500)
@given(doc=mutated(REPORT, json_values), raw=st.booleans())
def test_fuzz_collector_receive(collector, doc, raw):
    body = json.dumps(doc).encode() if not raw else json.dumps(doc).encode()[::-1]
    headers = {"X-Edgekit-Timestamp": signed_headers(body).split("\r\n")[0].split(": ")[1],
               "X-Edgekit-Signature": signed_headers(body).split("\r\n")[1].split(": ")[1]}
    status, answer = collector.collector.receive(headers, body)
    assert status in (201, 400, 409), answer
    if status == 400:
        _one_line(Exception(answer["error"]))


# ---------------------------------------------------------------- eval.npz

@pytest.fixture(scope="module")
def npz_bytes(built) -> bytes:
    return (built("jetson-orin-nano") / "eval.npz").read_bytes()


@settings(FUZZ, max_examples=1500)
@given(data=st.data())
def test_fuzz_eval_npz(data, npz_bytes, tmp_path_factory):
    """Damaged archives and headers: the arrays come back, or UnsafeFile; memory stays within the limit."""
    raw = bytearray(npz_bytes)
    for _ in range(data.draw(st.integers(0, 6))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at + data.draw(st.integers(0, 8))] = data.draw(st.binary(max_size=8))
    if data.draw(st.integers(0, 4)) == 0:  # a header claiming a huge shape
        with zipfile.ZipFile(path := tmp_path_factory.mktemp("npz") / "e.npz", "w") as z:
            with z.open("input.image.npy", "w") as f:
                shape = data.draw(st.lists(st.integers(0, 2 ** 40), min_size=1, max_size=4))
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
                f.write(bytes(data.draw(st.integers(0, 1000))))
        raw = bytearray(path.read_bytes())
    path = tmp_path_factory.mktemp("npz") / "eval.npz"
    path.write_bytes(bytes(raw))
    expected = {"input.image": (360, 1, 8, 8), "labels": (360,), "reference.logits": (360, 10)}
    limit = 4 << 20
    tracemalloc.start()
    try:
        for shapes in (expected, None):
            try:
                arrays = load_npz(path, shapes, max_bytes=limit)
                assert shapes is None or {k: a.shape for k, a in arrays.items()} == shapes
            except UnsafeFile as e:
                _one_line(e)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit + (8 << 20), f"{peak / 2**20:.1f} MiB for a {len(raw)}-byte file"


def test_safejson_limits():
    for bad in (b"[" * 40 + b"]" * 40, b"NaN", b'{"a": Infinity}', b"1e400", b"\xff"):
        with pytest.raises(safejson.JsonError):
            safejson.loads(bad, "x")
    assert safejson.loads(b'{"a": [1, 2.5, "x", null, true]}', "x") == {"a": [1, 2.5, "x", None, True]}
