"""One decoding step of a whole Hyena operator: featurizer, inner filter and both gates for one token."""

from __future__ import annotations

from ..featurize.naive import hyena_featurize_ref
from ..fir.naive import hyena_fir_ref
from ..modal.naive import hyena_modal_ref


def hyena_step_ref(z, weight, bias, fir_state, inner_state, h=None, log_poles=None, residues=None, D=None):
    """z: [B, 1, 3D] projection of one token (``[x2 | x1 | v]``); weight [3D, K], bias [3D] or None and
    fir_state [B, K-1, 3D] are the featurizer's. The inner filter is either explicit, ``h`` [G, Kh] with
    inner_state [B, Kh-1, D] (Hyena-SE, Hyena-MR with D), or modal, ``log_poles``, ``residues`` [D, S]
    with inner_state [B, D, S] (Hyena-LR, Evo 1; D required). Both states are updated in place.
    Returns y [B, 1, D] in z.dtype: ``hyena_featurize`` followed by ``hyena_fir`` or ``hyena_modal``.
    """
    x2, x1v = hyena_featurize_ref(z, weight, bias, fir_state)
    if h is not None:
        return hyena_fir_ref(x1v, x2, h, D, inner_state)
    return hyena_modal_ref(x1v, x2, log_poles, residues, D, inner_state)
