"""FDI adapter training, by concern: :mod:`.step` (the loss and the step every door shares), :mod:`.loop`
(the CLI loop), :mod:`.state` (checkpoints), :mod:`.validation`, :mod:`.memory` (the ComfyUI node's loop),
:mod:`.precision` (compute dtype, loss scaling, the non-finite rule);
:mod:`fdi.train` sets a CLI run up."""
