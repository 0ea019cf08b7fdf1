"""Space files: YAML -> a validated `Space`, every mistake named by its file and its path in the file.

Finds a space by path or bundled name, reads the YAML safely (size, encoding, duplicate keys, alias bombs),
checks every field against what it accepts, and loads the baselines a space names. The `Space` model
and sampling live in `space`.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas import names
from nas.files import ReadError, check_readable_file
from nas.space import Choice, Const, Dim, FloatRange, IntRange, Space, SpaceError, sample, to_params, where
from nas.spec import ArchSpec

# ---------------------------------------------------------------------------------------------
# What each field accepts


@dataclass(frozen=True)
class _Kind:
    """What one field accepts: `kind` is name, int, float or bool; names come from `allowed`."""

    kind: str
    default: Any
    allowed: tuple = ()
    low: float = -math.inf
    high: float = math.inf

    def describe(self) -> str:
        if self.kind == "name":
            return "one of " + ", ".join(self.allowed)
        if self.kind == "bool":
            return "true or false"
        return _range_text(self.kind == "int", self.low, self.high)


def _range_text(is_int: bool, low: float, high: float) -> str:
    show = (lambda v: str(int(v))) if is_int else (lambda v: f"{v:g}")
    noun = "an integer" if is_int else "a number"
    return f"{noun} >= {show(low)}" if high == math.inf else f"{noun} in [{show(low)}, {show(high)}]"


_BLOCK = {
    "conv": _Kind("name", "conv5x5", names.BLOCKS),
    "channels": _Kind("int", 16, low=1, high=4096),
    "activation": _Kind("name", "relu", names.ACTIVATIONS),
    "batch_norm": _Kind("bool", False),
    "pool": _Kind("name", "max", names.POOLS),
    "padding": _Kind("name", "valid", names.PADDINGS),
    "dropout": _Kind("float", 0.0, low=0.0, high=0.95),
}
_LAYER = {
    "units": _Kind("int", 120, low=1, high=65536),
    "activation": _Kind("name", "relu", names.ACTIVATIONS),
    "dropout": _Kind("float", 0.0, low=0.0, high=0.95),
}
_TRAINING = {
    "optimizer": _Kind("name", "adam", names.OPTIMIZERS),
    "lr": _Kind("float", 1e-3, low=1e-12, high=100.0),
    "batch_size": _Kind("int", 256, low=1, high=1 << 20),
    "weight_decay": _Kind("float", 0.0, low=0.0, high=1.0),
    "momentum": _Kind("float", 0.9, low=0.0, high=1.0),  # used by sgd only, sampled only for sgd
    "augment": _Kind("name", "none", names.AUGMENTATIONS),  # in batch on the device
    "schedule": _Kind("name", "constant", names.SCHEDULES),
    "label_smoothing": _Kind("float", 0.0, low=0.0, high=0.5),
}
_INIT = _Kind("name", "default", names.INITS)
_READOUT = _Kind("name", "flatten", names.READOUTS)
_OBJECTIVE = _Kind("name", "accuracy", names.OBJECTIVES)
_COUNT = _Kind("int", 2, low=0, high=64)


def baseline_params(space: Space) -> list[dict[str, Any]]:
    """Trial parameters of each baseline (file or inline net), to enqueue as a study's first trials."""
    return [to_params(space, sample(b), source=f"baselines[{i}] of {where(space)}") if isinstance(b, Space)
            else to_params(space, sample(load_space(b)), source=f"baseline {b}") for i, b in enumerate(space.baselines)]




_TOP = ("name", "description", "dataset", "objectives", "budget", "constraints", "architecture", "training",
        "baselines")
_BUDGET = ("epochs", "val_fraction", "subset", "dominated_by")  # dominated_by: the old pareto rule's; read by nothing now
_CONSTRAINTS = ("max_params", "max_mflops", "max_latency_ms")
_ARCH = ("blocks", "block", "head", "init", "readout")
_HEAD = ("layers", *_LAYER)


MAX_FILE_BYTES = 1 << 20  # a space file is a page of YAML
MAX_DEPTH = 32  # nesting levels, after expanding aliases
MAX_VALUES = 10_000  # scalars, lists and mappings, after expanding aliases (a YAML alias bomb has billions)


BUNDLED = Path(__file__).parent / "spaces"  # the spaces shipped inside the package (`nas spaces` lists them)


def load_space(path: str | Path) -> Space:
    """Read and validate a space file, or a bundled space by name; every mistake names its path in the file."""
    path = find_space(path)
    return parse_space(_read_yaml(path), path)


def find_space(name: str | Path) -> Path:
    """`name` as a path if anything is there, else the bundled space of that name (`lenet` or `lenet.yaml`),
    else `name` unchanged (reading it then says that there is no such file)."""
    path = Path(name)
    if path.exists() or path.is_symlink() or path.parent != Path("."):
        return path
    bundled = BUNDLED / f"{path.stem if path.suffix in ('.yaml', '.yml') else path.name}.yaml"
    return bundled if bundled.is_file() else path


def bundled_spaces() -> list[tuple[str, Path]]:
    """The bundled spaces as (name, file), by name."""
    return sorted((p.stem, p) for p in BUNDLED.glob("*.yaml"))


def list_bundled() -> list[dict[str, Any]]:
    """What `nas spaces` shows of each bundled space: name, file, how many dimensions it searches, its
    baselines, and the first sentence of the comment it opens with."""
    rows = []
    for name, path in bundled_spaces():
        space = load_space(path)
        lines = path.read_text().splitlines()
        comment = " ".join(line.lstrip("# ").strip() for line in lines[:next(
            (i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))])
        rows.append({"name": name, "file": str(path), "searched": len(space.dimensions()),
                     "baselines": len(space.baselines), "summary": comment.split(". ")[0].rstrip(".")})
    return rows


def _read_yaml(path: Path) -> Any:
    """The YAML document in `path`, refusing what is not a small UTF-8 text of one non-empty document.

    Aliases are counted on PyYAML's node graph before anything is built, so an alias bomb is refused
    without being expanded; nesting is counted while composing, before Python's recursion limit."""
    try:
        if path.is_dir():
            raise SpaceError(f"{path}: is a folder; --space takes a YAML file or a bundled space's name (`nas spaces`).")
        check_readable_file(path, "a space file")  # a FIFO or a device: refused before open() blocks on it
        if not path.is_file():
            raise SpaceError(f"{path}: no such space file, and no bundled space of that name. Pass an existing YAML "
                             f"file to --space, or a bundled space: {', '.join(n for n, _ in bundled_spaces())} "
                             "(`nas spaces` lists them).")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpaceError(f"{path}: cannot read the space file ({e.strerror}).") from e
    if len(raw) > MAX_FILE_BYTES:
        raise SpaceError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; a space file is a page of YAML. Is it the right file?")
    if b"\0" in raw:
        raise SpaceError(f"{path}: a binary file, not YAML text. Pass a space file, or a bundled space such as lenet.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8.") from e
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        if node is not None:
            _count_values(node, path)
            return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', None) or e}. Fix it and retry.") from e
    finally:
        if loader is not None:
            loader.dispose()
    return None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys and nesting deeper than MAX_DEPTH."""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not (
                    node.start_mark.index <= key_node.start_mark.index < node.end_mark.index):
                continue  # keys merged in with `<<` (written elsewhere) may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_REPR.repr(key)} (first at line {first[key] + 1}); write each key "
                        "once", key_node.start_mark)
                first[key] = key_node.start_mark.line
            except TypeError:
                continue  # unhashable: PyYAML's own check says so below
        return super().construct_mapping(node, deep)


def _count_values(root: Any, path: Path) -> None:
    """Refuse a node graph that expands to more than MAX_VALUES values or MAX_DEPTH levels, or loops."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise SpaceError(f"{path}: line {node.start_mark.line + 1}: an alias refers to the value that contains it; "
                             "YAML aliases may only repeat finished values.")
        if depth > MAX_DEPTH:
            raise SpaceError(f"{path}: line {node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels once its "
                             "aliases are expanded; a space file is a few levels deep.")
        open_nodes.add(id(node))
        children = [] if isinstance(node, yaml.ScalarNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value)
        total = 1 + sum(size(child, depth + 1) for child in children)
        open_nodes.discard(id(node))
        if total > MAX_VALUES:
            raise SpaceError(f"{path}: holds more than {MAX_VALUES:,} values (counting what its YAML aliases repeat); "
                             "a space file holds a few dozen. Is it an alias bomb, or the wrong file?")
        sizes[id(node)] = total
        return total

    size(root, 1)


def parse_space(raw: Any, path: Path | None = None, label: str | None = None) -> Space:
    """Validate an already-loaded mapping (see `load_space`); errors name `label`, else the path."""
    p = _Parser(label or (str(path) if path else "<space>"))
    if raw is None:
        p.fail("", "the file is empty (or only comments); a space file is a YAML mapping like "
                   "the bundled ones (`nas spaces` lists them), and `{}` asks for the default network")
    top = p.mapping(raw, "", _TOP)
    budget = p.mapping(top.get("budget", {}), "budget", _BUDGET)
    cons = p.mapping(top.get("constraints", {}), "constraints", _CONSTRAINTS)
    arch = p.mapping(top.get("architecture", {}), "architecture", _ARCH)
    head = p.mapping(arch.get("head", {}), "architecture.head", _HEAD)
    block = p.template(arch.get("block", {}), "architecture.block", _BLOCK, {})
    layer = p.template({k: v for k, v in head.items() if k != "layers"}, "architecture.head", _LAYER, {})
    n_blocks, blocks = p.repeated(arch.get("blocks", 2), "architecture.blocks", _BLOCK, block)
    n_layers, layers = p.repeated(head.get("layers", 2), "architecture.head.layers", _LAYER, layer)
    training = p.template(top.get("training", {}), "training", _TRAINING, {})
    baselines = tuple(p.baseline(b, f"baselines[{i}]", path) for i, b in enumerate(p.baseline_list(top.get("baselines", []))))
    name = top.get("name", path.stem if path else "study")
    if not isinstance(name, str) or not name.strip():
        p.fail("name", f"expected a non-empty study name, got {_show(name)}")
    dataset = top.get("dataset", names.DEFAULT_DATASET)
    if not isinstance(dataset, str) or not dataset:
        p.fail("dataset", f"expected a dataset name or a path, got {_show(dataset)}")
    return Space(
        name=name,
        dataset=dataset,
        epochs=p.number(budget.get("epochs", 10), "budget.epochs", int, 1, 10_000),
        val_fraction=p.number(budget.get("val_fraction", 0.1), "budget.val_fraction", float, 0.01, 0.9),
        subset=p.optional(budget.get("subset"), "budget.subset", int, 10),
        max_params=p.optional(cons.get("max_params"), "constraints.max_params", int, 1),
        max_mflops=p.optional(cons.get("max_mflops"), "constraints.max_mflops", float, 1e-6),
        max_latency_ms=p.optional(cons.get("max_latency_ms"), "constraints.max_latency_ms", float, 1e-6),
        objectives=p.objectives(top.get("objectives", ["accuracy"]), "objectives"),
        n_blocks=n_blocks,
        blocks=blocks,
        n_layers=n_layers,
        layers=layers,
        init=p.value(arch.get("init", "default"), "architecture.init", _INIT),
        readout=p.value(arch.get("readout", "flatten"), "architecture.readout", _READOUT),
        training=training,
        baselines=baselines,
        path=path,
    )


def fixed_space_dict(spec: ArchSpec, name: str, dataset: str, epochs: int, val_fraction: float = 0.1) -> dict:
    """A space file of constants only that describes `spec` (what `nas train --space` reads back)."""
    d = spec.to_dict()
    return {
        "name": name,
        "dataset": dataset,
        "budget": {"epochs": epochs, "val_fraction": val_fraction},
        "architecture": {"blocks": d["blocks"], "head": {"layers": d["head"]}, "init": d["init"], "readout": d["readout"]},
        "training": d["training"],
    }


class _Parser:
    """Walks a raw YAML tree, failing with `file: path: message` at the first mistake."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, where: str, message: str) -> None:
        raise SpaceError(f"{self.file}: {where or 'top level'}: {message}.")

    def mapping(self, raw: Any, where: str, allowed: tuple[str, ...]) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(where, f"expected a mapping, got {_show(raw)}")
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(_join(where, key), f"unknown key; {hint}allowed keys are {', '.join(allowed)}")
        return raw

    def template(self, raw: Any, where: str, kinds: dict[str, _Kind], base: dict[str, Dim]) -> dict[str, Dim]:
        """Fields of a block / layer / training mapping, over `base`, with defaults for the rest."""
        raw = self.mapping(raw, where, tuple(kinds))
        out = {k: base.get(k, Const(kind.default)) for k, kind in kinds.items()}
        return out | {k: self.value(v, _join(where, k), kinds[k]) for k, v in raw.items()}

    def repeated(self, raw: Any, where: str, kinds: dict[str, _Kind], template: dict[str, Dim]):
        """A count dimension over one template, or a list of per-item overrides of it."""
        if isinstance(raw, list):
            items = tuple(self.template(item, f"{where}[{i}]", kinds, template) for i, item in enumerate(raw))
            return None, items
        count = self.value(raw, where, _COUNT)
        return count, (template,)

    def value(self, raw: Any, where: str, kind: _Kind) -> Dim:
        if not isinstance(raw, dict):
            return Const(self.constant(raw, where, kind))
        forms = [k for k in ("choice", "int", "float") if k in raw]
        extra = set(raw) - {"choice", "int", "float", "log"}
        if len(forms) != 1 or extra:
            self.fail(where, f"expected a constant, {{choice: [...]}}, {{int: [lo, hi]}} or {{float: [lo, hi]}}, got {_show(raw)}")
        form, log = forms[0], raw.get("log", False)
        if not isinstance(log, bool):
            self.fail(_join(where, "log"), f"expected true or false, got {_show(log)}")
        if form == "choice":
            values = raw["choice"]
            if not isinstance(values, list) or not values:
                self.fail(_join(where, "choice"), f"expected a non-empty list of {kind.describe()}, got {_show(values)}")
            values = [self.constant(v, f"{where}.choice[{i}]", kind) for i, v in enumerate(values)]
            if len(set(values)) != len(values):
                dup = next(v for v in values if values.count(v) > 1)
                self.fail(_join(where, "choice"), f"{_REPR.repr(dup)} is listed twice; list each value once")
            if log:
                self.fail(_join(where, "log"), "log applies to int and float ranges only")
            return Choice(tuple(values))
        if kind.kind != form and not (kind.kind == "float" and form == "int"):
            self.fail(where, f"{{{form}: ...}} does not fit this field, which takes {kind.describe()}")
        bounds = raw[form]
        if not isinstance(bounds, list) or len(bounds) != 2:
            self.fail(_join(where, form), f"expected [low, high], got {_show(bounds)}")
        cast = int if form == "int" else float
        low, high = (self.number(b, f"{where}.{form}[{i}]", cast, kind.low, kind.high) for i, b in enumerate(bounds))
        if low > high:
            self.fail(_join(where, form), f"low {low} is greater than high {high}; write [low, high]")
        if log and low <= 0:
            self.fail(_join(where, form), f"a log range needs low > 0, got {low}")
        return IntRange(low, high, log) if form == "int" else FloatRange(low, high, log)

    def constant(self, raw: Any, where: str, kind: _Kind) -> Any:
        if kind.kind == "name":
            if raw not in kind.allowed:
                close = difflib.get_close_matches(str(raw), kind.allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(where, f"got {_show(raw)}{hint}; expected {kind.describe()}")
            return raw
        if kind.kind == "bool":
            if not isinstance(raw, bool):
                self.fail(where, f"expected true or false, got {_show(raw)}")
            return raw
        return self.number(raw, where, int if kind.kind == "int" else float, kind.low, kind.high)

    def number(self, raw: Any, where: str, cast: type, low: float, high: float) -> Any:
        value = raw
        if cast is float and isinstance(raw, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(raw)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:  # an int too large for a float, or inf and nan, is no number a space can use
            ok = ok and math.isfinite(value) and (cast is float or float(value).is_integer())
        except OverflowError:
            ok = False
        if not ok or not low <= value <= high:
            self.fail(where, f"expected {_range_text(cast is int, low, high)}, got {_show(raw)}")
        return cast(value)

    def optional(self, raw: Any, where: str, cast: type, low: float) -> Any:
        return None if raw is None else self.number(raw, where, cast, low, math.inf)

    def objectives(self, raw: Any, where: str) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            self.fail(where, f"expected a list such as [accuracy, latency], got {_show(raw)}")
        got = tuple(self.constant(v, f"{where}[{i}]", _OBJECTIVE) for i, v in enumerate(raw))
        if got[0] != "accuracy" or len(set(got)) != len(got):
            self.fail(where, f"got {list(got)}; expected accuracy first, then any of {', '.join(names.OBJECTIVES[1:])}, "
                             "each once (accuracy is maximised, the others minimised)")
        return got

    def baseline_list(self, raw: Any) -> list[Any]:
        if not isinstance(raw, list) or not all(isinstance(b, (str, dict)) for b in raw):
            self.fail("baselines", f"expected a list of space file paths or inline nets ({{architecture: ..., training: "
                                   f"...}} of constants), got {_show(raw)}")
        return raw

    def baseline(self, raw: str | dict, where: str, path: Path | None) -> Path | Space:
        """A baseline file's path (relative to the space file), or an inline net parsed as a space of its own."""
        if isinstance(raw, str):
            file = (path.parent if path else Path(".")) / raw
            if file.is_dir():
                self.fail(where, f"{str(file)!r} is a folder; name a space file in it (paths are relative to the space file)")
            try:
                check_readable_file(file, "a baseline")
            except ReadError as e:
                self.fail(where, str(e).rstrip("."))
            if not file.is_file():
                self.fail(where, f"no such file {str(file)!r} (paths are relative to the space file)")
            return file
        self.mapping(raw, where, ("architecture", "training"))
        return parse_space({"name": f"{self.file}: {where}"} | raw, label=f"{self.file}: {where}")


def _join(where: str, key: Any) -> str:
    key = str(key) if len(str(key)) <= 60 else str(key)[:57] + "..."  # a key can be any YAML value
    return f"{where}.{key}" if where else key


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 4, 4, 40, 40, 40


def _show(raw: Any) -> str:
    """A value in a message: its type and a short repr (never the whole of a huge or recursive value)."""
    return f"{type(raw).__name__} {_REPR.repr(raw)}" if raw is not None else "nothing (null)"


def parse_objectives(text: str) -> tuple[str, ...]:
    """`--objectives accuracy,latency` checked as the space file's `objectives` is."""
    return _Parser("the command line").objectives([t.strip() for t in text.split(",")], "--objectives")
