"""Loading a TenSEAL context from a FLARE participant's startup kit.

FLARE's SecurityContentService reads the kit's files and checks their signature. In a provisioned kit, which is
signed as a whole, a context that was replaced or added after provisioning is refused. POC kits are not signed,
and in the simulator the file is read from the workspace's startup folder.
"""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.fl_context import FLContext
from nvflare.fuel.sec.security_content_service import LoadResult, SecurityContentService

from ...he import (CLIENT_CONTEXT_FILE, DEFAULT_PARAMS, SERVER_CONTEXT_FILE, CKKSParams, HEError, load_context,
                  write_contexts)

HOW_TO_MAKE = ("make the contexts with `fedrsclip he-context --simulator WORKSPACE` (simulator), `poc/prepare.sh N "
               "--he` (POC) or provisioning with HEBuilder (provisioning/project.yml)")


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
        raise HEError(f"{path} is not the provisioned file (its signature does not verify): re-provision the kit "
                      "instead of replacing the context")
    if rc not in (LoadResult.OK, LoadResult.NOT_SIGNED):
        raise HEError(f"cannot read {path}: {rc}")
    return load_context(data, str(path), need_secret=file_name == CLIENT_CONTEXT_FILE)


def prepare_simulator_contexts(workspace: str | Path, params: CKKSParams = DEFAULT_PARAMS,
                               replace: bool = False) -> tuple[Path, bool]:
    """Both contexts in `<workspace>/startup/`, which the simulator copies to the server and every site (the
    simulator has no provisioning). An existing pair is kept unless `replace`, so a rerun or a resumed run keeps
    its key. Returns (startup folder, whether new contexts were made)."""
    startup = Path(workspace) / "startup"
    have = (startup / CLIENT_CONTEXT_FILE).is_file() and (startup / SERVER_CONTEXT_FILE).is_file()
    if have and not replace:
        return startup, False
    write_contexts(params, [startup], [startup])
    return startup, True


def install_kit_contexts(prod_dir: str | Path, params: CKKSParams = DEFAULT_PARAMS,
                         replace: bool = False) -> list[Path]:
    """One fresh key for unsigned kits (POC): the server kit gets the keyless context, every client kit the one with
    the secret key, admin kits none. A kit is a folder with startup/fed_server.json or startup/fed_client.json.
    Kits that already hold a key keep it unless `replace`: a new key makes every model saved under the old one
    undecryptable."""
    prod = Path(prod_dir)
    if not prod.is_dir():
        raise HEError(f"{prod} is not a folder: give the prod_NN folder of a POC workspace")
    servers = [d / "startup" for d in sorted(prod.iterdir()) if (d / "startup" / "fed_server.json").is_file()]
    clients = [d / "startup" for d in sorted(prod.iterdir()) if (d / "startup" / "fed_client.json").is_file()]
    if not servers or not clients:
        raise HEError(f"{prod} holds no server or no client startup kit (startup/fed_server.json, "
                      "startup/fed_client.json): give the prod_NN folder of a POC or provisioned workspace")
    signed = [d for d in servers + clients if (d / "signature.json").is_file()]
    if signed:
        raise HEError(f"{signed[0].parent} is a signed (provisioned) kit: replacing its context would break the "
                      "signature; set the CKKS parameters in provisioning/project.yml (HEBuilder) and re-provision")
    keyed = [d for d in clients if (d / CLIENT_CONTEXT_FILE).is_file()]
    if keyed and not replace:
        raise HEError(f"{keyed[0] / CLIENT_CONTEXT_FILE} already holds the federation's secret key ({len(keyed)} of "
                      f"{len(clients)} site kits have one): a new key makes every model saved under it undecryptable; "
                      "pass --replace to make a new key anyway")
    write_contexts(params, clients, servers)
    for folder in servers:  # the server must not keep a secret-key context from an earlier preparation
        (folder / CLIENT_CONTEXT_FILE).unlink(missing_ok=True)
    return servers + clients
