"""FDI adapter training, by concern: :mod:`.step` (loss and step), :mod:`.state` (checkpoints),
:mod:`.validation`; :mod:`fdi.train` runs the loop."""
