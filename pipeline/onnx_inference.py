"""The engine's evaluations on the whole evaluation split, run in ONNX Runtime on the CPU.

Each evaluated model (original, pruned, re-fitted, fine-tuned) is exported to a scratch ONNX file and run by an
ONNX Runtime session with the engine's thread count: the model an outsider gets is an ONNX file run this way, and
on the CPU it is the faster path (ResNet-56, 10,000 CIFAR images, 2 threads: 36.9 s in PyTorch, 25.0 s in ONNX
Runtime of which 2.3 s export and session; ``benchmarks/evaluation_speed.py``). A model that does not export is evaluated in PyTorch, and a note says why. Small evaluation
splits stay in PyTorch: the export would cost more than it saves. Each export is first checked against the module on a
random batch; one that differs (a traced branch, an operator exported wrongly) is not used, and a note says so.

The exports use the job's opset and onnxslim setting, so the last one is, byte for byte, the ``model.onnx`` the
export stage writes when the model did not change since: ``last_sha256`` lets that stage reuse the engine's figure
instead of running the same file on the same images again (``pipeline.export``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from pruning.errors import clip
from pruning.measure import Accuracy

PROBE_TOLERANCE = 1e-3  # largest |ORT - PyTorch| on the probe batch, relative to the largest |logit| (at least 1)
MIN_IMAGES = 2000       # below this the export (2.3 s for a ResNet-56) costs about what ONNX Runtime saves


class OnnxRuntimeInference:
    """``pruning.result.Inference`` for ``compress``: ``(model, C,H,W, images) -> forward`` through ONNX Runtime,
    None (PyTorch) for fewer than ``min_images`` images.

    ``scratch``: the folder of the temporary ONNX file (removed after each export); ``notes``: where a fallback to
    PyTorch is explained (the job's report notes), one line per distinct reason. ``opset`` / ``slim``: as the job's
    export. ``last_sha256``: the bytes behind the forward function handed out last (None after a fallback), and
    ``last_images`` the images it has run.
    """

    def __init__(self, scratch: str | Path, notes: list[str], *, opset: int = 17, slim: bool = False,
                 min_images: int | None = None) -> None:
        self.scratch = Path(scratch)
        self.notes = notes
        self.opset, self.slim = opset, slim
        self.min_images = MIN_IMAGES if min_images is None else min_images
        self.exports = 0
        self.last_sha256: str | None = None
        self.last_images = 0

    def __call__(self, model: nn.Module, input_shape: tuple[int, int, int], num_images: int
                 ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        from exporters import export_onnx
        from exporters.benchmark import create_session

        self.last_sha256, self.last_images = None, 0
        if num_images < self.min_images:
            return None
        path = self.scratch / ".evaluate.onnx"
        try:
            exported = export_onnx(model, path, torch.zeros(1, *input_shape), opset=self.opset, slim=self.slim)
            session = create_session(path, "cpu", threads=torch.get_num_threads())
            mismatch = _probe_error(path, model, input_shape)
        except Exception as error:  # noqa: BLE001 - any failure falls back to the module itself, with the reason
            self._note(f"evaluations ran in PyTorch: the model did not export to ONNX Runtime "
                       f"({type(error).__name__}: {clip(str(error), 200)})")
            return None
        finally:
            path.unlink(missing_ok=True)
        if not mismatch <= PROBE_TOLERANCE:
            self._note(f"evaluations ran in PyTorch: the exported model differs from the module by {mismatch:.2e} "
                       f"(relative, on a random batch; tolerance {PROBE_TOLERANCE:.0e})")
            return None
        input_name = session.get_inputs()[0].name
        self.exports += 1
        self.last_sha256 = exported.sha256
        failed = False

        def forward(images: torch.Tensor) -> torch.Tensor:
            nonlocal failed
            if not failed:
                batch = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
                try:
                    logits = torch.from_numpy(np.asarray(session.run(None, {input_name: batch})[0]))
                except Exception as error:  # noqa: BLE001 - the rest of this evaluation runs in PyTorch
                    failed, self.last_sha256 = True, None
                    self._note(f"an evaluation finished in PyTorch: ONNX Runtime failed on a batch "
                               f"({type(error).__name__}: {clip(str(error), 200)})")
                else:
                    self.last_images += batch.shape[0]
                    return logits
            return model(images)
        return forward

    def evaluated(self, accuracy: Accuracy) -> tuple[str, Accuracy] | None:
        """``(sha256, accuracy)`` when ``accuracy`` is the figure of the last forward function handed out (it ran as
        many images as that figure counts), for ``pipeline.export.export_and_verify``; else None."""
        if self.last_sha256 is None or self.last_images != accuracy.num_images:
            return None
        return self.last_sha256, accuracy

    def _note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)


def _probe_error(path: Path, model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """``exporters.check_parity`` of the export on a fixed random batch of two: the largest |ONNX Runtime - PyTorch|
    logit over the largest |logit| (at least 1). An export that traced another branch than the module takes, or an
    operator exported wrongly, shows here; NaN/inf logits pass (the evaluation refuses them itself)."""
    from exporters import NonFiniteError, check_parity

    probe = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        parity = check_parity(path, model, probe)
    except NonFiniteError:
        return 0.0
    return min(parity.max_abs_error, parity.max_rel_error)
