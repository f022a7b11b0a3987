"""Site-side CKKS filters: the shared-prompt update is encrypted as the last step before it leaves the site, and the
aggregate is decrypted as the first step when it arrives. The executor in between sees plaintext only.

Encryption comes after everything the site does to its update (the allow-list check and the optional DP noise run
inside the executor's training step), so what leaves is Enc(n_k * update) and nothing else; the round record in the
DXO meta (metrics, sample count: plaintext, see the README's threat model) gets the ciphertext's size as bytes_up.
A plaintext model arriving where ciphertext is expected, a context without the secret key, or an aggregate made
under another key stop the task with an error naming the file: there is no plaintext fallback.
"""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from ...he import CLIENT_CONTEXT_FILE, HEADER_KEY, EncryptedUpdate, HEError, decrypt_average, encrypt_update
from ...protocol import ContributionError, RoundRecord, payload_nbytes
from ..constants import ERROR_HEADER, ERROR_KIND_HEADER, META_KEY
from .context import load_workspace_context

ENCRYPTION = "ckks"
ERROR_KIND = "he"


class _CKKSFilter(DXOFilter):
    def __init__(self, context_file: str = CLIENT_CONTEXT_FILE):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        self.context_file = context_file
        self._ctx = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.END_RUN:
            self._ctx = None

    def context(self, fl_ctx: FLContext):
        if self._ctx is None:
            self._ctx = load_workspace_context(self.context_file, fl_ctx)
        return self._ctx


class CKKSEncryptor(_CKKSFilter):
    """Task result filter (train): the update becomes Enc(n_k * update), n_k the training samples."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            return super().process(shareable, fl_ctx)
        except HEError as exc:  # reply with the reason (for the server's results file) and no data at all
            message = f"{fl_ctx.get_identity_name()}: {exc}"
            self.log_error(fl_ctx, f"CKKS encryption failed, nothing is sent: {message}")
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_cookie_jar(shareable.get_cookie_jar())
            reply.set_header(ERROR_HEADER, message)
            reply.set_header(ERROR_KIND_HEADER, ERROR_KIND)
            return reply

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        site = fl_ctx.get_identity_name()
        if HEADER_KEY in dxo.data:
            raise RuntimeError(f"{site}: the update is already encrypted; put CKKSEncryptor once, last in the chain")
        weight = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if not weight:
            raise RuntimeError(f"{site}: the update carries no {MetaKey.NUM_STEPS_CURRENT_ROUND}: cannot weight it")
        try:
            record = RoundRecord.from_wire(dxo.get_meta_prop(META_KEY))
        except ContributionError as exc:
            raise RuntimeError(f"{site}: the update carries no valid round record ({exc})") from None
        update = encrypt_update(self.context(fl_ctx), dxo.data, float(weight))
        record.bytes_up, record.bytes_up_plain, record.encryption = update.nbytes, payload_nbytes(dxo.data), ENCRYPTION
        meta = {**(dxo.meta or {}), META_KEY: record.check().to_wire()}
        self.log_info(
            fl_ctx,
            f"{site}: shared-prompt update encrypted (CKKS, weight {weight:g}): "
            f"{update.nbytes:,} bytes of ciphertext for {payload_nbytes(dxo.data):,} bytes of values",
        )
        return DXO(DataKind.WEIGHTS, data=update.to_data(), meta=meta)


class CKKSDecryptor(_CKKSFilter):
    """Task data filter (train, validate): the encrypted aggregate becomes the plaintext sample-weighted mean."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            return super().process(shareable, fl_ctx)
        except HEError as exc:  # the executor fails the task with this reason (it never reads the model then)
            message = f"{fl_ctx.get_identity_name()}: {exc}"
            self.log_error(fl_ctx, f"CKKS decryption failed: {message}")
            shareable.set_header(ERROR_HEADER, message)
            shareable.set_header(ERROR_KIND_HEADER, ERROR_KIND)
            return shareable

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        site = fl_ctx.get_identity_name()
        # An empty model (round 1: nothing aggregated yet) never reaches here: DXOFilter passes empty data through.
        update = EncryptedUpdate.from_data(dxo.data, f"{site}: the global model from the server")
        payload = decrypt_average(self.context(fl_ctx), update, f"{site}: the global model from the server")
        self.log_info(
            fl_ctx,
            f"{site}: global model decrypted ({update.contributions} sites, {update.nbytes:,} bytes of ciphertext)",
        )
        return DXO(DataKind.WEIGHTS, data=payload, meta={**(dxo.meta or {}), "ckks_bytes_down": update.nbytes})
