"""DVC stage ``prepare``: decode the dataset into frame shards and split it (docs/design.md §5).

Reads ``data.root``; writes ``prepare.out``: ``videos.csv``, ``classes.txt``, frame
shards, ``bad_videos.csv``, ``prepare.json`` (see :mod:`opplan.data.prepare`).
"""

from _stage import run_stage

from opplan.data.prepare import prepare_from_params

if __name__ == "__main__":
    run_stage(prepare_from_params)
