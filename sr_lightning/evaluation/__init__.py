"""Evaluation of trained one-step models (``evaluate.py``).

- `checkpoints`: which model (the newest run's best checkpoint, a .ckpt, an HF directory) and its data.
- `report`: teacher-forced metrics, greedy predictions, findings, report.json / report.md.
- `curves`: the run's validation curves as a PNG, best step marked.
- `decode_bench`: batched cached decoding vs one-at-a-time uncached decoding.
- `guided_search`: the model as BasicSR's proposal step, compared with plain BasicSR.
"""
