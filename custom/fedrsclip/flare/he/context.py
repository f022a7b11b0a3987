"""Loading a TenSEAL context from a FLARE participant's startup kit.

FLARE's SecurityContentService reads the kit's files and checks their signature. In a provisioned kit, which is
signed as a whole, a context that was replaced or added after provisioning is refused. POC kits are not signed,
and in the simulator the file is read from the workspace's startup folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nvflare.apis.fl_context import FLContext
from nvflare.fuel.sec.security_content_service import LoadResult, SecurityContentService

from ...he import (
    CLIENT_CONTEXT_FILE,
    DEFAULT_PARAMS,
    SERVER_CONTEXT_FILE,
    CKKSParams,
    HEError,
    load_context,
    write_contexts,
)

log = logging.getLogger(__name__)

HOW_TO_MAKE = (
    "make the contexts with `fedrsclip he-context --simulator WORKSPACE` (simulator), `poc/prepare.sh N "
    "--he` (POC) or provisioning with HEBuilder (provisioning/project.yml)"
)


def load_workspace_context(file_name: str, fl_ctx: FLContext):
    """The CKKS context `file_name` of this participant's startup kit; HEError naming the path otherwise."""
    startup = Path(fl_ctx.get_engine().get_workspace().get_startup_kit_dir())
    path = startup / file_name
    data, rc = SecurityContentService.load_content(file_name)
    if rc == LoadResult.NOT_MANAGED:
        data = path.read_bytes() if path.is_file() else None
        rc = LoadResult.OK if data else LoadResult.NO_SUCH_CONTENT
    if rc == LoadResult.NO_SUCH_CONTENT:
        raise HEError(f"the CKKS job needs {path}, which is missing or empty: {HOW_TO_MAKE}")
    # A provisioned kit is signed as a whole (startup/signature.json): there a context that is not in the
    # signature, or does not match it, was put there afterwards. A POC kit is not signed at all.
    signed_kit = (startup / "signature.json").is_file()
    if rc == LoadResult.INVALID_SIGNATURE or (rc == LoadResult.NOT_SIGNED and signed_kit):
        raise HEError(
            f"{path} is not the provisioned file (its signature does not verify): re-provision the kit "
            "instead of replacing the context"
        )
    if rc not in (LoadResult.OK, LoadResult.NOT_SIGNED):
        raise HEError(f"cannot read {path}: {rc}")
    return load_context(data, str(path), need_secret=file_name == CLIENT_CONTEXT_FILE)


KEY_LOSS = (
    "a new key makes every model saved under the old one undecryptable: the global and best models "
    "(FL_global_model.npz, best_FL_global_model.npz) of every CKKS run made with it hold ciphertext that "
    "only the old key opens, so they can no longer be resumed or read"
)


def _replacing(folders: list[Path], force: bool, where: str) -> None:
    """Refuse (HEError) to replace the secret key in `folders` unless `force`; with it, say what is lost."""
    keyed = [d / CLIENT_CONTEXT_FILE for d in folders if (d / CLIENT_CONTEXT_FILE).is_file()]
    if not keyed:
        return
    if not force:
        raise HEError(
            f"{keyed[0]} already holds the federation's secret key ({len(keyed)} of {len(folders)} "
            f"{where} have one): {KEY_LOSS}; keep it, or pass --force to make a new key anyway"
        )
    log.warning("replacing the federation's secret key in %d %s (e.g. %s): %s", len(keyed), where, keyed[0], KEY_LOSS)


def prepare_simulator_contexts(
    workspace: str | Path, params: CKKSParams = DEFAULT_PARAMS, force: bool = False
) -> tuple[Path, bool]:
    """Both contexts in `<workspace>/startup/`, which the simulator copies to the server and every site (the
    simulator has no provisioning). An existing pair is kept unless `force`, so a rerun or a resumed run keeps its
    key; half a pair is refused unless `force` (the other half cannot be made from it alone). Returns (startup
    folder, whether new contexts were made)."""
    startup = Path(workspace) / "startup"
    client, server = (startup / CLIENT_CONTEXT_FILE).is_file(), (startup / SERVER_CONTEXT_FILE).is_file()
    if client and server and not force:
        return startup, False
    if client != server and not force:
        have, lacks = (
            (CLIENT_CONTEXT_FILE, SERVER_CONTEXT_FILE) if client else (SERVER_CONTEXT_FILE, CLIENT_CONTEXT_FILE)
        )
        raise HEError(
            f"{startup} holds {have} but not {lacks}: restore {lacks} from where you keep it, or pass "
            f"--force to make a new pair ({KEY_LOSS})"
        )
    _replacing([startup], force, "simulator workspace")
    write_contexts(params, [startup], [startup])
    return startup, True


def install_kit_contexts(prod_dir: str | Path, params: CKKSParams = DEFAULT_PARAMS, force: bool = False) -> list[Path]:
    """One fresh key for unsigned kits (POC): the server kit gets the keyless context, every client kit the one with
    the secret key, admin kits none. A kit is a folder with startup/fed_server.json or startup/fed_client.json.
    Refused (HEError) unless `force`: kits that already hold a key (a new key makes every model saved under the old
    one undecryptable), and a server kit holding a secret-key context (it is then removed: a server must never
    have one)."""
    prod = Path(prod_dir)
    if not prod.is_dir():
        raise HEError(f"{prod} is not a folder: give the prod_NN folder of a POC workspace")
    servers = [d / "startup" for d in sorted(prod.iterdir()) if (d / "startup" / "fed_server.json").is_file()]
    clients = [d / "startup" for d in sorted(prod.iterdir()) if (d / "startup" / "fed_client.json").is_file()]
    if not servers or not clients:
        raise HEError(
            f"{prod} holds no server or no client startup kit (startup/fed_server.json, "
            "startup/fed_client.json): give the prod_NN folder of a POC or provisioned workspace"
        )
    signed = [d for d in servers + clients if (d / "signature.json").is_file()]
    if signed:
        raise HEError(
            f"{signed[0].parent} is a signed (provisioned) kit: replacing its context would break the "
            "signature; set the CKKS parameters in provisioning/project.yml (HEBuilder) and re-provision"
        )
    leaked = [d / CLIENT_CONTEXT_FILE for d in servers if (d / CLIENT_CONTEXT_FILE).is_file()]
    if leaked and not force:
        raise HEError(
            f"the server kit holds {leaked[0]}, a secret-key context that a server must never have: move "
            "it away (it may be the only copy of a key), or pass --force to have it deleted"
        )
    _replacing(clients, force, "site kits")
    write_contexts(params, clients, servers)
    for path in leaked:  # --force: the server must not keep a secret-key context from an earlier preparation
        path.unlink()
        log.warning("deleted %s: a server must never hold the secret key", path)
    return servers + clients
