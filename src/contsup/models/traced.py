"""Any nn.Module as a chain: its forward traced with torch.fx, cut only where one tensor carries everything on.

`trace_backbone(model, sample)` turns a model as written (docs/models.md) into a `Backbone`:

- tracing: `torch.fx.symbolic_trace` records the forward as a graph of the model's own submodules. We use
  fx rather than `torch.export` because fx keeps the user's module paths (`layer3.1.conv2`) as node targets
  and in each node's module stack, so cuts can be named as the user knows the model, and because the pieces
  it returns are GraphModules that call the model's own submodules: the units share the model's parameters
  (training the network trains the model) and the state dict keeps its names. `torch.export` needs a full-
  graph capture, lifts parameters into graph inputs and renames them, which would need a mapping back.
  Data-dependent control flow (`if x.sum() > 0`) cannot be traced by either; it is refused in one line.
- legal cuts: in the graph's order, a point after value v is legal when v is the only value computed so
  far that is still read later (no skip connection crosses it; parameters and buffers do not count), and
  no parameter is used on both sides (tied weights would take gradient from two modules).
- candidate cuts (block boundaries): a legal v that is the output of a submodule call (any depth) whose
  readers are not a normalisation, an activation or dropout. So a cut never falls between a layer and the
  norm or activation that follows it, nor in the middle of a module's inline arithmetic.
- the classifier: everything after the last legal value that is a feature map (N, C, H, W) or a token
  sequence (N, T, D), found by running the sample through the graph; a global pool to one position belongs to
  the classifier.

The units between candidate cuts are GraphModules, so cut rules (`equal-units`, `balanced`) and the chain
machinery take them as any chain; a cut is named by the module path whose output it is (`cut_names`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from contsup.errors import ContsupError
from contsup.models.chain import Backbone

CHAIN_FORM = "give it as a chain of units instead: contsup.Backbone(units, classifier) (docs/models.md)"

NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
FOLLOWERS = {F.relu, F.relu_, torch.relu, torch.relu_, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardswish, F.mish,
             F.softplus, F.sigmoid, F.tanh, torch.sigmoid, torch.tanh, F.dropout, F.layer_norm, F.batch_norm,
             F.group_norm, F.instance_norm}
FOLLOWER_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def follows_a_layer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` is a normalisation, an activation or dropout (it belongs with the layer before it)."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        activation = type(m).__module__ == "torch.nn.modules.activation" and not isinstance(m, nn.MultiheadAttention)
        return isinstance(m, (*NORMS, nn.modules.dropout._DropoutNd)) or activation
    if node.op == "call_function":
        return node.target in FOLLOWERS
    return node.op == "call_method" and node.target in FOLLOWER_METHODS


def module_paths(node: fx.Node) -> list[str]:
    """The module calls a node runs inside, outermost first (fx's `nn_module_stack`; keys tell repeated calls apart)."""
    return list(node.meta.get("nn_module_stack") or {})


def path_of(key: str, node: fx.Node) -> str:
    """The module path of a module-stack key."""
    return node.meta["nn_module_stack"][key][0]


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's forward as an fx graph; a forward fx cannot follow raises one line naming why."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
    try:
        gm = fx.symbolic_trace(model, concrete_args=concrete or None)
    except Exception as err:  # any tracer failure: the model cannot be cut automatically; say why in one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ContsupError(f"cannot trace {type(model).__name__}.forward with torch.fx ({reason}); data-dependent "
                           f"control flow cannot be cut automatically: {CHAIN_FORM}") from None
    for node in [n for n in gm.graph.nodes if n.op == "placeholder"][1:]:  # fixed defaults: fx's checks go
        for user in list(node.users):
            if user.op == "call_function" and getattr(user.target, "__name__", "") == "_assert_is_none":
                gm.graph.erase_node(user)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and n.users]
    if len(inputs) != 1:
        raise ContsupError(f"{type(model).__name__}.forward reads {len(inputs)} inputs; contsup cuts models that "
                           f"take one image batch: {CHAIN_FORM}")
    return gm


SHAPE = "contsup_shape"  # the node meta key of a value's shape on the sample


class ShapeRecorder(fx.Interpreter):
    """Runs the graph on a sample and records every tensor value's shape in its node's meta (`SHAPE`)."""

    def run_node(self, n: fx.Node) -> object:
        """The node's value, its shape recorded when it is a tensor."""
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta[SHAPE] = tuple(out.shape)
        return out


class Graph:
    """A traced model's nodes in order, with what each cut point needs: liveness, module outputs, shapes."""

    def __init__(self, model: nn.Module, sample: torch.Tensor) -> None:
        self.name = type(model).__name__
        self.gm = trace(model)
        self.modules = dict(self.gm.named_modules())
        training = [m.training for m in self.gm.modules()]
        try:
            with torch.no_grad():
                ShapeRecorder(self.gm.eval()).run(sample)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:  # the model's own error, in one line
            reason = str(err).strip().split("\n")[0] or type(err).__name__
            raise ContsupError(f"{self.name} fails on an input of shape {tuple(sample.shape)}: {reason}") from None
        finally:
            for m, mode in zip(self.gm.modules(), training, strict=True):
                m.train(mode)
        self.nodes = [n for n in self.gm.graph.nodes if n.op not in ("get_attr", "output")]
        self.output = next(n for n in self.gm.graph.nodes if n.op == "output")
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((self.index.get(u, len(self.nodes)) for u in n.users), default=-1)
                         for n in self.nodes}
        self.outputs = self.module_outputs()
        self.live = self.live_counts()
        self.spans = self.weight_spans()

    def module_outputs(self) -> dict[fx.Node, list[str]]:
        """Node -> the module paths (outermost first) of the module calls that return it."""
        scope: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            for key in module_paths(n):
                scope.setdefault(key, []).append(n)
        out: dict[fx.Node, list[str]] = {}
        for key, inside in scope.items():
            members = set(inside)
            leaving = [n for n in inside if any(u not in members for u in n.users)]
            if len(leaving) == 1:
                out.setdefault(leaving[0], []).append(path_of(key, leaving[0]))
        return out

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """The node's output shape on the sample, None for a value that is no tensor."""
        return node.meta.get(SHAPE)

    def crossing(self, node: fx.Node) -> list[fx.Node]:
        """Values other than `node` computed up to it and still read after it: the skips across a cut there."""
        i = self.index[node]
        return [n for n in self.nodes[:i + 1] if n is not node and self.last_use[n] > i]

    def live_counts(self) -> list[int]:
        """How many values are still read after each position (a sweep: +1 where one is made, -1 at its last read)."""
        delta = [0] * (len(self.nodes) + 1)
        for n, last in self.last_use.items():
            if last > self.index[n]:
                delta[self.index[n]] += 1
                delta[min(last, len(self.nodes))] -= 1
        counts, live = [], 0
        for d in delta[:-1]:
            live += d
            counts.append(live)
        return counts

    def weight_spans(self) -> dict[str, tuple[int, int]]:
        """First and last position that uses each parameter holder (a call_module with parameters, a get_attr)."""
        uses: dict[str, list[int]] = {}
        for n in self.gm.graph.nodes:
            if n.op == "get_attr":
                for u in n.users:
                    uses.setdefault(str(n.target), []).append(self.index.get(u, len(self.nodes)))
            elif n.op == "call_module" and any(True for _ in self.modules[str(n.target)].parameters()):
                uses.setdefault(str(n.target), []).append(self.index[n])
        return {t: (min(at), max(at)) for t, at in uses.items()}

    def tied(self, node: fx.Node) -> str | None:
        """A parameter holder used both up to `node` and after it (a cut there would split tied weights)."""
        i = self.index[node]
        return next((t for t, (a, b) in self.spans.items() if a <= i < b), None)

    def legal(self, node: fx.Node) -> bool:
        """Whether one tensor, `node`'s, carries everything forward from it (and no weight is used on both sides)."""
        i = self.index[node]
        alone = self.live[i] == 1 and self.last_use[node] > i
        return alone and self.shape(node) is not None and self.tied(node) is None

    def is_block_end(self, node: fx.Node) -> bool:
        """Whether `node` returns a module call and no normalisation or activation of the same scope reads it.

        A norm inside a module called later (a pre-norm block's first LayerNorm) starts that module instead.
        """
        scope = set(module_paths(node))

        def owns(u: fx.Node) -> bool:
            keys = module_paths(u)[:-1] if u.op == "call_module" else module_paths(u)
            return set(keys) <= scope

        return node in self.outputs and not any(follows_a_layer(u, self.modules) and owns(u) for u in node.users)

    def label(self, node: fx.Node) -> str:
        """How a user knows a value: the module whose output it is, else the op and the module it runs in."""
        if node in self.outputs:
            return self.outputs[node][0]
        if node.op == "placeholder":
            return f"the input {node.name!r}"
        paths = module_paths(node)
        where = f" in {path_of(paths[-1], node)}" if paths else ""
        return f"{node.name!r}{where}"

    def classifier_start(self) -> fx.Node:
        """Where the classifier starts: the last legal feature map or token sequence that no global pool made."""
        for node in reversed(self.nodes):
            shape = self.shape(node)
            if shape is None or len(shape) not in (3, 4) or not self.legal(node):
                continue
            if not self.pooled(node):
                return node
        raise ContsupError(f"{self.name} has no feature map (N, C, H, W) or token sequence (N, T, D) that carries "
                           f"everything to its classifier; {CHAIN_FORM}")

    def pooled(self, node: fx.Node) -> bool:
        """Whether `node` is a global pool: one position out, by an adaptive pool or from more positions."""
        shape = self.shape(node)
        if shape is None or positions(shape) != 1:
            return False
        if node.op == "call_module" and isinstance(self.modules[str(node.target)], POOLS):
            return True
        before = [self.shape(a) for a in node.all_input_nodes]
        return any(s is not None and len(s) == len(shape) and positions(s) > 1 for s in before)


def positions(shape: tuple[int, ...]) -> int:
    """Positions of a batched map (H x W) or token sequence (T)."""
    return shape[2] * shape[3] if len(shape) == 4 else shape[1]


class Part(fx.GraphModule):
    """A piece of a traced model (a unit or the classifier); `patch` (a token model's patch size) survives copies."""

    patch: int | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> Part:
        copied = super().__deepcopy__(memo)
        copied.patch = self.patch
        return copied


def extract(gm: fx.GraphModule, nodes: Sequence[fx.Node], source: fx.Node | None, result: fx.Node,
            class_name: str) -> Part:
    """A GraphModule running `nodes` on one input (the value `source`, or the model's input) up to `result`."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    x = graph.placeholder("x")
    if source is not None:
        env[source] = x

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op == "get_attr":
                env[n] = graph.get_attr(str(n.target))
            elif n.op == "placeholder":
                env[n] = x
        return env[n]

    for n in nodes:
        if n.op == "placeholder":
            env[n] = x
        else:
            env[n] = graph.node_copy(n, arg)
    graph.output(env[result])
    return Part(gm, graph, class_name=class_name)


class TracedBackbone(Backbone):
    """A Backbone cut from a traced model: units between candidate cuts, the tail as classifier, cuts by name.

    `unit_labels[i]` is the module path whose output ends unit i: the name of a cut after it.
    """

    def __init__(self, units: Sequence[nn.Module], classifier: nn.Module, labels: Sequence[str], graph: Graph,
                 ends: Sequence[fx.Node]) -> None:
        super().__init__(units, classifier, name=graph.name)
        self.unit_labels = list(labels)
        self._graph = graph
        self._ends = list(ends)

    def named_cuts(self, names: Sequence[str]) -> list[int]:
        """Unit indices of the cuts after the modules `names` (module paths); a name that is no legal cut raises."""
        return [self.named_cut(n.strip()) for n in names]

    def named_cut(self, name: str) -> int:
        """The unit index of the cut after module `name`, or one line saying why it cannot be cut there."""
        g = self._graph
        nodes = [n for n, paths in g.outputs.items() if name in paths]
        if len(nodes) != 1:
            what = "more than once" if nodes else "nowhere"
            raise ContsupError(f"cut {name!r}: {g.name}'s forward calls that module {what}; "
                               f"the legal cuts: {self.legal_names()}")
        node = nodes[0]
        if node in self._ends[:-1]:
            return self._ends.index(node)
        if node is self._ends[-1] or g.index[node] > g.index[self._ends[-1]]:
            raise ContsupError(f"cut {name!r} leaves no unit after it (the classifier starts there); "
                               f"the legal cuts: {self.legal_names()}")
        near = self.nearest(g.index[node])
        crossing = g.crossing(node)
        if crossing:
            skip = crossing[0]
            reader = min((u for u in skip.users if u in g.index and g.index[u] > g.index[node]), key=g.index.get)
            why = f"the output of {g.label(skip)} skips over it to {g.label(reader)}"
        elif g.tied(node):
            why = f"the weights of {g.tied(node)!r} are used on both sides"
        elif g.shape(node) is None:
            why = "its output is no tensor"
        else:
            why = "a normalisation or activation follows it (it belongs with the layer)"
        raise ContsupError(f"cut {name!r} is not legal: {why}; the legal cuts nearest: {near}")

    def legal_names(self) -> str:
        """Every candidate cut's name, for messages."""
        return ", ".join(self.unit_labels[:-1]) or "none"

    def nearest(self, at: int, count: int = 2) -> str:
        """The candidate cuts just before and after graph position `at`."""
        positions = [self._graph.index[e] for e in self._ends[:-1]]
        before = [self.unit_labels[i] for i, p in enumerate(positions) if p < at][-count:]
        after = [self.unit_labels[i] for i, p in enumerate(positions) if p > at][:count]
        return ", ".join(before + after) or "none"

    def check_modules(self, modules: int) -> None:
        """K modules need K - 1 candidate cuts; else one line naming the cuts there are and the widest skip."""
        if modules <= len(self.units):
            return
        g = self._graph
        spans = [(g.last_use[n] - g.index[n], n) for n in g.nodes if 0 <= g.last_use[n] < len(g.nodes)]
        _, skip = max(spans, key=lambda s: s[0])
        reader = g.nodes[g.last_use[skip]]
        need, have = modules - 1, len(self.units) - 1
        raise ContsupError(
            f"K = {modules} needs {need} cut{'s' * (need != 1)}, but {g.name} has {have} legal cut{'s' * (have != 1)} "
            f"({self.legal_names()}): the widest skip runs from {g.label(skip)} to {g.label(reader)}; "
            f"lower --modules, or {CHAIN_FORM}")


def trace_backbone(model: nn.Module, sample: torch.Tensor) -> TracedBackbone:
    """The model cut at its block boundaries into units plus a classifier (see the module docstring)."""
    if sample.dim() == 3:
        sample = sample.unsqueeze(0)
    g = Graph(model, sample[:1])
    out = g.output.args[0]
    if not isinstance(out, fx.Node) or g.shape(out) is None or len(g.shape(out)) != 2:
        raise ContsupError(f"{g.name}.forward must return the logits as one tensor (N, classes); {CHAIN_FORM}")
    last = g.classifier_start()
    ends = [n for n in g.nodes[:g.index[last]] if g.is_block_end(n) and g.legal(n)] + [last]
    labels = [g.label(n) for n in ends]
    units, start = [], 0
    source: fx.Node | None = None
    for i, end in enumerate(ends):
        stop = g.index[end] + 1
        units.append(extract(g.gm, g.nodes[start:stop], source, end, f"{g.name}Unit{i}"))
        start, source = stop, end
    classifier = extract(g.gm, g.nodes[start:], source, out, f"{g.name}Classifier")
    backbone = TracedBackbone(units, classifier, labels, g, ends)
    patch = patch_size(g)
    if patch is not None and len(g.shape(ends[0]) or ()) == 3:
        units[0].patch = patch  # what a token cut's image encoder needs (contsup.method.context)
    return backbone


def patch_size(g: Graph) -> int | None:
    """A token model's patch size: the first convolution whose square kernel equals its stride, if any."""
    for n in g.nodes:
        m = g.modules.get(str(n.target)) if n.op == "call_module" else None
        if isinstance(m, nn.Conv2d):
            k, s = m.kernel_size, m.stride
            return k[0] if k == s and k[0] == k[1] else None
    return None
