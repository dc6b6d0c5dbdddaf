"""The synthetic-language token task, one concern per module.

    language   the language (`LanguageSpec`, `Language`, `make_language`) and its samplers
    gold       the gold reward, the true likelihood, batch metrics and preference pairs
    display    tokens as text
    datasets   its TFDS builders (ArrayRecord, no TensorFlow)
    task       `SyntheticTask`: the language as a `kltrust.tasks.interface.TokenTask`

`kltrust.tasks.text` and `kltrust.tasks.text_data` re-export the public names of the first four,
so existing callers import from there.
"""
