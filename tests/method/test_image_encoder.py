import pytest
import torch
from tests.conftest import tiny_net

from contsup.errors import ContsupError
from contsup.method import local_step


def test_pooled_image_encoder_same_parameters_other_function(batch):
    x, y = batch
    paper, pooled = tiny_net(4, "R1E"), tiny_net(4, "R1E", image_encoder="pooled")
    assert paper.param_counts() == pooled.param_counts()
    assert paper.state_dict().keys() == pooled.state_dict().keys()
    pooled.load_state_dict(paper.state_dict())
    # The first cut of ResNet-20 on 16x16 keeps the image size: both encoders agree there.
    assert torch.allclose(paper.context[0].image(x), pooled.context[0].image(x))
    assert paper.source_shapes[3].height < x.shape[-1]
    assert not torch.allclose(paper.context[2].image(x), pooled.context[2].image(x))
    out = local_step(pooled, x, y)
    assert len(out.losses) == 4 and bool(torch.isfinite(out.losses).all())


def test_unknown_image_encoder_is_a_user_error():
    with pytest.raises(ContsupError):
        tiny_net(4, "E", image_encoder="tiny")
