"""Training behaviour of `AutoencodingEngine` (filled in by the training work)."""


class TrainingMixin:
    pass
