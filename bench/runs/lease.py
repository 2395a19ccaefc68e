"""Cell leases: a cell being run is held by one owner, so no two processes ever run it at once.

Two copies of one cell (a rerun while the first sweep still runs, two launchers on one results
folder, a SLURM array resubmitted while its tasks are queued) would share its checkpoint folder and
overwrite each other's result. So whoever runs a cell first takes its lease, a small JSON file
``RESULTS/runs/leases/<key>.json`` naming the owner (host, process, SLURM job and task) with a
heartbeat the owner refreshes while it works; the planner shows leased cells as running and does
not start them, and a second runner that meets a live lease leaves the cell alone.

Taking a lease is atomic on local and network file systems alike: the owner writes its lease to a
private temporary file and hard-links it to the lease's name, which fails when the name exists
(``link(2)``: "EEXIST"), so a reader never sees half a lease and two takers never both win. A lease
whose owner is gone is broken, with that said: a process on this host that no longer exists, a
SLURM job that has left the queue (``squeue``), or, where neither can be asked, a heartbeat older
than :data:`STALE_AFTER_S`. Breaking is itself guarded by a marker file taken the same way, so of
two runners that find one stale lease only one breaks it, and neither can remove a fresh lease
that the other has just taken.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # 20 missed heartbeats: the owner is taken for gone where nothing better can be asked
BREAKING_MARKER_S = 60.0  # a breaker that died while breaking leaves a marker this old at most
TAKE_ATTEMPTS = 5
QUEUE_MEMORY_S = 5.0


@dataclass(frozen=True)
class Owner:
    """Who holds a lease. ``slurm_task`` is ``<array job>_<task>`` (or a plain job id) when the owner is
    a SLURM job; a lease written by a launcher for a task still queued has ``pid`` None. ``token``
    tells two owners apart that share everything else (a requeued task, a reused pid)."""

    host: str
    pid: int | None
    slurm_task: str | None
    started: float
    heartbeat: float
    token: str

    @classmethod
    def this_process(cls) -> "Owner":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), slurm_task_id(), now, now, uuid.uuid4().hex)

    @classmethod
    def queued_task(cls, slurm_task: str) -> "Owner":
        """The owner a launcher writes for a submitted SLURM task that has not started yet."""
        now = time.time()
        return cls(socket.gethostname(), None, slurm_task, now, now, uuid.uuid4().hex)

    def describe(self, now: float | None = None) -> str:
        """``job 14_0 on node1, 2 min ago`` or ``process 812 on laptop, 5 s ago`` (since the last heartbeat)."""
        ago = _ago((now if now is not None else time.time()) - self.heartbeat)
        if self.slurm_task is not None:
            where = "queued" if self.pid is None else f"on {self.host}"
            return f"job {self.slurm_task} {where}, {ago}"
        return f"process {self.pid} on {self.host}, {ago}"


def slurm_task_id() -> str | None:
    """This process's SLURM task as ``<array job>_<task>``, or the job id, or None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


Queue = Callable[[], "set[str] | None"]
"""The SLURM tasks still pending or running (``123_4``), or None when ``squeue`` cannot be asked."""


def squeue_tasks() -> set[str] | None:
    """This user's pending and running SLURM tasks, one id per array task, or None without squeue."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(proc.stdout.split()) if proc.returncode == 0 else None


def owner_gone(owner: Owner, queue: Queue, now: float | None = None) -> str | None:
    """Why ``owner`` is taken for gone (its lease may be broken), or None while it may still be working."""
    now = now if now is not None else time.time()
    if owner.slurm_task is not None:
        queued = queue()
        if queued is not None:
            return None if owner.slurm_task in queued else f"SLURM job {owner.slurm_task} is no longer queued or running"
    elif owner.host == socket.gethostname() and owner.pid is not None:
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return f"process {owner.pid} on {owner.host} no longer exists"
        except PermissionError:
            pass  # it exists, under another user
    if now - owner.heartbeat > STALE_AFTER_S:
        return f"its heartbeat stopped {_ago(now - owner.heartbeat)}"
    return None


class Leases:
    """The leases of one run store, in ``<store>/leases/``."""

    def __init__(self, folder: Path, queue: Queue = squeue_tasks) -> None:
        self.folder = Path(folder)
        self._ask_queue = queue
        self._asked: tuple[float, set[str] | None] | None = None

    def queue(self) -> set[str] | None:
        """The SLURM queue, asked at most once per :data:`QUEUE_MEMORY_S` (a plan may check thousands of leases)."""
        if self._asked is None or time.monotonic() - self._asked[0] > QUEUE_MEMORY_S:
            self._asked = (time.monotonic(), self._ask_queue())
        return self._asked[1]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def holder(self, key: str) -> Owner | None:
        """The owner of ``key``'s lease, or None when it has none (or it vanished while being read)."""
        try:
            return Owner(**json.loads(self.path(key).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # not a lease this code wrote: treat as held by nobody alive
            return Owner("?", None, None, 0.0, 0.0, "unreadable")

    def take(self, key: str, owner: Owner, adopt: str | None = None,
             say: Callable[[str], None] = print) -> Owner | None:
        """Take ``key``'s lease for ``owner``; returns None when taken, else the live owner holding it.

        ``adopt``: a SLURM task id whose queued lease (written at submission) this owner takes over,
        as the task itself starting (or restarting after a requeue). A lease whose owner is gone is
        broken, and ``say`` tells why.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(TAKE_ATTEMPTS):
            if self._link(key, owner):
                return None
            held = self.holder(key)
            if held is None:
                continue  # released meanwhile: try again
            if adopt is not None and held.slurm_task == adopt:
                if self._replace_if_held(key, held, owner):
                    return None
                continue
            reason = owner_gone(held, self.queue)
            if reason is None:
                return held
            if self._break(key, held):
                say(f"Broke the lease of cell {key} held by {held.describe()}: {reason}.")
        # contended throughout (taken and released again and again): leave the cell to the others
        return self.holder(key) or Owner("?", None, None, 0.0, time.time(), "contended")

    def renew(self, key: str, owner: Owner) -> Owner | None:
        """Refresh ``owner``'s heartbeat; returns the renewed owner, or None when the lease is no longer
        its own (broken by another runner that took it for gone)."""
        renewed = replace(owner, heartbeat=time.time())
        return renewed if self._replace_if_held(key, owner, renewed) else None

    def release(self, key: str, owner: Owner) -> None:
        """Drop ``owner``'s lease (another owner's is left alone)."""
        held = self.holder(key)
        if held is not None and held.token == owner.token:
            self.path(key).unlink(missing_ok=True)

    def write_queued(self, key: str, owner: Owner) -> None:
        """The launcher's lease for a cell just submitted to SLURM as task ``owner.slurm_task``. A lease
        that task already took (it started at once) is kept; any other is an earlier round's or a gone
        owner's, since the plan left out cells with a live lease, and is replaced."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._link(key, owner):
            return
        held = self.holder(key)
        if held is None or held.slurm_task != owner.slurm_task:
            self._write(self.path(key), owner)

    def running(self, keys: Iterable[str]) -> dict[str, Owner]:
        """Of ``keys``, those with a lease whose owner may still be working, with that owner."""
        live = {}
        for key in keys:
            held = self.holder(key)
            if held is not None and owner_gone(held, self.queue) is None:
                live[key] = held
        return live

    # ---------------------------------------------------------------------------------- file steps
    def _write(self, path: Path, owner: Owner) -> None:
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temporary.write_text(json.dumps(asdict(owner)))
        os.replace(temporary, path)

    def _link(self, key: str, owner: Owner) -> bool:
        """Create the lease atomically with its content; False when one exists."""
        temporary = self.folder / f".{key}.{owner.token}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(json.dumps(asdict(owner)))
        try:
            os.link(temporary, self.path(key))
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    @contextmanager
    def _breaking(self, key: str) -> Iterator[bool]:
        """Hold ``key``'s breaking marker (True), or learn that another runner holds it (False)."""
        marker = self.folder / f"{key}.breaking"
        try:
            descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime > BREAKING_MARKER_S:
                    marker.unlink(missing_ok=True)  # its breaker died while breaking
            except FileNotFoundError:
                pass
            yield False
            return
        os.close(descriptor)
        try:
            yield True
        finally:
            marker.unlink(missing_ok=True)

    def _break(self, key: str, gone: Owner) -> bool:
        """Remove the lease if it is still ``gone``'s; True when this call removed it."""
        return self._if_held(key, gone, lambda: self.path(key).unlink(missing_ok=True))

    def _replace_if_held(self, key: str, current: Owner, new: Owner) -> bool:
        """Swap ``current``'s lease for ``new`` while nobody breaks it."""
        return self._if_held(key, current, lambda: self._write(self.path(key), new))

    def _if_held(self, key: str, owner: Owner, change: Callable[[], None]) -> bool:
        """Make ``change`` to the lease under its breaking marker, if it is still ``owner``'s; True when made."""
        with self._breaking(key) as mine:
            held = self.holder(key) if mine else None
            if held is None or held.token != owner.token:
                return False
            change()
            return True


class Heartbeat:
    """Renews a lease every :data:`HEARTBEAT_S` seconds in a daemon thread while a cell runs."""

    def __init__(self, leases: Leases, key: str, owner: Owner, interval: float = HEARTBEAT_S) -> None:
        self.leases, self.key, self.owner, self.interval = leases, key, owner, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{key}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            renewed = self.leases.renew(self.key, self.owner)
            if renewed is None:
                self.lost = True
                return
            self.owner = renewed

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.leases.release(self.key, self.owner)
