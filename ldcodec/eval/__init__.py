"""Evaluation: metrics, classical baselines, BD-rate, and the ``ldcodec eval`` sweep.

Modules: :mod:`~ldcodec.eval.metrics` (PSNR, MS-SSIM, bpp, LPIPS, the synthesis grid),
:mod:`~ldcodec.eval.grid_artifact` (that grid, also a training penalty),
:mod:`~ldcodec.eval.lpips_weights` (offline LPIPS weights),
:mod:`~ldcodec.eval.baselines` (codecs), :mod:`~ldcodec.eval.bd_rate`,
:mod:`~ldcodec.eval.runner` (the sweep), :mod:`~ldcodec.eval.reports`,
:mod:`~ldcodec.eval.rd_plots`, :mod:`~ldcodec.eval.crops`.
"""
