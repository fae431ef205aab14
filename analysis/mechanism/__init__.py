"""The causal mechanism: how token i−1 reaches the prediction at i, by intervening on the model.

`paths` path attribution of the previous token (the smear term, each head's edge, the rest) by patched
forwards; `readout` how well token i−1 can be read from each layer's residual; `knockout` the loss cost of
ablating the top previous-token head, the smear, or both; `composition` which heads' keys read which
earlier heads (K-composition) and the induction heads they form. Builds on `analysis.measures`; never
imports the statistics or the write-up.
"""
