"""Every command of the project. Each is a console script (pyproject.toml) and a few-line shim in the
repository (``train.py``, ``eval.py``, ``tools/*.py``); both call ``main`` of the module here.

=====================  ============================  =====================================================
console script         shim                          module: what it does
=====================  ============================  =====================================================
hdmap-train            train.py                      :mod:`.train`: train a segmenter (Hydra)
hdmap-eval             eval.py                       :mod:`.eval`: IoU of a checkpoint or ONNX file (Hydra)
hdmap-infer            tools/infer.py                :mod:`.infer`: batch inference over drive logs (Hydra)
hdmap-export           tools/export.py               :mod:`.export`: checkpoint -> ONNX (+ int8)
hdmap-vectorize        tools/vectorize.py            :mod:`.vectorize`: drive log + masks -> map layers
hdmap-eval-map         tools/eval_map.py             :mod:`.eval_map`: map metrics against ground truth
hdmap-merge            tools/merge.py                :mod:`.merge`: many drives' layers -> one map
hdmap-make-synthetic   tools/make_synthetic.py       :mod:`.make_synthetic`: the synthetic data and logs
hdmap-class-weights    tools/class_weights.py        :mod:`.class_weights`: median-frequency weights
hdmap-demo             tools/demo.py (``make demo``) :mod:`.demo`: the whole path on synthetic data
=====================  ============================  =====================================================

The Hydra commands share :func:`.hydra_app.hydra_command`; the others parse their arguments with
argparse. All of them turn a user's mistake into one line on stderr and exit status 2
(:func:`hdmap_seg.errors.exit_on_user_error`). Nothing here runs on import.
"""
