"""Evaluation, the layer above dice/: the paper's metrics (evaluation.metrics: FID, CLIP score, aesthetic score,
HPS v2.1), the result record every metric writes (evaluation.record), and the results table with its plot
(evaluation.table). The scripts beside this file (fid.py, clip_score.py, ...) are its command lines."""
