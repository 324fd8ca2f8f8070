"""Helpers shared by the monitor tests."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({package!r} + "."):
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
"""


def run_without(package: str, code: str) -> str:
    """Run ``code`` in a fresh interpreter where importing ``package`` fails; its stdout.

    >>> run_without("json", "import fastgrad.monitor; print('ok')")
    'ok\\n'
    """
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(package=package) + code],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


#: The synthetic classification set of ``train_torch_mlp``: 10 classes in 20 features in [0, 1].
CLASSES, FEATURES, HIDDEN = 10, 20, 32


def train_torch_mlp(lr: float, *, steps: int = 64, epoch_steps: int = 8, batch: int = 64,
                    seed: int = 0, zero_biases: bool = True, monitor=None, tensorboard=None):
    """Train a torch Linear-ReLU-Linear net with plain SGD on a seeded synthetic set, monitored.

    The inputs are clamped to [0, 1] like pixels: with lr=8 the first updates are huge, the
    loss spikes, the hidden ReLUs die and the loss sits at the chance level log(10) = 2.3.
    Returns the monitor (not closed).

    >>> mon = train_torch_mlp(0.5)
    >>> mon.epochs()[-1]["train_acc"] > 0.9
    True
    """
    import torch

    from fastgrad.monitor import TrainingMonitor

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n = 512
    centers = torch.rand(CLASSES, FEATURES, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    X = (centers[y] + 0.2 * torch.randn(n, FEATURES, generator=gen)).clamp(0.0, 1.0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, CLASSES))
    if zero_biases:
        for layer in (model[0], model[2]):
            torch.nn.init.zeros_(layer.bias)
    segments = {name: tuple(p.shape) for name, p in model.named_parameters()}
    mon = monitor if monitor is not None else TrainingMonitor(segments=segments,
                                                              tensorboard=tensorboard)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: 2 threads spin for 20x the time on 2 busy cores
    try:
        _sgd_steps(model, optimizer, mon, X, y, gen, lr, steps, epoch_steps, batch)
    finally:
        torch.set_num_threads(threads)
    return mon


def _sgd_steps(model, optimizer, mon, X, y, gen, lr, steps, epoch_steps, batch):
    import torch

    n = len(y)
    for step in range(steps):
        rows = torch.randint(0, n, (batch,), generator=gen)
        hidden = model[1](model[0](X[rows]))
        hidden.retain_grad()
        loss = torch.nn.functional.cross_entropy(model[2](hidden), y[rows])
        optimizer.zero_grad()
        loss.backward()
        mon.log_loss(step, loss.item())
        mon.log_activations("hidden", hidden.detach().numpy())
        mon.log_gradients("hidden", hidden.grad.numpy())
        mon.log_update({name: p.detach().numpy() for name, p in model.named_parameters()},
                       {name: -lr * p.grad.numpy() for name, p in model.named_parameters()})
        optimizer.step()
        if (step + 1) % epoch_steps == 0:
            with torch.no_grad():
                accuracy = (model(X).argmax(dim=1) == y).double().mean().item()
            mon.log_epoch(step // epoch_steps, train_acc=accuracy)
