"""Hyper-parameter sweeps over any configuration keys, run locally: grid, random, successive halving.

A sweep file (``configs/sweep/NAME.yaml``, :mod:`facecloak.sweep.spec`) lists the keys to vary, the metric that
ranks trials and its constraints; :func:`facecloak.sweep.runner.run_sweep` runs every trial as a protection job in
its own folder and writes ``results.json`` and ``results.md``. ``configs/sweep/*.wandb.yaml`` files let
``wandb sweep`` / ``wandb agent`` drive the same trials on a W&B server.
"""
