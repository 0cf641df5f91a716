"""Competing methods, with the same hook interface as alphareg's regularisers and controllers
(``alphareg.hooks.TrainingHook``), chosen by ``--method`` (see ``alphareg.methods``):

* ``weight_decay``   constant AdamW decay (the paper's WD = 0.01 control) — ``weight_decay.py``
* ``grokfast``       Grokfast-EMA gradient filter (Lee et al. 2024) — ``grokfast.py``
* ``spectral_norm``  spectral-norm regularisation (Yoshida & Miyato 2017) — ``spectral_norm.py``
* ``orthograd``      ⊥Grad, the weight-orthogonal gradient (Prieto et al. 2025) — ``orthograd.py``
* ``early_stop``     early stopping on a validation split carved from MNIST train — ``early_stopping.py``

The TempBalance / AlphaDecay rules and the shuffled-alpha ablation are options of
``alphareg.controllers.AlphaController``.
"""
