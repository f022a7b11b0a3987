"""Server-side CKKS aggregation: the sum of the sites' ciphertexts Enc(n_k * x_k) and of their weights n_k.

The server loads only the keyless context (`server_context.tenseal`; a context holding the secret key is refused),
so it can add the sites' ciphertexts but never decrypt them. The gate of flare/aggregator.py applies as in plaintext
(round, once per site, class list, min_clients); what it can check of a ciphertext is checked too: it must be
ciphertext (plaintext is rejected, never averaged), with as many encrypted values as its shape needs, of the
shapes of the previous global model and of the majority, under the majority's key, and with the weight its
plaintext sample count claims. In a multi-modal federation each modality's adapter is summed within its group, with
the group's own total weight (`fedrsclip.he`).
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from ...he import HEADER_KEY, SERVER_CONTEXT_FILE, EncryptedSum, EncryptedUpdate, HEError
from ...protocol import ContributionError, signature_shapes, site_order
from ..aggregator import GatedAggregator, Held, global_weights
from .context import load_workspace_context


class CKKSAggregator(GatedAggregator):
    def __init__(self, min_clients: int = 1, context_file: str = SERVER_CONTEXT_FILE):
        super().__init__(min_clients)
        self.context_file = context_file
        self._ctx = None

    def _context(self, fl_ctx: FLContext):
        if self._ctx is None:
            self._ctx = load_workspace_context(self.context_file, fl_ctx)
            self.log_info(
                fl_ctx, f"CKKS aggregation with {self.context_file} (no secret key: this server cannot decrypt)"
            )
        return self._ctx

    def _inspect(self, dxo: DXO, site: str, fl_ctx: FLContext) -> Any:
        source = f"the update from {site}"
        try:
            update = EncryptedUpdate.from_data(dxo.data or {}, source)
            claimed = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
            if claimed is None or abs(float(claimed) - update.weight) > 1e-6 * max(1.0, update.weight):
                raise HEError(f"encrypted with weight {update.weight:g} but reports {claimed} training samples")
            previous = global_weights(fl_ctx)
            expected = (
                EncryptedUpdate.from_data(previous, "the global model").shapes if HEADER_KEY in previous else None
            )
            EncryptedSum(self._context(fl_ctx)).check(update, source, expected)  # deserializes, counts the values
        except HEError as exc:
            raise ContributionError(str(exc)) from None
        return (signature_shapes(update.shapes), update.key_id)  # the same whatever modalities a site holds

    def _combine(self, held: dict[str, Held], fl_ctx: FLContext) -> tuple[list[str], Shareable]:
        total = EncryptedSum(self._context(fl_ctx))
        accepted = []
        for site in sorted(held, key=site_order):
            update = EncryptedUpdate.from_data(from_shareable(held[site][0]).data, f"the update from {site}")
            total.add(update, f"the update from {site}")
            accepted.append(site)
            self.log_info(
                fl_ctx,
                f"added the encrypted update of {site} (weight {update.weight:g}, "
                f"{update.nbytes:,} bytes) without decrypting it",
            )
        result = total.result()
        self.log_info(
            fl_ctx,
            f"aggregated {result.contributions} encrypted updates (total weight "
            f"{result.weight:g}): {result.nbytes:,} bytes of ciphertext",
        )
        return accepted, DXO(DataKind.WEIGHTS, data=result.to_data()).to_shareable()
