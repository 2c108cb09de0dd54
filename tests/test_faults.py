"""Faults, each with a test: ``kill -9`` mid-write (prompt cache, token cache, SAE training), a
multirun with a failing job, a read-only / full / impossible cache dir, atomic folder
replacement, and parallel jobs that need one organism.

The ``kill -9`` tests run the real code in a (forked) subprocess that is cut in the middle of
writing a shard (half of it in the temp file) or stalled mid-training, wait for that state by
polling a file it writes, send SIGKILL, then re-run in this process and compare with an
uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import probing.activations.cache as ac
import probing.io as pio
from probing.activations.cache import cached_extract
from probing.activations.store import CacheEntry
from probing.activations.tokens import (
    TokenStreamConfig,
    get_or_build_token_cache,
    text_batches,
    token_mask,
)
from probing.errors import LirefError
from tests.job_fixtures import run_main_in_process, write_questions
from tests.tiny_models import PROMPTS, ForwardCounter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS_10 = PROMPTS * 2  # shards of 3, 3, 3, 1 rows with shard_size=3
TEXTS = PROMPTS * 6 + ["the capital city of red is blue . " * 12]
STREAM = {"layer": 1, "context_size": 16, "batch_size": 4, "shard_tokens": 40}
SAE = {"architecture": "topk", "d_sae": 32, "k": 4, "training_tokens": 64 * 40, "batch_size": 64,
       "n_batches_for_norm_estimate": 2, "lr": 1e-2, "log_every": 1000,
       "dead_feature_window": 10, "feature_sampling_window": 20}
D_IN = 16
#: SAE training data: sums of 3 of these 24 unit directions (what an SAE can learn quickly)
ATOMS = torch.nn.functional.normalize(
    torch.randn(24, D_IN, generator=torch.Generator().manual_seed(0)), dim=1)


def sparse_batch(n: int, g: torch.Generator) -> torch.Tensor:
    """``[n, D_IN]`` activations, each a positive mix of 3 random ``ATOMS``."""
    idx = torch.rand(n, len(ATOMS), generator=g).argsort(dim=1)[:, :3]
    coef = torch.rand(n, 3, generator=g) + 0.5
    return (coef.unsqueeze(-1) * ATOMS[idx]).sum(dim=1)


def _victim(what: str, model, tok, out_dir: Path, ready: Path) -> None:
    """The subprocess (forked: it shares the loaded model and modules, so it starts at once):
    real library code, cut in the middle of writing its third shard (two complete shards
    before it) or stalled mid-training, where it signals ``ready`` and waits for SIGKILL."""
    import probing.activations.store as store

    def signal_ready(text: str) -> None:  # atomically, so the test never reads half of it
        Path(f"{ready}.w").write_text(text)
        os.replace(f"{ready}.w", ready)
        time.sleep(600)

    if what == "sae":
        from probing.sae.training import SAETrainConfig, save_sae, train_sae

        def batches():
            g = torch.Generator().manual_seed(1)
            for n in range(1, 10**9):
                if n == 2 + 24:  # 2 norm-estimate batches, 23 steps: checkpoints after 9 and 17
                    signal_ready("mid-training")
                yield sparse_batch(64, g)

        sae = train_sae(batches(), D_IN, SAETrainConfig(**SAE), seed=0,
                        checkpoint_dir=out_dir / "checkpoints", n_checkpoints=4)
        save_sae(sae, out_dir / "sae")
        os._exit(3)  # finished without being killed
    real_write, shards = store.atomic_write_bytes, []

    def write_then_die(path: Path, data: bytes) -> None:
        path = Path(path)
        if path.name.startswith("shard"):
            shards.append(path.name)
            if len(shards) == 3:  # half of the third shard in its temp file
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                           suffix=".tmp")
                os.write(fd, data[: len(data) // 2])
                os.fsync(fd)
                signal_ready(tmp)
        real_write(path, data)

    store.atomic_write_bytes = write_then_die  # (in the child only)
    if what == "prompts":
        cached_extract(model, tok, PROMPTS_10, out_dir, layers=[0, 2], shard_size=3,
                       batch_size=2, progress=False)
    else:
        get_or_build_token_cache(model, tok, TEXTS, out_dir, TokenStreamConfig(**STREAM), "fp")
    os._exit(3)


def _run_and_kill(tmp_path: Path, what: str, model, tok, out_dir: Path) -> str:
    """Start the victim in a subprocess, wait (polling a file) until it is mid-write, SIGKILL
    it; returns what it signalled (the path of its half-written temp file)."""
    ready = tmp_path / f"ready-{what}"
    proc = multiprocessing.get_context("fork").Process(
        target=_victim, args=(what, model, tok, out_dir, ready))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.is_alive(), f"the victim exited early (exit code {proc.exitcode})"
            assert time.monotonic() < deadline, "the victim never got to its mid-write state"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    return ready.read_text()


def _record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Every shard file the cache core reads (record name, entry folder)."""
    reads: list[tuple[str, Path]] = []
    real = CacheEntry.read_shard_bytes

    def recording(self: CacheEntry, record: dict) -> bytes:
        reads.append((record["file"], self.folder))
        return real(self, record)

    monkeypatch.setattr(CacheEntry, "read_shard_bytes", recording)
    return reads


# --- kill -9 during prompt extraction --------------------------------------------------------
def test_kill_9_mid_shard_then_rerun_prompt_cache(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    cache = tmp_path / "cache"
    half = Path(_run_and_kill(tmp_path, "prompts", model, tok, cache))
    (entry,) = [p for p in (cache / "activations").iterdir() if p.is_dir()]
    killed = json.loads((entry / "manifest.json").read_text())
    assert not killed["complete"] and [s["start"] for s in killed["shards"]] == [0, 3]
    assert half.parent == entry and half.is_file()  # the half-written shard of rows 6..8
    kept = {s["file"]: (entry / s["file"]).read_bytes() for s in killed["shards"]}

    rows: list[int] = []
    real = ac.extract_activations

    def counting(*args, **kwargs):
        rows.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ac, "extract_activations", counting)
    reads = _record_reads(monkeypatch)
    resumed = cached_extract(model, tok, PROMPTS_10, cache, layers=[0, 2], shard_size=3,
                             batch_size=2, progress=False)
    assert rows == [3, 1]  # only rows 6..9: the two complete shards were not recomputed
    assert not half.exists()  # the orphaned temp file is gone
    final = {s["file"] for s in resumed.manifest["shards"]}
    assert reads and all(name in final and not name.endswith(".tmp") for name, _ in reads)
    assert all((entry / f).read_bytes() == b for f, b in kept.items())  # kept as they were
    rows.clear()
    whole = cached_extract(model, tok, PROMPTS_10, tmp_path / "whole", layers=[0, 2],
                           shard_size=3, batch_size=2, progress=False)
    assert rows == [3, 3, 3, 1]
    assert torch.equal(resumed.acts, whole.acts)  # equal to an uninterrupted run


# --- kill -9 during token caching ------------------------------------------------------------
def test_kill_9_mid_shard_then_rerun_token_cache(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    cache = tmp_path / "cache"
    half = Path(_run_and_kill(tmp_path, "tokens", model, tok, cache))
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    killed = json.loads((entry / "manifest.json").read_text())
    assert not killed["complete"] and len(killed["shards"]) == 2
    assert half.parent == entry and half.is_file()
    done = sum(s["n_tokens"] for s in killed["shards"])

    reads = _record_reads(monkeypatch)
    counter = ForwardCounter(model)
    try:
        resumed, built = get_or_build_token_cache(model, tok, TEXTS, cache,
                                                  TokenStreamConfig(**STREAM), "fp")
    finally:
        counter.close()
    assert built and resumed.path == entry and not half.exists()
    # forward passes only for the batches that reach past the complete shards
    bos, seen, needed = tok.bos_token_id, 0, 0
    for ids, mask in text_batches(tok, TEXTS, STREAM["context_size"], STREAM["batch_size"]):
        seen += int(token_mask(ids, mask, bos, True).sum())
        needed += seen > done
    assert counter.n == needed and needed < len(list(text_batches(tok, TEXTS, 16, 4)))
    assert [vars(s) for s in resumed.manifest.shards[:2]] == killed["shards"]
    assert all(name.startswith("shard_") and folder == entry for name, folder in reads)
    whole, _ = get_or_build_token_cache(model, tok, TEXTS, tmp_path / "whole",
                                        TokenStreamConfig(**STREAM), "fp")
    assert torch.equal(resumed.read_all(), whole.read_all())  # equal to an uninterrupted run


# --- kill -9 during SAE training -------------------------------------------------------------
def _explained_variance(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    return 1 - float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_kill_9_during_sae_training_resumes_from_checkpoint(tmp_path, caplog):
    import sae_lens.training.sae_trainer  # noqa: F401 - imported before the fork: a fast start

    from probing.sae.training import SAETrainConfig, load_sae, save_sae, train_sae

    out = tmp_path / "run"
    assert _run_and_kill(tmp_path, "sae", None, None, out) == "mid-training"
    assert not (out / "sae").exists()  # no SAE folder at all, let alone a half-written one
    (run_dir,) = [p for p in (out / "checkpoints").iterdir() if p.is_dir()]
    (ckpt,) = [p for p in run_dir.iterdir() if not p.name.startswith(".")]  # older ones gone
    assert int(ckpt.name) == 17 * 64  # the checkpoint after step 17 (samples > 2 * 512)
    # what a process killed mid-checkpoint leaves: a temp folder, never taken for a checkpoint
    (run_dir / ".000000000002048.tmp-4194305").mkdir()

    calls = []
    g = torch.Generator().manual_seed(2)

    def batches():
        while True:
            calls.append(1)
            yield sparse_batch(64, g)

    with caplog.at_level("INFO"):
        sae = train_sae(batches(), D_IN, SAETrainConfig(**SAE), seed=0,
                        checkpoint_dir=out / "checkpoints", n_checkpoints=4)
    assert "resuming SAE training from checkpoint" in caplog.text
    assert len(calls) == (SAE["training_tokens"] - int(ckpt.name)) // 64  # the rest, no more
    assert not run_dir.exists()  # checkpoints are removed once training completed
    save_sae(sae, out / "sae")
    loaded = load_sae(out / "sae")
    assert (loaded.cfg.d_in, loaded.cfg.d_sae) == (D_IN, SAE["d_sae"])
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
    held = sparse_batch(2048, torch.Generator().manual_seed(3))
    calls.clear()
    save_sae(train_sae(batches(), D_IN, SAETrainConfig(**SAE), seed=0), tmp_path / "fresh")
    assert len(calls) == 2 + 40  # an uninterrupted run: norm estimate + every step
    fresh = load_sae(tmp_path / "fresh")
    ev_resumed, ev_fresh = _explained_variance(loaded, held), _explained_variance(fresh, held)
    # a valid SAE: it reconstructs held-out data about as well as an uninterrupted run
    assert ev_resumed > 0.5 and ev_resumed > ev_fresh - 0.1, (ev_resumed, ev_fresh)


def test_sae_folder_appears_atomically(tmp_path, monkeypatch):
    from sae_lens.saes.sae import TrainingSAE

    from probing.sae.training import SAETrainConfig, load_sae, make_training_sae, save_sae

    sae = make_training_sae(SAETrainConfig(**SAE), D_IN)
    target = tmp_path / "sae"
    leftover = tmp_path / ".sae.tmp-4194305"  # a killed saver's (pid above Linux's pid_max)
    leftover.mkdir()
    (leftover / "cfg.json").write_text("{")
    real = TrainingSAE.save_inference_model

    def dies_after_the_weights(self, path):
        real(self, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingSAE, "save_inference_model", dies_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        save_sae(sae, target, info={"layer": 1})
    assert not target.exists()  # nothing half-written at the target
    assert not leftover.exists() and not list(tmp_path.glob(".sae.tmp-*"))
    monkeypatch.setattr(TrainingSAE, "save_inference_model", real)
    save_sae(sae, target, info={"layer": 1})
    first = (target / "sae_weights.safetensors").read_bytes()
    with torch.no_grad():
        sae.W_dec.mul_(2)
    save_sae(sae, target, info={"layer": 2})  # replaces the old SAE in one step
    assert (target / "sae_weights.safetensors").read_bytes() != first
    assert json.loads((target / "liref_sae.json").read_text()) == {"layer": 2}
    assert load_sae(target).cfg.d_sae == SAE["d_sae"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    # a folder holding other things is never replaced by an SAE
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text("{}")
    with pytest.raises(LirefError, match=r"holds other things.*metrics\.json"):
        save_sae(sae, tmp_path / "results")
    assert (tmp_path / "results" / "metrics.json").read_text() == "{}"


# --- a multirun where one job fails ------------------------------------------------------------
def _hydra_main(module: str, args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a job's ``@hydra.main`` in this process with command-line ``args``;
    ``(exit status, stderr)``."""
    return run_main_in_process(module, args, cwd, monkeypatch, capsys)


def test_multirun_goes_on_past_a_failing_job(tmp_path, tiny_model_dir, monkeypatch, capsys):
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=8)
    code, stderr = _hydra_main(
        "train.extract", ["-m", "layers=[99],[0]", "model=local",
                          f"model.name={tiny_model_dir('llama')}", "data=local_file",
                          f"data.sets.0.path={questions}", "logger=disabled"],
        tmp_path, monkeypatch, capsys)
    assert code == 2, stderr  # the sweep as a whole reports the failure
    assert "Traceback" not in stderr
    (sweep,) = (tmp_path / "multirun" / "extract").iterdir()
    failed, ok = sweep / "0", sweep / "1"
    # the failing job came first, and the next one still ran to its end
    assert json.loads((ok / "metrics.json").read_text())["n_layers"] == 1
    assert not (failed / "metrics.json").exists()
    log_errors = [line for line in (failed / "extract.log").read_text().splitlines()
                  if "ERROR" in line]
    assert len(log_errors) == 1 and "layer 99" in log_errors[0] and "0..2" in log_errors[0]
    assert "layer 99" in (failed / "error.txt").read_text()
    assert not (ok / "error.txt").exists() and "ERROR" not in (ok / "extract.log").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "layer 99" in errors[0]
    assert errors[1].startswith("error: 1 of 2 jobs failed") and "0/extract.log" in errors[1]
    assert stderr.rstrip().splitlines()[-1] == errors[1]


def test_a_successful_multirun_exits_0(tmp_path, tiny_model_dir, monkeypatch, capsys):
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=8)
    stale = tmp_path / "sweep" / "0" / "error.txt"  # from an earlier sweep in that folder
    stale.parent.mkdir(parents=True)
    stale.write_text("an old failure\n")
    code, stderr = _hydra_main(
        "train.extract", ["-m", "layers=[0],[1]", "model=local",
                          f"model.name={tiny_model_dir('llama')}", "data=local_file",
                          f"data.sets.0.path={questions}", "logger=disabled",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path, monkeypatch, capsys)
    assert code == 0 and "error:" not in stderr, stderr
    assert not stale.exists()  # the job that ran in that folder again removed it


# --- read-only, full or impossible cache dirs ---------------------------------------------------
def _build(kind: str, model, tok, cache_dir: Path):
    if kind == "prompts":
        return cached_extract(model, tok, PROMPTS_10, cache_dir, layers=[0], shard_size=3,
                              progress=False)
    return get_or_build_token_cache(model, tok, TEXTS, cache_dir, TokenStreamConfig(**STREAM),
                                    "fp")[0]


@pytest.mark.parametrize("kind", ["prompts", "tokens"])
def test_cache_dir_below_a_file_is_one_clear_error(tiny_llama, tmp_path, kind):
    model, tok = tiny_llama
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(LirefError, match="cannot create") as err:
        _build(kind, model, tok, blocker / "cache")
    assert str(blocker) in str(err.value) and "not a folder" in str(err.value)
    assert blocker.read_text() == "a file where the cache folder should go"


def test_job_with_an_unusable_cache_dir_ends_with_one_error_line(tmp_path, tiny_model_dir,
                                                                 monkeypatch, capsys):
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=4)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, stderr = _hydra_main(
        "train.extract", ["model=local", f"model.name={tiny_model_dir('llama')}",
                          "data=local_file", f"data.sets.0.path={questions}", "logger=disabled",
                          f"cache_dir={blocker}/cache", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert f"{blocker}/cache" in errors[0] and "not a folder" in errors[0]


def test_organism_cache_dir_below_a_file_is_one_clear_error(tmp_path):
    from probing.organism import ensure_organism

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LirefError, match=f"cannot create.*{blocker}"):
        ensure_organism({"seed": 12345}, cache_dir=blocker / "cache")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_cache_dir_is_one_clear_error(tiny_llama, tmp_path):
    model, tok = tiny_llama
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(LirefError, match=str(ro)):
            _build("prompts", model, tok, ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(("kind", "code", "words"), [
    ("prompts", errno.ENOSPC, "disk is full"),
    ("tokens", errno.ENOSPC, "disk is full"),
    ("prompts", errno.EROFS, "read-only"),
    ("tokens", errno.EACCES, "not writable"),
])
def test_full_or_read_only_disk_mid_build_is_one_clear_error_and_loses_nothing(
        tiny_llama, tmp_path, monkeypatch, kind, code, words):
    """The 3rd atomic write (shard 0, manifest, shard 1) fails: one error naming the folder;
    the complete shard stays listed and intact, and a later run resumes after it."""
    model, tok = tiny_llama
    real_fsync, n = os.fsync, []

    def fsync_fails_on_third(fd: int) -> None:
        n.append(fd)
        if len(n) == 3:
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(pio.os, "fsync", fsync_fails_on_third)
    cache = tmp_path / "cache"
    with pytest.raises(LirefError, match=words) as err:
        _build(kind, model, tok, cache)
    monkeypatch.setattr(pio.os, "fsync", real_fsync)
    (entry,) = [p for p in (cache / "activations" if kind == "prompts" else cache).iterdir()
                if p.is_dir()]
    assert f"folder {entry}" in str(err.value) and "\n" not in str(err.value)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and not manifest["complete"]
    assert not list(entry.glob(".*.tmp"))  # the failed write left no temp file
    CacheEntry(entry, manifest["format"], manifest["version"]).read_shard(manifest["shards"][0])
    rebuilt = _build(kind, model, tok, cache)
    again = _build(kind, model, tok, tmp_path / "whole")
    if kind == "prompts":
        assert torch.equal(rebuilt.acts, again.acts)
    else:
        assert torch.equal(rebuilt.read_all(), again.read_all())


# --- atomic folder replacement ----------------------------------------------------------------
def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "marker").write_text(text)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two_renames"])
def test_atomic_replace_dir(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(pio, "_exchange", lambda a, b: False)
    final = tmp_path / "ckpt"
    pio.atomic_replace_dir(_folder(tmp_path / ".new1", "one"), final)
    assert (final / "marker").read_text() == "one"
    pio.atomic_replace_dir(_folder(tmp_path / ".new2", "two"), final)
    assert (final / "marker").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # old one and temp gone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_replaced_folder_is_never_missing(tmp_path):
    final = _folder(tmp_path / "ckpt", "0")
    stop, missing, reads = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append((final / "marker").read_text())
            except FileNotFoundError:
                missing.append(1)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 150):
            pio.atomic_replace_dir(_folder(tmp_path / f".new{i}", str(i)), final)
    finally:
        stop.set()
        t.join()
    assert not missing and len(reads) > 0
    assert (final / "marker").read_text() == "149"


# --- parallel jobs need one organism ----------------------------------------------------------
def test_parallel_ensure_organism_trains_once(tmp_path, monkeypatch):
    from probing.organism import store, training
    from probing.organism.config import OrganismConfig

    cfg = {"seed": 12345}
    folder = tmp_path / f"organism-{OrganismConfig.from_dict(cfg).config_hash()}"
    stale = _folder(tmp_path / f".{folder.name}.tmp-999999", "a killed trainer's folder")
    trained: list[Path] = []

    def slow_train(cfg, folder, progress=True):
        trained.append(folder)
        time.sleep(0.5)  # long enough for the other jobs to arrive meanwhile
        tmp = tmp_path / f".{folder.name}.tmp-{threading.get_ident()}"
        tmp.mkdir()
        (tmp / store.ORGANISM_FILE).write_text("{}")
        (tmp / "config.json").write_text("{}")
        pio.atomic_replace_dir(tmp, folder)

    monkeypatch.setattr(training, "train_and_save", slow_train)
    results: list[Path] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            results.append(training.ensure_organism(cfg, cache_dir=tmp_path, progress=False))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [folder] * 3
    assert trained == [folder]  # trained once, the others waited and loaded it
    assert not stale.exists()
