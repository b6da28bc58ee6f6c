"""What an export writes, replaces and runs (issue 35, items 2, 3, 4 and 7's links).

`--overwrite` removes only what an earlier export listed in `.ropesearch-export` and never a folder
a running command holds; two exports into one folder never mix or silently lose one; a full disk
names the destination and leaves nothing half-written; `serve.sh` never runs a path as code; a
model folder's links out of it are refused, never followed into the export.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ropesearch.cli import cli

ROOT = Path(__file__).resolve().parents[1]
POCKET = ROOT / "ropesearch" / "assets" / "pocket"
ENV = os.environ | {"PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "ropesearch.cli"]
LOCK_HOLDER = """
import sys, time
from ropesearch.lock import DirectoryLock
DirectoryLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(*args) -> str:
    result = invoke(*args)
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("warning:")]
    assert result.exit_code == 1, result.output
    assert not (result.exception and not isinstance(result.exception, SystemExit)), result.exception
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def tree(folder: Path) -> dict:
    """Every entry under FOLDER (links not followed) with its bytes (files) or None; lock files, whose
    pid a lock holder rewrites, by name only."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() or p.name == ".lock" else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def factor_files(tmp_path) -> dict[str, Path]:
    files = {}
    for method in ("pi", "yarn"):
        files[method] = tmp_path / f"{method}.json"
        assert invoke("factors", method, "--model", "pocket", "--scale", 4, "--out", files[method]).exit_code == 0
    return files


@pytest.fixture
def holder():
    """Start a process holding a DirectoryLock on a folder; killed at the end."""
    started = []

    def hold(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE,
                                   env=ENV, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


# ---- item 2: --overwrite removes only what that export wrote ----------------------------------------------
def test_overwrite_never_removes_a_run_started_inside_an_earlier_export(factor_files, tmp_path, holder):
    prev = tmp_path / "x" / "prev"
    assert invoke("export", factor_files["pi"], "--model", "pocket", "--out", prev, "--format", "csv").exit_code == 0
    run = prev / "run"
    search = invoke("search", "--model", "pocket", "--target-length", 512, "--max-evals", 2, "--samples", 1,
                    "--device", "cpu", "--out", run)
    assert search.exit_code == 0, search.output
    kept = tree(prev)
    overwrite = ("export", factor_files["yarn"], "--model", "pocket", "--out", prev, "--format", "csv", "--overwrite")
    searching = holder(run)  # the search still running
    line = one_error_line(*overwrite)
    assert f"{run / '.lock'} is held by another ropesearch process (pid {searching.pid})" in line and "in use" in line
    assert tree(prev) == kept
    searching.kill()
    searching.wait()
    line = one_error_line(*overwrite)  # finished: still not the export's to remove
    assert f"{prev} also holds run" in line and "which it did not" in line
    assert tree(prev) == kept


def test_overwrite_replaces_exactly_the_listed_files(factor_files, tmp_path):
    out = tmp_path / "out"
    assert invoke("export", factor_files["pi"], "--model", "pocket", "--out", out).exit_code == 0
    assert (out / "model.safetensors").is_file()
    result = invoke("export", factor_files["yarn"], "--model", "pocket", "--out", out, "--format", "csv", "--overwrite")
    assert result.exit_code == 0, result.output
    listed = json.loads((out / ".ropesearch-export").read_text())["files"]
    assert listed == ["long_factor.csv", "short_factor.csv"]
    assert sorted(p.name for p in out.iterdir()) == [".ropesearch-export", "long_factor.csv", "short_factor.csv"]
    (out / "mine.txt").write_text("put here by hand")
    assert "also holds mine.txt" in one_error_line("export", factor_files["pi"], "--model", "pocket", "--out", out,
                                                   "--format", "csv", "--overwrite")
    assert (out / "mine.txt").read_text() == "put here by hand"
    (out / "mine.txt").unlink()
    (out / ".ropesearch-export").write_text("written by ropesearch export; --overwrite may replace this folder\n")
    assert "older ropesearch" in one_error_line("export", factor_files["pi"], "--model", "pocket", "--out", out,
                                                "--format", "csv", "--overwrite")
    assert (out / "long_factor.csv").is_file()
    (tmp_path / "linked").symlink_to(out)  # a link to an export is refused, as before, never written through
    assert "is a symbolic link" in one_error_line("export", factor_files["pi"], "--model", "pocket", "--out",
                                                  tmp_path / "linked", "--format", "csv", "--overwrite")


# ---- item 3: one writer at a time, nothing lost, a full disk named ---------------------------------------
def test_an_export_into_a_folder_another_holds_is_refused_in_use(factor_files, tmp_path, holder):
    out = tmp_path / "out"
    assert invoke("export", factor_files["pi"], "--model", "pocket", "--out", out, "--format", "csv").exit_code == 0
    exporting = holder(out)  # what an export under way holds
    before = tree(out)
    line = one_error_line("export", factor_files["yarn"], "--model", "pocket", "--out", out, "--format", "csv",
                          "--overwrite")
    assert f"{out} is in use by another ropesearch process (pid {exporting.pid})" in line
    assert tree(out) == before


def test_two_concurrent_overwrites_leave_one_whole_export_and_say_so(factor_files, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        runs = {method: subprocess.Popen(CLI + ["export", str(path), "--model", "pocket", "--out", str(out),
                                                "--overwrite"], env=ENV, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                for method, path in factor_files.items()}
        outcomes = {method: (run.wait(), run.stdout.read(), run.stderr.read()) for method, run in runs.items()}
        winners = []
        for method, (code, stdout, stderr) in outcomes.items():
            if code == 0:
                assert f"wrote {out}" in stdout
                winners.append(method)
            else:
                errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
                assert code == 1 and len(errors) == 1 and "in use by another ropesearch process" in errors[0], stderr
        assert winners, outcomes
        # the folder is one export, whole: its list, its files and its factors agree, and a winner wrote it
        listed = json.loads((out / ".ropesearch-export").read_text())["files"]
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(listed + [".ropesearch-export"])
        method = json.loads((out / "ropesearch_factors.json").read_text())["rope"]["method"]
        config = json.loads((out / "config.json").read_text())
        wanted = json.loads(factor_files[method].read_text())["rope"]["long_factor"]
        assert method in winners and config["rope_parameters"]["long_factor"] == wanted


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from ropesearch.cli import main
sys.argv = ["ropesearch"] + sys.argv[2:]
main()
"""


def test_a_full_disk_names_the_destination_and_leaves_nothing_half_written(factor_files, tmp_path):
    out = tmp_path / "out"
    assert invoke("export", factor_files["pi"], "--model", "pocket", "--out", out).exit_code == 0
    before = tree(out)
    limit = (POCKET / "model.safetensors").stat().st_size // 4
    for target, extra in ((out, ["--overwrite"]), (tmp_path / "new", [])):
        result = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), "export", str(factor_files["yarn"]),
                                 "--model", "pocket", "--out", str(target), "--copy", *extra],
                                env=ENV, capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"could not write {target / 'model.safetensors'}: File too large" in errors[0]
        assert str(POCKET) not in errors[0]
    assert tree(out) == before  # the earlier export is whole, no staging folder left
    assert not (tmp_path / "new").exists()


# ---- item 4: serve.sh never runs a path as code ---------------------------------------------------------
NAMES = ["inj$(touch PWNED)", "tick`touch PWNED`", "it's", 'say "hi"', "two words", "new\nline", "ends\n",
         "$HOME ${HOME:-x} \\ ; | & * ?"]
FAKE_VLLM = "#!{python}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def serve(script: Path, cwd: Path, shell: str, environment: dict | None = None) -> list[str]:
    """Run SCRIPT with a fake `vllm` first on PATH that prints its argv; that argv."""
    fake = cwd / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "vllm").write_text(FAKE_VLLM.format(python=sys.executable))
    (fake / "vllm").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", **(environment or {})}
    result = subprocess.run([shell, str(script)], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_serve_scripts_quote_every_path(factor_files, tmp_path, shell):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for index, name in enumerate(NAMES):
        model = tmp_path / "models" / name
        shutil.copytree(POCKET, model)
        hf, vllm = tmp_path / "exports" / f"{index}" / name, tmp_path / "exports" / f"{index}" / f"v {name}"
        assert invoke("export", factor_files["yarn"], "--model", model, "--out", hf).exit_code == 0
        assert invoke("export", factor_files["yarn"], "--model", model, "--out", vllm, "--format", "vllm").exit_code == 0
        argv = serve(hf / "serve.sh", elsewhere, shell)
        assert argv[:2] == ["serve", str(hf)] and argv[2:4] == ["--max-model-len", "1024"]
        argv = serve(vllm / "serve.sh", elsewhere, shell)
        assert argv[0] == "serve" and os.path.realpath(argv[1]) == str(model) and argv[1].endswith(name)
        assert argv[4] == "--hf-overrides" and json.loads(argv[5])["max_position_embeddings"] == 1024
        other = tmp_path / "models" / f"other {name}"
        assert serve(vllm / "serve.sh", elsewhere, shell, {"MODEL": str(other)})[1] == str(other)
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()


# ---- item 7: a model folder's links are never followed out of it ------------------------------------------
def test_links_out_of_the_model_folder_are_refused(factor_files, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("private")
    for planted, target in (("keys", secrets), ("notes.txt", secrets / "id_rsa"), ("gone.bin", tmp_path / "nothing")):
        model = tmp_path / f"model-{planted}"
        shutil.copytree(POCKET, model)
        (model / planted).symlink_to(target)
        line = one_error_line("export", factor_files["yarn"], "--model", model, "--out", tmp_path / "out")
        assert f"model folder {model}: {planted} is a symbolic link" in line and "never follows a link" in line
        assert not (tmp_path / "out").exists()
    model = tmp_path / "model-fifo"
    shutil.copytree(POCKET, model)
    os.mkfifo(model / "pipe")  # refused at once, never read (which would wait forever)
    assert "not a regular file" in one_error_line("export", factor_files["yarn"], "--model", model, "--out",
                                                  tmp_path / "out")


def test_links_inside_the_model_folder_and_hub_cache_snapshots_are_its_files(factor_files, tmp_path):
    repo = tmp_path / "hub" / "models--someone--pocket"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in POCKET.iterdir():  # the hub cache's layout: every snapshot file links into ../../blobs
        blob = repo / "blobs" / f"blob-{item.name}"
        shutil.copy2(item, blob)
        (snapshot / item.name).symlink_to(Path("..", "..", "blobs", blob.name))
    out = tmp_path / "out"
    result = invoke("export", factor_files["yarn"], "--model", snapshot, "--out", out)
    assert result.exit_code == 0, result.output
    weights = out / "model.safetensors"
    assert not weights.is_symlink() and weights.read_bytes() == (POCKET / "model.safetensors").read_bytes()
