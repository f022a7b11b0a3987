"""provisioning/: project.yml provisions, with provisioning/provision.sh, a kit for every participant with its
certificate and key, signed startup files, and the TenSEAL contexts (secret key at the sites only)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "provisioning" / "project.yml"


@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("provision")
    env = {**os.environ, "HOME": str(ws / "home")}  # nothing may land in the user's ~/.nvflare
    proc = subprocess.run(
        [str(REPO / "provisioning" / "provision.sh"), str(ws / "ws")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prods = sorted((ws / "ws" / "fedrsclip").glob("prod_*"))
    assert len(prods) == 1, prods
    return prods[0]


def participants() -> list[dict]:
    return yaml.safe_load(PROJECT.read_text())["participants"]


def of_type(kind: str) -> list[dict]:
    return [p for p in participants() if p["type"] == kind]


def test_project_file_roles_and_builders():
    project = yaml.safe_load(PROJECT.read_text())
    assert project["api_version"] == 3
    builders = [b["path"].rsplit(".", 1)[1] for b in project["builders"]]
    assert builders == ["WorkspaceBuilder", "StaticFileBuilder", "CertBuilder", "HEBuilder", "SignatureBuilder"]
    he = next(b for b in project["builders"] if b["path"].endswith("HEBuilder"))["args"]
    from fedrsclip.he import DEFAULT_PARAMS  # the kits' contexts have the parameters the project chose

    assert he == {
        "poly_modulus_degree": DEFAULT_PARAMS.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(DEFAULT_PARAMS.coeff_mod_bit_sizes),
        "scale_bits": DEFAULT_PARAMS.scale_bits,
        "scheme": "CKKS",
    }
    assert len(of_type("server")) == 1
    clients = of_type("client")
    assert len({c["org"] for c in clients}) == len(clients) == 3  # one org per institution
    roles = {a["name"]: a["role"] for a in of_type("admin")}
    assert list(roles.values()).count("project_admin") == 1
    # every institution has a lead, who may submit this BYOC job
    assert {c["org"] for c in clients} <= {a["org"] for a in of_type("admin") if a["role"] == "lead"}


def test_every_participant_has_its_certificate_and_key(kits):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    root = x509.load_pem_x509_certificate((kits / participants()[0]["name"] / "startup" / "rootCA.pem").read_bytes())
    cert_name = {"server": "server", "client": "client", "admin": "client"}
    for p in participants():
        startup = kits / p["name"] / "startup"
        crt, key = startup / f"{cert_name[p['type']]}.crt", startup / f"{cert_name[p['type']]}.key"
        assert crt.is_file() and key.is_file() and (startup / "rootCA.pem").is_file(), p["name"]
        assert (startup / "rootCA.pem").read_bytes() == (
            kits / participants()[0]["name"] / "startup" / "rootCA.pem"
        ).read_bytes()
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        common_name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert common_name == p["name"]
        org = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
        assert org == p["org"]
        root.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
        )  # issued by this project's root CA
        private = load_pem_private_key(key.read_bytes(), password=None)
        assert private.public_key().public_numbers() == cert.public_key().public_numbers()  # the matching key
    for admin in of_type("admin"):  # the role is in the admin's certificate (what authorization.json checks)
        cert = x509.load_pem_x509_certificate((kits / admin["name"] / "startup" / "client.crt").read_bytes())
        values = [a.value for a in cert.subject]
        assert admin["role"] in values, (admin, values)


def test_startup_files_including_he_contexts_are_signed(kits):
    from nvflare.lighter.utils import verify_folder_signature

    for p in of_type("server") + of_type("client"):
        startup = kits / p["name"] / "startup"
        signed = json.loads((startup / "signature.json").read_text())
        context = "server_context.tenseal" if p["type"] == "server" else "client_context.tenseal"
        assert context in signed, "HEBuilder must run before SignatureBuilder"
        # what `startup/start.sh --verify` runs (nvflare.tool.verify_startup_kits)
        assert verify_folder_signature(
            str(startup), str(startup / "rootCA.pem"), single_signer=True, signature_file="signature.json"
        ), p["name"]


def test_he_contexts_secret_key_only_at_the_sites(kits):
    import tenseal as ts

    server = of_type("server")[0]["name"]
    server_bytes = (kits / server / "startup" / "server_context.tenseal").read_bytes()
    assert not (kits / server / "startup" / "client_context.tenseal").exists()
    client_bytes = [(kits / c["name"] / "startup" / "client_context.tenseal").read_bytes() for c in of_type("client")]
    assert len(set(client_bytes)) == 1  # one context shared by every site
    for c in of_type("client"):
        assert not (kits / c["name"] / "startup" / "server_context.tenseal").exists()
    for a in of_type("admin"):
        assert not list((kits / a["name"] / "startup").glob("*.tenseal"))
    client, server_ctx = ts.context_from(client_bytes[0]), ts.context_from(server_bytes)
    assert client.is_private() and client.has_secret_key()
    assert not server_ctx.is_private() and not server_ctx.has_secret_key()

    # the CKKS job's protocol with the provisioned contexts: sites encrypt Enc(n_k x_k), the server adds without
    # being able to decrypt, a site decrypts the sample-weighted mean
    from fedrsclip.he import EncryptedSum, decrypt_average, encrypt_update, load_context

    site_ctx = load_context(client_bytes[0], "client_context.tenseal", need_secret=True)
    server_he = load_context(server_bytes, "server_context.tenseal", need_secret=False)
    x = [np.linspace(-1, 1, 2048).reshape(4, 512), np.full((4, 512), 0.25)]
    total = EncryptedSum(server_he)
    for k, (values, weight) in enumerate(zip(x, (30.0, 10.0))):
        update = encrypt_update(site_ctx, {"shared_ctx": values}, weight)
        assert update.nbytes < 100 * 1024  # HEBuilder's N=4096 in project.yml: one ciphertext
        total.add(update, f"site-{k + 1}")
    with pytest.raises(Exception):
        ts.ckks_vector_from(server_ctx, total.result().vectors["shared_ctx"]).decrypt()
    mean = decrypt_average(site_ctx, total.result(), "global")["shared_ctx"]
    assert np.abs(mean - (30 * x[0] + 10 * x[1]) / 40).max() < 1e-5


def test_default_authorization_matches_the_roles_in_project_yml(kits):
    """The comments in project.yml: lead may submit this BYOC job, org_admin may not."""
    for p in of_type("server") + of_type("client"):
        policy = json.loads((kits / p["name"] / "local" / "authorization.json.default").read_text())["permissions"]
        assert policy["project_admin"] == "any"
        assert policy["lead"]["submit_job"] == "any" and policy["lead"]["byoc"] == "any"
        assert policy["org_admin"]["submit_job"] == "none" and policy["org_admin"]["byoc"] == "none"


def test_kits_point_at_the_server(kits):
    server = of_type("server")[0]
    for c in of_type("client"):
        config = json.loads((kits / c["name"] / "startup" / "fed_client.json").read_text())
        assert config["servers"][0]["service"]["target"] == f"{server['name']}:{server['fed_learn_port']}"
        assert config["client"]["fqsn"] == c["name"]
    for a in of_type("admin"):
        admin = json.loads((kits / a["name"] / "startup" / "fed_admin.json").read_text())["admin"]
        assert (admin["host"], admin["port"], admin["username"]) == (
            server["name"],
            server["fed_learn_port"],
            a["name"],
        )


def test_the_readmes_job_command_runs_as_written(tmp_path, monkeypatch):
    """provisioning/README.md's `fedrsclip job` command (the deployment's CKKS job) passes the same checks as every
    job, and writes what it says: 3 sites, CKKS, ViT-B-16 with weights the sites name locally."""
    import shlex

    from fedrsclip.cli import main
    from fedrsclip.flare.job import job_settings

    text = (REPO / "provisioning" / "README.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("fedrsclip job ")]
    assert commands
    monkeypatch.chdir(tmp_path)  # the command's relative --out lands here
    for command in commands:
        args = shlex.split(command)[1:]
        assert main(args) == 0, command
        out = tmp_path / args[args.index("--out") + 1]
        settings = job_settings(out)
        assert settings["min_clients"] == 3 and settings["he"] == ("--he" in args)
        weights = {"model.arch=ViT-B-16", "model.pretrained=openai", "model.random_init=false"}
        assert weights <= set(settings["overrides"])


def test_the_kit_checks_the_readme_prescribes(kits):
    """provisioning/README.md step 2: the signature check passes for the server and the sites and fails, without a
    message, for admin kits (not signed); the server's preflight check passes before it starts."""
    import sys

    verify = [sys.executable, "-m", "nvflare.tool.verify_startup_kits", "-f", "startup", "-c", "startup/rootCA.pem"]
    for participant in participants():
        proc = subprocess.run(verify, cwd=kits / participant["name"], capture_output=True, text=True, timeout=120)
        expected = 1 if participant["type"] == "admin" else 0
        assert proc.returncode == expected, (participant["name"], proc.stdout, proc.stderr)
        assert proc.stdout == ""
    from test_poc import port_taken

    port = of_type("server")[0]["fed_learn_port"]
    if port_taken(port):  # the preflight check binds it: another POC on this machine would fail it
        pytest.skip(port_taken(port))
    server = kits / of_type("server")[0]["name"]
    nvflare = str(Path(sys.executable).with_name("nvflare"))
    proc = subprocess.run(
        [nvflare, "preflight-check", "-p", str(server)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(kits.parent / "home")},
    )
    assert proc.returncode == 0 and "overall: pass" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 5
