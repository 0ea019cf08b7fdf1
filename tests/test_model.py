from pathlib import Path

import pytest
import torch

from nas import space as sp
from nas import spacefile as sf
from nas.model import Normalize, ShapeError, build_model, model_info

SPACES = Path(__file__).parent.parent / "nas" / "spaces"


def fixed(name: str) -> sp.ArchSpec:
    return sp.sample(sf.load_space(SPACES / name))


def test_tutorial_lenet_has_its_known_shapes_params_and_flops():
    m = build_model(fixed("seed_lenet.yaml"), (1, 28, 28), 10)
    info = model_info(m, (1, 28, 28))
    shapes = [s for name, s in info.layers if name == "MaxPool2d"]
    assert shapes == [(6, 12, 12), (16, 4, 4)]  # 28 -> 24 -> 12 -> 8 -> 4, as in the tutorial
    assert info.n_params == 44_426
    conv = 2 * (24 * 24 * 6 * 25 + 8 * 8 * 16 * 150)
    fc = 2 * (256 * 120 + 120 * 84 + 84 * 10)
    assert info.flops == conv + fc
    assert isinstance(m[2], torch.nn.LeakyReLU) and m[2].negative_slope == 0.1


def test_tutorial_network_flattens_to_192():
    m = build_model(fixed("seed_network.yaml"), (1, 28, 28), 10)
    linears = [l for l in m if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(192, 120), (120, 60), (60, 10)]


def _spec(**block) -> sp.ArchSpec:
    raw = {"architecture": {"blocks": 3, "block": block, "head": {"layers": 1, "units": 8}}}
    return sp.sample(sf.parse_space(raw))


def test_same_padding_keeps_size_so_deeper_nets_fit():
    m = build_model(_spec(conv="conv3x3x2", channels=4, padding="same"), (1, 28, 28), 10)
    assert [s for name, s in model_info(m, (1, 28, 28)).layers if name == "MaxPool2d"] == [
        (4, 14, 14), (4, 7, 7), (4, 3, 3)
    ]


def test_a_net_that_shrinks_below_one_pixel_is_refused_with_its_block():
    with pytest.raises(ShapeError, match=r"block 3 \(conv5x5, padding valid\) gets a 4×4 feature map"):
        build_model(_spec(conv="conv5x5", channels=4), (1, 28, 28), 10)


def test_colour_input_and_class_count_follow_the_data():
    m = build_model(_spec(conv="conv3x3", channels=4, padding="same"), (3, 32, 32), 7)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_normalisation_travels_in_the_state_dict_and_building_leaves_batchnorm_untouched():
    m = build_model(_spec(conv="conv3x3", channels=4, padding="same", batch_norm=True), (1, 28, 28), 10, [0.3], [0.2])
    state = m.state_dict()
    assert state["0.mean"].flatten().tolist() == pytest.approx([0.3])
    assert state["0.std"].flatten().tolist() == pytest.approx([0.2])
    assert isinstance(m[0], Normalize) and m.training
    bn = [x for x in m if isinstance(x, torch.nn.BatchNorm2d)]
    model_info(m, (1, 28, 28))
    assert all(b.running_mean.abs().sum() == 0 and b.num_batches_tracked == 0 for b in bn)


@pytest.mark.parametrize("conv, expected_flops", [
    ("residual", 2 * 64 * (8 * 4 * 9 + 8 * 8 * 9 + 8 * 4)),  # two 3×3 convs and the 1×1 projection (4 -> 8)
    ("sepconv", 2 * 64 * (4 * 9 + 8 * 4)),  # depthwise 3×3 on each of 4 channels, then pointwise 4 -> 8
])
def test_modern_blocks_keep_the_size_and_count_their_nested_flops(conv, expected_flops):
    raw = {"architecture": {"blocks": 1, "block": {"conv": conv, "channels": 8, "padding": "same", "pool": "none"},
                            "head": {"layers": 0}, "readout": "gap"}}
    spec = sp.sample(sf.parse_space(raw))
    m = build_model(spec, (4, 8, 8), 10)
    info = model_info(m, (4, 8, 8))
    assert info.flops == expected_flops + 2 * 8 * 10  # the head: global average pool, then 8 -> 10
    assert [s for _, s in info.layers][-3:] == [(8, 1, 1), (8,), (10,)]
    assert m(torch.rand(2, 4, 8, 8)).shape == (2, 10)


def test_a_residual_block_adds_its_input_when_the_width_is_kept():
    raw = {"architecture": {"blocks": 1, "block": {"conv": "residual", "channels": 3, "pool": "none"}, "head": {"layers": 0}}}
    block = build_model(sp.sample(sf.parse_space(raw)), (3, 6, 6), 2)[1]
    torch.nn.init.zeros_(block.body[-1].weight)  # the body adds nothing: the output is relu(input)
    torch.nn.init.zeros_(block.body[-1].bias)
    x = torch.randn(1, 3, 6, 6)
    assert isinstance(block.shortcut, torch.nn.Identity) and torch.equal(block(x), torch.relu(x))


def test_a_widened_spec_scales_every_width_to_a_multiple_of_8_and_still_builds():
    raw = {"architecture": {"blocks": 2, "block": {"conv": "sepconv", "channels": 12, "padding": "same"},
                            "head": {"layers": 1, "units": 20}}}
    spec = sp.sample(sf.parse_space(raw))
    wide = spec.widened(1.5)
    assert [b.channels for b in wide.blocks] == [16, 16] and [h.units for h in wide.head] == [32]
    assert spec.widened(1) == spec and spec.widened(0.1).blocks[0].channels == 8
    assert wide.training == spec.training and type(spec).from_dict(wide.to_dict()) == wide
    assert build_model(wide, (1, 28, 28), 10)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
