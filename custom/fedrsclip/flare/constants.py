"""Names shared by the FLARE components of the sites and the server (as FLARE's own `app_constant.py`): neither side
imports the other's module for them, so the server never loads the sites' torch code."""

from __future__ import annotations

from nvflare.app_common.app_constant import AppConstants

META_KEY = "fedrsclip"  # DXO meta entry: the site's protocol.RoundRecord (train) or FinalRecord (validate)
ERROR_HEADER = "fedrsclip_error"  # reply header of a failed task: the reason, for the server's results file
ERROR_KIND_HEADER = "fedrsclip_error_kind"  # config (the job's settings: fatal) | site_config | data | payload | ...
ROUND_HEADER = "fedrsclip_round"  # reply header of a failed task: the round (0-based) it belonged to
STATE_SUBDIR = "fedrsclip"  # a site's files under its run folder: <site workspace>/<job id>/fedrsclip/

TASK_TRAIN = AppConstants.TASK_TRAIN  # "train"
TASK_VALIDATE = AppConstants.TASK_VALIDATION  # "validate"

GLOBAL_MODEL_NAME = "FL_global_model"
GLOBAL_MODEL_FILE = f"{GLOBAL_MODEL_NAME}.npz"  # <server app root>/FL_global_model.npz, after every round
BEST_MODEL_FILE = f"best_{GLOBAL_MODEL_NAME}.npz"
RESUME_MODEL = "config/resume_FL_global_model.npz"  # in a resumed job's app folder: the persistor's resume_from

CONTRIBUTION_REJECTED = "fedrsclip.contribution_rejected"  # event fired by the gate; details in REJECTION_PROP
REJECTION_PROP = "fedrsclip.rejection"  # {"site", "round" (1-based), "error"}
GROUP_WARNING = "fedrsclip.group_warning"  # event fired by the aggregator; the results entry in WARNING_PROP
WARNING_PROP = "fedrsclip.warning"  # protocol.lonely_group_warning: an adapter group that one site alone sent
