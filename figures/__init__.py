"""The paper's figures and analyses, one library module each; ``figures/*.py`` are their command lines.

Every analysis writes ``<out>/<name>.json`` (the numbers) and ``<out>/<name>.png`` (the plot, matplotlib).
Drivers over ``sample.py`` and the evaluators (quality vs NFE, alpha, DICE + CFG, training step,
sharpener structure, cross-model transfer) reuse finished sample folders and scores already in
``<out>/results.jsonl``, so a rerun only does what is missing.
"""
