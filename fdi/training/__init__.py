"""FDI adapter training, by concern: :mod:`.config` (the options and their checks), :mod:`.run` (a CLI run and
its state, :func:`.run.train`), :mod:`.loop` (the CLI loop), :mod:`.step` (the loss and the step every door
shares), :mod:`.memory` (the ComfyUI node's loop), :mod:`.state` (checkpoints), :mod:`.validation`,
:mod:`.precision` (compute dtype, loss scaling, the non-finite rule), :mod:`.determinism`."""
