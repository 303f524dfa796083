"""``opplan study``: a pre-registered comparison of OP with a paper-shaped hand-tuned grid
over replicates of the whole procedure (docs/study.md)."""
