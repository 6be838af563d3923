"""Improvement loops that make the search the objective (SPEC section 11): DAgger and expert iteration.

``python -m sr_lightning.improve dagger --checkpoint RUN --iterations N --problems M --out DIR``
``python -m sr_lightning.improve expert-iteration --checkpoint RUN ...``
``python -m sr_lightning.improve plot DIR... --out payoff.png``

`labels` makes the examples, `mixing` the fine-tune's data, `loop` the resumable iterations,
`fine_tune` the Lightning training, `payoff_plot` the picture.
"""
