"""A toy world where PSFT's claims can be tested in minutes (``python -m pipelines.study``).

Modules: ``world`` (tasks and styles), ``model`` (tokenizer, model, verl-engine-shaped loss inputs),
``pretrain`` (cached pretraining), ``finetune`` (the PSFT step loop around the recipe's loss code),
``report`` (table and figures), ``run`` (the resumable driver), ``equivalence`` (real trainer vs loop),
``stats`` (two-level spreads over pretrained models x seeds, the rule behind generated readings),
``lr_study`` / ``lr_report`` (the second study: trust region or learning rate?, ``python -m pipelines.study.lr_study``).
"""
