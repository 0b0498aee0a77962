#!/usr/bin/env python3
"""Fits a componentize-py component (built with --stub-wasi) into arp-host's limits.

    fit_host.py WASM_OPT IN.wasm OUT.wasm

WASM_OPT is the command that runs Binaryen's wasm-opt (it may contain spaces, e.g.
`node node_modules/binaryen/bin/wasm-opt`).

Two limits of the host stop the component componentize-py 0.25.1 makes:

1. Core instances. `--stub-wasi` gives every WASI interface the Python runtime imports its own
   stub module (25 of them, each function a bare `unreachable`), each instantiated on its
   own, which makes 38 core instances per decision; the host allows 32
   (`PolicyLimits::instances`). This merges the stub modules into one module that exports
   every stub under a unique name, instantiates only that one, turns the other stub
   instances into empty export bags (so no index of the component changes) and points every
   `alias core export` of a stub at the merged instance. What runs is unchanged: the same
   trapping stubs, now 14 core instances in all.

2. Size. The component is about 18.4 MB; the host accepts 16 MiB. The data segments of
   the module holding the memory snapshot (it defines the memory, so the memory starts
   zeroed, and no other module has data segments) lose their zero runs (done here, not with
   wasm-opt's --memory-packing, which makes exactly 100,000 segments, one more than
   wasmtime accepts), and wasm-opt `-Oz` shrinks libpython's code, keeping its imports,
   exports and `dylink.0`. That gives about 16.3 MB.

A component has no offsets besides section sizes, so sections are re-encoded in place; every
other byte stays as componentize-py wrote it. The script refuses (exits non-zero) whenever
the component does not have the expected shape, rather than guess.
"""

import os
import subprocess
import sys
import tempfile

WASM_OPT_FEATURES = [
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-multivalue",
    "--enable-reference-types",
    "--enable-extended-const",
]

# Component section ids.
CORE_MODULE, CORE_INSTANCE, ALIAS = 1, 2, 6
# Core sorts.
CORE_FUNC, CORE_INSTANCE_SORT, CORE_MODULE_SORT = 0x00, 0x12, 0x11


class Shape(Exception):
    """The component is not shaped as expected."""


def leb(data: bytes, i: int):
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def enc_leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_name(data: bytes, i: int):
    length, i = leb(data, i)
    return data[i : i + length], i + length


def enc_name(name: bytes) -> bytes:
    return enc_leb(len(name)) + name


def sections(blob: bytes, what: str):
    """[(id, payload)] of a module's or component's top-level sections."""
    if blob[:4] != b"\0asm":
        raise Shape(f"{what}: no wasm header")
    out, i = [], 8
    while i < len(blob):
        section_id = blob[i]
        size, start = leb(blob, i + 1)
        out.append((section_id, blob[start : start + size]))
        i = start + size
    return out


# ---- stub modules ---------------------------------------------------------------------

def stub_functions(module: bytes):
    """[(export name, type bytes)] if the module is a pure stub (only functions whose body
    is `unreachable`, all exported, nothing imported or defined besides), else None."""
    types, funcs, exports, bodies = [], [], [], []
    for section_id, payload in sections(module, "module"):
        if section_id == 0:
            continue  # custom sections
        if section_id == 1:
            count, i = leb(payload, 0)
            for _ in range(count):
                start = i
                if payload[i] != 0x60:
                    return None
                params, i = leb(payload, i + 1)
                i += params
                results, i = leb(payload, i)
                i += results
                types.append(payload[start:i])
        elif section_id == 3:
            count, i = leb(payload, 0)
            for _ in range(count):
                type_index, i = leb(payload, i)
                funcs.append(type_index)
        elif section_id == 7:
            count, i = leb(payload, 0)
            for _ in range(count):
                name, i = read_name(payload, i)
                kind = payload[i]
                index, i = leb(payload, i + 1)
                if kind != 0x00:
                    return None
                exports.append((name, index))
        elif section_id == 10:
            count, i = leb(payload, 0)
            for _ in range(count):
                size, i = leb(payload, i)
                bodies.append(payload[i : i + size])
                i += size
        else:
            return None  # imports, tables, memories, globals, start, data, ...
    if len(bodies) != len(funcs) or any(body != b"\x00\x00\x0b" for body in bodies):
        return None
    if sorted(index for _, index in exports) != list(range(len(funcs))):
        return None
    return [(name, types[funcs[index]]) for name, index in exports]


def merged_stub_module(functions):
    """A module exporting `unreachable` stubs: functions is [(export name, type bytes)]."""
    type_list, type_index = [], {}
    for _, ty in functions:
        if ty not in type_index:
            type_index[ty] = len(type_list)
            type_list.append(ty)

    def section(section_id, entries):
        body = enc_leb(len(entries)) + b"".join(entries)
        return bytes([section_id]) + enc_leb(len(body)) + body

    return (
        b"\0asm\x01\x00\x00\x00"
        + section(1, type_list)
        + section(3, [enc_leb(type_index[ty]) for _, ty in functions])
        + section(7, [enc_name(name) + b"\x00" + enc_leb(i) for i, (name, _) in enumerate(functions)])
        + section(10, [b"\x03\x00\x00\x0b" for _ in functions])
    )


# ---- the component --------------------------------------------------------------------

def parse_core_instances(payload: bytes):
    """Entries of a core instance section: ('inst', module, [(name, instance)]) or
    ('bag', raw bytes)."""
    entries = []
    count, i = leb(payload, 0)
    for _ in range(count):
        start = i
        tag = payload[i]
        i += 1
        if tag == 0x00:
            module, i = leb(payload, i)
            arg_count, i = leb(payload, i)
            args = []
            for _ in range(arg_count):
                name, i = read_name(payload, i)
                if payload[i] != CORE_INSTANCE_SORT:
                    raise Shape("instantiate argument that is not an instance")
                instance, i = leb(payload, i + 1)
                args.append((name, instance))
            entries.append(("inst", module, args))
        elif tag == 0x01:
            export_count, i = leb(payload, i)
            for _ in range(export_count):
                _, i = read_name(payload, i)
                i += 1  # core sort
                _, i = leb(payload, i)
            entries.append(("bag", payload[start:i]))
        else:
            raise Shape(f"unknown core instance tag {tag}")
    return entries


def encode_core_instances(entries) -> bytes:
    out = bytearray(enc_leb(len(entries)))
    for entry in entries:
        if entry[0] == "inst":
            _, module, args = entry
            out += b"\x00" + enc_leb(module) + enc_leb(len(args))
            for name, instance in args:
                out += enc_name(name) + bytes([CORE_INSTANCE_SORT]) + enc_leb(instance)
        else:
            out += entry[1]
    return bytes(out)


def parse_aliases(payload: bytes):
    """Entries of an alias section: (sort bytes, target tag, a, b) where (a, b) is
    (instance, name) for export targets and (count, index) for outer ones."""
    entries = []
    count, i = leb(payload, 0)
    for _ in range(count):
        if payload[i] == 0x00:
            sort, i = payload[i : i + 2], i + 2
        else:
            sort, i = payload[i : i + 1], i + 1
        target = payload[i]
        i += 1
        if target in (0x00, 0x01):
            instance, i = leb(payload, i)
            name, i = read_name(payload, i)
            entries.append((sort, target, instance, name))
        elif target == 0x02:
            outer, i = leb(payload, i)
            index, i = leb(payload, i)
            entries.append((sort, target, outer, index))
        else:
            raise Shape(f"unknown alias target {target}")
    return entries


def encode_aliases(entries) -> bytes:
    out = bytearray(enc_leb(len(entries)))
    for sort, target, a, b in entries:
        out += sort + bytes([target]) + enc_leb(a)
        out += enc_name(b) if target in (0x00, 0x01) else enc_leb(b)
    return bytes(out)


def merge_stubs(component_sections):
    """Rewrites the sections so that all pure stub modules run as one core instance.
    Returns (sections, number of instantiations removed)."""
    modules = []  # core module index -> position in component_sections
    instances = []  # core instance index -> ("inst", module, args) or ("bag",)
    for position, (section_id, payload) in enumerate(component_sections):
        if section_id == CORE_MODULE:
            modules.append(position)
        elif section_id == CORE_INSTANCE:
            instances.extend(parse_core_instances(payload))
        elif section_id == ALIAS:
            for sort, target, _, _ in parse_aliases(payload):
                if sort in (bytes([0x00, CORE_MODULE_SORT]), bytes([0x00, CORE_INSTANCE_SORT])):
                    raise Shape("a core module or instance made by an alias")

    stubs = {}  # instance index -> [(name, type)]
    for index, entry in enumerate(instances):
        if entry[0] == "inst" and not entry[2]:
            functions = stub_functions(component_sections[modules[entry[1]]][1])
            if functions is not None:
                stubs[index] = functions
    if len(stubs) < 2:
        raise Shape(f"found {len(stubs)} stub instances, expected the --stub-wasi adapters")
    used_modules = [instances[index][1] for index in stubs]
    instantiated = [e[1] for e in instances if e[0] == "inst"]
    if any(instantiated.count(module) != 1 for module in used_modules):
        raise Shape("a stub module is instantiated more than once")
    for entry in instances:
        if entry[0] == "inst" and any(instance in stubs for _, instance in entry[2]):
            raise Shape("a stub instance is passed whole to an instantiation")

    keeper = min(stubs)
    rename, functions = {}, []
    for index in sorted(stubs):
        for name, ty in stubs[index]:
            new_name = b"%d:" % index + name
            rename[(index, name)] = new_name
            functions.append((new_name, ty))
    merged = merged_stub_module(functions)

    out = list(component_sections)
    out[modules[instances[keeper][1]]] = (CORE_MODULE, merged)
    instance_index = 0
    for position, (section_id, payload) in enumerate(out):
        if section_id == CORE_INSTANCE:
            entries = parse_core_instances(payload)
            for k, _ in enumerate(entries):
                if instance_index + k in stubs and instance_index + k != keeper:
                    entries[k] = ("bag", b"\x01\x00")  # an empty instance: nothing runs
            instance_index += len(entries)
            out[position] = (section_id, encode_core_instances(entries))
        elif section_id == ALIAS:
            entries = parse_aliases(payload)
            changed = False
            for k, (sort, target, instance, name) in enumerate(entries):
                if target == 0x01 and instance in stubs:
                    if (instance, name) not in rename:
                        raise Shape(f"alias of unknown stub export {name!r}")
                    entries[k] = (sort, target, keeper, rename[(instance, name)])
                    changed = True
            if changed:
                out[position] = (section_id, encode_aliases(entries))
    return out, len(stubs) - 1


# ---- size -----------------------------------------------------------------------------

def module_role(module: bytes) -> str:
    has_memory = has_data = False
    for section_id, _ in sections(module, "module"):
        has_memory |= section_id == 5
        has_data |= section_id == 11
    if has_memory and has_data:
        return "snapshot"
    # libpython is the one side module (dylink.0) that defines Py_Initialize; the others
    # (componentize-py's runtime, ...) only import it. Checked by `shrink` to be the largest.
    if b"dylink.0" in module[:64] and b"Py_Initialize" in module:
        return "libpython?"
    return "other"


def wasm_opt(command, module: bytes, args) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.wasm"), os.path.join(tmp, "out.wasm")
        with open(src, "wb") as f:
            f.write(module)
        subprocess.run(
            [*command, src, *args, *WASM_OPT_FEATURES, "--strip-debug", "-o", dst], check=True
        )
        with open(dst, "rb") as f:
            return f.read()


def pack_data(module: bytes, max_segments: int = 50_000) -> bytes:
    """Splits the zero runs out of the module's active data segments (the memory is defined
    here and starts zeroed; segments must not overlap). Uses the shortest zero run worth
    splitting at that keeps the segment count under `max_segments` (wasmtime refuses
    100,000 or more, which is what wasm-opt's --memory-packing produced)."""
    parts = sections(module, "module")
    segments = []
    for section_id, payload in parts:
        if section_id != 11:
            continue
        count, i = leb(payload, 0)
        for _ in range(count):
            if payload[i] != 0x00 or payload[i + 1] != 0x41:
                raise Shape("a data segment that is not active at an i32.const offset")
            offset, i = leb(payload, i + 2)
            if payload[i] != 0x0B:
                raise Shape("a data segment offset that is not a lone i32.const")
            length, i = leb(payload, i + 1)
            segments.append((offset, payload[i : i + length]))
            i += length
    segments.sort()
    for (a, data), (b, _) in zip(segments, segments[1:]):
        if a + len(data) > b:
            raise Shape("overlapping data segments")

    def split(min_run):
        out = []
        for offset, data in segments:
            start, i, n = None, 0, len(data)
            while i < n:
                if data[i]:
                    if start is None:
                        start = i
                    i += 1
                    continue
                j = i
                while j < n and not data[j]:
                    j += 1
                if start is not None and (j - i >= min_run or j == n):
                    out.append((offset + start, data[start:i]))
                    start = None
                i = j
            if start is not None:
                out.append((offset + start, data[start:]))
        return out

    for min_run in (8, 12, 16, 24, 32, 64, 1 << 30):
        packed = split(min_run)
        if len(packed) < max_segments:
            break
    body = bytearray(enc_leb(len(packed)))
    for offset, data in packed:
        off = bytearray()  # signed LEB128 for i32.const
        value = offset
        while True:
            byte = value & 0x7F
            value >>= 7
            if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
                off.append(byte)
                break
            off.append(byte | 0x80)
        body += b"\x00\x41" + off + b"\x0b" + enc_leb(len(data)) + data
    out = bytearray(module[:8])
    for section_id, payload in parts:
        if section_id == 0 and read_name(payload, 0)[0] == b"name":
            continue  # debug names only
        if section_id == 11:
            payload = bytes(body)
        elif section_id == 12:
            payload = enc_leb(len(packed))
        out += bytes([section_id]) + enc_leb(len(payload)) + payload
    return bytes(out)


def shrink(component_sections, command):
    out, done = [], []
    side_modules = [
        len(payload)
        for section_id, payload in component_sections
        if section_id == CORE_MODULE and module_role(payload) == "libpython?"
    ]
    for section_id, payload in component_sections:
        if section_id == CORE_MODULE:
            role = module_role(payload)
            if role == "libpython?":
                role = "libpython" if len(payload) == max(side_modules) else "other"
            if role == "snapshot" and role not in done:
                payload = pack_data(payload)
                done.append(role)
            elif role == "libpython" and role not in done:
                payload = wasm_opt(command, payload, ["-Oz"])
                done.append(role)
        out.append((section_id, payload))
    if sorted(done) != ["libpython", "snapshot"]:
        raise Shape(f"did not find the snapshot and libpython modules (found {done})")
    return out


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    command = sys.argv[1].split()
    with open(sys.argv[2], "rb") as f:
        component = f.read()
    if component[4:8] != b"\x0d\x00\x01\x00":
        print(f"{sys.argv[2]}: not a WebAssembly component", file=sys.stderr)
        return 1
    try:
        parts, removed = merge_stubs(sections(component, "component"))
        parts = shrink(parts, command)
    except Shape as e:
        print(f"{sys.argv[2]}: unexpected component shape: {e}", file=sys.stderr)
        return 1
    out = bytearray(component[:8])
    for section_id, payload in parts:
        out += bytes([section_id]) + enc_leb(len(payload)) + payload
    with open(sys.argv[3], "wb") as f:
        f.write(out)
    print(
        f"fit_host: {removed} stub instantiations merged away; "
        f"{len(component)} -> {len(out)} bytes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
