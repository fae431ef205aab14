"""analysis/measures/canon.py: what a canon layer mixes in per offset, against values worked out by hand."""

import pytest
import torch

from analysis.measures.canon import canon_table, offset_parts
from trainer.config import get_preset, replace
from trainer.errors import AnalysisError
from trainer.model import GPT

BOS = 0


def test_offset_parts_by_hand():
    # one row, two documents: [BOS a b | BOS c]; w_1 = 2 on every channel, the other offsets 0
    e = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [4.0, 0.0], [1.0, 1.0], [0.0, 2.0]]])
    tokens = torch.tensor([[BOS, 5, 6, BOS, 7]])
    w = torch.zeros(4, 2)
    w[1] = 2.0
    parts = offset_parts(w, e, tokens, BOS)
    own = e.norm(dim=-1)[0]
    # position 1 reads 2·e[0] (same document), 2 reads 2·e[1]; 3 is a BOS (new document): nothing from 2;
    # 4 reads 2·e[3] (its own BOS)
    expected = torch.tensor([0, 2 * 1 / own[1], 2 * 3 / own[2], 0, 2 * own[3] / own[4]])
    torch.testing.assert_close(parts[1, 0], expected)
    assert (parts[[0, 2, 3]] == 0).all()


def test_canon_table_reads_the_weights():
    torch.manual_seed(0)
    m = GPT(replace(get_preset("tiny").model, arm="canon4"))
    with torch.no_grad():
        m.canon_w.zero_()
        m.canon_w[2] = 0.5
    tokens = torch.randint(1, m.config.vocab_size, (2, 16))
    tokens[:, 0] = BOS
    df = canon_table(m, tokens).pivot(index="offset", columns="metric", values="value")
    assert df.loc[2, "weight_rms"] == pytest.approx(0.5) and df.loc[2, "weight_mean"] == pytest.approx(0.5)
    assert (df.drop(index=2)[["weight_rms", "input_ratio"]] == 0).all().all()
    e = m.embed.weight.detach()[tokens]
    by_hand = (0.5 * e[:, :-2].norm(dim=-1) / e[:, 2:].norm(dim=-1)).sum() / tokens.numel()  # one document a row
    assert df.loc[2, "input_ratio"] == pytest.approx(float(by_hand), rel=1e-5)
    with pytest.raises(AnalysisError, match="has no canon layer"):
        canon_table(GPT(replace(get_preset("tiny").model, arm="smear")), tokens)
