"""Faults of processes and disks: concurrent runs, kill -9, worker crashes, signals, full and read-only disks.

Most are ``slow`` (real subprocesses; run by ``bench/faults.py``); the signal case runs in-process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus import CrashingFolderSource, folder_dataset
from faults_helpers import build_small, one_sentence

import bgbias

REPO = Path(__file__).resolve().parents[2]
CODE = Path(bgbias.__file__).resolve().parents[1]      # the bgbias under test (bench/faults.py --code DIR)
ENV = {**os.environ, "PYTHONPATH": f"{CODE}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
VARIANTS = "original,only_bg_t,mixed_rand,mixed_same"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cmd(images: Path, masks: Path, out: Path, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "bgbias", "build", f"folder:{images}", "--masks", str(masks), "--out", str(out),
            "--variants", VARIANTS, "--workers", str(workers), "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faultdata")
    images, masks = folder_dataset(root, {"a": 60, "b": 60, "c": 60}, size=48)
    ref = root / "reference"
    subprocess.run(_cmd(images, masks, ref), env=ENV, check=True, capture_output=True)
    return images, masks, _tree(ref), ref


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
def test_concurrent_builds_never_corrupt(tmp_path, data):
    images, masks, ref, _ = data
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cmd(images, masks, out), env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read().strip()) for p in procs]
    refused = [err for rc, err in results if rc != 0]
    for err in refused:
        one_sentence(err, "in use by another bgbias build")
    assert len(refused) <= 1, results
    subprocess.run(_cmd(images, masks, out), env=ENV, check=True, capture_output=True)   # the refused one, again
    assert _tree(out) == ref


@pytest.mark.slow
@pytest.mark.parametrize("moment", [0.1, 0.5, 0.9])
def test_kill_9_leaves_no_process_and_resume_is_identical(tmp_path, data, moment):
    """kill -9 of the main build process when ``moment`` of the PNGs exist: within seconds no forkserver,
    resource tracker or worker of it is left, and rerunning gives the reference bytes."""
    images, masks, ref, _ = data
    out = tmp_path / "out"
    want = sum(1 for k in ref if k.endswith(".png")) * moment
    p = subprocess.Popen(_cmd(images, masks, out, workers=2), env=ENV, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and sum(1 for _ in out.rglob("*.png")) < want and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, "the build finished before the kill; use more data"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t0 = time.time()
    while _group(p.pid) and time.time() - t0 < 10:
        time.sleep(0.2)
    left = _group(p.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after kill -9 of the build: {left}"
    subprocess.run(_cmd(images, masks, out, workers=2), env=ENV, check=True, capture_output=True)
    assert _tree(out) == ref


@pytest.mark.slow
def test_worker_crash_is_a_named_drop(tmp_path):
    images, masks = folder_dataset(tmp_path / "d", {"a": 6, "b": 6})
    src = CrashingFolderSource(str(images), str(masks), {"a_2", "b_4"})
    m = build_small(src, tmp_path / "out", workers=2)
    why = {d["id"]: d["reason"] for d in m["dropped"] if d["stage"] == "load"}
    assert set(why) == {"a_2", "b_4"} and all(r.startswith("worker_crash") and "SIGSEGV" in r for r in why.values())
    assert m["counts"]["kept"] == 10


def test_challenge_saves_state_on_sigterm(tmp_path, monkeypatch):
    """SIGTERM mid-search: the state is saved (though no periodic save was due) and a rerun gives the same answer."""
    import _layouts as L

    import bgbias.audit.challenge as ch
    from bgbias.models.load import LoadedModel

    root = L.random_layout(tmp_path / "d", n_per_class=6, seed=3)
    cfg = dict(model="m", data=str(root), progress=False, device="cpu", active=2, max_step=1,
               save_every=10 ** 9, save_seconds=1e9)
    model = LoadedModel(L.mean_colour(), "m")
    full = ch.run_challenge(ch.ChallengeConfig(**cfg), out=tmp_path / "a.json", loaded=model)
    rounds = []
    real = ch.Search.round

    def round_then_term(self):
        rounds.append(1)
        if len(rounds) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(ch.Search, "round", round_then_term)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        ch.run_challenge(ch.ChallengeConfig(**cfg), out=tmp_path / "b.json", loaded=model)
    assert Path(str(tmp_path / "b.json") + ".state").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(ch.Search, "round", real)
    resumed = ch.run_challenge(ch.ChallengeConfig(**cfg), out=tmp_path / "b.json", loaded=model)
    for key in ("fooled", "per_class", "challenge_accuracy"):
        assert resumed[key] == full[key], key


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("fs", ["full", "readonly"])
@pytest.mark.parametrize("command", ["build", "eval", "challenge", "report", "train"])
def test_full_and_readonly_disk_is_one_sentence(tmp_path, data, fs, command):
    """A real small tmpfs (full: 256 KB; read-only) in a private mount namespace, where the machine allows it."""
    if not _unshare_ok():
        pytest.skip("no user namespaces (unshare -rm) here to mount a tmpfs")
    images, masks, _, layout = data
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"kind": "bgbias-eval/1", "model": "m", "classes": ["a"], "variants": {}}))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    model = f"--model module:_layouts:mean_colour --data {layout} --device cpu --no-progress"
    cmd = {"build": f"-m bgbias build folder:{images} --masks {masks} --out {mnt}/out --variants {VARIANTS} --quiet",
           "eval": f"-m bgbias eval {model} --out {mnt}/sub/e.json",
           "challenge": f"-m bgbias challenge {model} --out {mnt}/sub/c.json",
           "report": f"-m bgbias report {ev} --out {mnt}/sub/r.html",
           "train": f"-m bgbias train --recipe baseline --data {layout} --out {mnt}/run --epochs 1 --quiet"}[command]
    opts = "size=256k" if fs == "full" else "ro"
    fill = f"head -c 250k /dev/zero > {mnt}/filler 2>/dev/null;" if fs == "full" else ""
    script = f"mount -t tmpfs -o {opts} tmpfs {mnt} && {fill} {sys.executable} {cmd}"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip().splitlines()[-1]
    one_sentence(err, str(mnt))
    assert ("ENOSPC" in err or "No space" in err) if fs == "full" else ("EROFS" in err or "Read-only" in err), err
