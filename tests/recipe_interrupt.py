"""Interrupt a recipe run at an optimizer step, as a killed job would be; the resume tests then rerun it."""

import pytest


def run_killed_at_step(objective_class, step: int, run, *args) -> None:
    """Call `run(*args)` with `objective_class.on_step_end` raising KeyboardInterrupt at optimizer step `step` (after
    that step's checkpoint, if one is due), and check that the run was interrupted."""

    def kill(self, loop, current_step):
        if current_step == step:
            raise KeyboardInterrupt(f"simulated kill at step {step}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(objective_class, "on_step_end", kill, raising=False)
        with pytest.raises(KeyboardInterrupt):
            run(*args)
