"""Passing back a module that the student's function changed in place, as plain data (ex-03-untie's shape).

When the function returns one of its own `nn.Module` arguments, the child sends `module_state(module)`: for
every submodule its plain attributes and the fields of its dataclass attributes (a config), and for every
parameter and buffer its values, whether it is a Parameter, and which parameters are the same object or share
memory. The parent applies that to its own copy of the argument (`apply_state`), so the checker sees the
module as the student left it: a new head, still tied, sharing memory or not. The parent never unpickles
anything from the child: every piece is plain data.
Leaves out: new submodules or classes the student defined (the module must keep its structure), hooks.
"""
import dataclasses

from torch import nn


def _plain(value) -> bool:
    return type(value) in (int, float, bool, str, type(None)) or (
        type(value) in (list, tuple) and all(_plain(v) for v in value))


def module_state(module: nn.Module) -> dict:
    """The plain-data description of `module`'s state."""
    modules, params, buffers = {}, [], []
    storages: dict = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        attrs, configs = {}, {}
        for key, value in vars(sub).items():
            if key.startswith("_"):
                continue
            if _plain(value):
                attrs[key] = value
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                configs[key] = {k: v for k, v in fields.items() if _plain(v)}
        modules[path] = {"attrs": attrs, "configs": configs}
        for name, p in sub._parameters.items():
            if p is None:
                continue
            storage = storages.setdefault(p.untyped_storage().data_ptr(), len(storages))
            params.append({"module": path, "name": name, "object": id(p), "storage": storage,
                           "value": p.detach().clone(), "parameter": isinstance(p, nn.Parameter),
                           "requires_grad": p.requires_grad})
        for name, b in sub._buffers.items():
            if b is not None:
                buffers.append({"module": path, "name": name, "value": b.detach().clone()})
    return {"modules": modules, "params": params, "buffers": buffers}


def apply_state(module: nn.Module, state: dict) -> nn.Module:
    """Make the parent's `module` match `state`; raise ValueError if its structure differs."""
    subs = dict(module.named_modules(remove_duplicate=False))
    if set(state["modules"]) != set(subs):
        raise ValueError("the model's submodules were replaced or added: change it in place only")
    objects, storages = {}, {}
    seen = set()
    for entry in state["params"]:
        sub = subs[entry["module"]]
        if entry["object"] in objects:
            p = objects[entry["object"]]
        else:
            value = entry["value"]
            shared = storages.get(entry["storage"])
            if shared is not None and shared.shape == value.shape:
                value = shared  # the same memory as an earlier parameter, as in the child
            p = nn.Parameter(value, requires_grad=entry["requires_grad"]) if entry["parameter"] else value
            objects[entry["object"]] = p
            storages.setdefault(entry["storage"], p.data if isinstance(p, nn.Parameter) else p)
        sub._parameters[entry["name"]] = p
        seen.add((entry["module"], entry["name"]))
    for path, sub in subs.items():
        for name in list(sub._parameters):
            if (path, name) not in seen:
                del sub._parameters[name]
    for entry in state["buffers"]:
        subs[entry["module"]]._buffers[entry["name"]] = entry["value"]
    for path, info in state["modules"].items():
        sub = subs[path]
        for key, value in info["attrs"].items():
            if key in vars(sub) and _plain(vars(sub)[key]):  # only attributes the module has, never new ones
                object.__setattr__(sub, key, value)
        for key, fields in info["configs"].items():
            target = vars(sub).get(key)
            if dataclasses.is_dataclass(target):
                names = {f.name for f in dataclasses.fields(target)}
                for name, value in fields.items():
                    if name in names:
                        object.__setattr__(target, name, value)
    return module


def returned_argument(value, args) -> int | None:
    """The index of the `nn.Module` argument that `value` is, else None."""
    if isinstance(value, nn.Module):
        for i, arg in enumerate(args):
            if arg is value:
                return i
    return None

