"""The one place that talks to Weights & Biases.

A ``Tracker`` wraps one wandb run. Every call is failure-proof: if wandb raises (no account,
disk full, service down), a warning is logged, tracking is switched off, and the job goes on
writing its own files. ``mode="disabled"`` makes every call a no-op without importing wandb.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probing.io import flatten

log = logging.getLogger(__name__)

__all__ = ["MODES", "Tracker", "flatten", "read_offline_run", "tracked"]

MODES = ("offline", "online", "disabled")


@dataclass
class LoggerConfig:
    """wandb settings of a job (``conf/logger/*.yaml``): ``mode`` offline (written under the run
    folder, ``wandb sync`` later), online or disabled; ``name`` / ``group`` null = derived from
    the job and its sweep."""

    mode: str = "offline"
    project: str = "liref"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            from probing.errors import LirefError

            raise LirefError(f"unknown logger mode {self.mode!r}; allowed: {list(MODES)}")


class Tracker:
    """One wandb run for one job.

    Args:
        mode: ``offline`` (default; written to ``dir``/wandb, sync later), ``online``, ``disabled``.
        project, entity, name, group, job_type, tags: passed to ``wandb.init``.
        config: the resolved job config (a plain dict).
        dir: where wandb writes its run folder (the job's run directory).
    """

    def __init__(
        self,
        mode: str = "offline",
        project: str = "liref",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | Path | None = None,
    ) -> None:
        if mode not in MODES:
            from probing.errors import LirefError

            raise LirefError(f"unknown logger mode {mode!r}; allowed: {list(MODES)}")
        self.mode = mode
        self._init_kwargs = dict(
            project=project,
            entity=entity,
            name=name,
            group=group,
            job_type=job_type,
            tags=list(tags) if tags else None,
            config=dict(config) if config else None,
            dir=str(dir) if dir is not None else None,
        )
        self.run: Any = None
        self.run_dir: Path | None = None

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def group(self) -> str | None:
        return self._init_kwargs["group"]

    @property
    def name(self) -> str | None:
        return self._init_kwargs["name"]

    def child(self, name: str, job_type: str, dir: str | Path,
              config: Mapping[str, Any] | None = None) -> Tracker:
        """A tracker for another run in this run's group (same mode, project, entity, tags):
        one run per pipeline stage, so the dashboard groups them."""
        kw = self._init_kwargs
        return Tracker(mode=self.mode, project=kw["project"], entity=kw["entity"], name=name,
                       group=kw["group"], job_type=job_type, tags=kw["tags"], config=config,
                       dir=dir)

    def _fail(self, what: str, exc: BaseException) -> None:
        log.warning("wandb %s failed (%s: %s); tracking is off, files are still written",
                    what, type(exc).__name__, exc)
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - best effort
                pass

    def start(self) -> Tracker:
        if self.mode == "disabled" or self.run is not None:
            return self
        try:
            import wandb

            if self._init_kwargs["dir"]:
                Path(self._init_kwargs["dir"]).mkdir(parents=True, exist_ok=True)
            # create_new: a pipeline's own run stays open while each stage logs a run of its own
            self.run = wandb.init(mode=self.mode, reinit="create_new", **self._init_kwargs)
            self.run_dir = Path(self.run.dir).parent
            log.info("wandb run (%s) at %s", self.mode, self.run_dir)
        except Exception as exc:  # noqa: BLE001 - wandb must never kill a job
            self._fail("init", exc)
        return self

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics (nested dicts are flattened with ``/``)."""
        if self.run is None:
            return
        clean = {k: v for k, v in flatten(metrics).items() if _is_loggable(v)}
        try:
            self.run.log(clean, step=step)
        except Exception as exc:  # noqa: BLE001
            self._fail("log", exc)

    def define_metric(self, pattern: str, step_metric: str) -> None:
        """Plot metrics matching ``pattern`` (e.g. ``"probe/*"``) against ``step_metric``
        (e.g. ``"probe/layer"``) instead of wandb's global step."""
        if self.run is None:
            return
        try:
            self.run.define_metric(step_metric)
            self.run.define_metric(pattern, step_metric=step_metric)
        except Exception as exc:  # noqa: BLE001
            self._fail("define_metric", exc)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Write final numbers into the run summary."""
        if self.run is None:
            return
        try:
            for key, value in flatten(metrics).items():
                if _is_loggable(value):
                    self.run.summary[key] = value
        except Exception as exc:  # noqa: BLE001
            self._fail("summary", exc)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
        except Exception as exc:  # noqa: BLE001
            self._fail("table", exc)

    def log_image(self, key: str, path: str | Path) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path))})
        except Exception as exc:  # noqa: BLE001
            self._fail("image", exc)

    def log_artifact(
        self,
        path: str | Path,
        name: str,
        type: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Upload a file or folder (a probe, a direction, an SAE) as a wandb artifact."""
        if self.run is None:
            return
        try:
            import wandb

            art = wandb.Artifact(_artifact_name(name), type=type, metadata=dict(metadata or {}))
            p = Path(path)
            if p.is_dir():
                art.add_dir(str(p))
            else:
                art.add_file(str(p))
            self.run.log_artifact(art)
        except Exception as exc:  # noqa: BLE001
            self._fail("artifact", exc)

    def finish(self, exit_code: int = 0) -> None:
        """End the run; an offline run's folder is complete (readable) when this returns."""
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            log.warning("wandb finish failed (%s)", exc)
            self.run = None
            return
        self.run = None
        if self.mode == "offline" and self.run_dir is not None:
            _wait_for_exit_record(self.run_dir)

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


@contextmanager
def tracked(**kwargs: Any) -> Iterator[Tracker]:
    """``with tracked(mode=..., ...) as tracker:`` — start, yield, finish."""
    with Tracker(**kwargs) as tracker:
        yield tracker


def _is_loggable(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return not (isinstance(value, float) and math.isnan(value))
    return isinstance(value, str)


def _artifact_name(name: str) -> str:
    """wandb artifact names allow alphanumerics, dashes, underscores and dots."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:128]


FLUSH_TIMEOUT_S = 30.0  # how long ``Tracker.finish`` waits for wandb to flush an offline run
_BLOCK = 32768
_HEADER = 7  # crc32 (4) + length (2) + type (1); the file starts with ":W&B" + magic + version


def _records(path: Path) -> Iterator[bytes]:
    """Raw records of a ``.wandb`` transaction log (LevelDB-style blocks of 32 KiB).

    Hand-written because wandb has no Python reader of its own log any more: the installed
    wandb 0.31 reads it only in its Go service (``wandb-core``; ``wandb.sdk.internal.datastore``
    is gone). The records themselves are parsed with wandb's protobuf (``wandb.proto``).
    """
    data = path.read_bytes()
    if data[:4] != b":W&B":
        from probing.errors import LirefError

        raise LirefError(f"{path} is not a wandb transaction log")
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - (pos % _BLOCK)
        if left < _HEADER:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 2):  # FULL or FIRST
            pending = chunk
        else:  # MIDDLE or LAST
            pending += chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def _has_exit_record(folder: Path) -> bool:
    from wandb.proto import wandb_internal_pb2 as pb

    for path in folder.glob("*.wandb"):
        for blob in _records(path):
            rec = pb.Record()
            rec.ParseFromString(blob)
            if rec.WhichOneof("record_type") == "exit":
                return True
    return False


def _wait_for_exit_record(folder: Path, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Wait until the run's ``.wandb`` log holds its exit record.

    ``wandb.Run.finish()`` can return before wandb's service process has flushed the log (seen
    with wandb 0.31: right after ``finish`` the file sometimes held only its 7-byte header), so
    a reader in the same process (a notebook, a test) would find an empty run.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if _has_exit_record(folder):
                return
        except Exception:  # noqa: BLE001 - a half-written log; look again
            pass
        if time.monotonic() > deadline:
            log.warning("wandb run log in %s still incomplete after %.0f s", folder, timeout_s)
            return
        time.sleep(0.05)


def read_offline_run(run_folder: str | Path) -> dict[str, Any]:
    """What an offline wandb run recorded, without syncing it.

    Args:
        run_folder: a ``wandb/offline-run-*`` folder (or any folder holding one ``*.wandb``).

    Returns:
        ``{"summary": {key: value}, "history": [{key: value}, ...], "config": {key: value},
        "run": {"id", "name", "group", "job_type", "project", "entity", "tags"}}``.
    """
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(run_folder)
    files = sorted(folder.glob("*.wandb")) or sorted(folder.glob("*/*.wandb"))
    if not files:
        from probing.errors import LirefError

        raise LirefError(f"no .wandb file in {folder}")
    out: dict[str, Any] = {"summary": {}, "history": [], "config": {}, "run": {}}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for blob in _records(files[-1]):
        rec = pb.Record()
        rec.ParseFromString(blob)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                out["summary"][key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        if kind == "run" and rec.run.run_id:
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "group": r.run_group,
                          "job_type": r.job_type, "project": r.project, "entity": r.entity,
                          "tags": list(r.tags)}
        if kind in ("config", "run"):
            updates = rec.config.update if kind == "config" else rec.run.config.update
            for item in updates:
                out["config"][key(item)] = json.loads(item.value_json)
    return out
