"""`fedrsclip bench`: the performance figures, one part per module (common.py: inputs and timing; run.py: the whole
run; scaling.py: `--scaling`)."""
