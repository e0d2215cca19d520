"""Recipe-only objectives, one file per paper term (DINO/iBOT/KoLeo for CheXFound pretraining, the Student-t
mixture and triplet loss of CXR-CML). Import from the term's own module, e.g.
``from cxrfm.training.losses.koleo_loss import koleo_loss``. Losses that a model's ``forward`` computes live in that
model's folder instead, so saved folders carry them as remote code."""
