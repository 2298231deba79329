"""Download dataset files from the Hugging Face hub (huggingface_hub only; no `datasets` dependency)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download

from .errors import PreferenceDataError
from .files import FileFrame, read_path

DATA_PATTERNS = ["*.parquet", "*.jsonl", "*.jsonl.gz", "*.json", "*.json.gz", "*.csv"]


def fetch_dataset(repo_id: str, patterns: list[str]) -> Path:
    """Local folder holding the dataset repo's files that match `patterns` (downloaded or cached)."""
    try:
        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated repo, HTTP errors: all end the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreferenceDataError(
            f"could not download '{repo_id}' from the Hugging Face hub: the hub could not be reached or refused "
            f"the request ({type(exc).__name__}: {reason}); download the files ({', '.join(patterns)}) "
            "where the hub is reachable and pass --path (path= in Python) pointing at the local copies"
        ) from None


def hub_frames(repo_id: str, patterns: list[str] | None = None) -> list[FileFrame]:
    """Read the matching data files of a hub dataset repo."""
    patterns = patterns or DATA_PATTERNS
    return read_path(fetch_dataset(repo_id, patterns), patterns)
