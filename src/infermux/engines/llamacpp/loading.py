"""What the LLAMACPP engine loads: where its ``.gguf`` file is (a path, the default alias, or a hub repo in the
local cache), which ``model_kwargs`` go to ``Llama``, and how many sequences decode at once.

Nothing here touches the network: a repository id is looked up in the local Hugging Face cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) and a miss is a
:class:`~infermux.errors.ModelNotFoundError` that says how to fix it.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from pathlib import Path
from typing import Any

from infermux.engines.llamacpp.media import PROJECTOR_KWARGS
from infermux.errors import ConfigError, ModelNotFoundError
from infermux.models import resolve_model_name

__all__ = [
    "DEFAULT_SLOTS", "KV_BUDGET_BYTES", "check_llama_kwargs", "default_slots", "hub_cache_dir", "pop_projector",
    "resolve_gguf",
]  # fmt: skip

DEFAULT_SLOTS = 32
KV_BUDGET_BYTES = 3 << 29  # the default slot count keeps the KV cache (f16) under this
#: The engine's own ``model_kwargs`` (not ``Llama`` arguments).
OWN_KWARGS = frozenset({"filename", "n_seq_max", "use_extra_bufts", *PROJECTOR_KWARGS})


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


def check_llama_kwargs(llama_class: Any, kwargs: dict[str, Any]) -> None:
    """``Llama`` silently ignores unknown keyword arguments: catch typos here instead."""
    known = set(inspect.signature(llama_class.__init__).parameters) - {"self", "kwargs", "model_path"}
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | OWN_KWARGS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model.model_kwargs.{key} is not a llama_cpp.Llama argument.{hint}")


def pop_projector(kwargs: dict[str, Any]) -> Any:
    """Pop the projector file from ``kwargs`` (``mmproj``, or the handlers' ``clip_model_path``)."""
    given = {key: kwargs.pop(key) for key in PROJECTOR_KWARGS if key in kwargs}
    if len(given) > 1:
        raise ConfigError("model.model_kwargs: set mmproj or clip_model_path (the same thing), not both.")
    return next(iter(given.values()), None)


def default_slots(llama: Any, n_ctx_seq: int) -> int:
    """``DEFAULT_SLOTS``, fewer when their KV cache would pass ``KV_BUDGET_BYTES`` (big models, long n_ctx)."""
    import llama_cpp

    model = llama.model
    head_dim = llama_cpp.llama_model_n_embd(model) // max(1, llama_cpp.llama_model_n_head(model))
    per_token = 2 * llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_head_kv(model) * head_dim * 2
    return max(1, min(DEFAULT_SLOTS, KV_BUDGET_BYTES // max(1, per_token * n_ctx_seq)))
