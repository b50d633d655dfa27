"""Where the LLAMACPP engine's ``.gguf`` file is: a path, the default alias, or a hub repo in the local cache.

Nothing here touches the network: a repository id is looked up in the local Hugging Face cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) and a miss is a
:class:`~infermux.errors.ModelNotFoundError` that says how to fix it.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from infermux.errors import ModelNotFoundError
from infermux.models import resolve_model_name

__all__ = ["hub_cache_dir", "resolve_gguf"]


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, following the library's environment variables."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def resolve_gguf(model_name: str, filename: str | None = None, revision: str | None = None) -> Path:
    """The ``.gguf`` file that ``model_name`` (+ ``model_kwargs.filename``) names.

    Accepted: a ``.gguf`` file path; a folder with ``filename`` in it (or exactly one ``.gguf``); the
    default-model alias; a hub repository id with ``filename`` (a name or a glob such as ``*Q8_0.gguf``)
    present in the local cache.
    """
    resolved = resolve_model_name(model_name, "LLAMACPP")
    path = Path(resolved).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _pick(sorted(path.rglob("*.gguf")), filename, where=str(path), root=path)
    if resolved.lower().endswith(".gguf") or resolved.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model.model_name: no such file {resolved!r}. Give the path of a .gguf file.")
    return _from_hub_cache(resolved, filename, revision)


def _pick(candidates: list[Path], filename: str | None, where: str, root: Path) -> Path:
    if filename:
        matches = [p for p in candidates if fnmatch.fnmatch(p.relative_to(root).as_posix(), filename)]
        matches = matches or [p for p in candidates if fnmatch.fnmatch(p.name, filename)]
    else:
        matches = candidates
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(p.relative_to(root).as_posix() for p in candidates) or "none"
    if not matches:
        wanted = f"matching model_kwargs.filename={filename!r}" if filename else ""
        raise ModelNotFoundError(f"{where}: no .gguf file {wanted} (files there: {names}).")
    raise ModelNotFoundError(f"{where}: several .gguf files match ({names}); pick one with model_kwargs.filename.")


def _from_hub_cache(repo_id: str, filename: str | None, revision: str | None) -> Path:
    if repo_id.count("/") != 1:
        raise ModelNotFoundError(
            f"model.model_name {repo_id!r} is neither a .gguf file, a folder, nor a hub repository id "
            "(owner/name). Give the path of a .gguf file."
        )
    if not filename:
        raise ModelNotFoundError(
            f"model.model_name {repo_id!r} is a hub repository: set model_kwargs.filename to the .gguf "
            "file to load (a name or a glob such as '*Q8_0.gguf')."
        )
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    ref_file = repo_dir / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snapshot = repo_dir / "snapshots" / commit
    hint = (
        f"Download it where the hub is reachable (huggingface-cli download {repo_id} {filename}) or "
        "give the local path of the .gguf file as model.model_name."
    )
    if not snapshot.is_dir():
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelNotFoundError(
            f"{repo_id} (revision {ref}) is not in the local Hugging Face cache {hub_cache_dir()}{offline}, "
            f"and infermux never downloads models for LLAMACPP. {hint}"
        )
    candidates = sorted(p for p in snapshot.rglob("*") if p.is_file() or p.is_symlink())
    try:
        return _pick(candidates, filename, where=f"{repo_id} in the local cache", root=snapshot)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} {hint}") from None
