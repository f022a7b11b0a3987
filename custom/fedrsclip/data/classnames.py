"""Turn dataset folder names into readable class names for CLIP text prompts, and check them before training.

The rule (README "Datasets"), in order:
1. Sort prefixes are dropped when EVERY folder has one: a number ("01_airport", "7-beach", "03river"), or a single
   lower-case letter before a capital, a different letter for each folder ("aGrass", "bField", ..., as RSSCN7).
2. The rest is split at separators (space _ - .), CamelCase and letter/digit boundaries ("Tank2" -> "tank 2").
3. Each word is lower-cased (acronyms such as "SAR" kept) and, when it is a run of known words written together
   ("denseresidential"), split into them (VOCABULARY).
A class-names file ({folder: text}) overrides any of it. Two folders with the same name, or a name too long for
the text encoder with the prompt around it, are errors that name the folders and the limit in tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
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
# Split CamelCase and digits: "GroundTrackField" -> "Ground Track Field", "HTTPServer" -> "HTTP Server",
# "Tank2" -> "Tank 2", "4Lane" -> "4 Lane".
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
_NUMBER_PREFIX = re.compile(r"^\d+[\s_\-.]*(?=[A-Za-z])")
_LETTER_PREFIX = re.compile(r"^[a-z](?=[A-Z])")
# The prompts around a class name: sot + n_ctx context vectors + name + "." + eot (fedrsclip.prompts), and the
# zero-shot reference "a satellite photo of {name}." (fedrsclip.trainer).
ZERO_SHOT_TEMPLATE = "a satellite photo of {}."


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
        parts.append(word[prev[end] : end])
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


def strip_sort_prefixes(folders: Sequence[str]) -> list[str]:
    """Folder names without their sort prefixes, when every folder has one (rule 1 of the module docstring)."""
    folders = list(folders)
    if len(folders) >= 2 and all(_NUMBER_PREFIX.match(f) for f in folders):
        return [_NUMBER_PREFIX.sub("", f) for f in folders]
    if len(folders) >= 2 and all(_LETTER_PREFIX.match(f) for f in folders):
        if len({f[0] for f in folders}) == len(folders):  # one letter per folder: it sorts them
            return [f[1:] for f in folders]
    return folders


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
            f"class-names file {path} must contain a mapping of folder name to text, got {type(data).__name__}"
        )
    overrides: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"class-names file {path}: the name for folder {key!r} must be a non-empty string, got {value!r}"
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
        raise DataError(f"reading {path} needs PyYAML (pip install pyyaml), or use a .json file") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"class-names file {path} is not valid YAML or JSON: {exc}") from exc


def class_names_for(folders: Iterable[str], overrides: Mapping[str, str] | None = None) -> list[str]:
    """Readable names for folders, in the same order (the module docstring's rule); overrides win."""
    folders = list(folders)
    overrides = overrides or {}
    stripped = strip_sort_prefixes(folders)
    return [overrides.get(f) or readable_class_name(s) for f, s in zip(folders, stripped)]


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer  # CLIP's BPE, shipped with open_clip (no download)

    return SimpleTokenizer()


def token_count(name: str) -> int:
    """Tokens of a class name in CLIP's BPE, as the prompt learner encodes it (underscores as spaces)."""
    return len(_tokenizer().encode(name.replace("_", " ")))


def name_token_limit(n_ctx: int | None = None, context_length: int = 77) -> int:
    """The most tokens a class name may have: the text encoder's context minus the prompt around the name.

    n_ctx: learnable context vectors (default: prompt.n_ctx's default); the zero-shot template counts too.
    """
    if n_ctx is None:
        from ..config import PromptConfig

        n_ctx = PromptConfig().n_ctx
    period = len(_tokenizer().encode("."))
    template = len(_tokenizer().encode(ZERO_SHOT_TEMPLATE.format("")))
    return context_length - 2 - max(n_ctx + period, template)


def class_name_problems(folders: Sequence[str], names: Sequence[str], limit: int | None = None) -> list[str]:
    """What makes these class names unusable: folders sharing a name, names over the token limit."""
    limit = name_token_limit() if limit is None else limit
    problems = []
    by_name: dict[str, list[str]] = {}
    for folder, name in zip(folders, names):
        by_name.setdefault(" ".join(name.lower().split()), []).append(folder)
    for name, group in by_name.items():
        if len(group) > 1:
            problems.append(
                f"folders {', '.join(repr(g) for g in group)} all get the class name {name!r} (the "
                "prompts would be identical and one class never predicted); give them distinct names "
                "in a class-names file (--class-names)"
            )
    for folder, name in zip(folders, names):
        count = token_count(name)
        if count > limit:
            problems.append(
                f"folder {folder!r}: class name {name!r} has {count} tokens, more than the {limit} the "
                f"text encoder allows with the prompt around it; give it a shorter name in a "
                "class-names file (--class-names)"
            )
    return problems


def check_class_names(folders: Sequence[str], names: Sequence[str], limit: int | None = None) -> None:
    """Raise DataError listing every problem of class_name_problems."""
    problems = class_name_problems(folders, names, limit)
    if problems:
        raise DataError("; ".join(problems))
