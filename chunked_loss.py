"""The next-token loss without ever holding the [T, V] logits: at 32k tokens and a 128k vocabulary they would be
16 GB in fp32. Rows go through the output projection `chunk` at a time, and their gradient is taken in the same pass."""
import torch
import torch.nn.functional as F


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed NLL of x @ weight.T against targets, each row weighted by mask (None: all 1; Llama.loss either drops
    the -100 rows first or weights them 0), `chunk` rows at a time. The gradient is taken in the same pass: for each chunk, d loss / d logits =
    softmax - onehot, which is pushed straight into d x and d weight and then dropped. Backward only scales
    those by the incoming gradient, so nothing is recomputed and no chunk's logits outlive it."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk, needs_grad, mask=None):
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if needs_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if needs_grad else None
        for i in range(0, targets.numel(), chunk):
            xi, ti = x[i:i + chunk], targets[i:i + chunk]
            logp = F.log_softmax(F.linear(xi, weight).float(), dim=-1)  # (rows, V), fp32 for the softmax
            ti, mi = ti[:, None], None if mask is None else mask[i:i + chunk, None]
            total += (logp.gather(1, ti) if mi is None else logp.gather(1, ti) * mi)[:, 0].sum().neg()
            if needs_grad:
                g = logp.exp_()  # softmax, in the same buffer
                g.scatter_add_(1, ti, torch.full_like(ti, -1, dtype=g.dtype))  # minus the one-hot target
                if mi is not None:
                    g.mul_(mi)
                grad_x[i:i + chunk] = g.to(weight.dtype) @ weight  # (rows, C)
                grad_w += (g.t() @ xi.to(g.dtype)).float()  # (V, C)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_total.to(grad_x.dtype), (grad_w * grad_total).to(ctx.weight_dtype), None, None, None, None
