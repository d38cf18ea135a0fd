"""Fused trial groups: several trials of one shape trained together as one stacked model.

    group = fused.FusedGroup(device)
    a = group.add(config_a)                      # seeded exactly as a solo trial of config_a
    b = group.add(config_b, checkpoint_state)    # or from a solo trial's checkpoint
    rows = group.train_epoch(x, y)               # one epoch of every member: [(loss, acc)] by slot
    vals = group.evaluate(val_x, val_y)          # [(loss, acc)] by slot
    group.state_dict(a)                          # the solo checkpoint format (`TrainingState`)
    group.remove(b)

Members share every key that fixes a tensor's shape (`shape_key`: the model and its
options, batch size, optimizer type, output) and train on the same preloaded tensors.
Everything else is per member: lr, momentum, weight decay, lr decay, seed, init, batch
order, augmentation draws and dropout masks. The stacked parameters are (G, ...) tensors,
and `GroupedForward` runs them as HFTA (MLSys 2021) does by hand: member g's channels are
channels g*C..(g+1)*C-1 of one activation, so each convolution is one grouped convolution
and each linear layer one batched matmul. Each member's loss is its own batch mean, so the
gradient of their sum is every member's own gradient; the optimizers are SGD and Adam in
torch.optim's arithmetic over the stacked state, with per-member hyperparameters.

A member draws its batch order, augmentation and dropout masks from the same generators,
in the same order, as `solo.fit` does for the same config alone, so its curve equals
the solo curve to float32 rounding, and `state_dict` / `add(config, state)` move a trial
between a group and a solo process at any epoch boundary.

On CUDA the step can be captured as a CUDA graph (`capture=True`): forward, backward,
optimizer and the metric sums replay as one launch. The graph has a fixed batch size;
a short last batch runs eagerly. Groups with dropout are not captured (each member's
masks are drawn on the host from its own generator).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from tunefm.engine import devices, loops, models, training, trial_config

# Config keys that change no tensor's shape: they may differ within a group.
PER_MEMBER_KEYS = trial_config.PER_MEMBER_KEYS
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as solo trials use
WARM_STEPS = 3  # eager steps before a CUDA graph is captured (cuBLAS/cuDNN set-up, autograd's buffers)


def shape_key(config: dict) -> tuple:
    """What members of one group must share: every key but the per-member ones, with the
    model's option defaults filled (so `dropout=0.5` and an omitted default group together)."""
    spec = models.get(config["model"])
    options = spec.check_options({k: v for k, v in config.items() if k in spec.options})
    shared = {k: v for k, v in config.items() if k not in PER_MEMBER_KEYS and k not in spec.options}
    shared.setdefault("optimizer", "sgd")
    shared.setdefault("output", "softmax")
    return tuple(sorted({**shared, **options}.items(), key=lambda kv: kv[0]))


class NotFusable(ValueError):
    """The model has a layer the grouped forward does not know."""


def leaf_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) in forward order; containers must be nn.Sequential."""
    if isinstance(module, nn.Sequential):
        return [leaf for name, child in module.named_children()
                for leaf in leaf_layers(child, f"{prefix}{name}.")]
    if list(module.children()):
        raise NotFusable(f"{type(module).__name__} is not an nn.Sequential")
    return [(prefix.rstrip("."), module)]


class GroupedForward:
    """The stacked model's forward as HFTA writes it by hand: member g's channels are
    channels g*C..(g+1)*C-1 of one (B, G*C, H, W) activation, so a convolution is one
    grouped convolution (groups=G), batch norm one batch norm over G*C channels, pooling
    and ReLU act on it unchanged; after Flatten the activation is (G, B, F) and a linear
    layer is one batched matmul."""

    LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.ReplicationPad2d, nn.Flatten, nn.Linear,
              nn.Dropout)

    def __init__(self, module: nn.Module):
        self.layers = leaf_layers(module)
        for name, layer in self.layers:
            if not isinstance(layer, self.LAYERS):
                raise NotFusable(f"layer {name} ({type(layer).__name__}) has no grouped form")
            if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or layer.groups != 1):
                raise NotFusable(f"layer {name}: only zero-padded, ungrouped convolutions are fused")
            if isinstance(layer, nn.BatchNorm2d) and (layer.momentum is None or not layer.track_running_stats):
                raise NotFusable(f"layer {name}: batch norm needs a momentum and running statistics")
        # Masks for the layers that drop anything (a p=0 layer draws none, alone or fused).
        self.dropouts = [(name, layer.p) for name, layer in self.layers if isinstance(layer, nn.Dropout) and layer.p > 0]
        flat = False
        for name, layer in self.layers:
            flat = flat or isinstance(layer, nn.Flatten)
            if isinstance(layer, nn.Dropout) and not flat:
                raise NotFusable(f"layer {name}: dropout is fused only after Flatten")

    def __call__(self, params: dict, buffers: dict, masks: dict, x: torch.Tensor, members: int,
                 training: bool) -> torch.Tensor:
        """x: (G, B, 1, 28, 28) per member, or (B, 1, 28, 28) shared by all; -> (G, B, 10)."""
        G = members
        shared = x.dim() == 4
        B = x.shape[0] if shared else x.shape[1]
        flat = isinstance(self.layers[0][1], nn.Flatten)
        if flat:
            x = x.reshape(B, -1).expand(G, B, -1) if shared else x.reshape(G, B, -1)
        elif shared:  # (B, C, H, W) -> (B, G*C, H, W), every member's channels the same images
            x = x.repeat(1, G, 1, 1)
        else:  # (G, B, C, H, W) -> (B, G*C, H, W)
            x = x.transpose(0, 1).reshape(B, -1, *x.shape[3:])
        for name, layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                weight = params[f"{name}.weight"]
                bias = params.get(f"{name}.bias")
                x = nn.functional.conv2d(x, weight.reshape(-1, *weight.shape[2:]),
                                         None if bias is None else bias.reshape(-1),
                                         layer.stride, layer.padding, layer.dilation, groups=G)
            elif isinstance(layer, nn.BatchNorm2d):
                x = nn.functional.batch_norm(
                    x, buffers[f"{name}.running_mean"].view(-1), buffers[f"{name}.running_var"].view(-1),
                    params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1),
                    training, layer.momentum, layer.eps)
                if training:
                    buffers[f"{name}.num_batches_tracked"].add_(1)
            elif isinstance(layer, nn.ReLU):
                x = nn.functional.relu(x)
            elif isinstance(layer, nn.MaxPool2d):
                x = nn.functional.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                             layer.ceil_mode)
            elif isinstance(layer, nn.ReplicationPad2d):
                x = nn.functional.pad(x, layer.padding, mode="replicate")
            elif isinstance(layer, nn.Flatten):
                if not flat:
                    x = x.reshape(B, G, -1).transpose(0, 1)  # (B, G*C, H, W) -> (G, B, C*H*W)
                    flat = True
            elif isinstance(layer, nn.Linear):
                bias = params.get(f"{name}.bias")
                weight = params[f"{name}.weight"].transpose(1, 2)  # (G, in, out)
                x = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
            elif isinstance(layer, nn.Dropout):
                if training and layer.p > 0:
                    x = x * masks[name]
        return x


@dataclass
class Member:
    """One trial inside a group: its config, its solo training state (the template its
    checkpoints are written through) and its generators."""

    config: dict
    solo: training.TrainingState  # weights and optimizer here are stale between exports; its
    # generators (batch order and augmentation; dropout masks) are the member's own, as a solo trial's
    has_momentum: bool = False  # the solo optimizer holds momentum buffers (SGD has stepped)
    member_id: str = ""
    steps: int = 0  # optimizer steps taken
    lr: float = 0.0  # the current lr, after decay


def _on_own_device(method):
    """Run a FusedGroup method with its device current (streams, graphs and caches on it)."""

    @functools.wraps(method)
    def on_device(self, *args, **kwargs):
        with devices.bound(self.device):
            return method(self, *args, **kwargs)

    return on_device


class FusedGroup:
    """G trials of one shape as one stacked model on one device."""

    def __init__(self, device: torch.device, capture: bool = False, onednn: bool = True):
        self.device = device
        self.capture = capture and device.type == "cuda"
        self.onednn = onednn  # CPU: oneDNN's grouped convolutions, or PyTorch's own (faster for tiny ones)
        self.members: list[Member] = []
        self.key: tuple | None = None
        self.module: nn.Module | None = None  # the architecture, its tensors replaced at every call
        self.dropouts: list[tuple[str, float]] = []
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.optimizer_state: dict[str, dict[str, torch.Tensor]] = {}
        self._graph = None
        self.ran = "captured" if self.capture else "native_conv" if not onednn else "plain"  # the last epoch's
        self.variant, self.id = self.ran, ""  # how an executor made it, and its name there
        self.solo_loop: str | None = None  # set where the group is one trial's own loop (captured)

    # ---- membership -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.members)

    @_on_own_device
    def add(self, config: dict, state: dict | None = None, member_id: str | None = None) -> int:
        """A new member, fresh (seeded as `training.init_state` seeds a solo trial) or from
        a solo checkpoint's `state`; returns its slot. `member_id` names it (`slot_of`)."""
        key = shape_key(config)
        if self.key is not None and key != self.key:
            raise ValueError("a fused group's members must share every shape key")
        solo = training.init_state(config, self.device)
        if state is not None:
            solo.load_state_dict(state)
        member = Member(dict(config), solo, has_momentum=bool(solo.optimizer.state),
                        member_id=member_id if member_id is not None else str(len(self.members)))
        member.lr = solo.optimizer.param_groups[0]["lr"]
        member.steps = solo.scheduler.last_epoch if solo.scheduler is not None else self._adam_steps(solo)
        if self.module is None:
            self.key = key
            self.module = training.build_model(config).to(self.device)  # for its layers' settings and shapes
            self.grouped = GroupedForward(self.module)
            self.dropouts = self.grouped.dropouts
        self._sync_out()
        self.members.append(member)
        self._stack()
        return len(self.members) - 1

    @property
    def member_ids(self) -> list[str]:
        return [m.member_id for m in self.members]

    def slot_of(self, member_id: str) -> int:
        return self.member_ids.index(member_id)

    @_on_own_device
    def remove(self, slot: int) -> None:
        self._sync_out()
        del self.members[slot]
        self._stack()

    def state_dict(self, slot: int) -> dict:
        """Member `slot` as a solo trial's checkpoint (`TrainingState.state_dict`)."""
        return self.state_dicts()[slot]

    @_on_own_device
    def state_dicts(self) -> list[dict]:
        """Every member as a solo trial's checkpoint, by slot."""
        self._sync_out()
        return [member.solo.state_dict() for member in self.members]

    def set_epoch(self, slot: int, epoch: int) -> None:
        self.members[slot].solo.epoch = epoch

    def epoch(self, slot: int) -> int:
        return self.members[slot].solo.epoch

    @staticmethod
    def _adam_steps(solo: training.TrainingState) -> int:
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
                elif group["momentum"] != 0 and (member.steps or member.has_momentum):
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
        self.any_weight_decay = any(c.get("weight_decay", 0.0) for c in cfg)
        self.any_momentum = any(c.get("momentum", 0.0) for c in cfg)
        self.any_decay = any(float(c.get("lr_decay", 1.0)) < 1.0 for c in cfg)
        self.augment = [bool(c.get("augment", False)) for c in cfg]
        self.augment_mask = torch.tensor(self.augment, device=self.device).view(-1, 1, 1, 1, 1)

    # ---- training ---------------------------------------------------------------------
    def _logits(self, xb: torch.Tensor, masks: dict[str, torch.Tensor], training: bool = True) -> torch.Tensor:
        """(G, B, 1, 28, 28) per member, or (B, 1, 28, 28) shared -> (G, B, 10), each member through its own weights."""
        return self.grouped(self.params, self.buffers, masks, xb, len(self.members), training)

    def _losses(self, logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """(G, B, 10), (G, B) -> (G,): each member's mean loss over its batch."""
        G, B, C = logits.shape
        loss_fn = training.LOSSES[dict(self.key).get("output", "softmax")]
        return loss_fn(logits.reshape(G * B, C), yb.reshape(G * B), reduction="none").view(G, B).mean(1)

    @torch.no_grad()
    def _update(self, grads: list[torch.Tensor]) -> None:
        """One optimizer step of every member, in torch.optim's single-tensor SGD / Adam
        arithmetic with per-member hyperparameters; terms every member has at zero are skipped."""
        self.steps += 1
        adam = self.optimizer == "adam"
        if adam:
            beta1, beta2 = ADAM_BETAS
            bias2_sqrt = (1 - beta2 ** self.steps).sqrt().float()
            neg_step = (-self.lr64 / (1 - beta1 ** self.steps)).float()  # float64 first, as torch's Python floats
        else:
            neg_lr = (-self.lr64).float()
        for (name, param), grad in zip(self.params.items(), grads):  # grad: autograd's fresh tensor, ours to change
            per_member = lambda values: values.view(-1, *([1] * (param.dim() - 1)))  # (G,) -> (G, 1, ...)
            if self.any_weight_decay:
                grad.addcmul_(per_member(self.weight_decay), param)
            state = self.optimizer_state[name]
            if adam:
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / per_member(bias2_sqrt)).add_(ADAM_EPS)
                param.addcmul_(per_member(neg_step), state["exp_avg"] / denom)
            else:
                if self.any_momentum:
                    grad = state["momentum_buffer"].mul_(per_member(self.momentum)).add_(grad)  # first step: 0 * 0 + grad
                param.addcmul_(per_member(neg_lr), grad)
        if self.any_decay:
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
                masks[name].append(training.dropout_mask(shape, p, member.solo.dropout_generator))
        return {name: torch.stack(values).to(self.device) for name, values in masks.items()}

    def _probe_dropout_shapes(self, x: torch.Tensor) -> None:
        """Each dropout input's shape per sample, from one forward pass of one image."""
        self._dropout_shapes = {}
        handles = []
        modules = dict(self.module.named_modules())
        for name, _ in self.dropouts:
            module = modules[name]
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
        its crop indices: drawn from its generator exactly as `training.train_epoch` draws them."""
        orders, rows, cols = [], [], []
        for member, augment in zip(self.members, self.augment):
            orders.append(torch.randperm(n, generator=member.solo.generator))
            if augment:
                r, c = training.crop_indices(n, member.solo.generator, torch.device("cpu"))
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
            augmented = training.augment_batch(xb.reshape(G * B, 1, 28, 28), rows[:, start:stop].reshape(G * B, 28),
                                                cols[:, start:stop].reshape(G * B, 28)).view(G, B, 1, 28, 28)
            xb = torch.where(self.augment_mask, augmented, xb)
        return xb, yb

    @_on_own_device
    def train_epoch(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> list[tuple[float, float]]:
        """One epoch of every member over (x, y) in its own order; [(mean loss, accuracy)] by slot.
        `steps`: stop after that many batches (calibration: the same tensors, a shorter pass)."""
        if not self.members:
            return []
        batch_size = int(dict(self.key)["batch_size"])
        n = len(y)
        trained = n if steps is None else min(n, steps * batch_size)
        if self.dropouts and not hasattr(self, "_dropout_shapes"):
            self._probe_dropout_shapes(x)
        self.module.train()
        order, rows, cols = self._orders(n)
        G = len(self.members)
        loss_sum = torch.zeros(G, device=x.device)
        correct = torch.zeros(G, dtype=torch.int64, device=x.device)
        full_steps = n // batch_size
        captured = self.capture and not self.dropouts and full_steps > WARM_STEPS
        # What this epoch really ran, as a trial reports it (`execution`).
        self.ran = "captured" if captured else "native_conv" if self.device.type == "cpu" and not self.onednn else "plain"
        with loops.onednn(self.onednn):
            for start in range(0, trained, batch_size):
                stop = min(start + batch_size, n)
                if captured and stop - start == batch_size:
                    losses, hits = self._captured_step(x, y, order, rows, cols, start, stop)
                else:  # a short last batch runs eagerly: the graph's shapes are fixed
                    xb, yb = self._batch(x, y, order, rows, cols, start, stop)
                    losses, hits = self._step(xb, yb, self._draw_masks(stop - start))
                loss_sum += losses * (stop - start)
                correct += hits
        for member, lr in zip(self.members, self.lr64.tolist()):
            member.steps += math.ceil(trained / batch_size)
            member.lr = lr
            member.solo.epoch += 1
        return [(l / trained, c / trained) for l, c in zip(loss_sum.tolist(), correct.tolist())]

    # ---- CUDA graph -------------------------------------------------------------------
    def _captured_step(self, x, y, order, rows, cols, start, stop):
        """Replay the captured step on this batch. The first WARM_STEPS steps after a change of
        members run eagerly on a side stream (as capture requires), then the step is captured."""
        inputs = (x.data_ptr(), tuple(x.shape), y.data_ptr(), rows is not None)
        if self._graph is not None and self._graph_inputs != inputs:
            self._graph = None  # captured on other tensors: its gathers would read out of bounds
        if self._graph is None:
            if self._warm_steps < WARM_STEPS:
                self._warm_steps += 1
                stream = devices.side_stream(self.device)
                with devices.on_stream(stream):
                    xb, yb = self._batch(x, y, order, rows, cols, start, stop)
                    out = self._step(xb, yb, {})
                devices.join_stream(stream, self.device)
                return out
            self._static_idx = order[:, start:stop].clone()
            self._static_rows = None if rows is None else rows[:, start:stop].clone()
            self._static_cols = None if cols is None else cols[:, start:stop].clone()
            self._graph, self._graph_inputs = devices.new_graph(), inputs
            with devices.capturing(self._graph, self.device, devices.side_stream(self.device)):
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
    @_on_own_device
    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = training.EVAL_BATCH_SIZE) -> list[tuple[float, float]]:
        """[(mean loss, accuracy)] by slot over (x, y), every member on the same images."""
        G = len(self.members)
        if not G:
            return []
        batch_size = max(128, batch_size // G)  # every member's activations at once
        loss_sum = torch.zeros(G, device=x.device)
        correct = torch.zeros(G, dtype=torch.int64, device=x.device)
        loss_fn = training.LOSSES[dict(self.key).get("output", "softmax")]
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            with loops.onednn(self.onednn):
                logits = self._logits(xb, {}, training=False)  # (G, B, 10)
            B = len(yb)
            loss_sum += loss_fn(logits.reshape(G * B, -1), yb.repeat(G), reduction="none").view(G, B).sum(1)
            correct += (logits.argmax(-1) == yb).sum(1)
        n = len(y)
        return [(l / n, c / n) for l, c in zip(loss_sum.tolist(), correct.tolist())]
