"""Stand-in for detectron2's compiled extension ``detectron2._C``.

This file is installed as ``detectron2/_C.py`` by e3va-d2's
``scripts/install_detectron2.sh`` when detectron2 0.6 is installed from its
Python sources only (the default route on machines without a CUDA toolchain
or without internet access to GitHub).  It is *not* part of detectron2.

Why it exists: four detectron2 modules (``layers/deform_conv``,
``layers/roi_align_rotated``, ``layers/rotated_boxes`` and
``evaluation/fast_eval_api``) run ``from detectron2 import _C`` at import
time, so without a ``_C`` module ``import detectron2.layers`` and
``import detectron2.evaluation`` fail.  The ops themselves are only needed by
a few features (rotated boxes, deformable convolution, the C++ COCO
evaluator), none of which E3VA Swin models use.

What it provides:

* ``IS_STANDIN = True`` so code can tell it apart from a real build
  (``getattr(detectron2._C, "IS_STANDIN", False)``);
* ``get_compiler_version()``, ``get_cuda_version()`` and ``has_cuda()`` so
  ``detectron2.utils.collect_env`` (called by ``default_setup``) works;
* a module-level ``__getattr__``: every other public name (for example
  ``box_iou_rotated``, ``deform_conv_forward``, ``COCOevalAccumulate``)
  raises :class:`MissingExtensionError` (a ``NotImplementedError``) that
  names the op and explains how to get a full build.  Names starting with an
  underscore (``__file__``, ``__wrapped__``, ``_repr_html_`` ...) raise a
  plain ``AttributeError`` so ``hasattr``, ``inspect``, ``pickle``, pytest
  and friends behave normally.
"""

IS_STANDIN = True

_NOT_BUILT = "not built (pure-Python detectron2 0.6 installed by e3va-d2)"

INSTALL_HINT = (
    "For a full build with the C++/CUDA ops, uninstall this one "
    "(`pip uninstall -y detectron2`) and run "
    "`E3VA_D2_BUILD_FROM_SOURCE=1 scripts/install_detectron2.sh` "
    "(needs a C++ compiler, CUDA toolkit for GPU ops, and internet access), "
    "or follow https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
)

# Which detectron2 feature uses which op; only used to make messages clearer.
_COCO_OPS = ("InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate")
_FEATURES = {
    "box_iou_rotated": "rotated-box IoU (detectron2.layers.pairwise_iou_rotated, RotatedBoxes)",
    "roi_align_rotated_forward": "ROIAlignRotated",
    "roi_align_rotated_backward": "ROIAlignRotated",
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "modulated deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "modulated deformable convolution (ModulatedDeformConv)",
}
for _op in _COCO_OPS:
    _FEATURES[_op] = "the fast C++ COCO evaluator (detectron2.evaluation.fast_eval_api)"
del _op


def get_compiler_version():
    """Compiler used to build the extension: there is none here."""
    return _NOT_BUILT


def get_cuda_version():
    """CUDA/HIP compiler used to build the extension: there is none here."""
    return _NOT_BUILT


def has_cuda():
    """Whether the extension has CUDA kernels: never for the stand-in."""
    return False


class MissingExtensionError(NotImplementedError):
    """Raised when code uses an op of detectron2's compiled extension."""

    def __init__(self, op_name):
        self.op_name = op_name
        feature = _FEATURES.get(op_name)
        msg = f"detectron2._C.{op_name} is not available: "
        msg += "this detectron2 is the pure-Python build installed by e3va-d2, "
        msg += "without the compiled extension"
        if feature:
            msg += f"; it is needed for {feature}"
        msg += ". "
        if op_name in _COCO_OPS:
            msg += (
                "For COCO evaluation use the official pycocotools implementation "
                "instead: COCOEvaluator(..., use_fast_impl=False). "
            )
        msg += INSTALL_HINT + "."
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.op_name,))


def __getattr__(name):
    if name.startswith("_"):
        # dunders and private probes (pickle, inspect, copy, IPython, pytest ...)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    raise MissingExtensionError(name)
