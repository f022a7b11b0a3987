"""poc/: a real FLARE POC deployment on this machine (server + 2 sites on localhost), the job submitted three ways.

The fast test only prepares a workspace. The slow ones start the system (ports 8002/8003 must be free: skipped
otherwise), submit the job with the FLARE Python API, `nvflare job submit` and the admin console, check the
downloaded results, and stop everything they started: `poc/stop.sh`, then any process still carrying this test's
marker is killed by its id (and the test fails, naming it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedrsclip.flare.job import job_settings

REPO = Path(__file__).resolve().parents[1]
POC = REPO / "poc"
SITES, ROUNDS = 2, 2
FAST = ["--set", "data.synthetic_per_class=40"]  # a smaller synthetic dataset: the same code path, quicker
PORTS = (8002, 8003)  # FLARE's POC server port, and the admin port `nvflare poc start` checks too
MARKER = "FEDRSCLIP_POC_TEST"


def poc_env(ws: Path, home: Path, marker: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NVFLARE_STARTUP_KIT_DIR",)}
    env.update(
        {
            "NVFLARE_POC_WORKSPACE": str(ws),
            "HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "POC_JOB_TIMEOUT": "900",
            "POC_START_TIMEOUT": "240",
            MARKER: marker,
        }
    )
    home.mkdir(parents=True, exist_ok=True)  # `nvflare poc prepare` registers its kits in ~/.nvflare
    return env


def run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def admin_kit(ws: Path, name: str = "admin@nvidia.com") -> Path:
    return ws / "example_project" / "prod_00" / name


# ---- without starting anything --------------------------------------------------------------------------------
def test_scripts_are_strict_bash():
    for script in sorted(POC.glob("*.sh")):
        text = script.read_text()
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        if script.name != "env.sh":  # sourced by the others
            assert "set -euo pipefail" in text and os.access(script, os.X_OK), script


def test_prepare_makes_kits_and_the_job_variant(tmp_path):
    ws = tmp_path / "ws"
    env = poc_env(ws, tmp_path / "home")
    proc = run([POC / "prepare.sh", "3", "--he", "--rounds", "4", "--set", "train.lr=0.01"], env, 300)
    assert proc.returncode == 0, output(proc)
    prod = ws / "example_project" / "prod_00"
    for site in ("site-1", "site-2", "site-3"):
        assert (prod / site / "startup" / "fed_client.json").is_file()
        assert (prod / site / "startup" / "client_context.tenseal").is_file()  # --he
    assert (prod / "server" / "startup" / "server_context.tenseal").is_file()
    assert not (prod / "server" / "startup" / "client_context.tenseal").exists()  # the server gets no secret key
    assert job_settings(ws / "jobs" / "fedrsclip-he")["he"] and not job_settings(ws / "jobs" / "fedrsclip")["he"]
    server = json.loads((prod / "server" / "startup" / "fed_server.json").read_text())
    assert server["servers"][0]["service"]["target"] == "localhost:8002"  # binds the loopback interface only
    job = ws / "jobs" / "fedrsclip"
    meta = json.loads((job / "meta.json").read_text())
    settings = job_settings(job)
    assert meta["min_clients"] == settings["min_clients"] == 3 and settings["num_rounds"] == 4
    assert settings["overrides"] == ["data.synthetic_sites=3", "train.lr=0.01"]
    assert (
        meta["name"] == "fedrsclip"
        and json.loads((ws / "jobs" / "fedrsclip-he" / "meta.json").read_text())["name"] == "fedrsclip-he"
    )
    assert (job / "app" / "custom").is_dir()  # BYOC: FLARE then accepts the fedrsclip.flare.* components
    # the kits are registered in the (here: temporary) home, not in the user's
    assert str(ws) in (tmp_path / "home" / ".nvflare" / "config.conf").read_text()
    usage = run([POC / "prepare.sh"], env, 60)
    assert usage.returncode == 2 and "prepare.sh N" in usage.stderr


# ---- a running POC system --------------------------------------------------------------------------------------
def port_taken(port: int) -> str | None:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                return f"port {port} is in use on {host} ({exc.strerror}): another FLARE POC or server runs here"
    return None


def our_processes(marker: str, ws: Path) -> dict[int, str]:
    """Processes this test started: they carry its marker in their environment or its workspace in their
    command line (FLARE's job processes get the workspace path as arguments)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{MARKER}={marker}".encode() in environ or str(ws) in cmdline:
            found[int(entry.name)] = cmdline
    return found


def listening_sockets(pids) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """The (address, port) pairs on which `pids` listen (TCP, IPv4 and IPv6)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((ipaddress.ip_address(raw), int(port, 16)))
    return found


def is_loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.fixture(scope="module")
def poc(tmp_path_factory):
    for port in PORTS:
        reason = port_taken(port)
        if reason:
            pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("poc")
    ws, marker = tmp / "ws", uuid.uuid4().hex
    env = poc_env(ws, tmp / "home", marker)
    log = []
    try:
        proc = run([POC / "prepare.sh", str(SITES), "--he", "--rounds", str(ROUNDS), *FAST], env, 300)
        log.append(output(proc))
        assert proc.returncode == 0, output(proc)
        started = time.time()
        proc = run([POC / "start.sh"], env, 400)
        log.append(output(proc))
        assert proc.returncode == 0, output(proc)
        print(f"POC started in {time.time() - started:.0f}s")
        yield {"ws": ws, "env": env, "marker": marker, "log": log}
    finally:
        stop = run([POC / "stop.sh"], env, 300) if (ws / "project.yml").is_file() else None
        time.sleep(2)
        leftover = our_processes(marker, ws)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 20
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in leftover):
            time.sleep(0.5)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert stop is None or stop.returncode == 0, output(stop)
        assert not leftover, f"processes left running after poc/stop.sh (killed now): {leftover}"


def check_results(proc: subprocess.CompletedProcess, ws: Path) -> tuple[Path, dict]:
    assert proc.returncode == 0, output(proc)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("results: "), output(proc)
    path = Path(line[len("results: ") :])
    job_id = path.relative_to(ws / "results").parts[0]
    assert path == ws / "results" / job_id / "workspace" / "app_server" / "fedrsclip_results.json"
    results = json.loads(path.read_text())
    assert results["status"] == "finished" and results["errors"] == [], results
    assert results["job_id"] == job_id and results["num_rounds"] == ROUNDS
    assert results["sites"] == [f"site-{i}" for i in range(1, SITES + 1)]
    assert [r["round"] for r in results["rounds"]] == list(range(1, ROUNDS + 1))
    for record in results["rounds"]:
        assert record["missing"] == [] and set(record["sites"]) == set(results["sites"])
    meta = json.loads((ws / "results" / job_id / "workspace" / "meta.json").read_text())  # as the job started
    assert meta["byoc"] is True and meta["min_clients"] == SITES  # app/custom/ survived the submission
    return path, results


@pytest.mark.slow
def test_poc_listens_on_localhost_only(poc):
    pids = our_processes(poc["marker"], poc["ws"])
    assert pids, "no POC process found"
    sockets = listening_sockets(pids)
    assert (ipaddress.ip_address("127.0.0.1"), 8002) in sockets, sockets
    assert all(is_loopback(address) for address, _ in sockets), sockets


@pytest.mark.slow
def test_submit_with_the_python_api(poc):
    started = time.time()
    proc = run([POC / "submit.sh", "api"], poc["env"], 1000)
    path, results = check_results(proc, poc["ws"])
    assert proc.stdout.startswith("job_id: ") or "\njob_id: " in proc.stdout
    print(f"api: {time.time() - started:.0f}s, {path}")


@pytest.mark.slow
def test_submit_with_nvflare_job_submit(poc, tmp_path):
    started = time.time()
    proc = run([POC / "submit.sh", "cli"], poc["env"], 1000)
    path, _ = check_results(proc, poc["ws"])
    print(f"cli: {time.time() - started:.0f}s, {path}")
    download = path.parents[2]  # results/<job id>: what `nvflare job download` wrote
    # README (TensorBoard): the downloaded result holds the server's events, one folder per site
    events = download / "workspace" / "tb_events"
    assert sorted(p.name for p in events.iterdir()) == [f"site-{i}" for i in range(1, SITES + 1)]
    # README (POC): `fedrsclip report` on the download prints the table and writes the figures next to the file
    report = run([sys.executable, "-m", "fedrsclip.cli", "report", download], poc["env"], 300)
    assert report.returncode == 0, output(report)
    assert (path.parent / "accuracy_per_round.png").is_file() and (path.parent / "per_site_accuracy.png").is_file()


@pytest.mark.slow
def test_preflight_check_passes_for_the_admin_kit_while_the_server_runs(poc):
    """provisioning/README.md: what each participant runs to check its kit, and what success looks like."""
    proc = preflight_check(poc, "admin@nvidia.com")
    assert proc.returncode == 0 and "overall: pass" in proc.stdout, output(proc)
    assert "Check server available" in proc.stdout and "PASSED" in proc.stdout


def preflight_check(poc, kit: str) -> subprocess.CompletedProcess:
    nvflare = str(Path(sys.executable).with_name("nvflare"))
    env = {**poc["env"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # activated
    return run([nvflare, "preflight-check", "-p", poc["ws"] / "example_project" / "prod_00" / kit], env, 300)


@pytest.mark.slow
def test_submit_the_ckks_job(poc):
    """The CKKS variant on the same running system: the kits' contexts (server: keyless) are what it uses."""
    started = time.time()
    proc = run([POC / "submit.sh", "cli", poc["ws"] / "jobs" / "fedrsclip-he"], poc["env"], 1000)
    path, results = check_results(proc, poc["ws"])
    for record in results["rounds"]:
        assert all(60_000 < v["bytes_up"] < 100 * 1024 for v in record["sites"].values())  # ciphertext
    server_log = (path.parents[1] / "log.txt").read_text(errors="replace")
    assert server_log.count("added the encrypted update of site-") == SITES * ROUNDS
    print(f"ckks: {time.time() - started:.0f}s, {path}")


@pytest.mark.slow
def test_submit_with_the_admin_console(poc):
    started = time.time()
    proc = run([POC / "submit.sh", "admin"], poc["env"], 1000)
    path, _ = check_results(proc, poc["ws"])
    assert "Submitted job:" in proc.stdout
    print(f"admin: {time.time() - started:.0f}s, {path}")


@pytest.mark.slow
def test_org_admin_may_not_submit_but_a_lead_may(poc):
    ws, env = poc["ws"], poc["env"]
    nvflare = [str(Path(sys.executable).with_name("nvflare")), "--format", "json"]
    refused = run([POC / "submit.sh", "cli"], {**env, "POC_ADMIN": "org-admin@nvidia.com"}, 120)
    assert refused.returncode != 0, output(refused)
    assert "AUTH" in refused.stderr or "not authorized" in refused.stderr, output(refused)
    lead = admin_kit(ws, "lead@nvidia.com")
    accepted = run([*nvflare, "job", "submit", "-j", ws / "jobs" / "fedrsclip", "--startup-kit", lead], env, 120)
    assert accepted.returncode == 0, output(accepted)
    job_id = json.loads(accepted.stdout)["data"]["job_id"]
    aborted = run([*nvflare, "job", "abort", job_id, "--force", "--startup-kit", lead], env, 120)
    assert aborted.returncode == 0, output(aborted)


# Last in this file on purpose: a site kit's dry run registers under the site's name, and the running client of
# that kit is locked out ("already registered with another token") until the server drops the stale registration,
# minutes later; a job submitted meanwhile waits for it (provisioning/README.md: check a site kit before starting it).
@pytest.mark.slow
def test_preflight_check_passes_for_a_site_kit(poc):
    proc = preflight_check(poc, "site-1")
    assert proc.returncode == 0 and "overall: pass" in proc.stdout, output(proc)
    assert "Check server available" in proc.stdout and "PASSED" in proc.stdout
