"""Loading and saving whole-model checkpoints (detectron2's checkpointer, extended).

:class:`E3VACheckpointer` loads any supported Swin checkpoint (official, timm, detectron2 main;
converted by :mod:`e3va_d2.modeling.swin_weights`) into the trunk of a
:class:`~e3va_d2.modeling.backbone.TunedSwin`, strictly: a frozen weight that the file does not
provide would stay random forever, so that is an error. It saves through
:mod:`~e3va_d2.checkpoint.files` (crash-safe).

It overrides detectron2's ``_load_file``, ``_load_model`` and ``_log_incompatible_keys``: fvcore's
``Checkpointer`` documents these three as the places to customise reading, loading and reporting.

Files are read as data only (:mod:`.safe_load`), and nothing loads or saves silently wrong
weights (:mod:`.sanity`): NaN weights are neither read nor saved, tensors of trainable modules
must fit the model, and ``--resume`` falls back to the newest usable checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from torch import Tensor, nn

from ..modeling.backbone import TunedSwin
from ..modeling.pretrained import (
    CheckpointReadError,
    check_pretrained_state,
    pretrained_state,
    read_checkpoint,
    refuse_a_folder,
    required_pretrained_keys,
)
from ..modeling.swin_weights import ConversionReport, SwinCheckpointError
from ..utils.state import parameter_group, strip_ddp_prefix, strip_prefix
from .files import atomic_save, atomic_write, is_local, remove_stale_temporaries
from .sanity import (
    CheckpointShapeError,
    NonFiniteCheckpointError,
    NonFiniteWeightsError,
    describe_mismatches,
    non_finite_tensors,
    resume_candidates,
    trainable_shape_mismatches,
)

__all__ = ["CheckpointReadError", "E3VACheckpointer", "PeriodicCheckpointer"]

logger = logging.getLogger("e3va_d2.checkpoint")

_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


class E3VACheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that understands Swin checkpoint layouts.

    For a model with a :class:`TunedSwin`, a file that is not already a checkpoint of this
    model is converted by :func:`convert_swin_checkpoint` and loaded into the trunk; the
    highway's inherited weights are copied from their trunk sources. detectron2's
    name-matching heuristics never run on such models. Missing frozen parameters are errors;
    missing trainable ones are summarised per module instead of listed one by one.

    Args:
        allow_shape_mismatch: load a checkpoint whose tensors of trainable modules have other
            shapes than the model's (e.g. a classifier for another number of classes), leaving
            those tensors as initialised. Off: that is an error, since it silently evaluates
            random adapters when the checkpoint is of another rank. Never allowed on resume.
    """

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, save_to_disk=None,
        allow_shape_mismatch: bool = False, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_shape_mismatch = allow_shape_mismatch
        self._loading: Tuple[str, bool] = ("", False)  # (file, whether it is a resume)
        self.resumed_from = ""  # the file the last resume_or_load resumed from
        # (prefix of the TunedSwin, what the conversion did, the TunedSwin) after a load that
        # converted a pre-trained Swin; None after loading a checkpoint of this model.
        self._conversion: Optional[Tuple[str, ConversionReport, TunedSwin]] = None
        if self.save_dir and self.save_to_disk and is_local(self.save_dir):
            remove_stale_temporaries(self.save_dir)
        # Trainable parameters the last load() did not provide (all of them before any load,
        # or after loading nothing): evaluating them means evaluating their initialisation.
        self.untrained: List[str] = self._trainable_names()

    def _trainable_names(self) -> List[str]:
        return sorted(n for n, p in self.model.named_parameters() if p.requires_grad)

    @property
    def loaded_pretrained_backbone(self) -> bool:
        """The last load converted a pre-trained Swin (not a checkpoint of this model)."""
        return self._conversion is not None

    def load(self, path: str, checkpointables=None):
        if path:
            refuse_a_folder(path)  # fvcore's check would call it "not found"
        self.untrained = self._trainable_names()
        names = self.checkpointables if checkpointables is None else checkpointables
        # Loading the trainer's state (optimizer, iteration) means resuming a run: the model
        # must then be exactly the one that was saved.
        self._loading = (path, any(n in self.checkpointables for n in names))
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:
            self._loading = ("", False)

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names, which must be in this folder: a name pointing
        elsewhere (``../other_run/model_final.pth``, an absolute path) would continue another
        run's training as this one's."""
        path = super().get_checkpoint_file()
        name, folder = os.path.normpath(path), os.path.normpath(self.save_dir)
        if path and is_local(self.save_dir) and name != folder \
                and os.path.dirname(name) != folder:
            tag = os.path.join(self.save_dir, "last_checkpoint")
            raise CheckpointReadError(
                f"{tag} names {path}, a file outside this run's folder: --resume continues "
                f"only the run of {self.save_dir}. Write the name of one of its checkpoints "
                "into it (e.g. model_0004999.pth), or remove it to start over; to start from "
                "another run's weights, set train.init_checkpoint (MODEL.WEIGHTS) to that "
                "file instead.")
        return path

    def resume_or_load(self, path: str, *, resume: bool = True):
        """fvcore's, but when the file ``last_checkpoint`` names is missing, unreadable
        (truncated) or non-finite, resume from the newest usable checkpoint of the folder
        instead, with a warning; an error when there is none."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        last = self.get_checkpoint_file()
        candidates = resume_candidates(self.save_dir, last) if is_local(self.save_dir) else [last]
        problems = []
        for candidate in candidates:
            if is_local(candidate) and not os.path.isfile(candidate):
                problems.append(f"{candidate} does not exist")
                continue
            try:
                loaded = self.load(candidate)
            except (CheckpointReadError, NonFiniteCheckpointError) as e:
                problems.append(str(e))
                continue
            if problems:
                logger.warning("Resuming from %s: the checkpoint last_checkpoint names is not "
                               "usable (%s)", candidate, " | ".join(problems))
            self.resumed_from = candidate
            return loaded
        raise CheckpointReadError(
            f"--resume found no usable checkpoint in {self.save_dir}: "
            f"{' | '.join(problems)}. Remove {os.path.join(self.save_dir, 'last_checkpoint')} "
            "to start over from the initial weights.")

    # ---- loading

    def _tuned_swins(self) -> List[Tuple[str, TunedSwin]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, TunedSwin)]

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._conversion = None
        loaded = read_checkpoint(filename, reader=self)
        bad = non_finite_tensors(loaded["model"])
        if bad:
            raise NonFiniteCheckpointError(
                f"{filename} holds {len(bad)} tensors with NaN or infinite values (saved by a "
                f"diverged run), e.g. {bad[:4]}: its predictions would be NaN. Use an earlier "
                "checkpoint of that run.")
        tuned = self._tuned_swins()
        if not tuned:
            return loaded
        state = strip_prefix(loaded["model"])
        loaded["model"] = state
        if any(f"{_prefix(path)}trunk.patch_embed.proj.weight" in state for path, _ in tuned):
            return loaded  # a checkpoint of this model (resume, evaluation): keys already match
        if len(tuned) != 1:
            raise SwinCheckpointError(
                f"the model has {len(tuned)} TunedSwin backbones ({[p for p, _ in tuned]}); "
                "cannot tell which one a pre-trained Swin checkpoint belongs to"
            )
        path, backbone = tuned[0]
        prefix = _prefix(path)
        state, report = pretrained_state(backbone, loaded)
        self._conversion = (prefix, report, backbone)
        return {"model": {prefix + k: v for k, v in state.items()}}

    def _load_model(self, checkpoint: Dict[str, Any]):
        mismatched = self._check_shapes(checkpoint["model"])
        tuned = self._tuned_swins()
        if not tuned:
            return super()._load_model(checkpoint)
        if checkpoint.pop("matching_heuristics", False):
            logger.info("Ignoring matching_heuristics: a TunedSwin model loads names exactly.")
        self._convert_ndarray_to_tensor(checkpoint["model"])
        self._check_required(checkpoint["model"])
        self.untrained = [k for k in self._trainable_names()
                          if k not in checkpoint["model"] or k in mismatched]
        return super()._load_model(checkpoint)

    def _check_shapes(self, state: Mapping[str, Any]) -> List[str]:
        """Refuse tensors of trainable modules whose shapes differ from the model's (a
        checkpoint of another rank would otherwise be evaluated with random adapters), unless
        ``allow_shape_mismatch``; on resume, also refuse a different trainable set (the
        optimizer's state would not fit). Returns the mismatched keys."""
        path, resuming = self._loading
        mismatches = trainable_shape_mismatches(self.model, state)
        if resuming:
            present = strip_prefix(state)
            missing = [k for k in map(strip_ddp_prefix, self._trainable_names())
                       if k not in present]
            if mismatches or missing:
                found = describe_mismatches(mismatches) if mismatches else (
                    f"{len(missing)} trainable tensors are missing, e.g. {missing[:4]}")
                raise CheckpointShapeError(
                    f"Cannot resume from {path}: it was saved from a model with other trainable "
                    f"tensors ({found}). The config changed since (a tuning rank, hidden width, "
                    "method or number of classes?). Restore those options, or start a new run "
                    "in another train.output_dir from its weights (train.init_checkpoint=<that "
                    "file>, with train.allow_shape_mismatch=True to skip what does not fit).")
            return []
        if not mismatches:
            return []
        if not self.allow_shape_mismatch:
            raise CheckpointShapeError(
                f"{path or 'The checkpoint'} has {len(mismatches)} tensors of modules that train "
                f"whose shapes differ from the model's: {describe_mismatches(mismatches)}. They "
                "would stay randomly initialised (is it a checkpoint of another tuning rank, "
                "hidden width or number of classes?). Load a checkpoint of this model, or, to "
                "start from the tensors that fit on purpose, set train.allow_shape_mismatch=True "
                "(yacs: MODEL.ALLOW_SHAPE_MISMATCH True).")
        logger.warning("Partial load (allow_shape_mismatch): %d tensors of trainable modules keep "
                       "their initialisation: %s", len(mismatches),
                       describe_mismatches(mismatches))
        return [k for k, _, _ in mismatches]

    def _check_required(self, state: Mapping[str, Tensor]) -> None:
        """Refuse a load that would leave frozen weights (or trunk weights) uninitialised."""
        own = self.model.state_dict(keep_vars=True)
        frozen = {k for k, v in own.items() if isinstance(v, nn.Parameter) and not v.requires_grad}
        if self._conversion is None:
            check_pretrained_state(sorted(frozen), state, own, "a full-model checkpoint")
            return
        prefix, _, backbone = self._conversion
        required = [prefix + k for k in required_pretrained_keys(backbone)]
        outside = sorted(k for k in frozen - set(required) if k not in state
                         and not k.startswith(prefix + "trunk."))
        if outside:
            logger.warning("Frozen parameters outside the trunk keep their initial values: %s",
                           _group_counts(outside))
        check_pretrained_state(required, state, own, "the converted Swin checkpoint")

    def _log_incompatible_keys(self, incompatible) -> None:
        if not self._tuned_swins():
            return super()._log_incompatible_keys(incompatible)
        if self._conversion is not None:
            prefix, report, _ = self._conversion
            logger.info("Loaded a pre-trained Swin into %strunk: %s", prefix, report.summary())
        for key, shape_file, shape_model in incompatible.incorrect_shapes:
            logger.warning(
                "Not loaded, shapes differ: %s (checkpoint %s, model %s)",
                key,
                tuple(shape_file),
                tuple(shape_model),
            )
        if incompatible.missing_keys:
            # Expected when starting from a pre-trained backbone: what training will learn.
            level = logging.INFO if self._conversion is not None else logging.WARNING
            logger.log(
                level,
                "Not in the checkpoint, left as initialised (%d tensors): %s",
                len(incompatible.missing_keys),
                _group_counts(incompatible.missing_keys),
            )
        if incompatible.unexpected_keys:
            keys = sorted(incompatible.unexpected_keys)
            listed = keys if len(keys) <= 20 else _group_counts(keys)
            logger.warning("Unexpected keys in the checkpoint, ignored (%d): %s", len(keys), listed)

    # ---- saving

    def save(self, name: str, **kwargs: Any) -> None:
        """Same as detectron2's, but crash-safe on local disks (see :func:`atomic_save`), and
        refusing non-finite weights, so ``last_checkpoint`` keeps naming the last good file."""
        if not self.save_dir or not self.save_to_disk:
            return
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else ""
            kept = f"last_checkpoint still names {last}" if last else "no checkpoint was saved"
            raise NonFiniteWeightsError(
                f"Not saving {name}.pth: {len(bad)} tensors of the model are NaN or infinite "
                f"(training diverged: lower the learning rate or clip gradients), e.g. "
                f"{bad[:4]}; {kept}, the last one with finite weights.")
        if not is_local(self.save_dir):
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self.save_to_disk:
            return
        if not is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename.encode()))


def _prefix(module_path: str) -> str:
    return f"{module_path}." if module_path else ""


def _group_counts(keys: List[str]) -> str:
    counts = Counter(parameter_group(k) for k in keys)
    return ", ".join(f"{group} ({n})" for group, n in sorted(counts.items()))


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's hook, with ``max_to_keep`` applied to the periodic checkpoints on disk, so
    that it also counts those of earlier (interrupted, resumed) runs in the same folder."""

    def step(self, iteration: int, **kwargs: Any) -> None:
        super().step(iteration, **kwargs)
        folder = self.checkpointer.save_dir
        if self.max_to_keep is None or not folder or not is_local(folder):
            return
        periodic = sorted(n for n in os.listdir(folder) if _PERIODIC.match(n))
        for name in periodic[: max(len(periodic) - self.max_to_keep, 0)]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
        self.recent_checkpoints = [os.path.join(folder, n) for n in periodic[-self.max_to_keep:]]
