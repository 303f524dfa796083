"""Superseded by ``opplan study STUDY.yaml`` (docs/study.md): a pre-registered study from a
committed config, over replicates of the whole procedure. The earlier one-replicate study's
table stays in ``bench/study/study.md``.
"""

import sys

if __name__ == "__main__":
    print("bench/study.py is superseded: run `opplan study studies/op-vs-paper-grid.yaml` (docs/study.md)",
          file=sys.stderr)
    sys.exit(2)
