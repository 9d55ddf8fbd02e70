"""A trained model exported for inference: TorchScript traced through detectron2's
``TracingAdapter``, valid at any image size, saved as one file that loads without e3va-d2.

    exported = export_model(model, image)          # image: (3, H, W) as the model takes it
    exported.save("model.ts")
    deployed = ExportedModel.load("model.ts")      # torch.jit.load + the output layout
    outputs = deployed(image, height=h, width=w)   # detectron2's output dict, as model() gives

Why tracing: ``torch.jit.script`` does not compile detectron2's R-CNN heads, and
``torch.export`` stops at their data-dependent box counts. A trace records the ops of one
image; the Swin's window padding and shift masks are computed from the traced sizes (see
``modeling/swin.py``), so the graph holds at other sizes: the tests compare it with the eager
model at two sizes it was not traced at. R-CNN models are traced without their resizing to the
input's original size (``do_postprocess=False``, as detectron2's ``export_model.py`` does), the
others without a size to resize to; this wrapper resizes to the size asked for, so the output
equals ``model([{"image", "height", "width"}])[0]``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import torch
from detectron2.export.flatten import (
    DictSchema,
    IdentitySchema,
    InstancesSchema,
    ListSchema,
    TensorWrapSchema,
    TracingAdapter,
    TupleSchema,
)
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from torch import Tensor, nn

__all__ = ["ExportedModel", "export_model"]

_LAYOUT_FILE = "e3va_d2_outputs.json"
_SCHEMAS = {c.__name__: c for c in (ListSchema, TupleSchema, IdentitySchema, DictSchema,
                                    InstancesSchema, TensorWrapSchema)}
_WRAPPED = ("detectron2.structures.Boxes", "detectron2.structures.boxes.Boxes",
            "detectron2.structures.ROIMasks", "detectron2.structures.masks.ROIMasks")


def _rcnn_without_postprocess(model, inputs):
    return model.inference(inputs, do_postprocess=False)


def _schema_to_json(schema) -> dict:
    out = {"type": type(schema).__name__}
    for field in dataclasses.fields(schema):
        value = getattr(schema, field.name)
        out[field.name] = ([_schema_to_json(s) for s in value] if field.name == "schemas"
                           else value)
    return out


def _schema_from_json(data: dict):
    """The schema of ``_schema_to_json``; only detectron2's output schemas and structures."""
    kind = _SCHEMAS[data["type"]]
    kwargs = {k: v for k, v in data.items() if k != "type"}
    if "schemas" in kwargs:
        kwargs["schemas"] = [_schema_from_json(s) for s in kwargs["schemas"]]
    if kind is TensorWrapSchema and kwargs["class_name"] not in _WRAPPED:
        raise ValueError(f"unexpected output structure {kwargs['class_name']}")
    return kind(**kwargs)


class ExportedModel:
    """A traced model and the layout of its outputs; called like the eager model on one image."""

    def __init__(self, module: torch.jit.ScriptModule, outputs_schema, postprocess: bool):
        self.module = module
        self.outputs_schema = outputs_schema
        self.postprocess = postprocess  # an R-CNN traced without its postprocessing

    def __call__(self, image: Tensor, height: Optional[int] = None,
                 width: Optional[int] = None) -> dict:
        """``image``: (3, H, W), as the model's mapper gives it; ``height``/``width``: the size
        to return predictions at, as the eager model's inputs say it (default: the image's)."""
        with torch.no_grad():
            (output,) = self.outputs_schema(self.module(image))
        size = tuple(image.shape[-2:])
        height = size[0] if height is None else height
        width = size[1] if width is None else width
        if self.postprocess:  # an R-CNN's raw Instances
            output = {"instances": output}
        # Traced without "height"/"width", the model resized to the image's own size.
        if "instances" in output:
            return {"instances": detector_postprocess(output["instances"], height, width)}
        return {"sem_seg": sem_seg_postprocess(output["sem_seg"], size, height, width)}

    def save(self, path: str) -> None:
        layout = {"outputs": _schema_to_json(self.outputs_schema),
                  "postprocess": self.postprocess}
        torch.jit.save(self.module, path, _extra_files={_LAYOUT_FILE: json.dumps(layout)})

    @classmethod
    def load(cls, path: str, map_location=None) -> ExportedModel:
        files = {_LAYOUT_FILE: ""}
        module = torch.jit.load(path, map_location=map_location, _extra_files=files)
        layout = json.loads(files[_LAYOUT_FILE])
        return cls(module, _schema_from_json(layout["outputs"]), layout["postprocess"])


def export_model(model: nn.Module, image: Tensor) -> ExportedModel:
    """Trace ``model`` (eval mode, weights loaded) on one ``(3, H, W)`` image: a detectron2
    R-CNN (Mask R-CNN, Cascade), RetinaNet or semantic segmentor built from an e3va-d2 config."""
    model = model.eval()
    rcnn = isinstance(model, GeneralizedRCNN)
    adapter = TracingAdapter(model, [{"image": image}],
                             _rcnn_without_postprocess if rcnn else None)
    with torch.no_grad():
        module = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    return ExportedModel(module, adapter.outputs_schema, postprocess=rcnn)
