"""Memory of a simulator run, sampled while it runs: the whole machine and each process of the run's tree.

Per process: RSS (what `top` shows; shared pages - libraries, the memory-mapped text tower - count in every
process that maps them) and PSS (shared pages divided among the processes that map them: the PSS of a tree adds up
to the memory it really takes). FLARE's simulator runs the server and its client threads in its own process and
each site's tasks in `simulator_worker` processes (named by `--client site-k`); with fewer threads than sites a
site's process ends after each task and a new one starts.
"""

from __future__ import annotations

import threading
from typing import Any

import psutil

MB = 1024 * 1024


def _site_of(cmdline: list[str]) -> str | None:
    if "--client" in cmdline and any("simulator_worker" in part for part in cmdline):
        index = cmdline.index("--client") + 1
        return cmdline[index] if index < len(cmdline) else None
    return None


class MemoryWatch:
    """Samples every `interval` seconds, in a thread, from `start()` to `stop()`: the machine's used memory (total -
    available), and RSS and PSS of the process `pid` and its descendants, per site and in sum.

    Peaks are of the sampled values: a peak shorter than the interval can be missed (the per-site peak RSS also
    reads each process's own high-water mark, VmHWM, which misses nothing)."""

    def __init__(self, pid: int, interval: float = 1.0):
        self.root, self.interval = psutil.Process(pid), interval
        self.baseline_used_mb = self._used_mb()
        self.peak_used_mb = self.baseline_used_mb
        self.peak_tree_pss_mb = self.peak_tree_rss_mb = 0.0
        self.sites: dict[str, dict[str, float]] = {}
        self.server: dict[str, float] = {"rss_mb": 0.0, "pss_mb": 0.0}
        self.samples = 0
        self.max_site_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _used_mb() -> float:
        vm = psutil.virtual_memory()
        return (vm.total - vm.available) / MB

    def start(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return self.summary()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        tree_rss = tree_pss = 0.0
        site_procs = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
                cmdline = proc.cmdline()
                hwm = _vmhwm_mb(proc.pid)
            except psutil.Error:
                continue  # ended meanwhile
            rss, pss = info.rss / MB, getattr(info, "pss", info.rss) / MB
            tree_rss, tree_pss = tree_rss + rss, tree_pss + pss
            site = _site_of(cmdline)
            if site is None:
                if proc.pid == self.root.pid:
                    self.server = {"rss_mb": max(self.server["rss_mb"], rss), "pss_mb": max(self.server["pss_mb"], pss)}
                continue
            site_procs += 1
            peak = self.sites.setdefault(site, {"rss_mb": 0.0, "pss_mb": 0.0, "uss_mb": 0.0, "vmhwm_mb": 0.0})
            peak["rss_mb"] = max(peak["rss_mb"], rss)
            peak["pss_mb"] = max(peak["pss_mb"], pss)
            peak["uss_mb"] = max(peak["uss_mb"], getattr(info, "uss", info.rss) / MB)
            peak["vmhwm_mb"] = max(peak["vmhwm_mb"], hwm or 0.0)
        self.samples += 1
        self.max_site_processes = max(self.max_site_processes, site_procs)
        self.peak_tree_rss_mb = max(self.peak_tree_rss_mb, tree_rss)
        self.peak_tree_pss_mb = max(self.peak_tree_pss_mb, tree_pss)
        self.peak_used_mb = max(self.peak_used_mb, self._used_mb())

    def summary(self) -> dict[str, Any]:
        sites = self.sites
        worst = max(sites.values(), key=lambda s: s["vmhwm_mb"], default=None)
        return {
            "machine_used_mb_before": self.baseline_used_mb,
            "machine_used_mb_peak": self.peak_used_mb,
            "machine_used_mb_added_peak": self.peak_used_mb - self.baseline_used_mb,
            "run_pss_mb_peak": self.peak_tree_pss_mb,
            "run_rss_mb_peak": self.peak_tree_rss_mb,
            "server_process": self.server,
            "site_processes_at_once_max": self.max_site_processes,
            "site_peak_vmhwm_mb_max": worst["vmhwm_mb"] if worst else None,
            "site_peak_pss_mb_max": max((s["pss_mb"] for s in sites.values()), default=None),
            "site_peak_uss_mb_max": max((s["uss_mb"] for s in sites.values()), default=None),
            "sites": sites,
            "samples": self.samples,
            "interval_s": self.interval,
            "how": "sampled every interval: machine = MemTotal - MemAvailable (other programs included); run = the "
            "simulator's process tree (server + site workers): sum of RSS, and of PSS (shared pages counted "
            "once); per site: the largest RSS, PSS, USS sampled and the process's own VmHWM",
        }


def _vmhwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
