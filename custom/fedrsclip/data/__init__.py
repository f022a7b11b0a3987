"""Fed-RSIC data layer: dataset readers, image composites, stratified split, federated partitions, manifests.

The command-line entry points live in fedrsclip.data.cli (not imported here, so
`python -m fedrsclip.data.cli` runs cleanly).
"""

from .classnames import (
    VOCABULARY,
    check_class_names,
    class_names_for,
    load_class_name_overrides,
    readable_class_name,
)
from .composite import MODALITIES, DynamicRangeWarning, ImageSettings, image_settings, settings_from_config
from .errors import DataError, ImageReadError
from .images import IMAGE_EXTENSIONS, check_image, is_image_file, load_rgb, to_rgb
from .manifest import (
    MANIFEST_VERSION,
    build_manifest,
    dumps_manifest,
    load_manifest,
    site_counts_table,
    site_split,
    skipped_summary,
    validate_manifest,
    write_manifest,
)
from .partition import SCHEMES, partition, site_names
from .readers import DATASETS, DatasetListing, list_dataset
from .split import DEFAULT_TRAIN_FRACTION, split_train_test
from .synth import MAX_CLASSES as SYNTH_MAX_CLASSES
from .synth import SCENES as SYNTH_SCENES
from .synth import make_synthetic

__all__ = [
    "DATASETS",
    "MODALITIES",
    "DynamicRangeWarning",
    "ImageSettings",
    "check_class_names",
    "image_settings",
    "settings_from_config",
    "skipped_summary",
    "DEFAULT_TRAIN_FRACTION",
    "IMAGE_EXTENSIONS",
    "MANIFEST_VERSION",
    "SCHEMES",
    "SYNTH_MAX_CLASSES",
    "SYNTH_SCENES",
    "VOCABULARY",
    "DataError",
    "DatasetListing",
    "ImageReadError",
    "build_manifest",
    "check_image",
    "class_names_for",
    "dumps_manifest",
    "is_image_file",
    "list_dataset",
    "load_class_name_overrides",
    "load_manifest",
    "load_rgb",
    "make_synthetic",
    "partition",
    "readable_class_name",
    "site_counts_table",
    "site_names",
    "site_split",
    "split_train_test",
    "to_rgb",
    "validate_manifest",
    "write_manifest",
]
