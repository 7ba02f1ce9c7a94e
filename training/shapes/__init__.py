"""ShapesWorld's training recipes: what trains and measures the world's shipped assets, and the
alignment experiment (docs/shapesworld.md, docs/experiment.md).

* :mod:`.backbone`   the backbones (VAE, latents, UNet + text encoder): :class:`~.backbone.BackboneConfig`,
  :func:`~.backbone.train_backbone`; ``train_backbones.sh`` trains the four shipped ones;
* :mod:`.policy`     the supervised policy start: :class:`~.policy.PolicyConfig`, :func:`~.policy.train_policy`;
* :mod:`.evaluate`, :mod:`.baselines`, :mod:`.ship_policy`  measure and ship the assets;
* :mod:`.jobs`       the experiment's sizes, presets and training runs; :mod:`.experiment` its
  command (``promptloop experiment shapes``), :mod:`.experiment_eval` and :mod:`.experiment_report`
  its evaluation and report.

The training scripts checkpoint with :class:`promptloop.training.runtime.ResumableLoop` and read
their flags from their config dataclass (:func:`promptloop.training.config.parse_flags`).
"""
