"""Turn dataset folder names into readable class names for CLIP text prompts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from .errors import DataError

# Every word of the UC Merced, OPTIMAL-31, NWPU-RESISC45, AID and PatternNet
# class names, plus the synthetic dataset's. Used to split names that were
# written without separators ("denseresidential", "mobilehomepark").
VOCABULARY: frozenset[str] = frozenset(
    """
    agricultural airplane airport area bare baseball basketball beach bridge
    building buildings center chaparral christmas church circular closed cloud
    coastal commercial course court crosswalk dam dense desert diamond farmland
    ferry field football forest freeway golf ground harbor home industrial
    intersection island lake land meadow medium mobile mountain nursing oil
    overpass palace park parking pond port power railway rectangular residential
    resort river road roundabout runway school sea ship shrubbery snowberg solar
    sparse square stadium station storage swimming tank tanks tennis terminal
    terrace thermal track transformer tree viaduct wastewater well wetland lot
    ice panel pool plant playground plane treatment farm space marking shipping
    yard gas cemetery mansion
    """.split()
)

_SEPARATORS = re.compile(r"[\s_\-.]+")
# Split CamelCase: "GroundTrackField" ->
# "Ground Track Field", "HTTPServer" -> "HTTP Server".
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@lru_cache(maxsize=4096)
def _segment(word: str) -> tuple[str, ...] | None:
    """Split a lower-case word into the fewest vocabulary words, or None."""
    n = len(word)
    # best[i] = fewest words covering word[:i]; prev[i] = where the last word starts.
    best: list[int | None] = [0] + [None] * n
    prev = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            if best[start] is None or word[start:end] not in VOCABULARY:
                continue
            cost = best[start] + 1
            # Strict "<" with ascending start keeps, on ties, the split whose
            # last word is longest.
            if best[end] is None or cost < best[end]:
                best[end] = cost
                prev[end] = start
    if best[n] is None:
        return None
    parts: list[str] = []
    end = n
    while end > 0:
        parts.append(word[prev[end]:end])
        end = prev[end]
    return tuple(reversed(parts))


def _readable_token(token: str) -> str:
    if len(token) > 1 and token.isupper():
        return token  # keep acronyms such as "SAR"
    low = token.lower()
    if low in VOCABULARY or not low.isalpha():
        return low
    parts = _segment(low)
    return " ".join(parts) if parts else low


def readable_class_name(folder: str) -> str:
    """Readable text for a class folder name.

    "baseball_diamond" -> "baseball diamond", "ground-track-field" and
    "GroundTrackField" -> "ground track field", "denseresidential" ->
    "dense residential". Words outside the vocabulary are kept as they are
    (lower-cased).
    """
    tokens: list[str] = []
    for chunk in _SEPARATORS.split(folder.strip()):
        if chunk:
            tokens.extend(t for t in _CAMEL.split(chunk) if t)
    if not tokens:
        return folder
    return " ".join(_readable_token(t) for t in tokens)


def load_class_name_overrides(path: str | Path) -> dict[str, str]:
    """Read a JSON or YAML mapping {folder_name: readable text}.

    The format is chosen by the suffix (.json, .yaml, .yml); other suffixes are
    tried as JSON, then YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"class-names file not found: {path}; pass an existing JSON or YAML file "
            'mapping folder names to text, e.g. {"parkinglot": "parking lot"}'
        )
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    data = None
    if suffix == ".json":
        data = _parse_json(text, path)
    elif suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = _parse_yaml(text, path)
    if not isinstance(data, Mapping):
        raise DataError(
            f"class-names file {path} must contain a mapping of folder name to text, "
            f"got {type(data).__name__}"
        )
    overrides: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"class-names file {path}: the name for folder {key!r} must be a "
                f"non-empty string, got {value!r}"
            )
        overrides[str(key)] = value.strip()
    return overrides


def _parse_json(text: str, path: Path) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"class-names file {path} is not valid JSON: {exc}") from exc


def _parse_yaml(text: str, path: Path) -> object:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a pinned dependency
        raise DataError(
            f"reading {path} needs PyYAML (pip install pyyaml), or use a .json file"
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"class-names file {path} is not valid YAML or JSON: {exc}") from exc


def class_names_for(
    folders: Iterable[str], overrides: Mapping[str, str] | None = None
) -> list[str]:
    """Readable names for folders, in the same order; overrides win."""
    overrides = overrides or {}
    return [overrides.get(f) or readable_class_name(f) for f in folders]
