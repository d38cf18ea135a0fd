"""Fused trial groups: several trials of one shape trained together as one stacked model.

    group = fused.FusedGroup(device)
    a = group.add(config_a)                      # seeded exactly as a solo trial of config_a
    b = group.add(config_b, checkpoint_state)    # or from a solo trial's checkpoint
    rows = group.train_epoch(x, y)               # one epoch of every member: {slot: (loss, acc)}
    vals = group.evaluate(val_x, val_y)          # {slot: (loss, acc)}
    group.state_dict(a)                          # the solo checkpoint format (`TrainingState`)
    group.remove(b)

Members share every key that fixes a tensor's shape (`shape_key`: the model and its
options, batch size, optimizer type, output) and train on the same preloaded tensors.
Everything else is per member: lr, momentum, weight decay, lr decay, seed, init, batch
order, augmentation draws and dropout masks. The stacked parameters are (G, ...) tensors;
`torch.func.vmap` over `functional_call` turns each member's convolutions into one grouped
convolution and its linear layers into one batched matmul (HFTA's fusion, derived by
vmap). Each member's loss is its own batch mean, so the gradient of their sum is every
member's own gradient; the optimizers are SGD and Adam written as tensor ops over the
stacked state with per-member hyperparameters, in the same arithmetic as torch.optim.

A member draws its batch order, augmentation and dropout masks from the same generators,
in the same order, as `trainable.fit` does for the same config alone, so its curve equals
the solo curve to float32 rounding, and `state_dict` / `add(config, state)` move a trial
between a group and a solo process at any epoch boundary.

On CUDA the step can be captured as a CUDA graph (`capture=True`): forward, backward,
optimizer and the metric sums replay as one launch. The graph has a fixed batch size;
a short last batch runs eagerly. Groups with dropout or batch norm are not captured
(their per-member random masks and running statistics are drawn and updated eagerly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from tunefm import models, trainable

# Config keys that change no tensor's shape: they may differ within a group.
PER_MEMBER_KEYS = frozenset({"lr", "momentum", "weight_decay", "lr_decay", "seed", "init", "augment",
                             "max_epochs"})
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as solo trials use


def shape_key(config: dict) -> tuple:
    """What members of one group must share: every key but the per-member ones, with the
    model's option defaults filled (so `dropout=0.5` and an omitted default group together)."""
    spec = models.get(config["model"])
    options = spec.check_options({k: v for k, v in config.items() if k in spec.options})
    shared = {k: v for k, v in config.items() if k not in PER_MEMBER_KEYS and k not in spec.options}
    shared.setdefault("optimizer", "sgd")
    shared.setdefault("output", "softmax")
    return tuple(sorted({**shared, **options}.items(), key=lambda kv: kv[0]))


class MaskedDropout(nn.Module):
    """Dropout whose mask comes in as the buffer `mask` (drawn outside vmap, per member,
    from the member's own generator); identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.register_buffer("mask", torch.ones(()), persistent=False)

    def forward(self, x):
        return x * self.mask if self.training else x


def _replace_dropout(module: nn.Module) -> list[tuple[str, float]]:
    """Swap every nn.Dropout for a MaskedDropout in place; returns (buffer name, p) in forward order."""
    found = []
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(module, name, MaskedDropout(child.p))
            found.append((f"{name}.mask", child.p))
        else:
            found += [(f"{name}.{inner}", p) for inner, p in _replace_dropout(child)]
    return found


@dataclass
class Member:
    """One trial inside a group: its config, its solo training state (the template its
    checkpoints are written through) and its generators."""

    config: dict
    solo: trainable.TrainingState  # weights and optimizer here are stale between exports
    dropout_generator: torch.Generator  # the stream a solo trial's dropout draws from (torch's global RNG)
    steps: int = 0  # optimizer steps taken
    lr: float = 0.0  # the current lr, after decay
    extra: dict = field(default_factory=dict)


class FusedGroup:
    """G trials of one shape as one stacked model on one device."""

    def __init__(self, device: torch.device, capture: bool = False):
        self.device = device
        self.capture = capture and device.type == "cuda"
        self.members: list[Member] = []
        self.key: tuple | None = None
        self.module: nn.Module | None = None  # the architecture, its tensors replaced at every call
        self.dropouts: list[tuple[str, float]] = []
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.optimizer_state: dict[str, dict[str, torch.Tensor]] = {}
        self._graph = None

    # ---- membership -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.members)

    def add(self, config: dict, state: dict | None = None) -> int:
        """A new member, fresh (seeded as `trainable.init_state` seeds a solo trial) or from
        a solo checkpoint's `state`; returns its slot."""
        key = shape_key(config)
        if self.key is not None and key != self.key:
            raise ValueError("a fused group's members must share every shape key")
        solo = trainable.init_state(config, self.device)
        dropout_generator = torch.Generator().manual_seed(0)
        if state is not None:
            solo.load_state_dict(state)  # also sets torch's global RNG to the trial's
        dropout_generator.set_state(torch.get_rng_state())  # the solo trial's dropout stream from here on
        member = Member(dict(config), solo, dropout_generator)
        member.lr = solo.optimizer.param_groups[0]["lr"]
        member.steps = solo.scheduler.last_epoch if solo.scheduler is not None else self._adam_steps(solo)
        if self.module is None:
            self.key = key
            self.module = trainable.build_model(config).to(self.device)
            self.dropouts = _replace_dropout(self.module)
        self._sync_out()
        self.members.append(member)
        self._stack()
        return len(self.members) - 1

    def remove(self, slot: int) -> None:
        self._sync_out()
        del self.members[slot]
        self._stack()

    def state_dict(self, slot: int) -> dict:
        """Member `slot` as a solo trial's checkpoint (`TrainingState.state_dict`)."""
        self._sync_out()
        member = self.members[slot]
        state = member.solo.state_dict()
        state["torch_rng"] = member.dropout_generator.get_state()
        return state

    def set_epoch(self, slot: int, epoch: int) -> None:
        self.members[slot].solo.epoch = epoch

    def epoch(self, slot: int) -> int:
        return self.members[slot].solo.epoch

    @staticmethod
    def _adam_steps(solo: trainable.TrainingState) -> int:
        states = list(solo.optimizer.state.values())
        return int(states[0]["step"]) if states and "step" in states[0] else 0

    # ---- stacking ---------------------------------------------------------------------
    def _stack(self) -> None:
        """(Re)build the stacked tensors from the members' solo states."""
        self._graph, self._warm_steps = None, 0
        if not self.members:
            self.params, self.buffers, self.optimizer_state = {}, {}, {}
            return
        models_ = [m.solo.model for m in self.members]
        names = [n for n, _ in models_[0].named_parameters()]
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models_])
                       .contiguous().requires_grad_(True) for n in names}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models_]).contiguous()
                        for n, _ in models_[0].named_buffers()}
        adam = self.optimizer == "adam"
        self.optimizer_state = {}
        for name in names:
            per_member = [self._solo_param_state(m, name) for m in self.members]
            if adam:
                self.optimizer_state[name] = {
                    "exp_avg": torch.stack([s.get("exp_avg", torch.zeros_like(p)) for s, p in per_member]),
                    "exp_avg_sq": torch.stack([s.get("exp_avg_sq", torch.zeros_like(p)) for s, p in per_member])}
            else:
                self.optimizer_state[name] = {"momentum_buffer": torch.stack(
                    [s["momentum_buffer"] if s.get("momentum_buffer") is not None else torch.zeros_like(p)
                     for s, p in per_member])}
        self._hyper()

    @staticmethod
    def _solo_param_state(member: Member, name: str) -> tuple[dict, torch.Tensor]:
        param = dict(member.solo.model.named_parameters())[name]
        return member.solo.optimizer.state.get(param, {}), param.detach()

    def _sync_out(self) -> None:
        """Copy the stacked tensors back into each member's solo model and optimizer."""
        if not self.params:
            return
        adam = self.optimizer == "adam"
        for g, member in enumerate(self.members):
            solo = member.solo
            own = dict(solo.model.named_parameters())
            with torch.no_grad():
                for name, stacked in self.params.items():
                    own[name].copy_(stacked[g])
                for name, buffer in solo.model.named_buffers():
                    buffer.copy_(self.buffers[name][g])
            group = solo.optimizer.param_groups[0]
            group["lr"] = member.lr
            for name, param in own.items():
                state = self.optimizer_state[name]
                if adam:
                    if member.steps:
                        solo.optimizer.state[param] = {
                            "step": torch.tensor(float(member.steps)),
                            "exp_avg": state["exp_avg"][g].clone(),
                            "exp_avg_sq": state["exp_avg_sq"][g].clone()}
                elif group["momentum"] != 0 and member.steps:
                    solo.optimizer.state[param] = {"momentum_buffer": state["momentum_buffer"][g].clone()}
            if solo.scheduler is not None:
                solo.scheduler.last_epoch = member.steps
                solo.scheduler._last_lr = [member.lr]

    @property
    def optimizer(self) -> str:
        return dict(self.key).get("optimizer", "sgd") if self.key else "sgd"

    def _hyper(self) -> None:
        """Per-member hyperparameters as (G,) tensors on the device."""
        as_tensor = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype, device=self.device)
        cfg = [m.config for m in self.members]
        self.lr64 = as_tensor([m.lr for m in self.members], torch.float64)  # decays as ExponentialLR's Python floats
        self.decay64 = as_tensor([float(c.get("lr_decay", 1.0)) for c in cfg], torch.float64)
        self.momentum = as_tensor([float(c.get("momentum", 0.0)) for c in cfg])
        self.weight_decay = as_tensor([float(c.get("weight_decay", 0.0)) for c in cfg])
        self.steps = as_tensor([float(m.steps) for m in self.members], torch.float64)
        self.augment = [bool(c.get("augment", False)) for c in cfg]
        self.augment_mask = torch.tensor(self.augment, device=self.device).view(-1, 1, 1, 1, 1)

    # ---- training ---------------------------------------------------------------------
    def _call(self, params, buffers, x):
        return functional_call(self.module, (params, buffers), (x,))

    def _logits(self, xb: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """(G, B, 1, 28, 28) -> (G, B, 10), every member through its own weights."""
        return vmap(self._call)(self.params, {**self.buffers, **masks}, xb)

    def _losses(self, logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """(G, B, 10), (G, B) -> (G,): each member's mean loss over its batch."""
        G, B, C = logits.shape
        loss_fn = trainable.LOSSES[dict(self.key).get("output", "softmax")]
        return loss_fn(logits.reshape(G * B, C), yb.reshape(G * B), reduction="none").view(G, B).mean(1)

    def _broadcast(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def _update(self, grads: list[torch.Tensor]) -> None:
        """One optimizer step of every member, as torch.optim's single-tensor SGD / Adam."""
        lr = self.lr64.float()
        self.steps += 1
        if self.optimizer == "adam":
            beta1, beta2 = ADAM_BETAS
            bias1 = 1 - beta1 ** self.steps  # float64, as torch's Python floats
            bias2_sqrt = (1 - beta2 ** self.steps).sqrt()
            step_size = (self.lr64 / bias1).float()
        for (name, param), grad in zip(self.params.items(), grads):
            wd = self._broadcast(self.weight_decay, param)
            grad = grad + wd * param
            state = self.optimizer_state[name]
            if self.optimizer == "adam":
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / self._broadcast(bias2_sqrt.float(), param)).add_(ADAM_EPS)
                param.sub_(self._broadcast(step_size, param) * state["exp_avg"] / denom)
            else:
                buf = state["momentum_buffer"]
                buf.mul_(self._broadcast(self.momentum, param)).add_(grad)  # first step: 0 * 0 + grad
                param.sub_(self._broadcast(lr, param) * buf)
        self.lr64.mul_(self.decay64)

    def _draw_masks(self, batch: int) -> dict[str, torch.Tensor]:
        """Each dropout layer's (G, B, ...) masks, each member's from its own generator in
        the order a solo forward pass draws them (`bernoulli_(1 - p) / (1 - p)`, as F.dropout)."""
        if not self.dropouts:
            return {}
        masks: dict[str, list[torch.Tensor]] = {name: [] for name, _ in self.dropouts}
        for member in self.members:
            for name, p in self.dropouts:
                shape = (batch, *self._dropout_shapes[name])
                noise = torch.empty(shape).bernoulli_(1 - p, generator=member.dropout_generator)
                masks[name].append(noise.div_(1 - p))
        return {name: torch.stack(values).to(self.device) for name, values in masks.items()}

    def _probe_dropout_shapes(self, x: torch.Tensor) -> None:
        """Each dropout input's shape per sample, from one forward pass of one image."""
        self._dropout_shapes = {}
        handles = []
        modules = dict(self.module.named_modules())
        for name, _ in self.dropouts:
            module = modules[name.rsplit(".", 1)[0]]
            handles.append(module.register_forward_hook(
                lambda mod, inp, out, n=name: self._dropout_shapes.__setitem__(n, tuple(out.shape[1:]))))
        self.module.eval()
        with torch.no_grad():
            one = {n: t[0] for n, t in self.params.items()}
            functional_call(self.module, (one, {n: t[0] for n, t in self.buffers.items()}), (x[:1],))
        for handle in handles:
            handle.remove()

    def _step(self, xb, yb, masks):
        """Forward, backward and update of every member on its batch; returns ((G,) loss, (G,) correct)."""
        logits = self._logits(xb, masks)
        losses = self._losses(logits, yb)
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        self._update(grads)
        return losses.detach(), (logits.detach().argmax(-1) == yb).sum(1)

    def _orders(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Each member's permutation of the n training images and, for members that augment,
        its crop indices: drawn from its generator exactly as `trainable.train_epoch` draws them."""
        orders, rows, cols = [], [], []
        for member, augment in zip(self.members, self.augment):
            orders.append(torch.randperm(n, generator=member.solo.generator))
            if augment:
                r, c = trainable.crop_indices(n, member.solo.generator, torch.device("cpu"))
            else:
                r = c = torch.zeros(n, 28, dtype=torch.int64)
            rows.append(r)
            cols.append(c)
        order = torch.stack(orders).to(self.device)
        if not any(self.augment):
            return order, None, None
        return order, torch.stack(rows).to(self.device), torch.stack(cols).to(self.device)

    def _batch(self, x, y, order, rows, cols, start, stop):
        idx = order[:, start:stop]  # (G, B)
        xb, yb = x[idx], y[idx]  # (G, B, 1, 28, 28), (G, B)
        if rows is not None:
            G, B = idx.shape
            augmented = trainable.augment_batch(xb.reshape(G * B, 1, 28, 28), rows[:, start:stop].reshape(G * B, 28),
                                                cols[:, start:stop].reshape(G * B, 28)).view(G, B, 1, 28, 28)
            xb = torch.where(self.augment_mask, augmented, xb)
        return xb, yb

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        """One epoch of every member over (x, y) in its own order; [(mean loss, accuracy)] by slot."""
        if not self.members:
            return []
        batch_size = int(dict(self.key)["batch_size"])
        n = len(y)
        if self.dropouts and not hasattr(self, "_dropout_shapes"):
            self._probe_dropout_shapes(x)
        self.module.train()
        order, rows, cols = self._orders(n)
        G = len(self.members)
        loss_sum = torch.zeros(G, device=x.device)
        correct = torch.zeros(G, dtype=torch.int64, device=x.device)
        full_steps = n // batch_size
        captured = self.capture and not self.dropouts and not self.buffers and full_steps > 3
        start = 0
        for step in range(math.ceil(n / batch_size)):
            stop = min(start + batch_size, n)
            if captured and stop - start == batch_size:
                losses, hits = self._captured_step(x, y, order, rows, cols, start, stop, step)
            else:
                xb, yb = self._batch(x, y, order, rows, cols, start, stop)
                losses, hits = self._step(xb, yb, self._draw_masks(stop - start))
            loss_sum += losses * (stop - start)
            correct += hits
            start = stop
        for member, lr in zip(self.members, self.lr64.tolist()):
            member.steps += math.ceil(n / batch_size)
            member.lr = lr
            member.solo.epoch += 1
        return [(l / n, c / n) for l, c in zip(loss_sum.tolist(), correct.tolist())]

    # ---- CUDA graph -------------------------------------------------------------------
    def _captured_step(self, x, y, order, rows, cols, start, stop, step):
        """Replay the captured step on this batch; the first steps warm up eagerly on a side
        stream (as capture requires), then the step is captured once per group."""
        inputs = (x.data_ptr(), tuple(x.shape), y.data_ptr(), rows is not None)
        if self._graph is not None and self._graph_inputs != inputs:
            self._graph = None  # captured on other tensors: its gathers would read out of bounds
        if self._graph is None:
            if self._warm_steps < 3:
                self._warm_steps += 1
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    xb, yb = self._batch(x, y, order, rows, cols, start, stop)
                    out = self._step(xb, yb, {})
                torch.cuda.current_stream().wait_stream(stream)
                return out
            self._static_idx = order[:, start:stop].clone()
            self._static_order = order
            self._static_rows = None if rows is None else rows[:, start:stop].clone()
            self._static_cols = None if cols is None else cols[:, start:stop].clone()
            self._graph, self._graph_inputs = torch.cuda.CUDAGraph(), inputs
            with torch.cuda.graph(self._graph):
                xb, yb = self._batch(x, y, self._static_idx, self._static_rows,
                                     self._static_cols, 0, stop - start)
                self._static_out = self._step(xb, yb, {})
        self._static_idx.copy_(order[:, start:stop])
        if rows is not None:
            self._static_rows.copy_(rows[:, start:stop])
            self._static_cols.copy_(cols[:, start:stop])
        self._graph.replay()
        losses, hits = self._static_out
        return losses.clone(), hits.clone()

    # ---- evaluation -------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = trainable.EVAL_BATCH_SIZE) -> list[tuple[float, float]]:
        """[(mean loss, accuracy)] by slot over (x, y), every member on the same images."""
        G = len(self.members)
        if not G:
            return []
        self.module.eval()
        call = vmap(self._call, in_dims=(0, 0, None))
        loss_sum = torch.zeros(G, device=x.device)
        correct = torch.zeros(G, dtype=torch.int64, device=x.device)
        loss_fn = trainable.LOSSES[dict(self.key).get("output", "softmax")]
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits = call(self.params, self.buffers, xb)  # (G, B, 10)
            B = len(yb)
            loss_sum += loss_fn(logits.reshape(G * B, -1), yb.repeat(G), reduction="none").view(G, B).sum(1)
            correct += (logits.argmax(-1) == yb).sum(1)
        n = len(y)
        return [(l / n, c / n) for l, c in zip(loss_sum.tolist(), correct.tolist())]
