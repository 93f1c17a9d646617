"""The image logger's path in the official configs (`vidtok.modules.logger.ImageVideoLogger`), kept so that the
original's YAML files build unchanged; the logger lives in `vidtok.training.logger`."""

from vidtok.training.logger import ImageVideoLogger

__all__ = ["ImageVideoLogger"]
