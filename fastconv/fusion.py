""":func:`convert`: a ``torch.fx`` pass that moves a model's convolutions, BatchNorms,
activations, residual adds and poolings onto fastconv.

The model is traced with :func:`torch.fx.symbolic_trace` semantics and its graph rewritten:

* ``nn.Identity`` calls are dropped from the graph (they compute nothing);
* each chain ``conv -> [BatchNorm2d] -> [activation]`` or ``conv -> [BatchNorm2d] ->
  [eval identities] -> [add(., residual)] -> [activation]`` (what a node is comes from the
  tables in :mod:`fastconv.patterns`) becomes one call of a fused module at the
  convolution's name: :class:`fastconv.conv_bn.Conv2dBatchNormAct` with a BatchNorm (which
  it receives per call, as it does the eval identities, so they stay registered at their own
  names), else :class:`fastconv.layers.Conv2dAct`. A norm-act layer (timm's
  ``BatchNormAct2d``) is a BatchNorm whose own activation, if any, ends the chain. Eval
  identities (dropout, stochastic depth) join a chain only after a BatchNorm and before an
  add or activation that fuses. A step fuses only if the node before it has exactly one
  user, and the fused call is placed where the chain's last node was;
* other ``nn.Conv2d`` and the pooling modules become the fastconv layers, and
  ``F.conv2d``/pooling function calls the :mod:`fastconv.functional` ones.

Modules with hooks and subclasses of the handled classes are not traced into and stay as
they are. A model FX cannot trace (data-dependent control flow, ...) or whose traced graph
would lose hooks or ``state_dict`` entries falls back to :func:`fastconv.module_swap.swap_modules`.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections import Counter, defaultdict

from torch import fx, nn

from fastconv import layers
from fastconv.conv_bn import Conv2dBatchNormAct
from fastconv.module_swap import hooks_reason, swap_modules
from fastconv.patterns import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ADD_FUNCTIONS,
    ADD_METHODS,
    BATCHNORM_MODULES,
    CONV_FUNCTIONS,
    FUSABLE_CONV_MODULES,
    POOL_FUNCTIONS,
    POOL_MODULES,
    Recognized,
    argument,
    recognized,
)
from fastconv.report import ConversionReport

__all__ = ["ConversionReport", "convert"]

_FASTCONV_MODULES = (layers.Conv2d, *POOL_MODULES.values())
_HANDLED_BASES = (nn.Conv2d, *BATCHNORM_MODULES, *POOL_MODULES)


def _keep_reason(module: nn.Module, known: Recognized) -> str | None:
    """Why ``module`` must be kept as it is (hooks, or a subclass of a handled class that
    is not one of the ``known`` ones)."""
    reason = hooks_reason(module)
    if reason is not None or isinstance(module, _FASTCONV_MODULES):
        return reason
    base = next((b for b in _HANDLED_BASES if isinstance(module, b)), None)
    allowed = (base, *FUSABLE_CONV_MODULES, *known.batchnorm_modules)
    if base is not None and type(module) not in allowed:
        return f"{type(module).__name__} subclasses nn.{base.__name__}; kept as is"
    return None


def _reads_training(module: nn.Module) -> bool:
    """Whether ``module``'s forward reads ``self.training`` (a trace would freeze the mode)."""
    try:
        return "self.training" in inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False


class _Tracer(fx.Tracer):
    """``symbolic_trace``'s tracer that also keeps as single ``call_module`` nodes: fastconv
    layers, the modules :func:`_keep_reason` names, the classes the patterns match whole
    (timm's activations, norm-act layers and ``DropPath`` included), and modules without
    convolutions whose forward reads ``self.training`` (torchvision's ``StochasticDepth``),
    so that they follow the mode at call time. Others that read it are traced into and noted
    in the report."""

    def __init__(self, known: Recognized | None = None) -> None:  # unpickling passes none
        super().__init__()
        self.known = recognized() if known is None else known
        self.leaves = self.known.leaves()
        self.frozen_mode: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if (
            isinstance(m, _FASTCONV_MODULES)
            or type(m) in self.leaves
            or _keep_reason(m, self.known) is not None
            or super().is_leaf_module(m, module_qualified_name)
        ):
            return True
        if not _reads_training(m):
            return False
        if not any(isinstance(sub, _HANDLED_BASES) for sub in m.modules()):
            return True
        self.frozen_mode.append(module_qualified_name or type(m).__name__)
        return False


def _trace(model: nn.Module, known: Recognized) -> tuple[fx.GraphModule, list[str]]:
    """The GraphModule of ``model`` and the modules whose training branches it froze."""
    tracer = _Tracer(known)
    graph = tracer.trace(model)
    if _reads_training(model):
        tracer.frozen_mode.append(type(model).__name__)
    if not tracer.frozen_mode:
        node = _first_mode_dependent_node(model, known, graph)
        if node is not None:
            tracer.frozen_mode.append(f"the code that calls {node}")
    return fx.GraphModule(model, graph, class_name=type(model).__name__), tracer.frozen_mode


def _node_key(node: fx.Node | None) -> tuple | None:
    return None if node is None else (node.op, node.target, repr(node.args), repr(node.kwargs))


def _first_mode_dependent_node(model: nn.Module, known: Recognized, graph: fx.Graph) -> str | None:
    """The first node of ``graph`` that a trace of ``model`` in the other mode changes (code
    outside ``forward`` that reads ``self.training``, such as timm's ``forward_head`` calling
    ``F.dropout(x, training=self.training)``), or None. Each module's ``training`` flag is
    flipped for that trace and restored after it (``train()`` is not called: an override
    may do more)."""
    flags = {module: module.training for module in model.modules()}
    try:
        for module, flag in flags.items():
            module.training = not flag
        other = _Tracer(known).trace(model)
    except Exception:  # the other mode does not trace: nothing to compare
        return None
    finally:
        for module, flag in flags.items():
            module.training = flag
    for node, other_node in itertools.zip_longest(graph.nodes, other.nodes):
        if _node_key(node) != _node_key(other_node):
            node = node or other_node
            return f"{node.name} ({getattr(node.target, '__name__', node.target)})"
    return None


class _Rewriter:
    """Rewrites one traced GraphModule in place and fills the report."""

    def __init__(self, gm: fx.GraphModule, report: ConversionReport, known: Recognized) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.report = report
        self.known = known
        self.modules = dict(gm.named_modules())
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        self.why: dict[fx.Node, str] = {}  # node left to torch -> reason
        self.erased: set[fx.Node] = set()
        self.skipped: dict[str, list[str]] = defaultdict(list)  # eval identity class -> names

    # ------------------------------------------------------------------ classification

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def activation_of(self, module: nn.Module | None) -> tuple[str, float] | None | bool:
        """As :meth:`activation`, for a module."""
        spec = self.known.activation_modules.get(type(module))
        return False if spec is None else spec(module)

    def activation(self, node: fx.Node) -> tuple[str, float] | None | bool:
        """``(name, slope)`` for a fusable activation, False if not an activation, None
        for an activation the epilogue does not compute."""
        if node.op == "call_module":
            return self.activation_of(self.module(node))
        if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
            return ACTIVATION_FUNCTIONS[node.target](node.args, node.kwargs)
        if node.op == "call_method" and node.target in ACTIVATION_METHODS:
            return ACTIVATION_METHODS[node.target](node.args, node.kwargs)
        return False

    def add_inplace(self, node: fx.Node) -> bool | None:
        """Whether an add writes into its first operand; None if ``node`` is no plain add."""
        if node.op == "call_function" and node.target in ADD_FUNCTIONS:
            inplace = ADD_FUNCTIONS[node.target]
        elif node.op == "call_method" and node.target in ADD_METHODS:
            inplace = ADD_METHODS[node.target]
        else:
            return None
        alpha = node.kwargs.get("alpha", 1)
        return inplace if len(node.args) == 2 and alpha == 1 else None

    def is_norm_act(self, module: nn.Module | None) -> bool:
        return type(module) in self.known.norm_act_modules

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            module = self.module(node)
            if self.is_norm_act(module) and type(getattr(module, "act", None)) is not nn.Identity:
                return f"{node.target} ({type(module).__name__} with {type(module.act).__name__})"
            return f"{node.target} ({type(module).__name__})"
        if node.op == "call_function":
            return f"{node.name} ({getattr(node.target, '__name__', node.target)})"
        if node.op == "call_method":
            return f"{node.name} (.{node.target}())"
        return "the model input" if node.op == "placeholder" else node.name

    @staticmethod
    def input_of(node: fx.Node) -> fx.Node | None:
        value = argument(node.args, node.kwargs, 0, "input")
        return value if isinstance(value, fx.Node) else None

    # ------------------------------------------------------------------ chains

    def next_in_chain(self, node: fx.Node) -> fx.Node | None:
        """The single user of ``node``; None (recording why) if it has several."""
        users = list(node.users)
        if len(users) == 1:
            return users[0]
        for user in users:
            self.why.setdefault(
                user,
                f"follows {self.describe(node)}, whose output has {len(users)} users "
                "(fusing would change what the others see)",
            )
        return None

    def fusable_bn(self, node: fx.Node, conv: nn.Conv2d) -> bool:
        bn = self.module(node)
        if not isinstance(bn, self.known.batchnorm_modules) or self.input_of(node) is None:
            return False
        reason = _keep_reason(bn, self.known)
        if reason is None and bn.running_mean is None:
            reason = (
                "track_running_stats=False: it normalizes with the batch's statistics in "
                "eval mode too, which no epilogue can fold"
            )
        if reason is None and bn.running_mean.shape[0] != conv.out_channels:
            reason = f"{bn.running_mean.shape[0]} features after {conv.out_channels} channels"
        if reason is None and self.is_norm_act(bn):
            reason = self.norm_act_reason(bn)
        if reason is not None:
            self.why[node] = reason
        return reason is None

    def norm_act_reason(self, bn: nn.Module) -> str | None:
        """Why the norm-act layer ``bn`` cannot be folded (its ``drop`` and ``act`` would
        not run as they did), or None."""
        for name in ("drop", "act"):
            sub = getattr(bn, name, None)
            if not isinstance(sub, nn.Module):
                return f"a norm-act layer without a {name} module"
            hooks = hooks_reason(sub)
            if hooks is not None:
                return f"its {name} ({type(sub).__name__}) {hooks}"
        drop = bn.drop
        if type(drop) is not nn.Identity and type(drop) not in self.known.eval_identity_modules:
            return f"its drop ({type(drop).__name__}) is not known to be the identity in eval mode"
        return None

    def norm_activation(self, node: fx.Node) -> tuple[str, float] | None:
        """The fusable activation of the folded norm-act layer ``node`` calls; None (its
        ``act`` then runs after the kernel, which the report says) if it has none."""
        act = self.module(node).act
        spec = self.activation_of(act)
        if spec is None:
            self.report.activations += 1
            self.report.left_to_torch.append(
                (f"{node.target}.act", "an activation the fused epilogue does not compute; "
                 "runs after the folded convolution")
            )  # fmt: skip
        return spec or None

    def eval_identity(self, node: fx.Node | None, source: fx.Node) -> bool:
        """Whether ``node`` calls a module that is the identity in eval mode on ``source``."""
        if node is None or self.input_of(node) is not source:
            return False
        module = self.module(node)
        return type(module) in self.known.eval_identity_modules and hooks_reason(module) is None

    def fusable_activation(self, node: fx.Node, source: fx.Node) -> tuple[str, float] | None:
        spec = self.activation(node)
        if spec is False or self.input_of(node) is not source:
            return None
        reason = hooks_reason(self.module(node)) if node.op == "call_module" else None
        if spec is None:
            reason = "an activation the fused epilogue does not compute"
        if reason is not None:
            self.why[node] = reason
            return None
        return spec

    def residual_of(self, node: fx.Node, source: fx.Node) -> fx.Node | None:
        """The other operand if ``node`` adds ``source`` to another tensor in a way the
        epilogue reproduces (``source`` must be the one an in-place add writes into)."""
        inplace = self.add_inplace(node)
        if inplace is None or source not in node.args[:2]:
            return None
        first, second = node.args[:2]
        other = second if first is source else first
        if not isinstance(other, fx.Node) or other is source or other.op == "get_attr":
            return None
        if inplace and first is not source:
            self.why.setdefault(node, "writes into the other operand in place")
            return None
        return other

    def fuse_chain(self, conv_node: fx.Node, conv: nn.Conv2d) -> None:
        """Match the chain after ``conv_node`` and put one fused module call in its place."""
        chain, bn_node, activation, residual = [conv_node], None, None, None
        identities: list[fx.Node] = []  # eval identities in the chain
        pending: list[fx.Node] = []  # eval identities that join it if an add or act follows
        norm_act = in_norm = False
        user = self.next_in_chain(conv_node)
        if user is not None and self.fusable_bn(user, conv):
            bn_node = user
            chain.append(user)
            bn = self.module(user)
            norm_act = self.is_norm_act(bn)
            user = self.next_in_chain(user)
            if norm_act and type(bn.act) is not nn.Identity:  # its activation ends the chain
                activation = self.norm_activation(bn_node)
                in_norm, user = activation is not None, None
            while self.eval_identity(user, (pending or chain)[-1]):
                pending.append(user)
                user = self.next_in_chain(user)
        if user is not None:
            residual = self.residual_of(user, (pending or chain)[-1])
            if residual is not None:
                chain += [*pending, user]
                identities, pending = identities + pending, []
                user = self.next_in_chain(user)
        if user is not None:
            activation = self.fusable_activation(user, (pending or chain)[-1])
            if activation is not None:
                chain += [*pending, user]
                identities, pending = identities + pending, []
        name, slope = activation or ("identity", 0.01)
        if bn_node is not None:
            fused = Conv2dBatchNormAct.from_torch(
                conv, activation=name, negative_slope=slope, norm_act=norm_act,
                activation_in_norm=in_norm,
            )  # fmt: skip
        elif len(chain) > 1:
            fused = layers.Conv2dAct.from_torch(conv, activation=name, negative_slope=slope)
        else:
            fused = conv if type(conv) is layers.Conv2d else layers.Conv2d.from_torch(conv)
        self.set_module(conv_node.target, fused)
        if len(chain) == 1:
            return
        last = chain[-1]
        with self.graph.inserting_before(last):
            args = (self.input_of(conv_node),)
            if bn_node is not None:
                args += (self.graph.get_attr(bn_node.target),)
            kwargs = {} if residual is None else {"residual": residual}
            if identities:
                kwargs["identities"] = tuple(self.graph.get_attr(n.target) for n in identities)
            new = self.graph.call_module(conv_node.target, args, kwargs)
        last.replace_all_uses_with(new)
        for node in reversed(chain):
            self.graph.erase_node(node)
        self.erased.update(chain)
        self.report.batchnorms_folded += bn_node is not None
        self.report.adds_fused += residual is not None
        self.report.activations_fused += activation is not None
        skipped = [(n.target, type(self.module(n)).__name__) for n in identities]
        if norm_act and type(bn.drop) is not nn.Identity:
            skipped.insert(0, (f"{bn_node.target}.drop", type(bn.drop).__name__))
        for target, class_name in skipped:
            self.skipped[class_name].append(target)
        self.report.identities_skipped += len(skipped)
        names = [self.describe(node) for node in chain]
        if norm_act and not in_norm and type(bn.act) is not nn.Identity:
            names[1] += ", whose act runs after the kernel"
        self.report.fused.append((conv_node.target, " -> ".join(names)))

    def set_module(self, target: str, module: nn.Module) -> None:
        parent, _, name = target.rpartition(".")
        setattr(self.gm.get_submodule(parent), name, module)
        self.modules[target] = module

    # ------------------------------------------------------------------ the pass

    def conv_reason(self, node: fx.Node, conv: nn.Module) -> str | None:
        """Why the convolution ``node`` calls cannot become a fastconv module, or None."""
        reason = _keep_reason(conv, self.known)
        if reason is None and type(conv) not in FUSABLE_CONV_MODULES:
            reason = f"{type(conv).__name__} is not converted"
        if reason is None:
            try:
                layers.Conv2d.from_torch(conv)
            except ValueError as error:
                reason = str(error)
        if reason is None and self.input_of(node) is None:
            reason = "called without an input tensor"
        return reason

    def convert_conv(self, node: fx.Node, conv: nn.Module) -> None:
        reason = self.conv_reason(node, conv)
        if reason is not None:
            self.report.left_to_torch.append((node.target, reason))
            for user in node.users:
                self.why.setdefault(user, f"follows {self.describe(node)}, left to torch")
            return
        self.report.convs_fastconv += 1
        if self.calls[node.target] > 1:
            for user in node.users:
                self.why.setdefault(
                    user, f"follows {node.target}, called from {self.calls[node.target]} places"
                )
            if type(conv) is nn.Conv2d:
                self.set_module(node.target, layers.Conv2d.from_torch(conv))
            return
        self.fuse_chain(node, conv)

    def run(self) -> None:
        report = self.report
        self.drop_identities()
        for node in list(self.graph.nodes):
            if node in self.erased:
                continue
            module = self.module(node)
            if isinstance(module, nn.Conv2d):
                report.convs += 1
                if isinstance(module, layers.Conv2d) and type(module) is not layers.Conv2d:
                    report.convs_fastconv += 1  # already fused (Conv2dAct, Conv2dReLU...)
                else:
                    self.convert_conv(node, module)
            elif isinstance(module, tuple(POOL_MODULES)):
                report.pools += 1
                self.convert_pool(node, module)
            elif node.op == "call_function" and node.target in CONV_FUNCTIONS:
                report.convs += 1
                report.convs_fastconv += 1
                node.target = CONV_FUNCTIONS[node.target]
            elif node.op == "call_function" and node.target in POOL_FUNCTIONS:
                report.pools += 1
                report.pools_fastconv += 1
                node.target = POOL_FUNCTIONS[node.target]
            elif module is not None:
                self.count_inside(node, module)
        self.report_unfused()
        for class_name, names in self.skipped.items():
            report.notes.append(
                f"{len(names)} {class_name} (the identity in eval mode) fused into the chain "
                f"before them: skipped while in eval mode, run while training: {', '.join(names)}"
            )

    def drop_identities(self) -> None:
        """Take the ``nn.Identity`` calls (without hooks) out of the graph."""
        dropped = 0
        for node in list(self.graph.nodes):
            module = self.module(node)
            source = self.input_of(node)
            if type(module) is nn.Identity and hooks_reason(module) is None and source is not None:
                node.replace_all_uses_with(source)
                self.graph.erase_node(node)
                dropped += 1
        if dropped:
            self.report.notes.append(
                f"{dropped} nn.Identity calls dropped from the graph (they compute nothing)"
            )

    def convert_pool(self, node: fx.Node, pool: nn.Module) -> None:
        reason = None if isinstance(pool, _FASTCONV_MODULES) else _keep_reason(pool, self.known)
        if reason is not None:
            self.report.left_to_torch.append((node.target, reason))
            return
        self.report.pools_fastconv += 1
        if not isinstance(pool, _FASTCONV_MODULES):
            self.set_module(node.target, POOL_MODULES[type(pool)].from_torch(pool))

    def count_inside(self, node: fx.Node, module: nn.Module) -> None:
        """Count the convolutions and poolings inside a module kept as one node."""
        convs = sum(isinstance(m, nn.Conv2d) for m in module.modules())
        pools = sum(isinstance(m, tuple(POOL_MODULES)) for m in module.modules())
        if convs or pools:
            self.report.convs += convs
            self.report.pools += pools
            reason = _keep_reason(module, self.known) or "not traced into"
            self.report.left_to_torch.append(
                (node.target, f"{convs} convolutions, {pools} poolings inside: {reason}")
            )

    def report_unfused(self) -> None:
        """Count the BatchNorms and activations left in the graph and say why each is."""
        for node in self.graph.nodes:
            bn = self.module(node)
            is_bn = isinstance(bn, self.known.batchnorm_modules)
            if not is_bn and self.activation(node) is False:
                continue
            if is_bn:
                self.report.batchnorms += 1
            else:
                self.report.activations += 1
            source = self.input_of(node)
            default = f"follows {self.describe(source) if source else 'a constant'}, "
            default += "not a convolution" if is_bn else "not a convolution or a fused chain"
            name = node.target if node.op == "call_module" else node.name
            self.report.left_to_torch.append((name, self.why.get(node, default)))
            if is_bn and self.is_norm_act(bn) and self.activation_of(bn.act) is not False:
                self.report.activations += 1
                self.report.left_to_torch.append(
                    (f"{name}.act", f"inside {self.describe(node)}, left to torch")
                )
        self.report.batchnorms += self.report.batchnorms_folded
        self.report.activations += self.report.activations_fused


def _delete_unused_submodules(gm: fx.GraphModule) -> None:
    """``gm.delete_all_unused_submodules()``, except that the submodules of a module the graph
    reads with ``get_attr`` count as used, as those of a called module do: a norm-act layer
    passed to a fused call runs its ``drop`` and ``act`` in train mode."""
    used = set()
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "get_attr") or not isinstance(node.target, str):
            continue
        parts = node.target.split(".")
        used.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        try:
            module = gm.get_submodule(node.target)
        except AttributeError:  # a parameter or buffer
            continue
        used.update(f"{node.target}.{name}" for name, _ in module.named_modules() if name)
    for name in [name for name, _ in gm.named_modules() if name and name not in used]:
        gm.delete_submodule(name)


def _lost_state(model: nn.Module, gm: fx.GraphModule) -> list[str]:
    """``state_dict`` keys of ``model`` that the traced ``gm`` does not hold."""
    return sorted(set(model.state_dict()) - set(gm.state_dict()))


def convert(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, ConversionReport]:
    """Run ``model`` on fastconv: fuse its conv -> [BatchNorm] -> [add] -> [activation] chains,
    convert its other convolutions and poolings; return the new model and a report.

    The result is a ``torch.fx.GraphModule`` with the original's ``state_dict`` keys (each
    BatchNorm at its own name, each fused module at its convolution's name), so checkpoints
    load both ways; see the module docstring for what is matched, and
    :class:`fastconv.conv_bn.Conv2dBatchNormAct` for BatchNorm folding (in eval mode, at
    call time) and train mode. The graph is traced in the model's current mode: Python code
    that branches on ``self.training`` keeps the branch taken then. Modules with hooks are
    kept whole (not traced into). A model FX cannot trace, one with hooks on itself, and one
    whose graph does not use all its state fall back to the module-by-module swap
    (``report.method``), as does a model that is itself a convolution or pooling layer.

    ``inplace=False`` (default) works on a deep copy and leaves ``model`` unchanged. With
    ``inplace=True`` no copy is made: the returned GraphModule shares the original's
    parameters, buffers and kept modules (training one trains the other), and ``model`` keeps
    its own structure (the module swap fallback does modify ``model`` in place).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Conv2d, *POOL_MODULES)):
        return swap_modules(model, inplace, "the model is a single layer")
    hooks = hooks_reason(model)
    if hooks is not None:
        return swap_modules(model, inplace, f"the model itself {hooks}")
    source = model if inplace else copy.deepcopy(model)
    known = recognized()
    try:
        gm, frozen_mode = _trace(source, known)
    except Exception as error:  # any tracing failure means: use the fallback
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return swap_modules(model, inplace, f"torch.fx could not trace it: {first_line}")
    lost = _lost_state(source, gm)
    if lost:
        reason = (
            f"its traced graph does not use {len(lost)} state_dict entries ({lost[0]}, ...), "
            "which a GraphModule would drop"
        )
        return swap_modules(model, inplace, reason)
    mode = "train" if model.training else "eval"
    report = ConversionReport(mode=mode)
    if frozen_mode:
        report.notes.append(
            f"traced in {mode} mode through {', '.join(frozen_mode)}, which reads "
            "self.training: convert again after switching the model's mode"
        )
    _Rewriter(gm, report, known).run()
    gm.graph.lint()
    _delete_unused_submodules(gm)
    gm.recompile()
    return gm, report
