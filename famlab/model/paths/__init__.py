"""The implementations of one function, side by side; each takes the model, the input embeddings x [b, T, d]
and the state before them, and returns the final hidden states [b, T, d] and the state after them.

* :mod:`.reference`: block by block over [F; X] through all layers, naive attention (the definition).
* :mod:`.layer_major`: per layer, all tokens at once; a sequential scan for the FAM rows only.
* :mod:`.wavefront`: the reference's rows scheduled as a wavefront over (layer, block) (FAM only).
* :mod:`.feedback`: ``fm`` (feedback memory segment): per layer, all QKV at once, then block by block.
* :mod:`.block_recurrent`: ``block_recurrent`` (Block-Recurrent Transformer): reference loop, layer-major, stream.
* :mod:`.infini`: ``infini`` (Infini-attention): per layer, all tokens at once; the compressive memory by a
  cumulative sum over blocks (a scan for the delta rule).
* :mod:`.rmt`: ``rmt`` (Recurrent Memory Transformer): block by block, [read | block | write] rows through all
  layers (``forward``), and its own reference loop (``reference``).
* :mod:`.stream`: chunks of any length, per token segment inside one block (``FamLM.step``).
"""

from famlab.model.paths import block_recurrent, feedback, infini, layer_major, reference, rmt, stream, wavefront

__all__ = ["block_recurrent", "feedback", "infini", "layer_major", "reference", "rmt", "stream", "wavefront"]
