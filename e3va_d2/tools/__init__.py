"""What detectron2's ``tools/`` do, for e3va-d2 configs where detectron2 0.6's own cannot.

detectron2 0.6's ``analyze_model.py`` and ``visualize_data.py`` read only yacs configs without
the e3va-d2 keys (``MODEL.SWIN`` is refused), and its ``visualize_json_results.py`` knows only
the datasets detectron2 registers. These take a ``.py`` or ``.yaml`` config, as
``train_net.py`` does, with the same arguments as detectron2's:

    python -m e3va_d2.tools.analyze_model --config-file CONFIG --tasks parameter flop activation
    python -m e3va_d2.tools.visualize_data --config-file CONFIG --source annotation
    python -m e3va_d2.tools.visualize_json_results --config-file CONFIG --input results.json

docs/INFERENCE.md says which stock tool works where.
"""
