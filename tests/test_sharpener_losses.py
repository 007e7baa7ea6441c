import pytest
import torch

from dice.distillation import cfg_combine, distillation_loss
from dice import Sharpener, apply_sharpener


@pytest.mark.parametrize("dim,expected", [(768, 1_836_800), (2048, 3_148_800), (4096, 5_248_000)])
def test_parameter_counts_match_spec(dim, expected):
    assert sum(p.numel() for p in Sharpener(dim).parameters()) == expected


def test_layout_matches_paper():
    s = Sharpener(768)
    assert (s.fc1.in_features, s.fc1.out_features, s.fc2.out_features) == (768, 512, 768)
    assert s.to_q.bias is None and s.to_k.bias is None and s.to_v.bias is None
    assert s.to_out.bias is not None and s.num_heads == 8


def test_apply_rule_keeps_first_token_and_scales_residual():
    torch.manual_seed(0)
    s = Sharpener(16, inner_dim=32, num_heads=4)
    c, u = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    out = apply_sharpener(s, c, u, alpha=1.0)
    assert torch.equal(out[:, 0], c[:, 0])
    assert torch.allclose(out[:, 1:], c[:, 1:] + s(c, u)[:, 1:])
    half = apply_sharpener(s, c, u, alpha=0.5)
    assert torch.allclose(half[:, 1:] - c[:, 1:], 0.5 * (out[:, 1:] - c[:, 1:]), atol=1e-6)
    assert torch.equal(apply_sharpener(s, c, u, alpha=0.0), c)
    free = apply_sharpener(s, c, u, keep_first_token=False)
    assert not torch.equal(free[:, 0], c[:, 0])


def test_context_mask_hides_padded_context_tokens():
    torch.manual_seed(0)
    s = Sharpener(16, inner_dim=32, num_heads=4)
    c, u = torch.randn(1, 4, 16), torch.randn(1, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    changed = u.clone()
    changed[:, 3:] += 10
    assert torch.allclose(s(c, u, mask), s(c, changed, mask), atol=1e-6)
    assert not torch.allclose(s(c, u), s(c, changed))


def test_one_context_for_the_batch_gives_each_prompt_its_own_residual_and_gradients():
    """u given once [1, T', dim] (--project_u_once) is the same function as u repeated for every prompt, masked or not."""
    torch.manual_seed(0)
    s = Sharpener(16, inner_dim=32, num_heads=4)
    c, u, mask = torch.randn(3, 5, 16), torch.randn(1, 6, 16), torch.tensor([[1, 1, 1, 1, 0, 0]])
    for u_mask, repeated_mask in ((None, None), (mask, mask.expand(3, -1))):
        repeated = s(c, u.expand(3, -1, -1), repeated_mask)
        grads = torch.autograd.grad(repeated.square().sum(), list(s.parameters()))
        once = s(c, u, u_mask)
        assert torch.allclose(once, repeated, atol=1e-6)
        for g_once, g_repeated in zip(torch.autograd.grad(once.square().sum(), list(s.parameters())), grads):
            assert torch.allclose(g_once, g_repeated, atol=1e-5)
    assert not torch.allclose(s(c, u), s(c, u + 1))


def test_project_u_once_takes_one_row_only_when_every_u_is_the_same():
    from dice.adapters.base import Conditioning
    from dice.methods.dice import one_row_if_all_equal

    same = Conditioning(embeds=torch.ones(4, 3, 2), mask=torch.ones(4, 3, dtype=torch.long))
    assert len(one_row_if_all_equal(same)) == 1 and one_row_if_all_equal(same).mask.shape == (1, 3)
    differ = Conditioning(embeds=torch.ones(4, 3, 2).index_put_((torch.tensor([2]),), torch.zeros(3, 2)))
    assert one_row_if_all_equal(differ) is differ
    masks_differ = Conditioning(embeds=torch.ones(2, 3, 2), mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert one_row_if_all_equal(masks_differ) is masks_differ


def test_cfg_combine():
    u, c = torch.randn(3, 4), torch.randn(3, 4)
    # u + w (c - u) in float32: c back to within rounding (a draw near 0 fails allclose's default atol 1e-8)
    assert torch.allclose(cfg_combine(u, c, 1.0), c, atol=1e-6)
    assert torch.allclose(cfg_combine(u, c, 0.0), u)
    assert torch.allclose(cfg_combine(u, c, 5.0), u + 5 * (c - u))


def test_loss_options():
    student = torch.zeros(2, 3, 2, 2)
    teacher = torch.ones(2, 3, 2, 2) * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    assert distillation_loss(student, teacher, "mse", "mean").item() == pytest.approx((1 + 4) / 2)
    assert distillation_loss(student, teacher, "l1", "mean").item() == pytest.approx((1 + 2) / 2)
    # Per-sample sum over 12 elements, averaged over the 2 samples.
    assert distillation_loss(student, teacher, "mse", "sum_per_sample").item() == pytest.approx((12 * 1 + 12 * 4) / 2)
    assert distillation_loss(student, teacher, "l1", "sum_per_sample").item() == pytest.approx((12 + 24) / 2)
    with pytest.raises(ValueError, match="loss_type"):
        distillation_loss(student, teacher, "huber")
    with pytest.raises(ValueError, match="loss_reduction"):
        distillation_loss(student, teacher, "mse", "sum")


def test_loss_gradient_reaches_only_the_sharpener_input():
    student = torch.zeros(1, 4, requires_grad=True)
    teacher = torch.ones(1, 4)
    distillation_loss(student, teacher).backward()
    assert torch.allclose(student.grad, torch.full((1, 4), -0.5))
