#!/usr/bin/env python
"""The authors' name for evaluation/clip_score.py (their README runs `evaluation/eval_clip_score.py calc ... --desc=...`): same options."""
import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_score.py"), run_name="__main__")
