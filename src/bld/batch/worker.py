"""The edit of one manifest row by a worker that holds the model.

`RowEditor` loads the pipeline and the CLIP scorer once and then edits row after row. It reads the row's
files itself (on a cluster they must be at the same paths on every node) and returns the results as PNG
bytes with their metadata, for the driver to write: workers never write to the output folder. A row that
cannot be edited comes back as an error record; it never ends the worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..image_io import InputError
from ..params import EditParams
from .ledger import BATCH_KEY


@dataclass(frozen=True)
class WorkerConfig:
    """How each worker loads the model: everything a worker needs besides the rows."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    clip_model: str | None = None
    max_pixels: int | None = None
    threads: int | None = None  # torch CPU threads (None: torch's choice)
    cpu_offload: bool = False  # each model on the worker's GPU only while it runs (bld.loading.load_pipeline)


@dataclass(frozen=True)
class RowTask:
    """What a worker gets for one row."""

    id: str
    line: int
    image: str
    mask: str
    params: dict[str, Any]
    fingerprint: str
    region_masks: tuple[str, ...] = ()


class RowEditor:
    """Holds the pipeline and the scorer; `edit(task)` makes one row's results."""

    def __init__(self, config: WorkerConfig):
        import torch

        from ..loading import load_pipeline, load_scorer

        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.pipe = load_pipeline(config.model, device=config.device, dtype=config.dtype, scheduler="model",
                                  cpu_offload=config.cpu_offload)
        self.pipe.set_progress_bar_config(disable=True)
        self.model_scheduler = self.pipe.scheduler
        self.scorer = load_scorer(config.clip_model, config.model, self.pipe.device)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """The worker's name, once its model is loaded."""
        return self.name

    def edit(self, task: RowTask) -> dict[str, Any]:
        """{'status': 'ok', 'outputs': [...], 'pngs': [bytes, ...], ...} or {'status': 'error', 'error': ...}."""
        start = time.perf_counter()
        try:
            outputs, pngs = self._edit(task)
        except (InputError, ValueError) as exc:
            return {"id": task.id, "status": "error", "error": " ".join(str(exc).split()), "worker": self.name}
        return {"id": task.id, "status": "ok", "fingerprint": task.fingerprint, "outputs": outputs, "pngs": pngs,
                "seconds": round(time.perf_counter() - start, 3), "worker": self.name}

    def _edit(self, task: RowTask) -> tuple[list[dict], list[bytes]]:
        from ..editing import json_safe, result_metadata, run_edit
        from ..image_io import (
            MAX_PIXELS,
            check_edit_size,
            check_mask_region,
            check_same_aspect,
            encode_png,
            load_image,
            load_mask,
            load_region_masks,
        )
        from ..pipelines.schedulers import make_scheduler
        from .ledger import output_names

        params = EditParams.from_dict(task.params)
        limit = self.config.max_pixels or MAX_PIXELS
        image = load_image(task.image, max_pixels=limit)
        mask = check_same_aspect(image, load_mask(task.mask, max_pixels=limit), image_name=task.image,
                                 mask_name=task.mask)
        check_edit_size(image.size, params.crop, params.width, params.height)
        check_mask_region(mask, params.invert_mask, params.soft_mask)
        region_masks = load_region_masks(list(task.region_masks), image, invert=params.invert_mask,
                                         soft=params.soft_mask, max_pixels=limit)
        if params.guidance_scale is None:
            params = dataclasses.replace(params, guidance_scale=self.pipe.default_guidance_scale)
        self.pipe.scheduler = make_scheduler(params.scheduler, self.model_scheduler)
        results = run_edit(self.pipe, image, mask, params, scorer=self.scorer if params.rank else None,
                           region_masks=region_masks)
        outputs, pngs = [], []
        for result, name in zip(results, output_names(task.id, len(results))):
            output = json_safe({"path": name, "seed": result.seed, "score": result.score, "metrics": result.metrics,
                                "crops": result.crops,
                                **({"region_scores": result.region_scores} if result.region_scores else {})})
            tag = {"id": task.id, "fingerprint": task.fingerprint, "worker": self.name, "output": output}
            metadata = {**result_metadata(params, result, self.config.model), BATCH_KEY: json.dumps(tag)}
            outputs.append(output)
            pngs.append(encode_png(result.image, metadata))
        return outputs, pngs
