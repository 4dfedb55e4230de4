"""Publishing a tokenizer on the Hugging Face Hub (`tcae push`).

What is uploaded is staged in one folder: the model loaded (so a bad checkpoint fails before any
upload) and saved again with its model card (`tcae.models.card`), the card's training information
kept from the card beside the weights and extended by `card_info` (e.g. metrics from `tcae eval`).
A dry run copies that folder to a local directory instead of uploading it: exactly the files, bytes
for bytes, that the upload would send.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def metrics_card_info(eval_json: str | os.PathLike) -> dict[str, Any]:
    """card_info keys from a `tcae eval` result JSON (one model): metrics, metrics_data, metrics_image_size."""
    path = Path(eval_json)
    if not path.is_file():
        raise FileNotFoundError(f"eval result {path} not found (written by `tcae eval --out DIR` as DIR/eval.json)")
    payload = json.loads(path.read_text())
    # {"results": [...]} (one entry per model); the result itself in eval.json files from before that layout
    results = payload.get("results", [payload]) if isinstance(payload, dict) else []
    if len(results) != 1:
        raise ValueError(f"{path} holds the results of {len(results)} models; pass the eval.json of one")
    result = results[0]
    if not isinstance(result.get("metrics"), dict):
        raise ValueError(f"{path} is not a `tcae eval` result (no 'metrics')")
    info: dict[str, Any] = {"metrics": {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}}
    if result.get("data"):
        info["metrics_data"] = result["data"]
    if result.get("image_size"):
        info["metrics_image_size"] = result["image_size"]
    return info


def stage_model(model_id: str, folder: str | os.PathLike, repo_id: str,
                card_info: dict[str, Any] | None = None) -> list[str]:
    """Write into `folder` what `push_model` uploads; returns the relative file names, sorted."""
    from huggingface_hub.utils import validate_repo_id

    from tcae.models.card import read_card_info
    from tcae.models.checkpoint_io import resolve_run_dir
    from tcae.tokenizers import load_tokenizer

    validate_repo_id(repo_id)  # HFValidationError (a ValueError) names what is wrong with it
    if str(model_id).startswith("diffusers:"):
        raise ValueError(f"{model_id}: tcae push uploads tcae models; a diffusers folder goes up with its own "
                         "push_to_hub (or huggingface_hub.upload_folder)")
    model = load_tokenizer(model_id)
    local = Path(resolve_run_dir(model_id))
    info = read_card_info(local / "README.md") if local.is_dir() else {}
    info.update(card_info or {})
    info["repo_id"] = repo_id
    info.setdefault("name", repo_id.split("/")[-1])
    folder = Path(folder)
    model.save_pretrained(folder, card_info=info)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_model(model_id: str, repo_id: str, *, card_info: dict[str, Any] | None = None,
               dry_run_dir: str | os.PathLike | None = None, private: bool = False, token: str | None = None,
               commit_message: str = "Upload TC-AE tokenizer") -> dict[str, Any]:
    """Upload a tokenizer (model directory, run directory or Hub id) to `repo_id` with its model card;
    with `dry_run_dir`, write the files there instead (nothing leaves the machine)."""
    with tempfile.TemporaryDirectory(prefix="tcae-push-") as staging:
        files = stage_model(model_id, staging, repo_id, card_info)
        sizes = {f: (Path(staging) / f).stat().st_size for f in files}
        if dry_run_dir is not None:
            out = Path(dry_run_dir)
            if out.exists() and any(out.iterdir()):
                raise FileExistsError(f"--out {out} is not empty; a dry run writes exactly the upload there")
            shutil.copytree(staging, out, dirs_exist_ok=True)
            return {"repo_id": repo_id, "dry_run": True, "out": str(out), "files": sizes}
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=staging, repo_id=repo.repo_id, commit_message=commit_message)
        return {"repo_id": repo.repo_id, "dry_run": False, "url": str(commit), "files": sizes}
