#!/usr/bin/env python
"""The authors' name for evaluation/fid.py (their README runs `evaluation/eval_fid.py calc ... --desc=...`): same options."""
import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid.py"), run_name="__main__")
