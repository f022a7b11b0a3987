"""What a site's task result costs on the wire, field by field, measured on the Shareable FLARE actually sends.

`account(shareable)` serializes a Shareable with FOBS exactly as FLARE's cell messaging does (`fobs.dumps`), with
every array inline (FLARE 2.9 by default moves numpy arrays into a separate download from the receiver; the bytes
are the same, the inline form counts them in one message). Each field's cost is its marginal size: the total minus
the size of the same Shareable without that field, so "removing X saves N bytes" holds exactly for each X.

`UploadAudit` is a site-side widget that `fedrsclip bench` adds to its copy of the job: after FLARE has sent a task
result (EventType.AFTER_SEND_TASK_RESULT), the result object (kept from EventType.AFTER_TASK_RESULT_FILTER) carries
everything FLARE added to it (cookies, task name and id, message root id, the site's peer context), so its account
is the real upload. It writes one JSON file
per site under the site's run folder; the job as shipped does not include it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs

from ..atomic import atomic_write_json
from .constants import META_KEY, STATE_SUBDIR, TASK_TRAIN

AUDIT_FILE = "upload_audit-{site}.json"  # under <site workspace>/<job id>/fedrsclip/
_DXO = "DXO"  # the Shareable key of a DXO (nvflare.apis.dxo._KEY_DXO)


def serialized_size(obj: Any) -> int:
    """Bytes of `obj` as FLARE's messaging serializes it (FOBS; numpy arrays inline)."""
    from nvflare.app_common.decomposers import common_decomposers

    common_decomposers.register()  # numpy decomposers, as every FLARE process registers them
    return len(fobs.dumps(obj))


def _without(shareable: Shareable, path: tuple[str, ...]) -> Shareable:
    """A shallow copy of `shareable` with the entry at `path` (nested dict keys) removed."""
    copy = Shareable()
    copy.update(shareable)
    parent: dict = copy
    for key in path[:-1]:
        parent[key] = dict(parent[key])
        parent = parent[key]
    del parent[path[-1]]
    return copy


def account(shareable: Shareable, record_key: str | None = None) -> dict[str, Any]:
    """Total bytes of `shareable` and the marginal bytes of each field.

    Fields: FLARE's headers (`header:<key>`), the DXO's arrays (`data:<key>`, with their raw `values` bytes), its meta
    entries (`meta:<key>`) and, for `record_key`, each entry of that meta record (`record:<key>`). `envelope` is the
    rest: the Shareable and DXO wrappers, FOBS type tags, and the msgpack map headers.
    """
    total = serialized_size(shareable)
    fields: dict[str, int] = {}

    def marginal(name: str, path: tuple[str, ...]) -> None:
        fields[name] = total - serialized_size(_without(shareable, path))

    for key in shareable.get(ReservedHeaderKey.HEADERS, {}):
        marginal(f"header:{key}", (ReservedHeaderKey.HEADERS, key))
    dxo = shareable.get(_DXO) or {}
    values = 0
    for key, value in (dxo.get("data") or {}).items():
        marginal(f"data:{key}", (_DXO, "data", key))
        if isinstance(value, np.ndarray):
            values += int(value.nbytes)
    meta = dxo.get("meta") or {}
    for key in meta:
        marginal(f"meta:{key}", (_DXO, "meta", key))
    record = meta.get(record_key) if record_key else None
    if isinstance(record, dict):
        for key, value in record.items():
            marginal(f"record:{key}", (_DXO, "meta", record_key, key))
            if isinstance(value, dict):  # the record's named metrics, evaluations and timings, one by one
                for sub in value:
                    marginal(f"record:{key}.{sub}", (_DXO, "meta", record_key, key, sub))
    top = [v for k, v in fields.items() if not k.startswith("record:")]  # record entries are inside meta:
    return {
        "total": total,
        "values": values,
        "headers": sum(v for k, v in fields.items() if k.startswith("header:")),
        "data_encoding": sum(v for k, v in fields.items() if k.startswith("data:")) - values,
        "meta": sum(v for k, v in fields.items() if k.startswith("meta:")),
        "envelope": total - sum(top),
        "fields": fields,
    }


class UploadAudit(FLComponent):
    def __init__(self, task_names: list[str] | None = None, record_key: str = META_KEY):
        """
        Args:
            task_names: the tasks whose results are accounted (default: ["train"]).
            record_key: the DXO meta entry whose items are accounted one by one (the executor's round record).
        """
        super().__init__()
        self.task_names = list(task_names or [TASK_TRAIN])
        self.record_key = record_key
        self._pending: tuple[str | None, Any] | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.AFTER_TASK_RESULT_FILTER:
            # FLARE clears the result from the context after this event; the same object is then sent, with FLARE's
            # cookies, task headers and peer context added to it in place.
            self._pending = (fl_ctx.get_prop(FLContextKey.TASK_NAME), fl_ctx.get_prop(FLContextKey.TASK_RESULT))
            return
        if event_type != EventType.AFTER_SEND_TASK_RESULT or self._pending is None:
            return
        (task, result), self._pending = self._pending, None
        if task not in self.task_names or not isinstance(result, Shareable):
            return
        try:
            entry = {
                "task": task,
                "round": result.get_cookie(AppConstants.CONTRIBUTION_ROUND),
                **account(result, self.record_key),
            }
            site = fl_ctx.get_identity_name()
            run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
            path = run_dir / STATE_SUBDIR / AUDIT_FILE.format(site=site)
            # read back, not kept in memory: with fewer simulator threads than sites each task is a fresh process
            atomic_write_json(path, {"site": site, "entries": [*read_audit(path), entry]})
        except Exception:  # an audit must never break the site
            self.log_exception(fl_ctx, "upload audit failed")


def read_audit(path: str | Path) -> list[dict]:
    """The entries of one site's audit file ([] when it is absent or unreadable)."""
    try:
        return list(json.loads(Path(path).read_text()).get("entries", []))
    except (OSError, ValueError, AttributeError):
        return []
