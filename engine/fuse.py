"""fuse(model): rewrite conv -> norm -> activation chains of any nn.Module into fused Conv2dNormAct layers.

What it fuses: an nn.Conv2d / nn.ConvTranspose2d (groups=1, padding_mode 'zeros' or 'reflect'),
optionally followed by an nn.BatchNorm2d / nn.InstanceNorm2d, optionally followed by an
nn.ReLU / nn.LeakyReLU (slope >= 0) / nn.Tanh / nn.Sigmoid, where each step's output feeds only
the next step. A symmetric nn.ReflectionPad2d (padding >= 0) right before a padding=0 Conv2d
(CycleGAN's generator) is absorbed too: the reflection moves into the conv's loader. A lone conv
is left alone (nothing to fuse), and so is a conv called with extra arguments (ConvTranspose2d's
`output_size=`).

How it finds them: torch.fx traces `model.forward` (nn.Sequential containers are traced through
like any other code), so chains are found in Sequentials and in hand-written forward code alike,
and the use counts of every intermediate value are known: a chain stops where an output has
another user (a skip connection, a second consumer), was stored on a module attribute during
the trace (`self.features = y`) or goes to a call under another grad mode or autocast state (a
conv in a `with torch.no_grad():` block feeding a trainable norm). A trace follows one path
through forward, so forward is traced in train mode and in eval mode (and in the model's own
mix of modes, e.g. a frozen norm), each with all arguments free and with the arguments that
have simple defaults (None, bools, numbers, strings) at their defaults (`if y is None:`): a chain
is fused only as far as every trace agrees (a module no trace but one calls, like a
training-only auxiliary head, does not cut it). Tracing runs forward's Python code: the model's
attributes are restored afterwards (`self.calls += 1`, `self.feats.append(y)` leave nothing).
Every module of a chain must be called once, registered under one name (so replacing it cannot
change another call site), have no hooks and no forward replaced on the instance; a chain also
stops before it would cross the boundary of a container module that has hooks (fusing moves the
norm and activation to the conv's place, so a feature hook there would see another tensor).
After the rewrite the model is traced again: a chain whose rewrite breaks forward (which reads
e.g. `self.bn.running_mean` or `self.conv.out_channels`; the conv's `weight` and `bias`, read for
tied weights, are still there) is undone. Values kept outside the model (hooks or closures capturing tensors of a container fx
traced through, globals, global module hooks), calls from other methods than forward and
branches on argument values other than the defaults cannot be seen: fuse such models with care.
Hooks added to the conv, norm or activation after fusing never run (they are no longer called).

How it rewrites, in place: the conv's attribute becomes a `Conv2dNormAct` holding the very same
conv and norm modules (shared parameters and buffers, so optimizers, EMA copies by reference and
running stats keep working), and the norm's and the activation's attributes become nn.Identity
(in the replaced module's train/eval mode). The model keeps its class and its forward code.
Train/eval mode is preserved. Its state_dict keys move from `<conv>.*` / `<norm>.*` to
`<conv>.conv.*` / `<conv>.norm.*`; the report's `key_map` lists the moves, and `load_state_dict`
of the fused model, or of any of its submodules holding a whole chain, also accepts the old keys
(the unfused model does not accept the new ones: map them back with the inverse of `key_map`).
The order of `parameters()` changes where a norm was not registered right after its conv
(`self.conv1, self.conv2, self.bn1, self.bn2`, or convs and norms in two ModuleLists): an
optimizer's state_dict, which is positional, and an EMA that zips `parameters()` of an unfused
copy do not carry over between an unfused and a fused model; fuse both, or build them after fusing.

Models fx cannot trace (data-dependent control flow, ..., in any of those traces) come back
unchanged with a warning.
Passing `sequential_fallback=True` then still fuses consecutive children of plain nn.Sequential
containers, which is safe when those modules are used nowhere else (checked by registration
count; a module the model's own forward calls by another path would defeat it, hence opt-in).

The report (a FuseReport) is logged at INFO, stored as `model._fusegan_report`, and returned
alongside the model with `fuse(model, report=True)`.
"""
import copy
import dataclasses
import inspect
import logging
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn

from fusegan.kernels.conv_norm_act import Conv2dNormAct, unsupported_conv_reason

log = logging.getLogger(__name__)

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)


@dataclasses.dataclass
class FusedChain:
    conv: str
    norm: Optional[str]
    act: Optional[str]
    kind: str  # e.g. "Conv2d+BatchNorm2d+ReLU", "ReflectionPad2d+Conv2d+InstanceNorm2d+ReLU"
    pad: Optional[str] = None  # an nn.ReflectionPad2d absorbed into the conv's loader


@dataclasses.dataclass
class FuseReport:
    traced: bool = True
    fused: List[FusedChain] = dataclasses.field(default_factory=list)
    left_alone: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (module name, why)
    key_map: Dict[str, str] = dataclasses.field(default_factory=dict)  # old state_dict key -> new
    warning: Optional[str] = None

    def __str__(self):
        lines = [f"fuse: fused {len(self.fused)} chain(s)" + ("" if self.traced else " (fx could not trace)")]
        lines += [f"  fused {c.kind}: " + " -> ".join(n for n in (c.pad, c.conv, c.norm, c.act) if n)
                  for c in self.fused]
        lines += [f"  left {name}: {why}" for name, why in self.left_alone]
        if self.warning:
            lines.append(f"  warning: {self.warning}")
        return "\n".join(lines)


class _Tracer(torch.fx.Tracer):
    """Keeps torch.nn layers and already-fused layers as single call_module nodes, and tags every node with the
    grad mode and autocast state forward ran it under (fx records no `with torch.no_grad():` block)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, Conv2dNormAct) or super().is_leaf_module(m, qualname)

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["fusegan_context"] = _grad_and_autocast_state()
        return node


def _grad_and_autocast_state():
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            tuple((kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) for kind in ("cpu", "cuda")))


class _OldKeyRemapper:
    """load_state_dict pre-hook: accepts the unfused model's keys (a picklable callable, not a closure)."""

    def __init__(self, key_map):
        self.key_map = dict(key_map)

    def __call__(self, state_dict, prefix, *args):
        for old, new in self.key_map.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)


def fuse(model: nn.Module, report: bool = False, impl=None, sequential_fallback: bool = False):
    """Fuses conv -> norm -> act chains of `model` in place; returns `model` (and the FuseReport with report=True)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    rep = FuseReport()
    names = _registered_names(model)
    variants = _trace_variants(model)
    try:
        traces = _traces_or_raise(model, variants)
    except _VariantError as exc:  # fx raises many kinds (TraceError, TypeError from proxies, ...)
        rep.traced = False
        rep.warning = f"torch.fx could not trace {type(model).__name__}.forward{exc.where} ({exc.why}); "
        if sequential_fallback:
            rep.warning += "only consecutive layers inside nn.Sequential containers were fused"
            chains = _sequential_chains(model, names, rep)
        else:
            rep.warning += "the model is returned unchanged"
            chains = []
        warnings.warn("fusegan.engine.fuse: " + rep.warning, stacklevel=2)
    else:
        chains = _common_chains(model, traces, names, rep)
    applied = [_replace(model, chain, impl) for chain in chains]
    if rep.traced and applied and _trace_error(model, variants) is not None:
        # forward reads something of a replaced module that fx does not see as a call (`self.bn.running_mean`,
        # `self.conv.out_channels`): find the chains that break it.
        for undo in reversed(applied):
            _undo(model, undo)
        applied = []
        for chain in chains:
            undo = _replace(model, chain, impl)
            error = _trace_error(model, variants)
            if error is None:
                applied.append(undo)
            else:
                _undo(model, undo)
                rep.left_alone.append((chain[0], f"fusing it breaks forward, which reads a replaced module ({error})"))
    remapped = {}  # module name -> its relative key_map
    for fused, key_map, _ in applied:
        rep.fused.append(fused)
        rep.key_map.update(key_map)
        # On the lowest module holding the chain, so an unfused checkpoint also loads into that submodule
        # (`gan.G.load_state_dict(generator_checkpoint)`), not only into the model fuse was given.
        owner = _common_parent([fused.conv] + ([fused.norm] if fused.norm else []))
        start = len(owner) + 1 if owner else 0
        remapped.setdefault(owner, {}).update({old[start:]: new[start:] for old, new in key_map.items()})
    for owner, key_map in remapped.items():
        (model.get_submodule(owner) if owner else model)._register_load_state_dict_pre_hook(_OldKeyRemapper(key_map))
    rep.left_alone = list(dict.fromkeys(rep.left_alone))  # one line per reason, however many traces saw it
    model._fusegan_report = rep
    log.info("%s", rep)
    return (model, rep) if report else model


# ----------------------------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------------------------
class _VariantError(Exception):
    def __init__(self, where, exc):
        super().__init__(where)
        self.where = where
        self.why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _trace_variants(model):
    """(mode, concrete_args, description) of each way forward is traced.

    fx records one path through forward: the branches `if self.training:` takes in the model's current
    mode, and those `if y is None:` takes with every argument a Proxy (never None). So forward is traced
    in the current mode, in train and in eval mode (every module's flag set, then restored), each with
    all arguments free and with the arguments that have simple defaults at those defaults; a chain is
    fused only where every trace agrees (`_common_chains`)."""
    flags = {m.training for m in model.modules()}
    modes = ([None] if len(flags) > 1 else []) + [True, False]  # None: the modules' flags as they are
    defaults = {}
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        parameters = ()
    for p in parameters:
        if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) \
                and (p.default is None or isinstance(p.default, (bool, int, float, str))):
            defaults[p.name] = p.default
    arguments = [None] + ([defaults] if defaults else [])
    return [(mode, args, ("" if mode is None else " in train mode" if mode else " in eval mode")
             + (" with its default arguments" if args else "")) for mode in modes for args in arguments]


def _trace(model, mode, concrete_args):
    """(graph, values forward stored on modules) of one traced forward; the model is left as it was.

    Tracing runs forward's Python code: `self.calls += 1`, `self.feats.append(y)`, `self.last = y` would
    otherwise stay on the model (fx Proxies in its attributes, which also make it unpicklable)."""
    saved = _python_state(model)
    try:
        if mode is not None:
            for m in model.modules():
                m.training = mode
        graph = _Tracer().trace(model, concrete_args=concrete_args)
        return graph, _escaped_nodes(model)
    finally:
        _restore_python_state(saved)


def _python_state(model):
    saved = []
    for m in model.modules():
        attrs = dict(vars(m))
        contents = {key: copy.copy(value) for key, value in attrs.items() if type(value) in (list, dict, set)}
        saved.append((m, attrs, contents))
    return saved


def _restore_python_state(saved):
    for m, attrs, contents in saved:
        vars(m).clear()
        vars(m).update(attrs)
        for key, items in contents.items():  # in place: forward may have appended to a list it keeps
            attrs[key].clear()
            if isinstance(items, list):
                attrs[key].extend(items)
            else:
                attrs[key].update(items)


def _traces_or_raise(model, variants):
    out = []
    for mode, args, where in variants:
        try:
            out.append(_trace(model, mode, args))
        except Exception as exc:
            raise _VariantError(where, exc) from exc
    return out


def _trace_error(model, variants):
    try:
        _traces_or_raise(model, variants)
    except _VariantError as exc:
        return exc.why + exc.where
    return None


def _common_chains(model, traces, names, rep):
    """The chains every trace agrees on: each conv's chain, cut to what the traces that call it share.

    A trace in which none of a chain's modules is called (an auxiliary head used only in training) does
    not cut it; one that calls them without that chain (a second use in eval mode) does."""
    per_trace = []
    for graph, escaped in traces:
        chains = _graph_chains(model, graph, escaped, names, rep)
        called = {node.target for node in graph.nodes if node.op == "call_module"}
        per_trace.append(({chain[0]: chain for chain in chains}, called))
    heads = list(dict.fromkeys(head for chains, _ in per_trace for head in chains))
    common = []
    for head in heads:
        chain = next(chains[head] for chains, _ in per_trace if head in chains)
        seen = {name for chains, _ in per_trace for name in chains.get(head, ()) if name}
        for chains, called in per_trace:
            if head in chains:
                chain = _meet(chain, chains[head])
            elif called & {name for name in chain if name}:
                chain = None
            if chain is None:
                break
        why = "forward uses it differently in train mode, eval mode or with its default arguments"
        for name in sorted(seen - set(chain or ())):
            rep.left_alone.append((name, why))
        if chain is not None:
            common.append(chain)
    return common


def _meet(a, b):
    """The longest chain both (conv, norm, act, pad) chains of one conv contain, or None."""
    conv, norm, act, pad = a
    same_norm = norm == b[1]
    norm = norm if same_norm else None
    act = act if same_norm and act == b[2] else None  # the act follows the norm, or the conv when there is none
    pad = pad if pad == b[3] else None
    return (conv, norm, act, pad) if (norm or act or pad) else None


def _common_parent(names):
    parts = [name.split(".")[:-1] for name in names]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)


# ----------------------------------------------------------------------------------------------
# Finding chains
# ----------------------------------------------------------------------------------------------
def _registered_names(model):
    """id(module) -> every name it is registered under."""
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        out.setdefault(id(m), []).append(name)
    return out


def _has_hooks(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _module_problem(m, names, calls):
    if len(names.get(id(m), ())) != 1:
        return "registered under several names"
    if calls.get(id(m), 0) != 1:
        return f"called {calls.get(id(m), 0)} times in forward"
    return _own_behaviour(m)


def _own_behaviour(m):
    """Why `m` does more than its class's forward (which is all Conv2dNormAct reproduces), else None."""
    if _has_hooks(m):
        return "has hooks"
    if any(name in vars(m) for name in ("forward", "_conv_forward")):
        return "its forward is replaced on the instance"
    return None


def _act_problem(m):
    if isinstance(m, nn.LeakyReLU) and m.negative_slope < 0:
        return f"LeakyReLU with negative_slope={m.negative_slope} < 0"
    return None


def _graph_chains(model, graph, escaped, names, rep):
    mods = dict(model.named_modules())
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[id(mods[node.target])] = calls.get(id(mods[node.target]), 0) + 1

    def module_of(node, types):
        if node.op == "call_module" and type(mods[node.target]) in types:
            return mods[node.target]
        return None

    def sole_consumer(node):
        """The only user of `node`, when it takes `node` as its only argument."""
        if node in escaped:  # e.g. `self.features = y`: fx records no use, but the value is read later
            return None, "its output is also stored on a module attribute"
        if len(node.users) != 1:
            return None, f"its output has {len(node.users)} users"
        user = next(iter(node.users))
        if user.args != (node,) or user.kwargs:
            return None, "its output goes to a call that takes other arguments"
        if user.meta["fusegan_context"] != node.meta["fusegan_context"]:
            return None, ("its output goes to a call under another grad mode or autocast state, "
                          "as out of a no_grad block")
        return user, None

    chains, seen = [], set()
    for node in graph.nodes:
        conv = module_of(node, _CONVS)
        if conv is None or node.target in seen:
            continue
        name = node.target
        seen.add(name)
        why = unsupported_conv_reason(conv) or _module_problem(conv, names, calls)
        if why is None and (len(node.args) != 1 or node.kwargs):
            # e.g. ConvTranspose2d's output_size=..., which Conv2dNormAct has no way to honour
            why = "called with more than one argument"
        if why:
            rep.left_alone.append((name, why))
            continue
        norm_name = act_name = None
        tail, stop = node, None
        user, stop = sole_consumer(tail)
        norm = module_of(user, _NORMS) if user is not None else None
        if norm is not None:
            problem = _module_problem(norm, names, calls)
            if problem is None and norm.num_features != conv.out_channels:
                problem = f"num_features={norm.num_features} != {conv.out_channels} conv output channels"
            if problem is None:
                problem = _hooked_boundary(model, (name, user.target))
            if problem:
                rep.left_alone.append((user.target, problem))
                stop = f"its norm {user.target} {problem}"
            else:
                norm_name, tail = user.target, user
                user, stop = sole_consumer(tail)
        act = module_of(user, _ACTS) if (user is not None and stop is None) else None
        if act is not None:
            problem = (_module_problem(act, names, calls) or _act_problem(act)
                       or _hooked_boundary(model, (name, norm_name or name, user.target)))
            if problem:
                rep.left_alone.append((user.target, problem))
            else:
                act_name = user.target
        pad_name = None
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and module_of(source, (nn.ReflectionPad2d,)) is not None:
            pad = mods[source.target]
            problem = _module_problem(pad, names, calls) or _pad_problem(pad, conv)
            if problem is None and (len(source.users) != 1 or len(source.args) != 1 or source in escaped):
                problem = "its output has other users"
            if problem is None and source.meta["fusegan_context"] != node.meta["fusegan_context"]:
                problem = "the conv after it runs under another grad mode or autocast state"
            if problem is None:
                problem = _hooked_boundary(model, (source.target, name, norm_name or name, act_name or name))
            if problem:
                rep.left_alone.append((source.target, problem))
            else:
                pad_name = source.target
        if norm_name is None and act_name is None and pad_name is None:
            rep.left_alone.append((name, "nothing fusable follows it" + (f" ({stop})" if stop else "")))
            continue
        chains.append((name, norm_name, act_name, pad_name))
    return chains


def _escaped_nodes(model):
    """Graph values that forward stored on a module (`self.feat = y`, `self.feats.append(y)`) while being traced."""
    found = set()

    def visit(value, depth):
        if isinstance(value, torch.fx.Proxy):
            found.add(value.node)
        elif depth < 2 and isinstance(value, (list, tuple, set)):
            for item in value:
                visit(item, depth + 1)
        elif depth < 2 and isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)

    for m in model.modules():
        for key, value in vars(m).items():
            if key not in ("_parameters", "_buffers", "_modules"):
                visit(value, 0)
    return found


def _hooked_boundary(model, chain_names):
    """Why the chain cannot be fused if it crosses the boundary of a module that has hooks, else None.

    Fusing moves the norm and the activation to the conv's place, so a container holding some but not all
    of the chain's modules returns (or receives) a different tensor: a forward hook capturing features
    there would silently see the activated output."""
    ancestors = [{n.rsplit(".", i)[0] for i in range(1, n.count(".") + 1)} for n in chain_names]
    for container in sorted(set.union(*ancestors) - set.intersection(*ancestors)):
        if _has_hooks(model.get_submodule(container)):
            return f"fusing it would cross {container}, which has hooks"
    return None


def _pad_problem(pad, conv):
    if min(pad.padding) < 0:
        return f"negative padding {pad.padding} (a crop)"
    left, right, top, bottom = pad.padding
    if left != right or top != bottom:
        return f"asymmetric padding {pad.padding}"
    if not isinstance(conv, nn.Conv2d) or tuple(conv.padding) != (0, 0):
        return "the conv after it pads too"
    return None


def _sequential_chains(model, names, rep):
    chains = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        items = list(seq.named_children())
        i = 0
        while i < len(items):
            child_name, conv = items[i]
            full = f"{seq_name}.{child_name}" if seq_name else child_name
            if type(conv) not in _CONVS:
                i += 1
                continue
            why = unsupported_conv_reason(conv) or _seq_problem(conv, names)
            if why:
                rep.left_alone.append((full, why))
                i += 1
                continue
            chain = [full, None, None, None]
            if i > 0 and type(items[i - 1][1]) is nn.ReflectionPad2d and not _seq_problem(items[i - 1][1], names) \
                    and not _pad_problem(items[i - 1][1], conv):
                chain[3] = f"{seq_name}.{items[i - 1][0]}" if seq_name else items[i - 1][0]
            j = i + 1
            if j < len(items) and type(items[j][1]) in _NORMS and not _seq_problem(items[j][1], names) \
                    and items[j][1].num_features == conv.out_channels:
                chain[1] = f"{seq_name}.{items[j][0]}" if seq_name else items[j][0]
                j += 1
            if j < len(items) and type(items[j][1]) in _ACTS and not _seq_problem(items[j][1], names) \
                    and not _act_problem(items[j][1]):
                chain[2] = f"{seq_name}.{items[j][0]}" if seq_name else items[j][0]
                j += 1
            if j == i + 1 and chain[3] is None:
                rep.left_alone.append((full, "nothing fusable follows it in its Sequential"))
            else:
                chains.append(tuple(chain))
            i = j
    return chains


def _seq_problem(m, names):
    if len(names.get(id(m), ())) != 1:
        return "registered under several names"
    return _own_behaviour(m)


# ----------------------------------------------------------------------------------------------
# Rewriting
# ----------------------------------------------------------------------------------------------
def _replace(model, chain, impl):
    """Rewrites one chain; returns (FusedChain, key_map, the replaced modules by name) for the report or _undo."""
    conv_name, norm_name, act_name, pad_name = chain
    conv = model.get_submodule(conv_name)
    norm = model.get_submodule(norm_name) if norm_name else None
    act = model.get_submodule(act_name) if act_name else None
    pad = model.get_submodule(pad_name) if pad_name else None
    reflect_pad = (pad.padding[2], pad.padding[0]) if pad is not None else None
    fused = Conv2dNormAct.from_modules(conv, norm, act, impl=impl, reflect_pad=reflect_pad)
    key_map = {f"{conv_name}.{key}": f"{conv_name}.conv.{key}" for key in conv.state_dict().keys()}
    if norm is not None:
        key_map.update({f"{norm_name}.{key}": f"{conv_name}.norm.{key}" for key in norm.state_dict().keys()})
    replaced = {conv_name: conv}
    _set_submodule(model, conv_name, fused)
    for name, module in ((norm_name, norm), (act_name, act), (pad_name, pad)):
        if name:
            replaced[name] = module
            # The placeholder keeps the replaced module's mode, so a model in eval() has no module in training.
            _set_submodule(model, name, nn.Identity().train(module.training))
    kind = "+".join(type(m).__name__ for m in (pad, conv, norm, act) if m is not None)
    return FusedChain(conv_name, norm_name, act_name, kind, pad_name), key_map, replaced


def _undo(model, applied):
    for name, module in applied[2].items():
        _set_submodule(model, name, module)


def _set_submodule(model, name, module):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
